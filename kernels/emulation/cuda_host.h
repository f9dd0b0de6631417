// A small host emulation of CUDA's execution model, so that the kernels in
// ../gemmlowp_kernels.cuh run unchanged on a CPU.
//
// launch() runs the grid one block at a time; each block's threads are real
// std::threads, so __syncthreads() is a real barrier between them and a
// kernel that forgets one races exactly as it would on a GPU. __shared__
// becomes a function-static variable: with one block alive at a time, that
// is precisely the block's shared memory. threadIdx / blockIdx are
// thread_local; blockDim / gridDim are set per launch.
#pragma once

#include <barrier>
#include <cstdint>
#include <thread>
#include <vector>

struct dim3 {
  unsigned x, y, z;
  constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __restrict__
#define __shared__ static

inline thread_local dim3 threadIdx;
inline thread_local dim3 blockIdx;
inline dim3 blockDim;
inline dim3 gridDim;
inline thread_local std::barrier<>* qc_block_barrier = nullptr;

inline void __syncthreads() { qc_block_barrier->arrive_and_wait(); }

// Signed byte-wise dot product of two words, added to c (CUDA's int __dp4a(int, int, int)).
inline int __dp4a(int a, int b, int c) {
  for (int i = 0; i < 4; ++i) {
    const int8_t x = static_cast<int8_t>((static_cast<uint32_t>(a) >> (8 * i)) & 0xFF);
    const int8_t y = static_cast<int8_t>((static_cast<uint32_t>(b) >> (8 * i)) & 0xFF);
    c += static_cast<int>(x) * static_cast<int>(y);
  }
  return c;
}

namespace qc_host {

template <class Kernel, class... Args>
void launch(dim3 grid, dim3 block, Kernel kernel, Args... args) {
  gridDim = grid;
  blockDim = block;
  const unsigned threads = block.x * block.y * block.z;
  for (unsigned bz = 0; bz < grid.z; ++bz)
    for (unsigned by = 0; by < grid.y; ++by)
      for (unsigned bx = 0; bx < grid.x; ++bx) {
        std::barrier<> barrier(threads);
        std::vector<std::thread> pool;
        pool.reserve(threads);
        for (unsigned tz = 0; tz < block.z; ++tz)
          for (unsigned ty = 0; ty < block.y; ++ty)
            for (unsigned tx = 0; tx < block.x; ++tx)
              pool.emplace_back([&, tx, ty, tz] {
                threadIdx = dim3(tx, ty, tz);
                blockIdx = dim3(bx, by, bz);
                qc_block_barrier = &barrier;
                kernel(args...);
              });
        for (auto& t : pool) t.join();
      }
}

}  // namespace qc_host
