// The output stage sixteen lanes at a time (AVX-512F), one channel per lane: the function of stage8.h's
// stage8, in the same steps, for host_vnni512.cpp's GEMM. The same preconditions: acc + bias cannot leave
// int32 and every exponent is <= 0 (the callers check them).
#pragma once

#include <stdint.h>

#include <climits>
#include <new>
#include <vector>

#include <immintrin.h>

// GCC 12 warns that the AVX-512 intrinsics' own undefined vectors are (or may be) used uninitialized (a false
// report, in every file that uses them)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"

namespace qc_avx512 {

// Sixteen channels' parameters (lanes beyond a layer's channels hold zeros and are never stored). The stage
// runs in 64-bit lanes, the even channels' and the odd ones' apart, each in one rounding (see stage16_biased):
// `add` is 2^30 + 2^31 * h with h = 2^(s-1) the rounding half of the right shift s (0 for s = 0), `negative`
// is 2^31 where s > 0 (else 0), `shift` is 31 + s.
struct Stage16 {
  __m512i bias, m0, m0_odd;  // 32-bit lanes; m0_odd: the odd lanes' multipliers in the even positions
  __m512i add_even, add_odd, negative_even, negative_odd, shift_even, shift_odd;  // 64-bit lanes
};

// What every lane shares: the zero point, the clamp; `clamp_top`: whether the clamp's top must be applied,
// `round_negative`: whether a negative product's rounding must be applied (see make_shared).
struct StageShared {
  __m512i zero, lo, hi;
  bool clamp_top, round_negative;
};

// 64-bit lanes' `add` and `negative` for right shifts r (see Stage16): 2^30 + 2^(30 + r) and 2^31 where r > 0.
__attribute__((target("avx512f"))) inline __m512i stage16_add(__m512i r) {
  const __m512i nudge = _mm512_set1_epi64(int64_t{1} << 30);
  return _mm512_mask_add_epi64(nudge, _mm512_test_epi64_mask(r, r), nudge, _mm512_sllv_epi64(nudge, r));
}
__attribute__((target("avx512f"))) inline __m512i stage16_negative(__m512i r) {
  return _mm512_maskz_mov_epi64(_mm512_test_epi64_mask(r, r), _mm512_set1_epi64(int64_t{1} << 31));
}

// A Stage16 from its lanes' bias, multiplier and right shift (-exponent, 0..31).
__attribute__((target("avx512f"))) inline Stage16 stage16_of(__m512i bias, __m512i m0, __m512i right) {
  const __m512i even = _mm512_and_si512(right, _mm512_set1_epi64(0xFFFFFFFF)), odd = _mm512_srli_epi64(right, 32);
  const __m512i base = _mm512_set1_epi64(31);
  return Stage16{bias, m0, _mm512_srli_epi64(m0, 32), stage16_add(even), stage16_add(odd),
                 stage16_negative(even), stage16_negative(odd), _mm512_add_epi64(base, even),
                 _mm512_add_epi64(base, odd)};
}

// `count` channels' parameters (sixteen at most) from their arrays.
__attribute__((target("avx512f"))) inline Stage16 make_stage16(const int32_t* bias, const int32_t* m0,
                                                               const int32_t* exponent, int64_t count) {
  const __mmask16 lanes = count >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << count) - 1);
  return stage16_of(_mm512_maskz_loadu_epi32(lanes, bias), _mm512_maskz_loadu_epi32(lanes, m0),
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_maskz_loadu_epi32(lanes, exponent)));
}

// One multiplier and right shift for every lane (one grid: an add's rescales): the even and the odd lanes'
// 64-bit parameters are the same, so they are held once.
struct UniformStage16 {
  __m512i m0, add, negative, shift;
};

__attribute__((target("avx512f"))) inline UniformStage16 uniform_stage16(int32_t m0, int32_t exponent) {
  const __m512i right = _mm512_set1_epi64(-exponent);
  return UniformStage16{_mm512_set1_epi32(m0), stage16_add(right), stage16_negative(right),
                        _mm512_add_epi64(_mm512_set1_epi64(31), right)};
}

// The clamp's top is applied unless it is 255 (store16 saturates there) or INT32_MAX (no top). The rounding
// of negative products (RDBPOT's ties away from zero, below) is left out where the clamp's bottom is at or
// above the zero point (a fused ReLU): a negative product gives q <= 0 with or without it (for s > 0 the sum
// y + 2^30 + 2^31 * h stays below 2^(31 + s)), so q + zero <= lo, and the clamp makes both lo.
__attribute__((target("avx512f"))) inline StageShared make_shared(int32_t zero, int32_t lo, int32_t hi) {
  return StageShared{_mm512_set1_epi32(zero), _mm512_set1_epi32(lo), _mm512_set1_epi32(hi),
                     hi != 255 && hi != INT32_MAX, lo < zero};
}

