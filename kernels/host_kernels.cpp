// The CPU twin's element-wise stages (output stage, quantize, dequantize, add), compiled from the same
// gemmlowp.h as the CUDA kernels, so the two cannot drift apart; pooling and layout copies are in
// host_layout.cpp, built into the same library. kernels/host.py builds this with
// the host C++ compiler and calls it through ctypes; without a compiler the twin
// falls back to the same arithmetic in torch ops (kernels/fixed_point.py).
#include <stdint.h>

#include <algorithm>
#include <memory>
#include <new>
#include <thread>
#include <vector>

#include "gemmlowp.h"
#include "parallel.h"

#if defined(__x86_64__)
#include "stage16.h"
#include "stage8.h"
#define QC_HOST_AVX2 1
#endif

namespace {

using qc_host::parallel_for;

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

// qc::quantize over a range, in a loop the compiler vectorizes (the header's float32 steps, in order).
__attribute__((target_clones("avx2", "default")))
void quantize_range(const float* x, uint8_t* out, int64_t begin, int64_t end, float scale, int32_t zero_point,
                    int32_t qmin, int32_t qmax) {
  for (int64_t i = begin; i < end; ++i) out[i] = static_cast<uint8_t>(qc::quantize(x[i], scale, zero_point, qmin, qmax));
}

#ifdef QC_HOST_AVX2
using namespace qc_avx2;

template <class T>
__attribute__((target("avx2"))) void output_row_avx2(const T* acc, uint8_t* out, int64_t n, int32_t bias,
                                                     int32_t m0, int right, int32_t zero, int32_t lo, int32_t hi) {
  const Stage8 s = make_stage8(_mm256_set1_epi32(bias), _mm256_set1_epi32(m0), _mm256_set1_epi32(right), zero, lo,
                               hi);
  const __m256i order = _mm256_setr_epi32(0, 4, 1, 5, 2, 6, 3, 7);
  int64_t i = 0;
  for (; i + 32 <= n; i += 32) {  // four vectors narrowed to 32 bytes: packs work per 128-bit half, so reorder
    const __m256i ab = _mm256_packus_epi32(stage8(load8(acc + i), s), stage8(load8(acc + i + 8), s));
    const __m256i cd = _mm256_packus_epi32(stage8(load8(acc + i + 16), s), stage8(load8(acc + i + 24), s));
    const __m256i bytes = _mm256_permutevar8x32_epi32(_mm256_packus_epi16(ab, cd), order);
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), bytes);
  }
  alignas(32) int32_t lanes[8];
  for (; i < n; i += 8) {
    const int64_t count = std::min<int64_t>(8, n - i);
    alignas(32) T tail[8] = {};
    std::copy(acc + i, acc + i + count, tail);
    _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), stage8(load8(tail), s));
    for (int64_t k = 0; k < count; ++k) out[i + k] = static_cast<uint8_t>(lanes[k]);
  }
}

template <class T>
void output_stage_avx2(const T* acc, const int32_t* bias, const int32_t* m0, const int32_t* exponent, uint8_t* out,
                       int64_t outer, int64_t channels, int64_t inner, int32_t zero_point, int32_t lo, int32_t hi,
                       int threads) {
  parallel_for(outer * channels, threads, [=](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const int64_t c = row % channels;
      output_row_avx2(acc + row * inner, out + row * inner, inner, bias[c], m0[c], -exponent[c], zero_point, lo,
                      hi);
    }
  });
}

