// The taps a padded layer's tile of output pixels needs (host_vnni512.cpp). A pixel near the border has some
// kernel rows or columns wholly on the padding; a tile whose every pixel has them there leaves them out (they
// would add x_zero * w, which the bias takes off for every tap: the finished sums get x_zero * the weight sums
// of the taps left out back instead, as for a gathered tile's taps outside the input). Pixels are taken in an
// order that brings those with the same taps together, so that a tile's pixels share them.
//
//   before: tile t = pixels [8t, 8t + 8) in raster order, every tap read (the padding's as x_zero)
//   after:  tile t = pixels order[8t, 8t + 8), kernel rows [ky0, ky1) x columns [kx0, kx1) read, the taps
//           outside that box (on the padding for all eight) added back as x_zero * their weight sums
//
// On ResNet-18's 7 x 7 layers, a fifth of the taps lie on the padding. Columns are left out only where a
// kernel row's codes are whole groups of four (channels a multiple of 4), so that a column starts a group.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <vector>

#include "conv_shape.h"

namespace qc_host {

struct TapBox {
  int64_t ky0, ky1, kx0, kx1;  // kernel rows [ky0, ky1) and columns [kx0, kx1) that the tile reads
  uint64_t skipped;             // the taps outside the box: bit ky * kernel_w + kx (at most 64 taps)
};

class TapBoxes {
 public:
  // `s`: the layer's shape with its padding (not the padded copy's); `columns`: whether columns may be left
  // out; `rows`: pixels per tile.
  TapBoxes(const qc_avx2::ConvShape& s, bool columns, int64_t rows) : s_(s), columns_(columns) {
    inside(s.out_h, s.stride_h, s.pad_h, s.dilation_h, s.kernel_h, s.height, row_lo_, row_hi_, row_class_);
    inside(s.out_w, s.stride_w, s.pad_w, s.dilation_w, s.kernel_w, s.width, col_lo_, col_hi_, col_class_);
    // counting sort of the pixels by (row class, column class), raster order within a class
    const int64_t classes = (*std::max_element(row_class_.begin(), row_class_.end()) + 1) *
                            (*std::max_element(col_class_.begin(), col_class_.end()) + 1);
    const int64_t columns_classes = *std::max_element(col_class_.begin(), col_class_.end()) + 1;
    std::vector<int64_t> start(static_cast<size_t>(classes + 1), 0);
    auto key = [&](int64_t m) {
      const auto [n, oh, ow] = s.pixel(m);
      return row_class_[oh] * columns_classes + col_class_[ow];
    };
    for (int64_t m = 0; m < s.pixels(); ++m) ++start[key(m) + 1];
    for (int64_t k = 0; k < classes; ++k) start[k + 1] += start[k];
    order_.resize(static_cast<size_t>(s.pixels()));
    for (int64_t m = 0; m < s.pixels(); ++m) order_[start[key(m)]++] = static_cast<int32_t>(m);
    for (int64_t m = 0; m < s.pixels(); m += rows)
      boxes_.push_back(box(order_.data() + m, std::min(rows, s.pixels() - m)));
  }

  // The fraction of the layer's taps that fall on the padding (the most that boxes can leave out).
  static double padded_share(const qc_avx2::ConvShape& s, bool columns) {
    auto share = [](int64_t outputs, int64_t stride, int64_t pad, int64_t dilation, int64_t kernel, int64_t size) {
      std::vector<int64_t> lo, hi, cls;
      inside(outputs, stride, pad, dilation, kernel, size, lo, hi, cls);
      int64_t out = 0;
      for (int64_t o = 0; o < outputs; ++o) out += kernel - std::max<int64_t>(0, hi[o] - lo[o]);
      return static_cast<double>(out) / static_cast<double>(outputs * kernel);
    };
    const double rows = share(s.out_h, s.stride_h, s.pad_h, s.dilation_h, s.kernel_h, s.height);
    const double cols = columns ? share(s.out_w, s.stride_w, s.pad_w, s.dilation_w, s.kernel_w, s.width) : 0.0;
    return 1.0 - (1.0 - rows) * (1.0 - cols);
  }

  const int32_t* order() const { return order_.data(); }
  const TapBox& tile(int64_t t) const { return boxes_[t]; }

  // The smallest box of taps that holds every tap inside the input of the `count` pixels given.
  TapBox box(const int32_t* pixels, int64_t count) const {
    TapBox b{s_.kernel_h, 0, s_.kernel_w, 0, 0};
    for (int64_t r = 0; r < count; ++r) {
      const auto [n, oh, ow] = s_.pixel(pixels[r]);
      b.ky0 = std::min(b.ky0, row_lo_[oh]), b.ky1 = std::max(b.ky1, row_hi_[oh]);
      b.kx0 = std::min(b.kx0, col_lo_[ow]), b.kx1 = std::max(b.kx1, col_hi_[ow]);
    }
    if (!columns_) b.kx0 = 0, b.kx1 = s_.kernel_w;
    if (b.ky1 <= b.ky0 || b.kx1 <= b.kx0) b.ky0 = b.ky1 = 0;  // no tap inside: none read
    auto first = [](int64_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; };  // bits [0, n)
    uint64_t read = 0;
    for (int64_t ky = b.ky0; ky < b.ky1; ++ky) read |= (first(b.kx1) & ~first(b.kx0)) << (ky * s_.kernel_w);
    b.skipped = first(s_.kernel_h * s_.kernel_w) & ~read;
    return b;
  }

 private:
  // For each output position along one axis, its taps inside the input [lo, hi) (empty: hi <= lo) and a class:
  // positions with the same taps share one, numbered in order of first appearance.
  static void inside(int64_t outputs, int64_t stride, int64_t pad, int64_t dilation, int64_t kernel, int64_t size,
                     std::vector<int64_t>& lo, std::vector<int64_t>& hi, std::vector<int64_t>& cls) {
    std::vector<std::pair<int64_t, int64_t>> seen;
    for (int64_t o = 0; o < outputs; ++o) {
      int64_t first = kernel, last = 0;
      for (int64_t k = 0; k < kernel; ++k) {
        const int64_t at = o * stride - pad + k * dilation;
        if (at >= 0 && at < size) first = std::min(first, k), last = k + 1;
      }
      lo.push_back(first), hi.push_back(last);
      const auto found = std::find(seen.begin(), seen.end(), std::make_pair(first, last));
      cls.push_back(found - seen.begin());
      if (found == seen.end()) seen.emplace_back(first, last);
    }
  }

  qc_avx2::ConvShape s_;
  bool columns_;
  std::vector<int64_t> row_lo_, row_hi_, row_class_, col_lo_, col_hi_, col_class_;
  std::vector<int32_t> order_;
  std::vector<TapBox> boxes_;  // tile t's
};

}  // namespace qc_host