// stage8's function on x = acc + bias in one rounding per lane. With y = x * m0 (64 bits), SRDHM is
// r = floor((y + 2^30) / 2^31) and RDBPOT (s > 0) is floor((r + h - [r < 0]) / 2^s): nested floors of
// divisions by powers of two, so q = floor((y + 2^30 + 2^31 * (h - [r < 0])) / 2^(31 + s)), an arithmetic
// shift of a sum that stays inside int64 (|y| < 2^62). [r < 0] is taken as [y < 0]: they differ only where
// r = 0, and there h - 1 and h both leave 0 after the shift (h < 2^s). Then the zero point and the clamp,
// whose top is left to store16 where it is 255 (lanes may hold more than 255 then).
// kNegative false leaves the negative products' rounding out (see make_shared).
template <bool kNegative = true>
__attribute__((target("avx512f"))) inline __m512i stage16_half(__m512i x, __m512i m0, __m512i add, __m512i negative,
                                                               __m512i shift) {
  const __m512i y = _mm512_mul_epi32(x, m0);
  const __m512i t = _mm512_add_epi64(y, add);
  if constexpr (!kNegative) return _mm512_srav_epi64(t, shift);
  return _mm512_srav_epi64(
      _mm512_mask_sub_epi64(t, _mm512_cmplt_epi64_mask(y, _mm512_setzero_si512()), t, negative), shift);
}

// stage16_half on the even lanes and on the odd ones (shifted down), the odd results put back in their lanes.
template <bool kNegative = true>
__attribute__((target("avx512f"))) inline __m512i stage16_lanes(__m512i x, __m512i m0_even, __m512i m0_odd,
                                                                __m512i add_even, __m512i add_odd,
                                                                __m512i negative_even, __m512i negative_odd,
                                                                __m512i shift_even, __m512i shift_odd) {
  const __m512i even = stage16_half<kNegative>(x, m0_even, add_even, negative_even, shift_even);
  const __m512i odd = stage16_half<kNegative>(_mm512_srli_epi64(x, 32), m0_odd, add_odd, negative_odd, shift_odd);
  return _mm512_mask_shuffle_epi32(even, 0xAAAA, odd, _MM_PERM_CDAB);
}

// stage16_biased with the negative products' rounding chosen at compile time (kNegative: as stage16_half).
template <bool kNegative>
__attribute__((target("avx512f"))) inline __m512i stage16_clamped(__m512i x, const Stage16& s,
                                                                  const StageShared& k) {
  const __m512i q = stage16_lanes<kNegative>(x, s.m0, s.m0_odd, s.add_even, s.add_odd, s.negative_even,
                                             s.negative_odd, s.shift_even, s.shift_odd);
  const __m512i low_clamped = _mm512_max_epi32(_mm512_add_epi32(q, k.zero), k.lo);
  return k.clamp_top ? _mm512_min_epi32(low_clamped, k.hi) : low_clamped;
}

__attribute__((target("avx512f"))) inline __m512i stage16_biased(__m512i x, const Stage16& s,
                                                                 const StageShared& k) {
  return k.round_negative ? stage16_clamped<true>(x, s, k) : stage16_clamped<false>(x, s, k);
}

// stage16_biased's rounding on one grid, without the zero point and the clamp (kNegative: as stage16_half).
template <bool kNegative = true>
__attribute__((target("avx512f"))) inline __m512i stage16_uniform(__m512i x, const UniformStage16& s) {
  return stage16_lanes<kNegative>(x, s.m0, s.m0, s.add, s.add, s.negative, s.negative, s.shift, s.shift);
}

__attribute__((target("avx512f"))) inline __m512i stage16(__m512i acc, const Stage16& s, const StageShared& k) {
  return stage16_biased(_mm512_add_epi32(acc, s.bias), s, k);
}

// Callers copy a Stage16 and the StageShared into local variables before a loop of stores: a store through
// uint8_t* may alias anything else in memory, so parameters read through a pointer or reference are loaded
// again after every store (twelve 64-byte loads per sixteen codes, which halved the stage's throughput), while
// a local whose address does not escape stays in registers.

// One Stage16 per group of sixteen channels, in storage aligned by hand (64 bytes).
class Stage16Table {
 public:
  __attribute__((target("avx512f"))) Stage16Table(const int32_t* bias, const int32_t* m0, const int32_t* exponent,
                                                  int64_t channels) {
    const int64_t groups = (channels + 15) / 16;
    storage_.resize(sizeof(Stage16) * static_cast<size_t>(groups) + 64);
    stages_ = reinterpret_cast<Stage16*>((reinterpret_cast<uintptr_t>(storage_.data()) + 63) & ~uintptr_t{63});
    for (int64_t g = 0; g < groups; ++g)
      new (&stages_[g]) Stage16(make_stage16(bias + 16 * g, m0 + 16 * g, exponent + 16 * g, channels - 16 * g));
  }
  const Stage16* data() const { return stages_; }

 private:
  std::vector<unsigned char> storage_;
  Stage16* stages_ = nullptr;
};

// Sixteen codes at out (lanes holding 0..255, or more, which saturate to 255): the first `count` of them, a
// masked store (slow) only for fewer than sixteen.
__attribute__((target("avx512f"))) inline void store16(uint8_t* out, __m512i q, int64_t count) {
  if (count >= 16)
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out), _mm512_cvtusepi32_epi8(q));
  else
    _mm512_mask_cvtusepi32_storeu_epi8(out, static_cast<__mmask16>((1u << count) - 1), q);
}

}  // namespace qc_avx512
