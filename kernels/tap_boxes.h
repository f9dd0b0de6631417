// The tiles of a padded layer's output pixels and the taps each one needs (host_vnni512.cpp). A pixel near the
// border has some kernel rows or columns wholly on the padding; a tile whose every pixel has them there leaves
// them out (they would add x_zero * w, which the bias takes off for every tap: the finished sums get x_zero *
// the weight sums of the taps left out back instead, as a gathered tile's taps outside the input do). Two ways
// of tiling bring pixels with the same taps together:
//
//   raster (none of this):  tile t = pixels [8t, 8t + 8), every tap read (the padding's as x_zero)
//   rows:     tile t = pixels [Rt, Rt + R), R (7 or 8) dividing the output's width, so that a tile lies in one
//             output row: the top and bottom rows' tiles leave kernel rows out
//   classes:  tile t = pixels order[8t, 8t + 8), the pixels ordered by the kernel rows and columns they have
//             inside the input (corners, edges, the interior): most tiles leave out rows, columns or both
//
// Each tile reads kernel rows [ky0, ky1) x columns [kx0, kx1), the smallest box that holds every tap inside the
// input of its pixels. `plan` counts the multiply-accumulates of each way and takes the fewest, where they
// save enough. Columns are
// left out only where a kernel row's codes are whole groups of four (channels a multiple of 4), so that a
// column starts a group.
#pragma once

#include <stdint.h>

#include <algorithm>
#include <limits>
#include <optional>
#include <vector>

#include "conv_shape.h"

namespace qc_host {

struct TapBox {
  int64_t ky0, ky1, kx0, kx1;  // kernel rows [ky0, ky1) and columns [kx0, kx1) that the tile reads
  uint64_t skipped;             // the taps outside the box: bit ky * kernel_w + kx (at most 64 taps)
};

struct Tile {
  int64_t start, count;  // its pixels: order[start, start + count), or [start, start + count) without an order
  TapBox box;
};

class TapBoxes {
 public:
  // The tiling of layer `s` (its own shape, padding included) with the fewest multiply-accumulates, or none
  // where it saves too few of raster tiles'. `columns`: whether columns may be left out. The counts take
  // O(rows + columns) steps; only the plan taken lists its tiles.
  static std::optional<TapBoxes> plan(const qc_avx2::ConvShape& s, bool columns) {
    TapBoxes t(s, columns);
    const double raster = static_cast<double>(s.pixels() * s.kernel_h * s.kernel_w);
    const double by_rows = t.row_cost(), by_classes = t.class_cost();
    if (std::min(by_rows, by_classes) > (1 - kLeastSaved) * raster) return std::nullopt;
    if (by_classes < by_rows) t.list_classes(); else t.list_rows();
    return t;
  }

  int64_t tiles() const { return rows_plan_ ? s_.batch * s_.out_h * chunks_ : static_cast<int64_t>(tiles_.size()); }
  int64_t rows_per_tile() const { return rows_plan_ ? width_ : 8; }  // a whole tile's pixels
  Tile tile(int64_t t) const {
    if (!rows_plan_) return tiles_[t];
    const int64_t oh = t / chunks_ % s_.out_h;
    return Tile{t * width_, width_, row_boxes_[rows_.kind[oh] * chunks_ + t % chunks_]};
  }
  int32_t pixel(const Tile& tile, int64_t r) const {
    return rows_plan_ ? static_cast<int32_t>(tile.start + r) : order_[tile.start + r];
  }

 private:
  // A plan's tiles cost some bookkeeping, and ordering by classes spreads a tile's pixels over the input: on
  // ResNet-18's stem (0.8% of the taps on the padding) a plan ran as fast as raster tiles, on its 56 x 56
  // layers (1.2% by rows, 2.4% by classes) 1% slower; on its 28 x 28 layers at batch 8 tiles by classes
  // (4.7%) ran 2-3% faster.
  static constexpr double kLeastSaved = 0.03;

