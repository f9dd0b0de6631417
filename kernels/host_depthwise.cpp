// The CPU twin's depthwise convolutions (AVX2): one filter per channel, uint8 activations in channels-last
// order, int8 weights, the output stage of gemmlowp.h fused, uint8 out in channels-last order. Built with
// host_conv.cpp into one library (kernels/host_conv.py).
//
// They accumulate in float32 with FMA, which is exact: products are integers below 2^15 and a window of up to
// 514 taps keeps every partial sum below 2^24. One output row at a time; the input rows its window reads are
// widened to float32 once per chunk of output rows (see qc_conv_depthwise).
#include <stdint.h>

#include <algorithm>
#include <vector>

#include "conv_shape.h"
#include "parallel.h"
#include "stage16.h"
#include "stage8.h"

namespace {

using qc_avx2::ConvShape;
using qc_avx2::Stage8;
using qc_avx2::StageTable;
using qc_avx2::stage8;
using qc_avx512::Stage16;
using qc_avx512::StageShared;
using qc_avx512::stage16;
using qc_avx512::store16;

// Depthwise, one output row at a time. Its window's input rows are widened to float32 q - zero, padded with 0
// (the convolution's padding) and to a multiple of 8 channels: a few rows that stay in the L2 cache, and a
// window loop without bounds checks. Each input row is widened once per chunk of output rows and kept while
// the windows after it still read it.
__attribute__((target("avx2"))) void widen_row(const uint8_t* x, const ConvShape& s, int32_t zero,
                                               int64_t channels8, int64_t n, int64_t iy, float* dst) {
  const int64_t wp = s.width + 2 * s.pad_w;
  if (iy < 0 || iy >= s.height) {
    std::fill(dst, dst + wp * channels8, 0.0f);
    return;
  }
  std::fill(dst, dst + s.pad_w * channels8, 0.0f);
  std::fill(dst + (s.pad_w + s.width) * channels8, dst + wp * channels8, 0.0f);
  const __m256i z = _mm256_set1_epi32(zero);
  for (int64_t ix = 0; ix < s.width; ++ix) {
    const uint8_t* src = x + ((n * s.height + iy) * s.width + ix) * s.channels;
    float* d = dst + (ix + s.pad_w) * channels8;
    int64_t c = 0;
    for (; c + 8 <= s.channels; c += 8) {
      const __m256i v = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(src + c)));
      _mm256_storeu_ps(d + c, _mm256_cvtepi32_ps(_mm256_sub_epi32(v, z)));
    }
    for (; c < channels8; ++c) d[c] = c < s.channels ? static_cast<float>(src[c] - zero) : 0.0f;
  }
}

