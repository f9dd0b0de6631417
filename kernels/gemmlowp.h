// GEMMLOWP fixed-point arithmetic, shared by the CUDA kernels and their host build.
//
// Semantics follow gemmlowp's scalar reference (fixedpoint.h, output_stages.h)
// exactly; see spec section 7 and kernels/fixed_point.py, the CPU twin that
// must agree with this file bit for bit.
//
//   real = scale * (q - zero_point)
//   acc  = sum_k (qa_k - za) * (qw_k - zw)            int32
//   y    = RDBPOT(SRDHM(SatLeftShift(acc + bias, left), m0), right) + z_out   (additions saturate)
//   q    = clamp(y, lo, hi)                           (fused ReLU / ReLU6 / M-bit grid)
#pragma once

#include <stdint.h>

#if defined(__CUDACC__)
#define QC_HD __host__ __device__ __forceinline__
#else
#define QC_HD inline
#endif

namespace qc {

constexpr int32_t kInt32Min = -2147483647 - 1;
constexpr int32_t kInt32Max = 2147483647;

// Round-to-nearest of a * b / 2^31, ties toward +infinity; the one overflow
// (INT32_MIN * INT32_MIN) saturates to INT32_MAX (spec 7.5).
QC_HD int32_t srdhm(int32_t a, int32_t b) {
  if (a == kInt32Min && b == kInt32Min) return kInt32Max;
  const int64_t p = static_cast<int64_t>(a) * static_cast<int64_t>(b);
  const int64_t nudge = p >= 0 ? (int64_t{1} << 30) : (int64_t{1} - (int64_t{1} << 30));
  return static_cast<int32_t>((p + nudge) / (int64_t{1} << 31));  // C division truncates toward zero
}

// x / 2^e rounded to nearest, ties away from zero, for 0 <= e <= 31 (spec 7.6).
QC_HD int32_t rdbpot(int32_t x, int e) {
  const int32_t mask = static_cast<int32_t>((int64_t{1} << e) - 1);
  const int32_t remainder = x & mask;
  const int32_t threshold = (mask >> 1) + (x < 0 ? 1 : 0);
  return (x >> e) + (remainder > threshold ? 1 : 0);
}

// x * 2^e saturated to int32, for 0 <= e <= 31.
QC_HD int32_t saturating_left_shift(int32_t x, int e) {
  const int64_t y = static_cast<int64_t>(x) * (int64_t{1} << e);
  return y > kInt32Max ? kInt32Max : (y < kInt32Min ? kInt32Min : static_cast<int32_t>(y));
}

// acc * m0 * 2^(exponent - 31): a saturating left shift for exponent > 0,
// then SRDHM, then RDBPOT for exponent < 0 (OutputStageScaleInt32ByFixedPointAndExponent).
QC_HD int32_t multiply_by_quantized_multiplier(int32_t acc, int32_t m0, int exponent) {
  const int left = exponent > 0 ? exponent : 0;
  const int right = exponent > 0 ? 0 : -exponent;
  return rdbpot(srdhm(saturating_left_shift(acc, left), m0), right);
}

QC_HD int32_t clamp_i32(int32_t x, int32_t lo, int32_t hi) { return x < lo ? lo : (x > hi ? hi : x); }

QC_HD int32_t saturating_add(int32_t a, int32_t b) {
  const int64_t s = static_cast<int64_t>(a) + b;
  return s > kInt32Max ? kInt32Max : (s < kInt32Min ? kInt32Min : static_cast<int32_t>(s));
}

// The whole output stage for one accumulator (spec 7.3): bias in accumulator
// units, requantize, output zero point, clamp (fused activation and bit width).
QC_HD int32_t output_stage(int32_t acc, int32_t bias, int32_t m0, int exponent, int32_t zero_point, int32_t lo,
                           int32_t hi) {
  return clamp_i32(saturating_add(multiply_by_quantized_multiplier(saturating_add(acc, bias), m0, exponent),
                                  zero_point), lo, hi);
}

// TFLite's quantized add of two codes: both onto a grid 2^left_shift finer than theirs, added, requantized.
QC_HD uint8_t quantized_add(uint8_t a, uint8_t b, int32_t a_zero, int32_t a_m0, int a_exponent, int32_t b_zero,
                            int32_t b_m0, int b_exponent, int32_t out_m0, int out_exponent, int32_t out_zero,
                            int32_t lo, int32_t hi, int left_shift) {
  const int32_t x = multiply_by_quantized_multiplier((a - a_zero) * (1 << left_shift), a_m0, a_exponent);
  const int32_t y = multiply_by_quantized_multiplier((b - b_zero) * (1 << left_shift), b_m0, b_exponent);
  return static_cast<uint8_t>(output_stage(x + y, 0, out_m0, out_exponent, out_zero, lo, hi));
}

// std::round (ties away from zero) of |v| < 2^31, without the float error of floor(v + 0.5).
QC_HD int32_t round_half_away(float v) {
  const int32_t t = static_cast<int32_t>(v);  // truncates toward zero
  const float fraction = v - static_cast<float>(t);  // exact
  return t + (fraction >= 0.5f ? 1 : 0) - (fraction <= -0.5f ? 1 : 0);
}

// q = round(clamp(zp + x / scale, qmin, qmax)) in float32 (spec 7.1). NaN maps to qmin.
QC_HD int32_t quantize(float x, float scale, int32_t zero_point, int32_t qmin, int32_t qmax) {
  float v = static_cast<float>(zero_point) + x / scale;
  v = v > static_cast<float>(qmin) ? v : static_cast<float>(qmin);
  v = v < static_cast<float>(qmax) ? v : static_cast<float>(qmax);
  return round_half_away(v);
}

QC_HD float dequantize(int32_t q, float scale, int32_t zero_point) {
  return scale * static_cast<float>(q - zero_point);
}

// Two signed 4-bit codes in one byte: the even element in the low nibble.
QC_HD uint8_t pack_int4(int32_t even, int32_t odd) {
  return static_cast<uint8_t>((even & 0xF) | ((odd & 0xF) << 4));
}

QC_HD int32_t unpack_int4(uint8_t byte, int high) {
  const int32_t nibble = high ? (byte >> 4) : (byte & 0xF);
  return nibble >= 8 ? nibble - 16 : nibble;
}

}  // namespace qc