  // Each output position's taps inside the input along one axis: [lo, hi), empty where hi <= lo.
  struct Span {
    int64_t lo, hi;
    bool operator==(const Span& o) const { return lo == o.lo && hi == o.hi; }
  };
  // An axis's spans, the kind of each position (positions with the same span share one, numbered in order of
  // first appearance: top, inner, bottom) and the distinct spans.
  struct Axis {
    std::vector<int64_t> kind;
    std::vector<Span> kinds;
    std::vector<int64_t> count;  // positions of each kind
  };

  TapBoxes(const qc_avx2::ConvShape& s, bool columns) : s_(s), columns_(columns) {
    rows_ = axis(s.out_h, s.stride_h, s.pad_h, s.dilation_h, s.kernel_h, s.height);
    cols_ = axis(s.out_w, s.stride_w, s.pad_w, s.dilation_w, s.kernel_w, s.width);
  }

  static Axis axis(int64_t outputs, int64_t stride, int64_t pad, int64_t dilation, int64_t kernel, int64_t size) {
    Axis a;
    for (int64_t o = 0; o < outputs; ++o) {
      Span span{kernel, 0};
      for (int64_t k = 0; k < kernel; ++k) {
        const int64_t at = o * stride - pad + k * dilation;
        if (at >= 0 && at < size) span.lo = std::min(span.lo, k), span.hi = k + 1;
      }
      const auto found = std::find(a.kinds.begin(), a.kinds.end(), span);
      a.kind.push_back(found - a.kinds.begin());
      if (found == a.kinds.end()) a.kinds.push_back(span), a.count.push_back(0);
      ++a.count[a.kind.back()];
    }
    return a;
  }

  // The box of rows `ky` and columns `kx` (their union over a tile's pixels), with the mask of the rest.
  TapBox box_of(Span ky, Span kx) const {
    if (!columns_) kx = Span{0, s_.kernel_w};
    TapBox b{ky.lo, ky.hi, kx.lo, kx.hi, 0};
    if (b.ky1 <= b.ky0 || b.kx1 <= b.kx0) b.ky0 = b.ky1 = 0, b.kx0 = b.kx1 = 0;  // no tap inside: none read
    auto first = [](int64_t n) { return n >= 64 ? ~uint64_t{0} : (uint64_t{1} << n) - 1; };  // bits [0, n)
    uint64_t read = 0;
    for (int64_t k = b.ky0; k < b.ky1; ++k) read |= (first(b.kx1) & ~first(b.kx0)) << (k * s_.kernel_w);
    b.skipped = first(s_.kernel_h * s_.kernel_w) & ~read;
    return b;
  }
  int64_t column_kinds() const { return static_cast<int64_t>(cols_.kinds.size()); }
  static Span join(Span a, Span b) { return Span{std::min(a.lo, b.lo), std::max(a.hi, b.hi)}; }
  static double taps(const TapBox& b) { return static_cast<double>((b.ky1 - b.ky0) * (b.kx1 - b.kx0)); }

  // Tiles of `width_` (7 or 8) pixels in one output row, the width in as few such runs as it takes; each
  // multiply-accumulate per output channel counted. Infinite where no such width divides the output's.
  double row_cost() {
    const int64_t runs = (s_.out_w + 7) / 8;
    width_ = (s_.out_w + runs - 1) / runs, chunks_ = runs;
    if (width_ < 7 || s_.out_w % width_ != 0) return std::numeric_limits<double>::infinity();
    for (size_t k = 0; k < rows_.kinds.size(); ++k)
      for (int64_t c = 0; c < chunks_; ++c) {
        Span kx{s_.kernel_w, 0};
        for (int64_t ow = c * width_; ow < (c + 1) * width_; ++ow) kx = join(kx, cols_.kinds[cols_.kind[ow]]);
        row_boxes_.push_back(box_of(rows_.kinds[k], kx));
      }
    double total = 0;
    for (size_t k = 0; k < rows_.kinds.size(); ++k)
      for (int64_t c = 0; c < chunks_; ++c)
        total += static_cast<double>(s_.batch * rows_.count[k] * width_) * taps(row_boxes_[k * chunks_ + c]);
    return total;
  }
  void list_rows() { rows_plan_ = true; }

