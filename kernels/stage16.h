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

// Sixteen channels' parameters (lanes beyond a layer's channels hold zeros and are never stored).
struct Stage16 {
  __m512i bias, m0, m0_odd, mask, half_mask, right;
};

// What every lane shares: the rounding nudge of the doubling high multiply, one, the zero point, the clamp;
// `clamp_top`: whether the clamp's top must be applied (see make_shared).
struct StageShared {
  __m512i nudge, one, zero, lo, hi;
  bool clamp_top;
};

// A Stage16 from its lanes' bias, multiplier and right shift (-exponent, <= 31).
__attribute__((target("avx512f"))) inline Stage16 stage16_of(__m512i bias, __m512i m0, __m512i right) {
  const __m512i one = _mm512_set1_epi32(1);
  const __m512i mask = _mm512_sub_epi32(_mm512_sllv_epi32(one, right), one);
  return Stage16{bias, m0, _mm512_srli_epi64(m0, 32), mask, _mm512_srli_epi32(mask, 1), right};
}

// `count` channels' parameters (sixteen at most) from their arrays.
__attribute__((target("avx512f"))) inline Stage16 make_stage16(const int32_t* bias, const int32_t* m0,
                                                               const int32_t* exponent, int64_t count) {
  const __mmask16 lanes = count >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << count) - 1);
  return stage16_of(_mm512_maskz_loadu_epi32(lanes, bias), _mm512_maskz_loadu_epi32(lanes, m0),
                    _mm512_sub_epi32(_mm512_setzero_si512(), _mm512_maskz_loadu_epi32(lanes, exponent)));
}

// The same parameters in every lane (one grid: the rescales of an add), bias 0.
__attribute__((target("avx512f"))) inline Stage16 uniform_stage16(int32_t m0, int32_t exponent) {
  return stage16_of(_mm512_setzero_si512(), _mm512_set1_epi32(m0), _mm512_set1_epi32(-exponent));
}

// The clamp's top is applied unless it is 255 (store16 saturates there) or INT32_MAX (no top).
__attribute__((target("avx512f"))) inline StageShared make_shared(int32_t zero, int32_t lo, int32_t hi) {
  return StageShared{_mm512_set1_epi64(int64_t{1} << 30), _mm512_set1_epi32(1), _mm512_set1_epi32(zero),
                     _mm512_set1_epi32(lo), _mm512_set1_epi32(hi), hi != 255 && hi != INT32_MAX};
}

// stage8's steps on x = acc + bias: the 64-bit products of the even lanes and of the odd ones (shifted down),
// + 2^30, a logical shift by 31 whose low 32 bits equal the arithmetic shift's; then the rounding right shift
// and the clamp, whose top is left to store16 where it is 255 (lanes may hold more than 255 then).
__attribute__((target("avx512f"))) inline __m512i stage16_biased(__m512i x, const Stage16& s,
                                                                 const StageShared& k) {
  const __m512i even = _mm512_srli_epi64(_mm512_add_epi64(_mm512_mul_epi32(x, s.m0), k.nudge), 31);
  const __m512i odd = _mm512_srli_epi64(
      _mm512_add_epi64(_mm512_mul_epi32(_mm512_srli_epi64(x, 32), s.m0_odd), k.nudge), 31);
  const __m512i r = _mm512_mask_blend_epi32(0xAAAA, even, _mm512_slli_epi64(odd, 32));
  const __m512i threshold = _mm512_add_epi32(s.half_mask, _mm512_srli_epi32(r, 31));
  const __mmask16 up = _mm512_cmpgt_epi32_mask(_mm512_and_si512(r, s.mask), threshold);
  const __m512i shifted = _mm512_srav_epi32(r, s.right);
  const __m512i q = _mm512_mask_add_epi32(shifted, up, shifted, k.one);
  const __m512i low_clamped = _mm512_max_epi32(_mm512_add_epi32(q, k.zero), k.lo);
  return k.clamp_top ? _mm512_min_epi32(low_clamped, k.hi) : low_clamped;
}

__attribute__((target("avx512f"))) inline __m512i stage16(__m512i acc, const Stage16& s, const StageShared& k) {
  return stage16_biased(_mm512_add_epi32(acc, s.bias), s, k);
}

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