// One output row in two passes: FMA over the window (exact, see the top of this file), eight channels and six
// pixels at a time with the weights in registers, into int32 sums; then the output stage along the row.
// kTaps > 0 unrolls the window (3x3); 0 loops over it.
template <int kTaps>
__attribute__((target("avx2,fma"))) void depthwise_row(const float* window, const int64_t* row_offsets,
                                                       const float* weight, int64_t weight_stride,
                                                       const ConvShape& s, int64_t channels8,
                                                       const Stage8* stages, int32_t* sums, uint8_t* out) {
  int64_t offsets[kTaps > 0 ? kTaps : 1];
  for (int64_t ky = 0, t = 0; kTaps > 0 && ky < s.kernel_h; ++ky)
    for (int64_t kx = 0; kx < s.kernel_w; ++kx, ++t) offsets[t] = row_offsets[ky] + kx * s.dilation_w * channels8;
  for (int64_t c = 0; c < channels8; c += 8) {
    if constexpr (kTaps > 0) {
      __m256 w[kTaps];
      for (int t = 0; t < kTaps; ++t) w[t] = _mm256_loadu_ps(weight + t * weight_stride + c);
      // kPixels pixels at a time: independent FMA chains, so their latency overlaps
      constexpr int kPixels = 6;
      const int64_t step = s.stride_w * channels8;
      int64_t ox = 0;
      for (; ox + kPixels <= s.out_w; ox += kPixels) {
        const float* corner = window + ox * step + c;
        __m256 acc[kPixels];
        for (int i = 0; i < kPixels; ++i) acc[i] = _mm256_setzero_ps();
        for (int t = 0; t < kTaps; ++t)
          for (int i = 0; i < kPixels; ++i)
            acc[i] = _mm256_fmadd_ps(_mm256_loadu_ps(corner + i * step + offsets[t]), w[t], acc[i]);
        for (int i = 0; i < kPixels; ++i)
          _mm256_store_si256(reinterpret_cast<__m256i*>(sums + (ox + i) * channels8 + c), _mm256_cvttps_epi32(acc[i]));
      }
      for (; ox < s.out_w; ++ox) {
        const float* corner = window + ox * step + c;
        __m256 acc = _mm256_setzero_ps();
        for (int t = 0; t < kTaps; ++t) acc = _mm256_fmadd_ps(_mm256_loadu_ps(corner + offsets[t]), w[t], acc);
        _mm256_store_si256(reinterpret_cast<__m256i*>(sums + ox * channels8 + c), _mm256_cvttps_epi32(acc));
      }
    } else {
      for (int64_t ox = 0; ox < s.out_w; ++ox) {
        const float* corner = window + ox * s.stride_w * channels8 + c;
        __m256 acc = _mm256_setzero_ps();
        for (int64_t ky = 0, t = 0; ky < s.kernel_h; ++ky)
          for (int64_t kx = 0; kx < s.kernel_w; ++kx, ++t)
            acc = _mm256_fmadd_ps(_mm256_loadu_ps(corner + row_offsets[ky] + kx * s.dilation_w * channels8),
                                  _mm256_loadu_ps(weight + t * weight_stride + c), acc);
        _mm256_store_si256(reinterpret_cast<__m256i*>(sums + ox * channels8 + c), _mm256_cvttps_epi32(acc));
      }
    }
  }
  // the output stage eight channels at a time along the row: their parameters stay in registers
  for (int64_t c = 0; c < channels8; c += 8) {
    const Stage8 stage = stages[c / 8];
    for (int64_t ox = 0; ox < s.out_w; ++ox) {
      const __m256i q = stage8(_mm256_load_si256(reinterpret_cast<const __m256i*>(sums + ox * channels8 + c)),
                               stage);
      qc_avx2::store_codes(out + ox * s.out_channels + c, q, s.out_channels - c);
    }
  }
}

// The AVX-512 forms: sixteen channels per vector, and the output stage (stage16.h) on the sums in the
// registers, stored sixteen codes at a time: one pass over the output row.
__attribute__((target("avx512f"))) void widen_row16(const uint8_t* x, const ConvShape& s, int32_t zero,
                                                    int64_t channels16, int64_t n, int64_t iy, float* dst) {
  const int64_t wp = s.width + 2 * s.pad_w;
  if (iy < 0 || iy >= s.height) {
    std::fill(dst, dst + wp * channels16, 0.0f);
    return;
  }
  std::fill(dst, dst + s.pad_w * channels16, 0.0f);
  std::fill(dst + (s.pad_w + s.width) * channels16, dst + wp * channels16, 0.0f);
  const __m512i z = _mm512_set1_epi32(zero);
  for (int64_t ix = 0; ix < s.width; ++ix) {
    const uint8_t* src = x + ((n * s.height + iy) * s.width + ix) * s.channels;
    float* d = dst + (ix + s.pad_w) * channels16;
    int64_t c = 0;
    for (; c + 16 <= s.channels; c += 16) {
      const __m512i v = _mm512_cvtepu8_epi32(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c)));
      _mm512_storeu_ps(d + c, _mm512_cvtepi32_ps(_mm512_sub_epi32(v, z)));
    }
    for (; c < channels16; ++c) d[c] = c < s.channels ? static_cast<float>(src[c] - zero) : 0.0f;
  }
}