  // Tiles of eight pixels taken in the order of their kinds, (row kind, column kind), raster order within a
  // class: the classes' runs of that order (start_), and the multiply-accumulates per output channel, a tile
  // that spans classes reading the union of their boxes, a partial last tile (gathered) every tap.
  double class_cost() {
    const int64_t cols = column_kinds();
    const int64_t classes = static_cast<int64_t>(rows_.kinds.size()) * cols;
    start_.assign(static_cast<size_t>(classes + 1), 0);
    for (int64_t k = 0; k < classes; ++k)
      start_[k + 1] = start_[k] + s_.batch * rows_.count[k / cols] * cols_.count[k % cols];
    if (classes == 1) return std::numeric_limits<double>::infinity();
    double total = 0;
    const int64_t pixels = s_.pixels(), whole = pixels / 8;
    for (int64_t k = 0; k < classes; ++k) {  // tiles within one class
      const int64_t first = (start_[k] + 7) / 8, end = std::min(whole, start_[k + 1] / 8);
      if (end > first) total += static_cast<double>((end - first) * 8) * taps(class_box(k));
    }
    for (int64_t k = 0, last = -1; k < classes; ++k)  // tiles across a class boundary, each once
      if (start_[k] % 8 != 0 && start_[k] / 8 < whole && start_[k] / 8 != last)
        last = start_[k] / 8, total += 8 * taps(tile_box(last));
    total += static_cast<double>((pixels - whole * 8) * s_.kernel_h * s_.kernel_w);
    return total;
  }
  TapBox class_box(int64_t k) const {
    const int64_t cols = column_kinds();
    return box_of(rows_.kinds[k / cols], cols_.kinds[k % cols]);
  }
  // Tile t's box by classes: the union of the classes whose runs it overlaps.
  TapBox tile_box(int64_t t) const {
    const int64_t cols = column_kinds();
    Span ky{s_.kernel_h, 0}, kx{s_.kernel_w, 0};
    for (size_t k = 0; k + 1 < start_.size(); ++k)
      if (start_[k] < t * 8 + 8 && start_[k + 1] > t * 8 && start_[k + 1] > start_[k])
        ky = join(ky, rows_.kinds[k / cols]), kx = join(kx, cols_.kinds[k % cols]);
    return box_of(ky, kx);
  }
  void list_classes() {
    const int64_t cols = column_kinds(), pixels = s_.pixels();
    for (int64_t first = 0; first < pixels; first += 8)
      tiles_.push_back(Tile{first, std::min<int64_t>(8, pixels - first), tile_box(first / 8)});
    std::vector<int64_t> next = start_;
    order_.resize(static_cast<size_t>(pixels));
    for (int64_t n = 0, m = 0; n < s_.batch; ++n)
      for (int64_t oh = 0; oh < s_.out_h; ++oh)
        for (int64_t ow = 0; ow < s_.out_w; ++ow, ++m)
          order_[next[rows_.kind[oh] * cols + cols_.kind[ow]]++] = static_cast<int32_t>(m);
  }

  qc_avx2::ConvShape s_;
  bool columns_;
  Axis rows_, cols_;
  bool rows_plan_ = false;
  int64_t width_ = 8, chunks_ = 0;  // by rows: pixels per tile and tiles per output row
  std::vector<TapBox> row_boxes_;   // by rows: [row kind, chunk]
  std::vector<int64_t> start_;      // by classes: class k's run of the order
  std::vector<Tile> tiles_;         // by classes
  std::vector<int32_t> order_;      // by classes
};

}  // namespace qc_host
