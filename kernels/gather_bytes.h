// The byte form's rows (host_conv.cpp's AVX2 and VNNI forms, host_vnni512.cpp's AVX-512 form): a pixel's
// receptive field gathered as uint8 codes, taps in (ky, kx) order, channels innermost.
#pragma once

#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include <immintrin.h>

#include "conv_shape.h"

namespace qc_avx2 {

// A code above 127 at depth index k of a tile's row: the GEMM left its excess q - 127 out.
struct Exception {
  int32_t row, k, excess;
};

// count bytes from src to dst, inline: a receptive field's runs are short (21 bytes per row of an RGB stem's 7x7
// window). Runs of 4 bytes and more are copied by two loads and stores of a power of two that overlap in the
// middle.
__attribute__((target("avx2"))) inline void copy_bytes(uint8_t* dst, const uint8_t* src, int64_t count) {
  auto copy = [&](auto word, int64_t at) {
    memcpy(&word, src + at, sizeof word);
    memcpy(dst + at, &word, sizeof word);
  };
  if (count >= 32) {
    int64_t i = 0;
    for (; i + 32 <= count; i += 32)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + i),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + i)));
    if (i < count)
      _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + count - 32),
                          _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + count - 32)));
  } else if (count >= 16) {
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst), _mm_loadu_si128(reinterpret_cast<const __m128i*>(src)));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(dst + count - 16),
                     _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + count - 16)));
  } else if (count >= 8) {
    copy(uint64_t{}, 0), copy(uint64_t{}, count - 8);
  } else if (count >= 4) {
    copy(uint32_t{}, 0), copy(uint32_t{}, count - 4);
  } else {
    for (int64_t i = 0; i < count; ++i) dst[i] = src[i];
  }
}

// Row r of a byte tile: min(q, 127) of pixel m's receptive field, padded with 0 to a multiple of 4; codes
// above 127 are appended to `exceptions` (with `wide`, for VNNI, the codes themselves and no exceptions).
// Taps outside the input are 0 here and set in the returned mask: they must contribute (z - z) w = 0, so their
// share of the bias correction (- z w) is added back afterwards.
__attribute__((target("avx2"))) inline uint64_t gather_bytes(const uint8_t* x, const ConvShape& s, int64_t m,
                                                             int32_t r, uint8_t* row,
                                                             std::vector<Exception>& exceptions, bool wide) {
  const auto [n, oh, ow] = s.pixel(m);
  const __m256i top = _mm256_set1_epi8(127);
  uint8_t* dst = row;
  uint64_t outside = 0;
  int64_t k0 = 0, tap = 0;
  const int64_t ix0 = ow * s.stride_w - s.pad_w;
  const bool row_inside = s.dilation_w == 1 && ix0 >= 0 && ix0 + s.kernel_w <= s.width;
  for (int64_t ky = 0; ky < s.kernel_h; ++ky) {
    const int64_t iy = oh * s.stride_h - s.pad_h + ky * s.dilation_h;
    if (wide && row_inside && iy >= 0 && iy < s.height) {  // the row's taps lie side by side: one copy
      const int64_t bytes = s.kernel_w * s.channels;
      copy_bytes(dst, x + ((n * s.height + iy) * s.width + ix0) * s.channels, bytes);
      dst += bytes, k0 += bytes, tap += s.kernel_w;
      continue;
    }
    for (int64_t kx = 0; kx < s.kernel_w; ++kx, dst += s.channels, k0 += s.channels, ++tap) {
      const int64_t ix = ow * s.stride_w - s.pad_w + kx * s.dilation_w;
      if (iy < 0 || iy >= s.height || ix < 0 || ix >= s.width) {
        std::fill(dst, dst + s.channels, uint8_t{0});
        outside |= uint64_t{1} << tap;
        continue;
      }
      const uint8_t* src = x + ((n * s.height + iy) * s.width + ix) * s.channels;
      if (wide) {  // VNNI sums u8 x s8 products in int32: every code goes in whole
        copy_bytes(dst, src, s.channels);
        continue;
      }
      int64_t c = 0;
      for (; c + 32 <= s.channels; c += 32) {
        const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(src + c));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), _mm256_min_epu8(v, top));
        for (uint32_t high = static_cast<uint32_t>(_mm256_movemask_epi8(v)); high != 0; high &= high - 1) {
          const int64_t i = c + __builtin_ctz(high);
          exceptions.push_back({r, static_cast<int32_t>(k0 + i), src[i] - 127});
        }
      }
      for (; c < s.channels; ++c) {
        dst[c] = static_cast<uint8_t>(std::min<int32_t>(src[c], 127));
        if (src[c] > 127) exceptions.push_back({r, static_cast<int32_t>(k0 + c), src[c] - 127});
      }
    }
  }
  std::fill(dst, row + 4 * ((s.depth() + 3) / 4), uint8_t{0});
  return outside;
}

// gather_bytes (wide) for the layout of kernel rows padded to whole groups of four (host_vnni512.cpp's, where
// a kernel row's codes are not: an RGB stem's): kernel row ky's taps at row + 4 * ky * run_quads, zeros after
// them; taps outside the input are 0 and set in the returned mask, as gather_bytes does. Dilation_w is 1.
__attribute__((target("avx2"))) inline uint64_t gather_padded(const uint8_t* x, const ConvShape& s,
                                                              int64_t run_quads, int64_t m, uint8_t* row) {
  const auto [n, oh, ow] = s.pixel(m);
  const int64_t ix0 = ow * s.stride_w - s.pad_w, bytes = s.kernel_w * s.channels, pitch = 4 * run_quads;
  const bool columns_inside = ix0 >= 0 && ix0 + s.kernel_w <= s.width;
  uint64_t outside = 0;
  for (int64_t ky = 0; ky < s.kernel_h; ++ky) {
    uint8_t* dst = row + ky * pitch;
    const int64_t iy = oh * s.stride_h - s.pad_h + ky * s.dilation_h;
    const uint8_t* line = x + (n * s.height + iy) * s.width * s.channels;
    if (iy < 0 || iy >= s.height) {
      memset(dst, 0, static_cast<size_t>(pitch));
      outside |= ((uint64_t{1} << s.kernel_w) - 1) << (ky * s.kernel_w);
      continue;
    }
    if (columns_inside) {
      copy_bytes(dst, line + ix0 * s.channels, bytes);
    } else {
      for (int64_t kx = 0; kx < s.kernel_w; ++kx) {
        const int64_t ix = ix0 + kx;
        if (ix < 0 || ix >= s.width) {
          memset(dst + kx * s.channels, 0, static_cast<size_t>(s.channels));
          outside |= uint64_t{1} << (ky * s.kernel_w + kx);
        } else {
          memcpy(dst + kx * s.channels, line + ix * s.channels, static_cast<size_t>(s.channels));
        }
      }
    }
    memset(dst + bytes, 0, static_cast<size_t>(pitch - bytes));
  }
  return outside;
}

}  // namespace qc_avx2