template <int kTaps>
__attribute__((target("avx512f"))) void depthwise_row16(const float* window, const int64_t* row_offsets,
                                                        const float* weight, const ConvShape& s, int64_t channels16,
                                                        const Stage16* stages, const StageShared& shared,
                                                        uint8_t* out) {
  int64_t offsets[kTaps > 0 ? kTaps : 1];
  for (int64_t ky = 0, t = 0; kTaps > 0 && ky < s.kernel_h; ++ky)
    for (int64_t kx = 0; kx < s.kernel_w; ++kx, ++t) offsets[t] = row_offsets[ky] + kx * s.dilation_w * channels16;
  const int64_t step = s.stride_w * channels16;
  for (int64_t c = 0; c < channels16; c += 16) {
    const Stage16 stage = stages[c / 16];  // copies, kept in registers (see stage16.h)
    const StageShared k = shared;
    const int64_t count = s.out_channels - c;
    if constexpr (kTaps > 0) {
      __m512 w[kTaps];
      for (int t = 0; t < kTaps; ++t) w[t] = _mm512_loadu_ps(weight + t * channels16 + c);
      constexpr int kPixels = 6;  // independent FMA chains, so their latency overlaps
      int64_t ox = 0;
      for (; ox + kPixels <= s.out_w; ox += kPixels) {
        const float* corner = window + ox * step + c;
        __m512 acc[kPixels];
        for (int i = 0; i < kPixels; ++i) acc[i] = _mm512_setzero_ps();
        for (int t = 0; t < kTaps; ++t)
          for (int i = 0; i < kPixels; ++i)
            acc[i] = _mm512_fmadd_ps(_mm512_loadu_ps(corner + i * step + offsets[t]), w[t], acc[i]);
        for (int i = 0; i < kPixels; ++i)
          store16(out + (ox + i) * s.out_channels + c, stage16(_mm512_cvttps_epi32(acc[i]), stage, k), count);
      }
      for (; ox < s.out_w; ++ox) {
        const float* corner = window + ox * step + c;
        __m512 acc = _mm512_setzero_ps();
        for (int t = 0; t < kTaps; ++t) acc = _mm512_fmadd_ps(_mm512_loadu_ps(corner + offsets[t]), w[t], acc);
        store16(out + ox * s.out_channels + c, stage16(_mm512_cvttps_epi32(acc), stage, k), count);
      }
    } else {
      for (int64_t ox = 0; ox < s.out_w; ++ox) {
        const float* corner = window + ox * step + c;
        __m512 acc = _mm512_setzero_ps();
        for (int64_t ky = 0, t = 0; ky < s.kernel_h; ++ky)
          for (int64_t kx = 0; kx < s.kernel_w; ++kx, ++t)
            acc = _mm512_fmadd_ps(_mm512_loadu_ps(corner + row_offsets[ky] + kx * s.dilation_w * channels16),
                                  _mm512_loadu_ps(weight + t * channels16 + c), acc);
        store16(out + ox * s.out_channels + c, stage16(_mm512_cvttps_epi32(acc), stage, k), count);
      }
    }
  }
}

// The window's input rows, widened once each per chunk of output rows: a ring of slots, enough for one
// window (its rows are consecutive modulo the ring) and the rows the next output row adds. widen(iy, dst)
// widens row iy of image n; row(ring, row_offsets, r) computes output row r (image r / out_h).
template <class Widen, class Row>
void ring_rows(const ConvShape& s, int64_t channels_padded, int threads, Widen widen, Row row) {
  const int64_t slots = (s.kernel_h - 1) * s.dilation_h + 1 + s.stride_h, wp = s.width + 2 * s.pad_w;
  const int64_t padded_h = s.height + 2 * s.pad_h;  // the rows iy + pad_h in [0, padded_h) a window can read
  qc_host::parallel_for(s.batch * s.out_h, threads, [&](int64_t begin, int64_t end) {
    const size_t row_floats = static_cast<size_t>(wp * channels_padded);
    std::vector<float> storage(row_floats * slots + 16);
    float* ring = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t{63});
    std::vector<int64_t> held(static_cast<size_t>(slots), -1), row_offsets(static_cast<size_t>(s.kernel_h));
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / s.out_h, oy = r % s.out_h;
      for (int64_t ky = 0; ky < s.kernel_h; ++ky) {
        const int64_t iy = oy * s.stride_h - s.pad_h + ky * s.dilation_h;
        const int64_t slot = ((iy % slots) + slots) % slots, key = n * padded_h + iy + s.pad_h;
        if (held[slot] != key) {
          widen(n, iy, ring + slot * row_floats);
          held[slot] = key;
        }
        row_offsets[ky] = slot * static_cast<int64_t>(row_floats);
      }
      row(ring, row_offsets.data(), r);
    }
  });
}
}  // namespace

