// A convolution's channels-last input copied with its padding written out as the zero point, so that every
// tile of output pixels reads its receptive fields in place (host_vnni512.cpp): none is near a border any more.
// Exact: a tap on the padding adds x_zero * w, which the bias's -x_zero * sum(w) takes off again, as the
// gathered form's zero tap plus its bias correction did.
//
//   before: x [N, H, W, C], pad (ph, pw), taps outside the input gathered as 0 (and corrected)
//   after:  x' [N, H + 2 ph, W + 2 pw + extra, C] filled with x_zero where x has no code, pad (0, 0)
//
// `extra` columns on the right let a tile read past its last kernel row's taps (padded kernel rows: the
// bytes after the taps meet zero weights) without leaving the row.
#pragma once

#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "conv_shape.h"
#include "parallel.h"

namespace qc_host {

// The shape of the padded copy: the same output, no padding.
inline qc_avx2::ConvShape padded_shape(const qc_avx2::ConvShape& s, int64_t extra) {
  qc_avx2::ConvShape p = s;
  p.height = s.height + 2 * s.pad_h, p.width = s.width + 2 * s.pad_w + extra, p.pad_h = 0, p.pad_w = 0;
  return p;
}

// x copied into `out` (padded_shape(s, extra)'s size), the borders set to `zero`; rows split among threads.
inline void pad_input(const uint8_t* x, const qc_avx2::ConvShape& s, int64_t extra, uint8_t zero, uint8_t* out,
                      int threads) {
  const qc_avx2::ConvShape p = padded_shape(s, extra);
  const int64_t c = s.channels, row = p.width * c, left = s.pad_w * c, inside = s.width * c;
  parallel_for(p.batch * p.height, threads, [&](int64_t begin, int64_t end) {
    for (int64_t r = begin; r < end; ++r) {
      const int64_t n = r / p.height, y = r % p.height - s.pad_h;
      uint8_t* dst = out + r * row;
      if (y < 0 || y >= s.height) {
        memset(dst, zero, static_cast<size_t>(row));
        continue;
      }
      memset(dst, zero, static_cast<size_t>(left));
      memcpy(dst + left, x + (n * s.height + y) * inside, static_cast<size_t>(inside));
      memset(dst + left + inside, zero, static_cast<size_t>(row - left - inside));
    }
  });
}

// Room for `bytes`: a buffer per calling thread, kept between calls (a fresh one would be faulted in page by page
// every call), up to kKeptScratch; a larger copy lives in `own`, the caller's, and goes with it.
constexpr int64_t kKeptScratch = 32 << 20;
inline uint8_t* scratch(int64_t bytes, std::vector<uint8_t>& own) {
  thread_local std::vector<uint8_t> buffer;
  std::vector<uint8_t>& room = bytes <= kKeptScratch ? buffer : own;
  if (static_cast<int64_t>(room.size()) < bytes) room.resize(static_cast<size_t>(bytes));
  return room.data();
}

}  // namespace qc_host