template <class T>
__attribute__((target("avx2"))) void channels_last_pixels(const T* acc, const Stage8* stages, uint8_t* out,
                                                          int64_t begin, int64_t end, int64_t pixels,
                                                          int64_t channels) {
  alignas(32) int32_t lanes[8];
  alignas(32) T padded[8];
  for (int64_t index = begin; index < end; ++index) {
    const int64_t n = index / pixels, p = index % pixels;
    const T* a = acc + index * channels;
    uint8_t* o = out + n * channels * pixels + p;
    for (int64_t c0 = 0; c0 < channels; c0 += 8) {
      const int64_t count = std::min<int64_t>(8, channels - c0);
      const T* source = a + c0;
      if (count < 8) {
        std::fill(padded, padded + 8, T{0});
        std::copy(source, source + count, padded);
        source = padded;
      }
      _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), stage8(load8(source), stages[c0 / 8]));
      for (int64_t k = 0; k < count; ++k) o[(c0 + k) * pixels] = static_cast<uint8_t>(lanes[k]);
    }
  }
}

// Accumulators in channels-last order (acc[n, p, c], p the pixel) to a uint8 output in NCHW order
// (out[n, c, p]): one channel per lane, eight channels at a time (the last group padded with the last
// channel's parameters). Same preconditions as output_row_avx2.
template <class T>
__attribute__((target("avx2"))) void output_stage_channels_last_avx2(
    const T* acc, const int32_t* bias, const int32_t* m0, const int32_t* exponent, uint8_t* out, int64_t batch,
    int64_t pixels, int64_t channels, int32_t zero_point, int32_t lo, int32_t hi, int threads) {
  const StageTable stage_table(bias, m0, exponent, channels, zero_point, lo, hi);
  const Stage8* table = stage_table.data();
  parallel_for(batch * pixels, threads, [=](int64_t begin, int64_t end) {
    channels_last_pixels(acc, table, out, begin, end, pixels, channels);
  });
}

// quantize_range sixteen values at a time, the same float32 steps: the division (not a reciprocal), the zero
// point's addition, the clamp (vmaxps returns its second operand, qmin, for NaN, as qc::quantize does), then
// round_half_away as truncation plus one where the fraction is at least 1/2 (v >= qmin >= 0, so no negative
// fractions). The codes are 0..255, so vpmovdb's truncation keeps them. The last few values go through
// quantize_range itself.
__attribute__((target("avx512f"))) void quantize_range_avx512(const float* x, uint8_t* out, int64_t begin,
                                                                int64_t end, float scale, int32_t zero_point,
                                                                int32_t qmin, int32_t qmax) {
  const __m512 divisor = _mm512_set1_ps(scale), zero = _mm512_set1_ps(static_cast<float>(zero_point));
  const __m512 lo = _mm512_set1_ps(static_cast<float>(qmin)), hi = _mm512_set1_ps(static_cast<float>(qmax));
  const __m512 half = _mm512_set1_ps(0.5f);
  const __m512i one = _mm512_set1_epi32(1);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    __m512 v = _mm512_add_ps(zero, _mm512_div_ps(_mm512_loadu_ps(x + i), divisor));
    v = _mm512_min_ps(_mm512_max_ps(v, lo), hi);
    const __m512 whole = _mm512_roundscale_ps(v, _MM_FROUND_TO_ZERO | _MM_FROUND_NO_EXC);
    const __mmask16 up = _mm512_cmp_ps_mask(_mm512_sub_ps(v, whole), half, _CMP_GE_OQ);
    const __m512i t = _mm512_cvttps_epi32(whole);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(_mm512_mask_add_epi32(t, up, t, one)));
  }
  quantize_range(x, out, i, end, scale, zero_point, qmin, qmax);
}

