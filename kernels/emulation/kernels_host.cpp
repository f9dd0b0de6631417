// The CUDA kernels built for the host emulation (cuda_host.h): entry_points.h's
// C functions, launching with the same grids and blocks as on a GPU, plus the
// fixed-point helpers of ../gemmlowp.h for the tests (emulation.py loads this
// with ctypes).
#include <string>

#include "cuda_host.h"
#include "../gemmlowp_kernels.cuh"

namespace qc {

struct Launcher {
  void* stream;  // unused: the emulation runs each launch to its end
  template <class... Parameters, class... Args>
  void operator()(dim3 grid, dim3 block, void (*kernel)(Parameters...), Args... args) const {
    try {
      qc_host::launch(grid, block, kernel, args...);
    } catch (const std::exception& e) {  // a shape no GPU takes: the launch fails, as it would there
      if (error.empty()) error = e.what();
    }
  }
  static void use_device(int) {}
  // The first launch error since the last call, then cleared.
  static const char* last_error() {
    static thread_local std::string reported;
    reported = error;
    error.clear();
    return reported.empty() ? nullptr : reported.c_str();
  }
  static inline thread_local std::string error;
};

}  // namespace qc

#include "../entry_points.h"

extern "C" {

int32_t qc_srdhm(int32_t a, int32_t b) { return qc::srdhm(a, b); }
int32_t qc_rdbpot(int32_t x, int e) { return qc::rdbpot(x, e); }
int32_t qc_output_stage(int32_t acc, int32_t bias, int32_t m0, int exponent, int32_t zero_point, int32_t lo,
                        int32_t hi) {
  return qc::output_stage(acc, bias, m0, exponent, zero_point, lo, hi);
}
int32_t qc_quantize(float x, float scale, int32_t zero_point, int32_t qmin, int32_t qmax) {
  return qc::quantize(x, scale, zero_point, qmin, qmax);
}
uint8_t qc_pack_int4(int32_t even, int32_t odd) { return qc::pack_int4(even, odd); }
int32_t qc_unpack_int4(uint8_t byte, int high) { return qc::unpack_int4(byte, high); }

// One mma.sync m16n8k32 by one emulated warp: lane l holds a[l][0..3], b[l][0..1] and c[l][0..3] and gets
// d[l][0..3] (the tests lay the fragments out from full matrices by the PTX ISA's tables).
void qc_mma_s8_16832(const uint32_t* a, const uint32_t* b, const int32_t* c, int32_t* d) {
  auto warp = [&] {
    const int lane = static_cast<int>(threadIdx.x);
    const uint32_t fa[4] = {a[4 * lane], a[4 * lane + 1], a[4 * lane + 2], a[4 * lane + 3]};
    const uint32_t fb[2] = {b[2 * lane], b[2 * lane + 1]};
    int32_t acc[4] = {c[4 * lane], c[4 * lane + 1], c[4 * lane + 2], c[4 * lane + 3]};
    qc::mma_s8_16832(acc, fa, fb);
    for (int r = 0; r < 4; ++r) d[4 * lane + r] = acc[r];
  };
  qc_host::launch(dim3(1), dim3(32), +[](decltype(warp)* body) { (*body)(); }, &warp);
}

}  // extern "C"
