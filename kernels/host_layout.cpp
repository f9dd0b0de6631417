// The CPU twin's pooling and layout copies of uint8 codes (channels last): max pooling, the mean over the
// pixels (global average pooling on one grid) and the NCHW -> channels-last copy. Built with host_kernels.cpp
// into one library (kernels/host.py); no arithmetic of gemmlowp.h is involved (max and copies commute with
// the grid, and the mean rounds half up in integers).
#include <stdint.h>

#include <algorithm>
#include <vector>

#include "parallel.h"

#if defined(__x86_64__)
#include <immintrin.h>
#define QC_HOST_AVX2 1
// GCC 12 warns that the AVX-512 intrinsics' own undefined vectors may be used uninitialized (as in stage16.h)
#pragma GCC diagnostic ignored "-Wuninitialized"
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif

namespace {

using qc_host::parallel_for;

// o[i] = max(o[i], v[i]), in a loop the compiler vectorizes (vpmaxub).
__attribute__((target_clones("avx2", "default")))
void max_into(uint8_t* __restrict o, const uint8_t* __restrict v, int64_t count) {
  for (int64_t i = 0; i < count; ++i) o[i] = o[i] > v[i] ? o[i] : v[i];
}

#ifdef QC_HOST_AVX2
// One output pixel of max pooling: the channel-wise maximum of `count` >= 1 taps' codes, 32 channels per vector
// (the tap loop inside, so each vector stays in a register until stored).
__attribute__((target("avx2"))) void max_of_taps(const uint8_t* const* taps, int64_t count, uint8_t* out,
                                                 int64_t channels) {
  int64_t i = 0;
  for (; i + 32 <= channels; i += 32) {
    __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(taps[0] + i));
    for (int64_t t = 1; t < count; ++t)
      v = _mm256_max_epu8(v, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(taps[t] + i)));
    _mm256_storeu_si256(reinterpret_cast<__m256i*>(out + i), v);
  }
  for (; i < channels; ++i) {
    uint8_t m = taps[0][i];
    for (int64_t t = 1; t < count; ++t) m = std::max(m, taps[t][i]);
    out[i] = m;
  }
}

// Sixteen pixels of 2 to 4 channel planes (a stem's RGB input), interleaved into channels-last order by one
// vpermb: plane k's sixteen codes in lane k, then byte 16k + p to position p * c + k.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void interleave_planes(const uint8_t* src, int64_t pixels,
                                                                               int64_t c, uint8_t* dst,
                                                                               int64_t p0, int64_t p1) {
  alignas(64) uint8_t order[64] = {};
  for (int64_t p = 0; p < 16; ++p)
    for (int64_t k = 0; k < c; ++k) order[p * c + k] = static_cast<uint8_t>(16 * k + p);
  const __m512i index = _mm512_load_si512(order);
  const __mmask64 bytes = c * 16 == 64 ? ~__mmask64{0} : (__mmask64{1} << (c * 16)) - 1;
  int64_t p = p0;
  for (; p + 16 <= p1; p += 16) {
    __m512i planes = _mm512_setzero_si512();
    for (int64_t k = 0; k < c; ++k) {
      const __m128i codes = _mm_loadu_si128(reinterpret_cast<const __m128i*>(src + k * pixels + p));
      planes = _mm512_mask_broadcast_i32x4(planes, static_cast<__mmask16>(0xF << (4 * k)), codes);
    }
    _mm512_mask_storeu_epi8(dst + p * c, bytes, _mm512_permutexvar_epi8(index, planes));
  }
  for (; p < p1; ++p)
    for (int64_t k = 0; k < c; ++k) dst[p * c + k] = src[k * pixels + p];
}
#endif

}  // namespace