// qc_host_add's loop, eight lanes at a time: each input's rescale is the output stage with bias 0, zero point 0
// and no clamp; the caller checks that nothing can saturate (exponents <= 0, left_shift <= 22).
__attribute__((target("avx2"))) void add_avx2(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t begin,
                                              int64_t end, int32_t a_zero, int32_t a_m0, int a_exponent,
                                              int32_t b_zero, int32_t b_m0, int b_exponent, int32_t out_m0,
                                              int out_exponent, int32_t out_zero, int32_t lo, int32_t hi,
                                              int left_shift) {
  const __m256i none = _mm256_setzero_si256();
  const Stage8 sa = make_stage8(none, _mm256_set1_epi32(a_m0), _mm256_set1_epi32(-a_exponent), 0, qc::kInt32Min,
                                qc::kInt32Max);
  const Stage8 sb = make_stage8(none, _mm256_set1_epi32(b_m0), _mm256_set1_epi32(-b_exponent), 0, qc::kInt32Min,
                                qc::kInt32Max);
  const Stage8 so = make_stage8(none, _mm256_set1_epi32(out_m0), _mm256_set1_epi32(-out_exponent), out_zero, lo,
                                hi);
  const __m256i za = _mm256_set1_epi32(a_zero), zb = _mm256_set1_epi32(b_zero);
  const __m128i shift = _mm_cvtsi32_si128(left_shift);
  int64_t i = begin;
  for (; i + 8 <= end; i += 8) {
    const __m256i va = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(a + i)));
    const __m256i vb = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(b + i)));
    const __m256i x = stage8(_mm256_sll_epi32(_mm256_sub_epi32(va, za), shift), sa);
    const __m256i y = stage8(_mm256_sll_epi32(_mm256_sub_epi32(vb, zb), shift), sb);
    store8(out + i, stage8(_mm256_add_epi32(x, y), so));
  }
  for (; i < end; ++i)
    out[i] = qc::quantized_add(a[i], b[i], a_zero, a_m0, a_exponent, b_zero, b_m0, b_exponent, out_m0,
                               out_exponent, out_zero, lo, hi, left_shift);
}

// An add's input rescale in 32-bit lanes (AVX-512). The output stage of d << L (d = code - zero, |d| <= 255,
// multiplier m >= 0, right shift s) is q = floor((d m 2^L + c) / 2^(31 + s)) with c = 2^30 + 2^(30 + s) - 2^31
// [d < 0] where s > 0 (2^30 where s = 0; stage16.h's one rounding, [y < 0] being [d < 0]). 2^L divides every
// term, so q = floor((d m + c / 2^L) / 2^T), T = 31 + s - L. With m = mh 2^16 + ml, H = d mh (|H| < 2^23)
// and W = d ml + c / 2^L (|W| < 2^30 where s < L), q = floor((H 2^16 + W) / 2^T): H 2^(16 - T) + (W >> T)
// where T <= 16, (H + (W >> 16)) >> (T - 16) beyond, both exact. Two 32-bit multiplies for sixteen lanes
// where the 64-bit stage takes four.
struct InputRescale16 {
  __m512i zero, high, low, c, c_negative;
  __m128i up, down, last;  // H << up, W >> down, then >> last
};

// Whether InputRescale16 holds for multiplier m0, exponent and left shift (see above).
inline bool input_rescale16_exact(int32_t m0, int exponent, int left_shift) {
  return m0 >= 0 && exponent <= 0 && -exponent < left_shift && left_shift <= 22;
}

__attribute__((target("avx512f"))) inline InputRescale16 input_rescale16(int32_t zero, int32_t m0, int exponent,
                                                                         int left_shift) {
  const int s = -exponent, t = 31 + s - left_shift;
  const int32_t c = (1 << (30 - left_shift)) + (s > 0 ? 1 << (30 + s - left_shift) : 0);
  const int32_t c_negative = c - (s > 0 ? 1 << (31 - left_shift) : 0);
  return InputRescale16{_mm512_set1_epi32(zero), _mm512_set1_epi32(m0 >> 16), _mm512_set1_epi32(m0 & 0xFFFF),
                        _mm512_set1_epi32(c), _mm512_set1_epi32(c_negative),
                        _mm_cvtsi32_si128(t <= 16 ? 16 - t : 0), _mm_cvtsi32_si128(t <= 16 ? t : 16),
                        _mm_cvtsi32_si128(t <= 16 ? 0 : t - 16)};
}

