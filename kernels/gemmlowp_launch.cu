// The CUDA kernels built for the GPU: entry_points.h's C functions with a
// launch on the caller's stream. torch_cuda.cpp calls them for torch tensors.
#include <cuda_runtime.h>

#include "gemmlowp_kernels.cuh"

namespace qc {

struct Launcher {
  void* stream;
  template <class... Parameters, class... Args>
  void operator()(dim3 grid, dim3 block, void (*kernel)(Parameters...), Args... args) const {
    kernel<<<grid, block, 0, static_cast<cudaStream_t>(stream)>>>(args...);
    const cudaError_t status = cudaGetLastError();
    if (status != cudaSuccess && error == nullptr) error = cudaGetErrorString(status);
  }
  // The GPU of the tensors: this library's CUDA runtime keeps its own current device, apart from torch's.
  static void use_device(int device) {
    int current = -1;
    if (cudaGetDevice(&current) != cudaSuccess || current != device) {
      const cudaError_t status = cudaSetDevice(device);
      if (status != cudaSuccess && error == nullptr) error = cudaGetErrorString(status);
    }
  }
  // The first launch error since the last call, then cleared.
  static const char* last_error() {
    const char* e = error;
    error = nullptr;
    return e;
  }
  static inline thread_local const char* error = nullptr;
};

}  // namespace qc

#include "entry_points.h"
