// The CPU twin's byte GEMM on AVX-512 VNNI (dense convolutions and linear layers): host_conv.cpp's byte form
// with 512-bit vectors. A panel of 16 output channels is one vector of int32 lanes, and vpdpbusd adds the four
// uint8 x int8 products of each lane, so every code goes in whole; eight pixels share each weight vector. The
// output stage (stage16.h) runs on the accumulators in the registers, and vpmovusdb stores the sixteen codes.
// A 1x1 convolution with stride 1 and no padding over a multiple of 4 channels (and a linear layer) reads its
// rows straight from the input: channels last, a pixel's codes are its GEMM row. Other layers read a whole
// tile of pixels whose receptive fields lie inside the input in place too, a kernel row at a time (a kernel
// row's taps are side by side in channels-last order); where a kernel row's codes are not whole groups of four
// (an RGB stem's 7 x 3) the weights are packed a kernel row at a time, each padded with zero weights to whole
// groups, and the codes read past a row's taps count for nothing. A padded layer's input is first copied with
// the padding written out as the zero point (padded_input.h), so no tile is near a border; where enough of its
// taps fall on the padding, its tiles are pixels with the same taps and leave the padding's out (tap_boxes.h).
// Partial tiles and dilated layers gather their rows (gather_bytes.h) into the same layout, and taps outside
// the input get their share of the bias correction back. Tiles read in place, deep layers' gathered tiles
// and, on cores with full-width 512-bit units, 1x1 layers' tiles run two panels per pass (whole_tile_sums);
// thin 1x1 layers' tiles run sums, stage and stores in one piece (direct_tile.h).
// Built into host_conv.cpp's library; qc_conv_gemm_bytes runs it for the form it calls avx512-vnni.
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <optional>
#include <vector>

#include "conv_shape.h"
#include "core_traits.h"
#include "direct_tile.h"
#include "gather_bytes.h"
#include "padded_input.h"
#include "parallel.h"
#include "stage16.h"
#include "tap_boxes.h"

