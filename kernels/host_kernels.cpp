// The CPU twin's element-wise stages, compiled from the same gemmlowp.h as the
// CUDA kernels, so the two cannot drift apart. kernels/host.py builds this with
// the host C++ compiler and calls it through ctypes; without a compiler the twin
// falls back to the same arithmetic in torch ops (kernels/fixed_point.py).
#include <stdint.h>

#include <algorithm>
#include <thread>
#include <vector>

#include "gemmlowp.h"

namespace {

template <class Body>
void parallel_for(int64_t count, int threads, Body body) {
  threads = std::max(1, std::min<int>(threads, static_cast<int>(std::min<int64_t>(count, 64))));
  if (threads == 1) {
    body(0, count);
    return;
  }
  std::vector<std::thread> pool;
  const int64_t step = (count + threads - 1) / threads;
  for (int t = 0; t < threads; ++t) {
    const int64_t begin = t * step, end = std::min(count, begin + step);
    if (begin < end) pool.emplace_back(body, begin, end);
  }
  for (auto& thread : pool) thread.join();
}

// One row of the output stage when its exponent is <= 0 (no left shift) and m0 is not INT32_MIN (no SRDHM
// saturation): the same function as qc::output_stage, written in the closed forms of spec 7.5 / 7.6 so the
// compiler can vectorize it. SRDHM is floor(x * m0 / 2^31 + 1/2) = (x * m0 + 2^30) >> 31; RDBPOT rounds
// half away from zero as (r + 2^(e-1) - [r < 0]) >> e. tests/test_kernels.py checks it against the header.
__attribute__((target_clones("avx2", "default")))
void output_row(const int32_t* acc, uint8_t* out, int64_t n, int64_t bias, int32_t m0, int right, int64_t zero,
                int64_t lo, int64_t hi) {
  const int64_t half = right > 0 ? (int64_t{1} << (right - 1)) : 0;
  for (int64_t i = 0; i < n; ++i) {
    int64_t x = static_cast<int64_t>(acc[i]) + bias;
    x = x < qc::kInt32Min ? qc::kInt32Min : (x > qc::kInt32Max ? qc::kInt32Max : x);
    const int64_t p = static_cast<int64_t>(static_cast<int32_t>(x)) * m0;  // 32 x 32 -> 64 bits
    const int64_t r = (p + (int64_t{1} << 30)) >> 31;
    const int64_t q = right > 0 ? ((r + half - (r < 0 ? 1 : 0)) >> right) : r;
    int64_t y = q + zero;
    y = y < lo ? lo : (y > hi ? hi : y);  // lo, hi lie inside int32, so this also saturates
    out[i] = static_cast<uint8_t>(y);
  }
}

}  // namespace

extern "C" {

// out[o, c, i] = output_stage(acc[o, c, i]) with channel c's bias, multiplier and exponent.
void qc_host_output_stage(const int32_t* acc, const int32_t* bias, const int32_t* m0, const int32_t* exponent,
                          uint8_t* out, int64_t outer, int64_t channels, int64_t inner, int32_t zero_point,
                          int32_t lo, int32_t hi, int threads) {
  parallel_for(outer * channels, threads, [=](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row % channels;
      const int32_t* a = acc + row * inner;
      uint8_t* o = out + row * inner;
      if (exponent[c] <= 0 && m0[c] != qc::kInt32Min) {
        output_row(a, o, inner, bias[c], m0[c], -exponent[c], zero_point, lo, hi);
        continue;
      }
      for (int64_t i = 0; i < inner; ++i)
        o[i] = static_cast<uint8_t>(qc::output_stage(a[i], bias[c], m0[c], exponent[c], zero_point, lo, hi));
    }
  });
}

// TFLite's quantized add: both inputs onto a grid 2^left_shift finer, add, requantize.
void qc_host_add(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t count, int32_t a_zero, int32_t a_m0,
                 int a_exponent, int32_t b_zero, int32_t b_m0, int b_exponent, int32_t out_m0, int out_exponent,
                 int32_t out_zero, int32_t lo, int32_t hi, int left_shift, int threads) {
  parallel_for(count, threads, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      const int32_t x = qc::multiply_by_quantized_multiplier((a[i] - a_zero) * (1 << left_shift), a_m0, a_exponent);
      const int32_t y = qc::multiply_by_quantized_multiplier((b[i] - b_zero) * (1 << left_shift), b_m0, b_exponent);
      out[i] = static_cast<uint8_t>(qc::output_stage(x + y, 0, out_m0, out_exponent, out_zero, lo, hi));
    }
  });
}

}  // extern "C"
