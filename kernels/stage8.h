// The output stage eight lanes at a time (AVX2), shared by the twin's element-wise stages
// (host_kernels.cpp) and its convolutions (host_conv.cpp). Every function here computes the same
// function as qc::output_stage in gemmlowp.h wherever its preconditions hold; the callers check them.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <memory>
#include <new>
#include <vector>

#include <immintrin.h>

namespace qc_avx2 {

// The AVX2 form of output_row, eight lanes at a time, for rows whose acc + bias cannot leave int32 (the caller
// knows a bound) and whose exponent is <= 0. SRDHM: _mm256_mul_epi32 gives the 64-bit products of the even
// lanes (the odd ones shifted down), + 2^30, and a logical shift by 31 whose low 32 bits equal the arithmetic
// shift's (the result fits int32). RDBPOT in the form of spec 7.6: (r >> e) + [(r & mask) > (mask >> 1) + [r < 0]].
__attribute__((target("avx2"))) inline __m256i load8(const int32_t* p) {
  return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
}
__attribute__((target("avx2"))) inline __m256i load8(const float* p) {
  return _mm256_cvttps_epi32(_mm256_loadu_ps(p));  // the accumulators are exact integers below 2^31
}

// Eight lanes' parameters: the same for all (a row of one channel) or one channel per lane (channels last).
struct Stage8 {
  __m256i bias, m0, m0_odd, nudge, mask, half_mask, zero, lo, hi, right;
};

__attribute__((target("avx2"))) inline Stage8 make_stage8(__m256i bias, __m256i m0, __m256i right, int32_t zero,
                                                          int32_t lo, int32_t hi) {
  const __m256i one = _mm256_set1_epi32(1);
  const __m256i mask = _mm256_sub_epi32(_mm256_sllv_epi32(one, right), one);  // right <= 31
  return Stage8{bias, m0, _mm256_srli_epi64(m0, 32), _mm256_set1_epi64x(int64_t{1} << 30), mask,
                _mm256_srli_epi32(mask, 1), _mm256_set1_epi32(zero), _mm256_set1_epi32(lo), _mm256_set1_epi32(hi),
                right};
}

__attribute__((target("avx2"))) inline __m256i stage8(__m256i acc, const Stage8& s) {
  const __m256i x = _mm256_add_epi32(acc, s.bias);
  const __m256i even = _mm256_srli_epi64(_mm256_add_epi64(_mm256_mul_epi32(x, s.m0), s.nudge), 31);
  const __m256i odd = _mm256_srli_epi64(
      _mm256_add_epi64(_mm256_mul_epi32(_mm256_srli_epi64(x, 32), s.m0_odd), s.nudge), 31);
  const __m256i r = _mm256_blend_epi32(even, _mm256_slli_epi64(odd, 32), 0xAA);
  const __m256i threshold = _mm256_add_epi32(s.half_mask, _mm256_srli_epi32(r, 31));
  const __m256i q = _mm256_sub_epi32(_mm256_srav_epi32(r, s.right),
                                     _mm256_cmpgt_epi32(_mm256_and_si256(r, s.mask), threshold));
  return _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(q, s.zero), s.lo), s.hi);
}

__attribute__((target("avx2"))) inline void store8(uint8_t* out, __m256i v) {  // lanes hold 0..255
  const __m256i words = _mm256_packus_epi32(v, v);                              // halves: v0-3 v0-3 | v4-7 v4-7
  const __m256i bytes = _mm256_packus_epi16(words, words);
  const __m128i low = _mm256_castsi256_si128(bytes), high = _mm256_extracti128_si256(bytes, 1);
  _mm_storel_epi64(reinterpret_cast<__m128i*>(out), _mm_unpacklo_epi32(low, high));
}

// One Stage8 per group of eight channels (the last group padded with the last channel's parameters), in
// storage aligned by hand: std::vector's allocator does not promise 32 bytes.
class StageTable {
 public:
  __attribute__((target("avx2"))) StageTable(const int32_t* bias, const int32_t* m0, const int32_t* exponent,
                                             int64_t channels, int32_t zero_point, int32_t lo, int32_t hi) {
    const size_t groups = static_cast<size_t>((channels + 7) / 8);
    storage_.resize(sizeof(Stage8) * groups + alignof(Stage8));
    void* raw = storage_.data();
    size_t space = storage_.size();
    stages_ = static_cast<Stage8*>(std::align(alignof(Stage8), sizeof(Stage8) * groups, raw, space));
    for (size_t g = 0; g < groups; ++g) {
      alignas(32) int32_t b[8], m[8], r[8];
      for (int k = 0; k < 8; ++k) {
        const int64_t c = std::min<int64_t>(static_cast<int64_t>(g) * 8 + k, channels - 1);
        b[k] = bias[c], m[k] = m0[c], r[k] = -exponent[c];
      }
      new (&stages_[g]) Stage8(make_stage8(_mm256_load_si256(reinterpret_cast<const __m256i*>(b)),
                                           _mm256_load_si256(reinterpret_cast<const __m256i*>(m)),
                                           _mm256_load_si256(reinterpret_cast<const __m256i*>(r)), zero_point, lo,
                                           hi));
    }
  }
  const Stage8* data() const { return stages_; }

 private:
  std::vector<unsigned char> storage_;
  Stage8* stages_ = nullptr;
};

}  // namespace qc_avx2