extern "C" {

// 1 if this CPU runs the AVX-512 form of qc_conv_depthwise.
int qc_conv_depthwise_wide() { return __builtin_cpu_supports("avx512f") ? 1 : 0; }

// out[n, oh, ow, c] = output_stage(sum over the window of (x[n, ., ., c] - x_zero) * weight[t, c] + bias[c]),
// a depthwise convolution (one filter per channel) of x[n, h, w, c] (uint8, channels last); weight is
// float32 [taps, channels rounded up to 16] (0 beyond the channels), taps in (ky, kx) order. The caller has
// checked qc_host_vector_form's conditions and that taps * 255 * 128 < 2^24. wide: 1 for the AVX-512 form
// where the CPU has it (qc_conv_depthwise_wide), 0 for AVX2.
void qc_conv_depthwise(const uint8_t* x, int32_t x_zero, const float* weight, const int64_t* shape,
                       const int32_t* bias, const int32_t* m0, const int32_t* exponent, int32_t out_zero, int32_t lo,
                       int32_t hi, uint8_t* out, int threads, int wide) {
  const ConvShape s = ConvShape::read(shape);
  const int64_t channels8 = (s.channels + 7) / 8 * 8, channels16 = (s.channels + 15) / 16 * 16;
  const bool three_by_three = s.kernel_h == 3 && s.kernel_w == 3;
  auto out_row = [&](int64_t r) { return out + r * s.out_w * s.out_channels; };
  if (wide && qc_conv_depthwise_wide()) {
    const qc_avx512::Stage16Table table(bias, m0, exponent, s.out_channels);
    const StageShared shared = qc_avx512::make_shared(out_zero, lo, hi);
    ring_rows(
        s, channels16, threads,
        [&](int64_t n, int64_t iy, float* dst) { widen_row16(x, s, x_zero, channels16, n, iy, dst); },
        [&](const float* ring, const int64_t* row_offsets, int64_t r) {
          if (three_by_three)
            depthwise_row16<9>(ring, row_offsets, weight, s, channels16, table.data(), shared, out_row(r));
          else
            depthwise_row16<0>(ring, row_offsets, weight, s, channels16, table.data(), shared, out_row(r));
        });
    return;
  }
  const StageTable table(bias, m0, exponent, s.out_channels, out_zero, lo, hi);
  const Stage8* stages = table.data();
  ring_rows(
      s, channels8, threads, [&](int64_t n, int64_t iy, float* dst) { widen_row(x, s, x_zero, channels8, n, iy, dst); },
      [&](const float* ring, const int64_t* row_offsets, int64_t r) {
        thread_local std::vector<int32_t> sum_storage;
        sum_storage.resize(static_cast<size_t>(channels8 * s.out_w + 8));
        int32_t* sums =
            reinterpret_cast<int32_t*>((reinterpret_cast<uintptr_t>(sum_storage.data()) + 31) & ~uintptr_t{31});
        if (three_by_three)
          depthwise_row<9>(ring, row_offsets, weight, channels16, s, channels8, stages, sums, out_row(r));
        else
          depthwise_row<0>(ring, row_offsets, weight, channels16, s, channels8, stages, sums, out_row(r));
      });
}

}  // extern "C"