extern "C" {

// Max pooling of uint8 codes in channels-last order: x[n, h, w, c] to out[n, oh, ow, c], with AVX2 32 channels
// per vector (max_of_taps; ResNet-18's stem pooling 2x faster than the scalar loop). Window positions
// outside the input (padding, or ceil_mode's last window) are skipped, as torch skips them; every window has
// at least one position inside (torch's padding <= kernel / 2). shape: n, h, w, c, oh, ow, then kernel,
// stride, padding and dilation, each (rows, columns). Separable, an output row at a time: the maximum over the
// window's rows inside the input, for every input column (whole rows: one vectorized loop each), then over
// the window's columns inside it. A position is inside when its row and its column are, so the two maxima
// take the same positions as the window's.
void qc_host_max_pool(const uint8_t* x, uint8_t* out, const int64_t* shape, int threads) {
  const int64_t n = shape[0], h = shape[1], w = shape[2], c = shape[3], oh = shape[4], ow = shape[5];
  const int64_t kh = shape[6], kw = shape[7], sh = shape[8], sw = shape[9], ph = shape[10], pw = shape[11];
  const int64_t dh = shape[12], dw = shape[13];
#ifdef QC_HOST_AVX2
  const bool avx2 = __builtin_cpu_supports("avx2");
#endif
  parallel_for(n * oh, threads, [=](int64_t begin, int64_t end) {
    std::vector<uint8_t> rows(static_cast<size_t>(w * c));  // the window rows' maximum, per input column
    std::vector<const uint8_t*> taps(static_cast<size_t>(kw));
    for (int64_t row = begin; row < end; ++row) {
      const int64_t b = row / oh, oy = row % oh;
      bool first = true;
      for (int64_t ky = 0; ky < kh; ++ky) {
        const int64_t iy = oy * sh - ph + ky * dh;
        if (iy < 0 || iy >= h) continue;
        const uint8_t* in = x + (b * h + iy) * w * c;
        if (first)
          std::copy(in, in + w * c, rows.data());
        else
          max_into(rows.data(), in, w * c);
        first = false;
      }
      for (int64_t ox = 0; ox < ow; ++ox) {
        int64_t count = 0;  // the window's columns inside the input
        for (int64_t kx = 0; kx < kw; ++kx) {
          const int64_t ix = ox * sw - pw + kx * dw;
          if (ix >= 0 && ix < w) taps[count++] = rows.data() + ix * c;
        }
        uint8_t* o = out + (row * ow + ox) * c;
#ifdef QC_HOST_AVX2
        if (avx2) {
          max_of_taps(taps.data(), count, o, c);
          continue;
        }
#endif
        std::copy(taps[0], taps[0] + c, o);
        for (int64_t t = 1; t < count; ++t) max_into(o, taps[t], c);
      }
    }
  });
}

// x[n, c, p] to out[n, p, c] (uint8, NCHW to channels last, p over the h * w pixels): what a convolution
// needs of a quantized input, without a torch copy (whose threads would then wait, spinning, on the cores
// these kernels run on).
void qc_host_to_channels_last(const uint8_t* x, uint8_t* out, int64_t n, int64_t c, int64_t pixels, int threads) {
#ifdef QC_HOST_AVX2
  if (c >= 2 && c <= 4 && __builtin_cpu_supports("avx512vbmi") && __builtin_cpu_supports("avx512bw")) {
    constexpr int64_t kPixels = 1024;  // per task
    const int64_t blocks = (pixels + kPixels - 1) / kPixels;
    parallel_for(n * blocks, threads, [=](int64_t begin, int64_t end) {
      for (int64_t task = begin; task < end; ++task) {
        const int64_t b = task / blocks, p0 = (task % blocks) * kPixels;
        interleave_planes(x + b * c * pixels, pixels, c, out + b * pixels * c, p0, std::min(pixels, p0 + kPixels));
      }
    });
    return;
  }
#endif
  constexpr int64_t kBlock = 64;  // pixels per task: a block of c rows read, one of out written
  const int64_t blocks = (pixels + kBlock - 1) / kBlock;
  parallel_for(n * blocks, threads, [=](int64_t begin, int64_t end) {
    for (int64_t task = begin; task < end; ++task) {
      const int64_t b = task / blocks, p0 = (task % blocks) * kBlock, p1 = std::min(pixels, p0 + kBlock);
      const uint8_t* src = x + b * c * pixels;
      uint8_t* dst = out + b * pixels * c;
      for (int64_t ch = 0; ch < c; ++ch)
        for (int64_t p = p0; p < p1; ++p) dst[p * c + ch] = src[ch * pixels + p];
    }
  });
}

// out[n, c] = (sum over p of x[n, p, c] + pixels / 2) / pixels: the mean of uint8 codes over h * w in
// channels-last order, rounded half up (global average pooling on one grid).
void qc_host_mean_pixels(const uint8_t* x, uint8_t* out, int64_t n, int64_t pixels, int64_t c, int threads) {
  parallel_for(n, threads, [=](int64_t begin, int64_t end) {
    std::vector<int32_t> total(static_cast<size_t>(c));
    for (int64_t b = begin; b < end; ++b) {
      std::fill(total.begin(), total.end(), 0);
      for (int64_t p = 0; p < pixels; ++p) {
        const uint8_t* row = x + (b * pixels + p) * c;
        for (int64_t ch = 0; ch < c; ++ch) total[ch] += row[ch];
      }
      for (int64_t ch = 0; ch < c; ++ch)
        out[b * c + ch] = static_cast<uint8_t>((total[ch] + pixels / 2) / pixels);
    }
  });
}

}  // extern "C"