__attribute__((target("avx512f"))) inline __m512i rescale16(__m512i codes, const InputRescale16& r) {
  const __m512i d = _mm512_sub_epi32(codes, r.zero);
  const __m512i c = _mm512_mask_mov_epi32(r.c, _mm512_cmplt_epi32_mask(d, _mm512_setzero_si512()), r.c_negative);
  const __m512i high = _mm512_sll_epi32(_mm512_mullo_epi32(d, r.high), r.up);
  const __m512i low = _mm512_sra_epi32(_mm512_add_epi32(_mm512_mullo_epi32(d, r.low), c), r.down);
  return _mm512_sra_epi32(_mm512_add_epi32(high, low), r.last);
}

// add_avx512's vectors: kNegative false where the clamp's bottom is at or above the output zero point (a
// fused ReLU), whose negative sums' rounding the clamp removes (stage16.h's make_shared).
template <bool kNegative>
__attribute__((target("avx512f"))) int64_t add_vectors16(const uint8_t* a, const uint8_t* b, uint8_t* out,
                                                           int64_t begin, int64_t end, const InputRescale16& sa,
                                                           const InputRescale16& sb,
                                                           const qc_avx512::UniformStage16& so, int32_t out_zero,
                                                           int32_t lo, int32_t hi) {
  using namespace qc_avx512;
  const __m512i zo = _mm512_set1_epi32(out_zero);
  const __m512i bottom = _mm512_set1_epi32(lo), top = _mm512_set1_epi32(hi);
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m512i va = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    const __m512i vb = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    const __m512i x = rescale16(va, sa), y = rescale16(vb, sb);
    const __m512i q = _mm512_add_epi32(stage16_uniform<kNegative>(_mm512_add_epi32(x, y), so), zo);
    store16(out + i, _mm512_min_epi32(_mm512_max_epi32(q, bottom), top), 16);
  }
  return i;
}

// add_avx2 sixteen lanes at a time (AVX-512): the inputs rescaled by rescale16 (the caller checks
// input_rescale16_exact), the sum by stage16.h's output stage; the same integers.
__attribute__((target("avx512f"))) void add_avx512(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t begin,
                                                   int64_t end, int32_t a_zero, int32_t a_m0, int a_exponent,
                                                   int32_t b_zero, int32_t b_m0, int b_exponent, int32_t out_m0,
                                                   int out_exponent, int32_t out_zero, int32_t lo, int32_t hi,
                                                   int left_shift) {
  const InputRescale16 sa = input_rescale16(a_zero, a_m0, a_exponent, left_shift);
  const InputRescale16 sb = input_rescale16(b_zero, b_m0, b_exponent, left_shift);
  const qc_avx512::UniformStage16 so = qc_avx512::uniform_stage16(out_m0, out_exponent);
  int64_t i = lo >= out_zero ? add_vectors16<false>(a, b, out, begin, end, sa, sb, so, out_zero, lo, hi)
                             : add_vectors16<true>(a, b, out, begin, end, sa, sb, so, out_zero, lo, hi);
  for (; i < end; ++i)
    out[i] = qc::quantized_add(a[i], b[i], a_zero, a_m0, a_exponent, b_zero, b_m0, b_exponent, out_m0,
                               out_exponent, out_zero, lo, hi, left_shift);
}
#endif

// qc_host_add_lookup's scalar loop.
inline void lookup_range(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t begin, int64_t end,
                         const uint8_t* table) {
  for (int64_t i = begin; i < end; ++i) out[i] = table[a[i] << 8 | b[i]];
}

#ifdef QC_HOST_AVX2
// qc_host_add_lookup's loop, sixteen codes at a time (AVX-512): each pair's index a * 256 + b, a gather of the
// four bytes from there (the table's three bytes of padding keep the last in bounds), the first one kept.
__attribute__((target("avx512f"))) void add_lookup16(const uint8_t* a, const uint8_t* b, uint8_t* out,
                                                     int64_t begin, int64_t end, const uint8_t* table) {
  int64_t i = begin;
  for (; i + 16 <= end; i += 16) {
    const __m512i va = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(a + i)));
    const __m512i vb = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(b + i)));
    const __m512i codes = _mm512_i32gather_epi32(_mm512_or_si512(_mm512_slli_epi32(va, 8), vb), table, 1);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + i), _mm512_cvtepi32_epi8(codes));
  }
  lookup_range(a, b, out, i, end, table);
}
#endif