namespace {

using qc_avx2::ConvShape;
using qc_avx2::Exception;
using qc_avx2::gather_bytes;
using qc_avx512::make_shared;
using qc_avx512::Stage16;
using qc_avx512::StageShared;

constexpr int kRows = 8;        // pixels per tile: eight accumulators, a weight vector, the broadcasts
constexpr int kChannels = 16;   // output channels per panel: one vector of int32 lanes

#define QC_VNNI512 __attribute__((target("avx512f,avx512vnni")))

// One cache line of `lines` every `every` groups of four depth indices goes to the L2 cache while a panel's
// sums run (the weights a later pass reads from memory); none where count is 0.
struct Ahead {
  const int8_t* lines = nullptr;
  int64_t count = 0, every = 0;
};

// The sums of a tile's first R rows for one panel: acc[r] = start (the bias) + the sum over `quads` groups of
// four depth indices of row r (4 * quads bytes); int32 arithmetic wraps, and the true sum is in range. Eight
// accumulators, named variables (not an array) so that they stay in registers: with R rows, J = 8 / R chains
// per row take consecutive groups (a partial tile's rows would otherwise wait on their own sums' latency, and
// the rows past it cost as much as real ones), added up at the end.
#define QC_EIGHT(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
template <int R>
QC_VNNI512 inline __attribute__((always_inline)) void panel_sums_of(const uint8_t* const* rows, const int8_t* panel,
                                                                    int64_t quads, __m512i start,
                                                                    __m512i (&acc)[kRows], Ahead ahead) {
  static_assert(kRows == 8 && R >= 1 && R <= 8, "QC_EIGHT names eight accumulators");
  constexpr int J = kRows / R;  // accumulator k: row k % R, chain k / R (k < R * J)
#define QC_ZERO(k) __m512i acc##k = (k) < R ? start : _mm512_setzero_si512();
  QC_EIGHT(QC_ZERO)
#undef QC_ZERO
#define QC_STEP(k, q)                                                                     \
  if constexpr ((k) < R * J) {                                                            \
    int32_t quad;                                                                         \
    memcpy(&quad, rows[(k) % R] + 4 * (q), sizeof quad);                                  \
    acc##k = _mm512_dpbusd_epi32(acc##k, _mm512_set1_epi32(quad), w[(k) / R]);            \
  }
#define QC_CHAINS(k) QC_STEP(k, q + (k) / R)
#define QC_FIRST(k) if constexpr ((k) < R) QC_STEP(k, q)
  const int64_t every = ahead.count > 0 ? (ahead.every + J - 1) / J * J : quads;
  for (int64_t q0 = 0, line = 0; q0 < quads; q0 += every, ++line) {
    if (line < ahead.count) _mm_prefetch(reinterpret_cast<const char*>(ahead.lines + 64 * line), _MM_HINT_T1);
    const int64_t q1 = std::min(quads, q0 + every);
    int64_t q = q0;
    for (; q + J <= q1; q += J) {
      __m512i w[J];
      for (int j = 0; j < J; ++j) w[j] = _mm512_loadu_si512(panel + 64 * (q + j));
      QC_EIGHT(QC_CHAINS)
    }
    for (; q < q1; ++q) {  // the groups left over from the chains: the first chain's
      const __m512i w[1] = {_mm512_loadu_si512(panel + 64 * q)};
      QC_EIGHT(QC_FIRST)
    }
  }
#undef QC_FIRST
#undef QC_CHAINS
#undef QC_STEP
#define QC_SAVE(k)                                                    \
  if constexpr ((k) < R * J) {                                        \
    if constexpr ((k) < R) acc[(k) % R] = acc##k;                      \
    else acc[(k) % R] = _mm512_add_epi32(acc[(k) % R], acc##k);       \
  }
  QC_EIGHT(QC_SAVE)
#undef QC_SAVE
}
#undef QC_EIGHT

// panel_sums_of for a partial tile's `valid` rows (1 to 7): out of line, as eight forms inlined into the loops
// that call them slowed the whole tiles' form down to half.
QC_VNNI512 __attribute__((noinline)) void partial_panel_sums(const uint8_t* const* rows, int64_t valid,
                                                             const int8_t* panel, int64_t quads, __m512i start,
                                                             __m512i (&acc)[kRows], Ahead ahead) {
  switch (valid) {
    case 1: return panel_sums_of<1>(rows, panel, quads, start, acc, ahead);
    case 2: return panel_sums_of<2>(rows, panel, quads, start, acc, ahead);
    case 3: return panel_sums_of<3>(rows, panel, quads, start, acc, ahead);
    case 4: return panel_sums_of<4>(rows, panel, quads, start, acc, ahead);
    case 5: return panel_sums_of<5>(rows, panel, quads, start, acc, ahead);
    case 6: return panel_sums_of<6>(rows, panel, quads, start, acc, ahead);
    default: return panel_sums_of<7>(rows, panel, quads, start, acc, ahead);
  }
}

// The sums of a whole tile (R rows: eight, or seven for tiles of seven pixels, tap_boxes.h) for P panels (1 or
// 2; with 2 each broadcast code feeds both panels' sums: sixteen accumulators, the rows read half as often). A
// row is read as `segments` runs of `run_quads` groups of four depth indices, run j of row k at rows[k] + j *
// run_stride and its weights at panel + 64 * j * weight_stride: one run for a gathered tile, one per kernel row
// for a tile read in place from the input (channels last, a kernel row's taps side by side).
#define QC_EIGHT(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
template <int P, int R = kRows>
QC_VNNI512 inline __attribute__((always_inline)) void whole_tile_sums(
    const uint8_t* const* rows, int64_t segments, int64_t run_quads, int64_t run_stride, int64_t weight_stride,
    const int8_t* panel, const int8_t* next, __m512i start, __m512i next_start, __m512i (&acc)[kRows],
    __m512i (&next_acc)[kRows], Ahead ahead) {
  static_assert((P == 1 || P == 2) && (R == 7 || R == kRows), "one or two panels, seven or eight rows");
#define QC_ZERO(k) __m512i a##k = start, b##k = next_start;
  QC_EIGHT(QC_ZERO)
#undef QC_ZERO
#define QC_STEP(k)                                                  \
  if constexpr ((k) < R) {                                          \
    int32_t quad;                                                   \
    memcpy(&quad, r##k + 4 * q, sizeof quad);                       \
    const __m512i x = _mm512_set1_epi32(quad);                      \
    a##k = _mm512_dpbusd_epi32(a##k, x, w);                         \
    if constexpr (P == 2) b##k = _mm512_dpbusd_epi32(b##k, x, v);   \
  }
  const int64_t every = ahead.count > 0 ? ahead.every : run_quads;
  int64_t line = 0;
  for (int64_t j = 0; j < segments; ++j) {
#define QC_ROW(k) const uint8_t* r##k = (k) < R ? rows[k] + j * run_stride : nullptr; (void)r##k;
    QC_EIGHT(QC_ROW)
#undef QC_ROW
    const int8_t* w_run = panel + 64 * j * weight_stride;
    const int8_t* v_run = (P == 2 ? next : panel) + 64 * j * weight_stride;
    for (int64_t q0 = 0; q0 < run_quads; q0 += every, ++line) {
      if (line < ahead.count) _mm_prefetch(reinterpret_cast<const char*>(ahead.lines + 64 * line), _MM_HINT_T1);
      const int64_t q1 = std::min(run_quads, q0 + every);
      for (int64_t q = q0; q < q1; ++q) {
        const __m512i w = _mm512_loadu_si512(w_run + 64 * q);
        const __m512i v = P == 2 ? _mm512_loadu_si512(v_run + 64 * q) : w;
        QC_EIGHT(QC_STEP)
      }
    }
  }
#undef QC_STEP
#define QC_SAVE(k) acc[k] = a##k, next_acc[k] = b##k;
  QC_EIGHT(QC_SAVE)
#undef QC_SAVE
}
#undef QC_EIGHT

// panel_sums_of for a tile's `valid` rows (1 to 8).
QC_VNNI512 inline __attribute__((always_inline)) void panel_sums(const uint8_t* const* rows, int64_t valid,
                                                                 const int8_t* panel, int64_t quads, __m512i start,
                                                                 __m512i (&acc)[kRows], Ahead ahead = {}) {
  if (valid < kRows) return partial_panel_sums(rows, valid, panel, quads, start, acc, ahead);
  panel_sums_of<kRows>(rows, panel, quads, start, acc, ahead);
}

// The tile's valid rows finished and stored: taps left out of the sums (outside the input, or on the padding
// for every row: `common`) get x_zero * (their weights' sum) back (the bias took it off for every tap), then
// the output stage (the bias is in already), sixteen codes per row at outs[r] + offset (`count` of them for a
// layer's last panel).
QC_VNNI512 inline __attribute__((always_inline)) void finish_rows(
    __m512i (&acc)[kRows], int64_t rows, const uint64_t* outside, uint64_t common, const int32_t* tap_sums,
    int32_t x_zero, const Stage16& stage, const StageShared& shared, int64_t count, uint8_t* const* outs,
    int64_t offset) {
  const __m512i zero = _mm512_set1_epi32(x_zero);
  const Stage16 st = stage;  // copies, kept in registers (see stage16.h)
  const StageShared k = shared;
  __m512i back = _mm512_setzero_si512();
  for (uint64_t mask = common; mask != 0; mask &= mask - 1)
    back = _mm512_add_epi32(back, _mm512_loadu_si512(tap_sums + __builtin_ctzll(mask) * kChannels));
  if (common != 0) back = _mm512_mullo_epi32(zero, back);
  auto row = [&](int r) __attribute__((always_inline, target("avx512f"))) {
    for (uint64_t mask = outside[r]; mask != 0; mask &= mask - 1) {
      const __m512i sums = _mm512_loadu_si512(tap_sums + __builtin_ctzll(mask) * kChannels);
      acc[r] = _mm512_add_epi32(acc[r], _mm512_mullo_epi32(zero, sums));
    }
    if (common != 0) acc[r] = _mm512_add_epi32(acc[r], back);
    qc_avx512::store16(outs[r] + offset, qc_avx512::stage16_biased(acc[r], st, k), count);
  };
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r)  // unrolled: constant indices, so the accumulators stay in registers
    if (r < rows) row(r);
}

// One call's layer and what every thread reads.
struct Gemm {
  const uint8_t* x;
  int32_t x_zero;
  const int8_t* packed;
  const int32_t* tap_sums;
  ConvShape s;
  int64_t quads, pixels, tiles, all_panels, taps, block;
  int64_t run_quads, run_stride;  // a kernel row's groups of four, and the input's row stride (read in place)
  bool direct, by_tiles, pairs, in_place, padded;
  bool direct_pairs;  // the direct path's tiles run two panels per pass (not on half-width cores)
  const qc_host::TapBoxes* boxes;  // a padded layer's pixel order and taps per tile (tap_boxes.h), or none
  int64_t column_quads;            // groups of four per kernel column where boxes leave columns out
  const Stage16* stages;
  StageShared shared;
  uint8_t* out;
};

// A thread's share: tiles [begin, end) under every panel (by_tiles), else panels [begin, end) over every tile.
// Where the weights take more than one block of panels, the thread's tiles are gathered once and kept when
// they take at most kKeptBytes (else gathered again for every block).
constexpr int64_t kKeptBytes = 16 << 20;
// Gathered tiles larger than this run two panels per pass over their rows (whole_tile_sums); smaller ones stay
// in the L1 cache, where one panel per pass measured faster.
constexpr int64_t kPairedTileBytes = 12 << 10;
constexpr int64_t kPrefetchBytes = 640 << 10;
// Tile t: its pixels in the boxes' plan (tap_boxes.h), else eight in raster order, every tap read.
inline qc_host::Tile tile_of(const Gemm& g, int64_t t, int32_t (&pixels)[kRows]) {
  if (g.boxes == nullptr) {
    const int64_t valid = std::min<int64_t>(kRows, g.pixels - t * kRows);
    for (int r = 0; r < valid; ++r) pixels[r] = static_cast<int32_t>(t * kRows + r);
    return qc_host::Tile{t * kRows, valid, qc_host::TapBox{0, g.s.kernel_h, 0, g.s.kernel_w, 0}};
  }
  const qc_host::Tile tile = g.boxes->tile(t);
  for (int r = 0; r < tile.count; ++r) pixels[r] = g.boxes->pixel(tile, r);
  return tile;
}

// Whether a tile's `count` pixels see only taps inside the input, and if so where each one's receptive field
// starts (its first kernel row's first tap): the rows of a tile read in place.
inline bool interior_rows(const Gemm& g, const int32_t (&pixels)[kRows], int64_t count,
                          const uint8_t* (&rows)[kRows]) {
  const ConvShape& s = g.s;
  for (int r = 0; r < count; ++r) {
    const auto [n, oh, ow] = s.pixel(pixels[r]);
    const int64_t iy = oh * s.stride_h - s.pad_h, ix = ow * s.stride_w - s.pad_w;
    // a padded run reads up to three bytes past the kernel row's taps (weights 0): they must be the input's too
    if (iy < 0 || iy + (s.kernel_h - 1) * s.dilation_h >= s.height || ix < 0 ||
        ix * s.channels + 4 * g.run_quads > s.width * s.channels)
      return false;
    rows[r] = g.x + ((n * s.height + iy) * s.width + ix) * s.channels;
  }
  return true;
}

// A tile of R pixels read in place from the input, panels [pb, pb + panels): the kernel rows and columns of its
// box only, two panels per pass (in place, faster than one at every depth measured).
template <int R>
QC_VNNI512 inline __attribute__((always_inline)) void in_place_tile(const Gemm& g, const qc_host::TapBox& box,
                                                                    const uint8_t* (&rows)[kRows],
                                                                    uint8_t* const (&outs)[kRows], int64_t pb,
                                                                    int64_t panels) {
  const ConvShape& s = g.s;
  const uint64_t no_taps[kRows] = {};
  const int64_t panel_bytes = g.quads * 4 * kChannels, segments = box.ky1 - box.ky0;
  const int64_t skip = box.ky0 * g.run_quads + box.kx0 * g.column_quads;  // the box's first group of four
  const int64_t run_quads = g.column_quads > 0 ? (box.kx1 - box.kx0) * g.column_quads : g.run_quads;
  for (int r = 0; r < R; ++r) rows[r] += box.ky0 * g.run_stride + 4 * box.kx0 * g.column_quads;
  for (int64_t p = pb; p < pb + panels; ++p) {
    __m512i acc[kRows], next_acc[kRows];
    const int8_t* panel = g.packed + p * panel_bytes + 64 * skip;
    const int32_t* sums = g.tap_sums + p * g.taps * kChannels;
    const int64_t count = s.out_channels - p * kChannels;
    const bool pair = p + 1 < pb + panels;
    if (pair) {
      whole_tile_sums<2, R>(rows, segments, run_quads, g.run_stride, g.run_quads, panel, panel + panel_bytes,
                            g.stages[p].bias, g.stages[p + 1].bias, acc, next_acc, {});
      finish_rows(next_acc, R, no_taps, box.skipped, sums + g.taps * kChannels, g.x_zero, g.stages[p + 1],
                  g.shared, count - kChannels, outs, (p + 1) * kChannels);
    } else {
      whole_tile_sums<1, R>(rows, segments, run_quads, g.run_stride, g.run_quads, panel, panel, g.stages[p].bias,
                            g.stages[p].bias, acc, next_acc, {});
    }
    finish_rows(acc, R, no_taps, box.skipped, sums, g.x_zero, g.stages[p], g.shared, count, outs, p * kChannels);
    if (pair) ++p;
  }
}

QC_VNNI512 void run_range(const Gemm& g, int64_t begin, int64_t end) {
  const ConvShape& s = g.s;
  const int64_t t0 = g.by_tiles ? begin : 0, t1 = g.by_tiles ? end : g.tiles;
  const int64_t p0 = g.by_tiles ? 0 : begin, p1 = g.by_tiles ? g.all_panels : end;
  const int64_t row_bytes = 4 * g.quads, tile_bytes = kRows * row_bytes;
  const int64_t whole = g.boxes ? g.boxes->rows_per_tile() : kRows;  // a whole tile's pixels
  const bool keep = !g.direct && p1 - p0 > g.block && (t1 - t0) * tile_bytes <= kKeptBytes;
  const int64_t slots = g.direct ? 0 : keep ? t1 - t0 : 1;
  std::vector<uint8_t> tiles(static_cast<size_t>(slots * tile_bytes));
  std::vector<uint64_t> outside(static_cast<size_t>(std::max<int64_t>(slots, 1) * kRows));
  std::vector<Exception> none;  // the VNNI form takes every code whole
  const uint8_t* rows[kRows];  // a tile's valid rows (panel_sums reads no others)
  const int64_t panel_bytes = g.quads * 4 * kChannels;
  const uint64_t no_taps[kRows] = {};  // rows read in place: no tap outside the input
  if (g.direct) {  // rows read in place: panel by panel over a run of tiles, each panel's stage in registers
    constexpr int64_t kRun = 16;  // tiles per run (their rows and outputs stay in the cache between panels)
    for (int64_t run = t0; run < t1; run += kRun)
      for (int64_t p = p0; p < p1; ++p) {
        const Stage16 stage = g.stages[p];
        const StageShared shared = g.shared;
        const int8_t* panel = g.packed + p * panel_bytes;
        const int64_t c = p * kChannels;
        const bool pair_pass = g.direct_pairs && p + 1 < p1;  // panels p and p + 1 in one pass
        for (int64_t t = run; t < std::min(t1, run + kRun); ++t) {
          const int64_t valid = std::min<int64_t>(kRows, g.pixels - t * kRows);
          uint8_t* out = g.out + t * kRows * s.out_channels + c;
          const uint8_t* x = g.x + t * kRows * s.channels;
          if (valid == kRows && g.quads <= qc_avx512::kDirectTileQuads) {
            const int64_t count = s.out_channels - c;
            if (pair_pass)
              qc_avx512::direct_tile<2>(x, s.channels, panel, g.quads, stage, shared, out, s.out_channels, count,
                                        panel + panel_bytes, g.stages + p + 1);
            else
              qc_avx512::direct_tile<1>(x, s.channels, panel, g.quads, stage, shared, out, s.out_channels, count);
            continue;
          }
          uint8_t* outs[kRows];
          for (int r = 0; r < valid; ++r) rows[r] = x + r * s.channels, outs[r] = out + r * s.out_channels;
          __m512i acc[kRows], next_acc[kRows];
          if (pair_pass && valid == kRows) {
            whole_tile_sums<2>(rows, 1, g.quads, 0, 0, panel, panel + panel_bytes, stage.bias, g.stages[p + 1].bias,
                               acc, next_acc, {});
          } else {
            panel_sums(rows, valid, panel, g.quads, stage.bias, acc);
            if (pair_pass) panel_sums(rows, valid, panel + panel_bytes, g.quads, g.stages[p + 1].bias, next_acc);
          }
          if (pair_pass)
            finish_rows(next_acc, valid, no_taps, 0, g.tap_sums, g.x_zero, g.stages[p + 1], shared,
                        s.out_channels - c - kChannels, outs, kChannels);
          finish_rows(acc, valid, no_taps, 0, g.tap_sums, g.x_zero, stage, shared, s.out_channels - c, outs, 0);
        }
        if (pair_pass) ++p;
      }
    return;
  }
  // Prefetching the next block pays where the weights come from memory and both blocks fit in the L2 cache
  // beside the kept tiles (else it evicts the tiles: slower).
  const bool prefetch = keep && (t1 - t0) * tile_bytes + 2 * g.block * panel_bytes <= kPrefetchBytes;
  for (int64_t pb = p0; pb < p1; pb += g.block) {
    // The next block's weights, spread over this block's passes (tiles x panels): read from memory while the
    // kept tiles are multiplied from the L2 cache, they are there when their block starts.
    const int64_t panels = std::min(p1, pb + g.block) - pb, next = std::min(p1 - pb - panels, g.block);
    const int64_t passes = (t1 - t0) * panels, next_lines = prefetch ? next * panel_bytes / 64 : 0;
    const int64_t per_pass = passes > 0 ? (next_lines + passes - 1) / passes : 0;  // none: an empty batch
    const int64_t every = per_pass > 0 ? std::max<int64_t>(1, g.quads / per_pass) : g.quads;
    const int64_t lines_per_pass = (g.quads + every - 1) / every;
    for (int64_t t = t0; t < t1; ++t) {
      int32_t pixels[kRows];
      const qc_host::Tile tile = tile_of(g, t, pixels);
      const int64_t valid = tile.count, slot = keep ? t - t0 : 0;
      uint8_t* outs[kRows];
      for (int r = 0; r < valid; ++r) outs[r] = g.out + pixels[r] * s.out_channels;
      if (g.in_place && valid == whole && interior_rows(g, pixels, valid, rows)) {  // rows read in place
        if (valid == kRows)
          in_place_tile<kRows>(g, tile.box, rows, outs, pb, panels);
        else
          in_place_tile<7>(g, tile.box, rows, outs, pb, panels);
        continue;
      }
      uint8_t* gathered = tiles.data() + slot * tile_bytes;
      uint64_t* tile_outside = outside.data() + slot * kRows;
      const bool gather = !keep || pb == p0;
      for (int r = 0; r < valid; ++r) {
        uint8_t* row = gathered + r * row_bytes;
        rows[r] = row;
        if (gather) tile_outside[r] = g.padded ? qc_avx2::gather_padded(g.x, s, g.run_quads, pixels[r], row)
                                               : gather_bytes(g.x, s, pixels[r], r, row, none, true);
      }
      for (int64_t p = pb; p < pb + panels; ++p) {
        const int64_t first = ((t - t0) * panels + p - pb) * lines_per_pass;
        const Ahead ahead{g.packed + (pb + panels) * panel_bytes + 64 * first,
                          std::max<int64_t>(0, std::min(lines_per_pass, next_lines - first)), every};
        __m512i acc[kRows], next_acc[kRows];
        const int8_t* panel = g.packed + p * panel_bytes;
        const int64_t count = s.out_channels - p * kChannels;
        if (g.pairs && valid == kRows && p + 1 < pb + panels) {  // two panels in one pass over the rows
          const Ahead both{ahead.lines, std::max<int64_t>(0, std::min(2 * lines_per_pass, next_lines - first)),
                           std::max<int64_t>(1, every / 2)};
          whole_tile_sums<2>(rows, 1, g.quads, 0, 0, panel, panel + panel_bytes, g.stages[p].bias,
                             g.stages[p + 1].bias, acc, next_acc, both);
          finish_rows(next_acc, valid, tile_outside, 0, g.tap_sums + (p + 1) * g.taps * kChannels, g.x_zero,
                      g.stages[p + 1], g.shared, count - kChannels, outs, (p + 1) * kChannels);
          finish_rows(acc, valid, tile_outside, 0, g.tap_sums + p * g.taps * kChannels, g.x_zero, g.stages[p],
                      g.shared, count, outs, p * kChannels);
          ++p;
          continue;
        }
        panel_sums(rows, valid, panel, g.quads, g.stages[p].bias, acc, ahead);
        finish_rows(acc, valid, tile_outside, 0, g.tap_sums + p * g.taps * kChannels, g.x_zero, g.stages[p],
                    g.shared, count, outs, p * kChannels);
      }
    }
  }
}

}  // namespace

extern "C" {

// 1 if this CPU runs qc_conv_gemm_vnni512.
int qc_conv_vnni512_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vnni") ? 1 : 0;
}

// qc_conv_gemm_bytes's contract (host_conv.cpp), on AVX-512 VNNI: the byte form's panels of 16 channels, the
// bias less x_zero * each channel's weight sum, tap_sums[p, t, i] (at most 64 taps).
QC_VNNI512 void qc_conv_gemm_vnni512(const uint8_t* x, int32_t x_zero, const int8_t* packed,
                                     const int32_t* tap_sums, const int64_t* shape, const int32_t* bias,
                                     const int32_t* m0, const int32_t* exponent, int32_t out_zero, int32_t lo,
                                     int32_t hi, uint8_t* out, int threads) {
  Gemm g{x, x_zero, packed, tap_sums, ConvShape::read(shape), 0, 0, 0, 0, 0, 0, 0, 0, false, false, false, false,
         false, !qc_host::half_width_512(), nullptr, 0, nullptr,
         make_shared(out_zero, lo, hi), out};
  const ConvShape& s = g.s;
  // where a kernel row's codes are not whole groups of four, the weights come a kernel row at a time, each
  // padded with zeros to whole groups (host_conv.py's padded_rows: the same rule), and so do gathered rows
  const bool padded = s.dilation_w == 1 && s.kernel_w * s.channels % 4 != 0;
  g.run_quads = (s.kernel_w * s.channels + 3) / 4;
  const bool direct = s.kernel_h * s.kernel_w == 1 && s.stride_h == 1 && s.stride_w == 1 && s.pad_h == 0 &&
                      s.pad_w == 0 && s.channels % 4 == 0;
  std::vector<uint8_t> own;  // a padded copy too large to keep between calls
  std::optional<qc_host::TapBoxes> boxes;
  if (!direct && s.dilation_w == 1 && (s.pad_h > 0 || s.pad_w > 0)) {
    // the layer's own shape: before the padded copy replaces it
    boxes = qc_host::TapBoxes::plan(s, s.channels % 4 == 0);
    if (boxes) {
      g.boxes = &*boxes;
      g.column_quads = s.channels % 4 == 0 ? s.channels / 4 : 0;
    }
  }
  if (!direct && s.dilation_w == 1) {  // tiles read in place: the padding written out, no border tile left
    // columns the last pixel's kernel rows reach, the bytes read past a padded row's taps included
    const int64_t last = (s.out_w - 1) * s.stride_w * s.channels + 4 * g.run_quads;
    const int64_t extra = std::max<int64_t>(0, (last + s.channels - 1) / s.channels - (s.width + 2 * s.pad_w));
    if (s.pad_h > 0 || s.pad_w > 0 || extra > 0) {
      const ConvShape p = qc_host::padded_shape(s, extra);
      uint8_t* copy = qc_host::scratch(p.batch * p.height * p.width * p.channels, own);
      qc_host::pad_input(x, s, extra, static_cast<uint8_t>(x_zero), copy, threads);
      g.x = copy, g.s = p;
    }
  }
  g.run_stride = s.dilation_h * s.width * s.channels;
  g.quads = padded ? s.kernel_h * g.run_quads : (s.depth() + 3) / 4;
  g.pixels = s.pixels(), g.tiles = g.boxes ? g.boxes->tiles() : (g.pixels + kRows - 1) / kRows;
  g.all_panels = (s.out_channels + kChannels - 1) / kChannels, g.taps = s.kernel_h * s.kernel_w;
  g.direct = direct;
  g.block = std::max<int64_t>(1, qc_host::block_bytes() / (g.quads * 64));  // panels that stay in the L2 cache
  g.by_tiles = g.tiles >= 2 * threads || g.all_panels < 2;
  g.pairs = kRows * 4 * g.quads > kPairedTileBytes;
  g.in_place = !g.direct && s.dilation_w == 1;  // whole groups of four per kernel row, padded or not
  g.padded = padded;
  const qc_avx512::Stage16Table table(bias, m0, exponent, s.out_channels);
  g.stages = table.data();
  qc_host::parallel_for(g.by_tiles ? g.tiles : g.all_panels, threads,
                        [&g](int64_t begin, int64_t end) { run_range(g, begin, end); });
}

}  // extern "C"