bool qc_host_has_avx2() {
#ifdef QC_HOST_AVX2
  return __builtin_cpu_supports("avx2");
#else
  return false;
#endif
}

}  // namespace

extern "C" {

// 1 if the eight-lane forms below may run for these channels: an AVX2 CPU, and acc_bound (>= 0, a bound on
// |acc|) rules out every saturation (|acc + bias| < 2^31, exponents <= 0, no m0 == INT32_MIN). Where they run,
// they compute the same function as the scalar form.
int qc_host_vector_form(int64_t acc_bound, const int32_t* bias, const int32_t* m0, const int32_t* exponent,
                        int64_t channels) {
  bool vector = acc_bound >= 0 && qc_host_has_avx2();
  for (int64_t c = 0; vector && c < channels; ++c) {
    const int64_t bias_magnitude = bias[c] < 0 ? -int64_t{bias[c]} : int64_t{bias[c]};
    vector = exponent[c] <= 0 && m0[c] != qc::kInt32Min && acc_bound + bias_magnitude < (int64_t{1} << 31);
  }
  return vector ? 1 : 0;
}

// out[o, c, i] = output_stage(acc[o, c, i]) with channel c's bias, multiplier and exponent; the scalar form,
// for any parameters.
void qc_host_output_stage(const int32_t* acc, const int32_t* bias, const int32_t* m0, const int32_t* exponent,
                          uint8_t* out, int64_t outer, int64_t channels, int64_t inner, int32_t zero_point, int32_t lo,
                          int32_t hi, int threads) {
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

// The same, eight lanes at a time along each row, from int32 or (acc_is_float) exact float32 accumulators.
// Only where qc_host_vector_form says so.
void qc_host_output_stage_rows8(const void* acc, int acc_is_float, const int32_t* bias, const int32_t* m0,
                                const int32_t* exponent, uint8_t* out, int64_t outer, int64_t channels, int64_t inner,
                                int32_t zero_point, int32_t lo, int32_t hi, int threads) {
#ifdef QC_HOST_AVX2
  if (acc_is_float)
    output_stage_avx2(static_cast<const float*>(acc), bias, m0, exponent, out, outer, channels, inner, zero_point,
                      lo, hi, threads);
  else
    output_stage_avx2(static_cast<const int32_t*>(acc), bias, m0, exponent, out, outer, channels, inner,
                      zero_point, lo, hi, threads);
#endif
}

// The output stage from accumulators in channels-last order, acc[n, p, c] for batch n and pixel p, written in
// NCHW order, out[n, c, p] (a linear layer's [batch, channels] is pixels = 1), one channel per lane. Only where
// qc_host_vector_form says so.
void qc_host_output_stage_channels_last(const void* acc, int acc_is_float, const int32_t* bias, const int32_t* m0,
                                        const int32_t* exponent, uint8_t* out, int64_t batch, int64_t pixels,
                                        int64_t channels, int32_t zero_point, int32_t lo, int32_t hi, int threads) {
#ifdef QC_HOST_AVX2
  if (acc_is_float)
    output_stage_channels_last_avx2(static_cast<const float*>(acc), bias, m0, exponent, out, batch, pixels,
                                    channels, zero_point, lo, hi, threads);
  else
    output_stage_channels_last_avx2(static_cast<const int32_t*>(acc), bias, m0, exponent, out, batch, pixels,
                                    channels, zero_point, lo, hi, threads);
#endif
}

// out[i] = qc::quantize(x[i], scale, zero_point, qmin, qmax): one grid for the whole tensor, 0 <= qmin <= qmax
// <= 255.
void qc_host_quantize(const float* x, uint8_t* out, int64_t count, float scale, int32_t zero_point, int32_t qmin,
                      int32_t qmax, int threads) {
#ifdef QC_HOST_AVX2
  if (__builtin_cpu_supports("avx512f")) {
    parallel_for(count, threads, [=](int64_t begin, int64_t end) {
      quantize_range_avx512(x, out, begin, end, scale, zero_point, qmin, qmax);
    });
    return;
  }
#endif
  parallel_for(count, threads, [=](int64_t begin, int64_t end) {
    quantize_range(x, out, begin, end, scale, zero_point, qmin, qmax);
  });
}

// out[i] = qc::dequantize(q[i], scale, zero_point): one grid for the whole tensor.
void qc_host_dequantize(const uint8_t* q, float* out, int64_t count, float scale, int32_t zero_point, int threads) {
  parallel_for(count, threads, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) out[i] = qc::dequantize(q[i], scale, zero_point);
  });
}

// TFLite's quantized add: both inputs onto a grid 2^left_shift finer, add, requantize. Returns 2 if the
// sixteen-lane form ran (wide, the CPU has AVX-512, and its 32-bit input rescale is exact: multipliers >= 0,
// right shifts below left_shift), 1 for the eight-lane form (AVX2), in both only where nothing can saturate;
// 0 for the scalar form.
int qc_host_add(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t count, int32_t a_zero, int32_t a_m0,
                 int a_exponent, int32_t b_zero, int32_t b_m0, int b_exponent, int32_t out_m0, int out_exponent,
                 int32_t out_zero, int32_t lo, int32_t hi, int left_shift, int threads, int wide) {
#ifdef QC_HOST_AVX2
  const bool vector = qc_host_has_avx2() && a_exponent <= 0 && b_exponent <= 0 && out_exponent <= 0 &&
                      left_shift >= 0 && left_shift <= 22 && a_m0 != qc::kInt32Min && b_m0 != qc::kInt32Min &&
                      out_m0 != qc::kInt32Min;
  if (vector && wide && __builtin_cpu_supports("avx512f") && input_rescale16_exact(a_m0, a_exponent, left_shift) &&
      input_rescale16_exact(b_m0, b_exponent, left_shift)) {
    parallel_for(count, threads, [=](int64_t begin, int64_t end) {
      add_avx512(a, b, out, begin, end, a_zero, a_m0, a_exponent, b_zero, b_m0, b_exponent, out_m0, out_exponent,
                 out_zero, lo, hi, left_shift);
    });
    return 2;
  }
  if (vector) {
    parallel_for(count, threads, [=](int64_t begin, int64_t end) {
      add_avx2(a, b, out, begin, end, a_zero, a_m0, a_exponent, b_zero, b_m0, b_exponent, out_m0, out_exponent,
               out_zero, lo, hi, left_shift);
    });
    return 1;
  }
#endif
  parallel_for(count, threads, [=](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i)
      out[i] = qc::quantized_add(a[i], b[i], a_zero, a_m0, a_exponent, b_zero, b_m0, b_exponent, out_m0,
                                 out_exponent, out_zero, lo, hi, left_shift);
  });
  return 0;
}

// An add whose 65,536 possible outputs are known: out[i] = table[a[i] * 256 + b[i]], the table (65,539 bytes:
// three of padding) written by qc_host_add for every pair of codes. About one gather for sixteen codes where
// qc_host_add's sixteen-lane form takes some forty vector operations. Returns 3 if the gather form ran
// (AVX-512), 0 for the scalar lookup.
int qc_host_add_lookup(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t count, const uint8_t* table,
                       int threads) {
#ifdef QC_HOST_AVX2
  if (__builtin_cpu_supports("avx512f")) {
    parallel_for(count, threads, [=](int64_t begin, int64_t end) { add_lookup16(a, b, out, begin, end, table); });
    return 3;
  }
#endif
  parallel_for(count, threads, [=](int64_t begin, int64_t end) { lookup_range(a, b, out, begin, end, table); });
  return 0;
}

}  // extern "C"
