// The CPU twin's dense integer convolutions and linear layers (AVX2 and up): uint8 activations in channels-last
// order, int8 weights, int32 accumulators, the output stage of gemmlowp.h fused, uint8 out in channels-last
// order. kernels/host_conv.py builds this with the host C++ compiler and calls it through ctypes; where it
// cannot run (no AVX2, a bound that allows saturation) the twin keeps its float-accumulation path, which gives
// the same integers.
//
// Dense convolutions (and linear layers, 1x1 over one pixel) are one GEMM: rows are output pixels, the depth
// is taps x input channels, columns are output channels. The weights are packed once per layer in panels of
// 16 output channels; each tile of pixels is gathered (im2col) just before the panels pass over it; the output
// stage runs on the accumulators before they leave the registers. Two forms, the same integers:
//  * bytes (up to 64 taps): vpmaddubsw multiplies the codes (uint8) with the weights (int8) and sums pairs to
//    int16, which is exact for codes up to 127 (2 * 127 * 128 < 2^15); so the GEMM multiplies min(q, 127), and
//    the rare codes above 127 are corrected one product at a time. The zero point comes off through the bias
//    (sum (q - z) w = sum q w - z sum w), and taps outside the input (padding) get their share back.
//    On CPUs with AVX-VNNI the byte form is vpdpbusd instead, which sums the four uint8 x int8 products of
//    each lane in int32: every code goes in whole, and nothing needs correcting. On CPUs with AVX-512 VNNI
//    it is host_vnni512.cpp's 512-bit form (qc_conv_gemm_bytes dispatches to it), and on CPUs with AMX-INT8
//    it runs on tiles (host_amx.cpp's qc_conv_gemm_amx).
//  * int16 pairs: _mm256_madd_epi16 of q - z (|q - z| <= 255) with the weights, each pair sum below 2^16.
// Every sum is exact in int32 arithmetic, whose wrap-around cannot change a result that fits int32; the caller
// checks that the result does (kernels/cpu.py: accumulator_bound).
// Depthwise convolutions are in host_depthwise.cpp, built into the same library with host_vnni512.cpp.
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <memory>
#include <vector>

#include "amx_tiles.h"
#include "conv_shape.h"
#include "gather_bytes.h"
#include "parallel.h"
#include "stage8.h"

namespace {

using qc_amx::amx_usable;
using qc_avx2::ConvShape;
using qc_avx2::Exception;
using qc_avx2::gather_bytes;
using qc_avx2::Stage8;
using qc_avx2::StageTable;
using qc_avx2::stage8;

constexpr int kRows = 6;       // pixels per tile: 6 x 2 accumulator vectors, 2 weight vectors, 1 broadcast
constexpr int kChannels = 16;  // output channels per panel

int64_t panels(int64_t out_channels) { return (out_channels + kChannels - 1) / kChannels; }

// Row r of an A tile: pixel m's receptive field, taps in (ky, kx) order, channels innermost, as q - zero; taps
// outside the input (padding) are 0. The row has 2 * pairs entries (an odd depth ends with one 0).
__attribute__((target("avx2"))) void gather_row(const uint8_t* x, const ConvShape& s, int32_t zero, int64_t m,
                                                int16_t* row) {
  const int64_t ow = m % s.out_w, oh = (m / s.out_w) % s.out_h, n = m / (s.out_w * s.out_h);
  const __m256i z = _mm256_set1_epi16(static_cast<int16_t>(zero));
  int16_t* dst = row;
  for (int64_t ky = 0; ky < s.kernel_h; ++ky) {
    const int64_t iy = oh * s.stride_h - s.pad_h + ky * s.dilation_h;
    for (int64_t kx = 0; kx < s.kernel_w; ++kx, dst += s.channels) {
      const int64_t ix = ow * s.stride_w - s.pad_w + kx * s.dilation_w;
      if (iy < 0 || iy >= s.height || ix < 0 || ix >= s.width) {
        std::fill(dst, dst + s.channels, int16_t{0});
        continue;
      }
      const uint8_t* src = x + ((n * s.height + iy) * s.width + ix) * s.channels;
      int64_t c = 0;
      for (; c + 16 <= s.channels; c += 16) {
        const __m256i v = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(src + c)));
        _mm256_storeu_si256(reinterpret_cast<__m256i*>(dst + c), _mm256_sub_epi16(v, z));
      }
      for (; c < s.channels; ++c) dst[c] = static_cast<int16_t>(src[c] - zero);
    }
  }
  if (s.depth() % 2) *dst = 0;
}

// A tile's accumulators (rows x 16 channels) through the output stage, stored as uint8 at out[m, c] for the
// tile's valid rows and the panel's valid channels.
template <int kTileRows>
__attribute__((target("avx2"))) void store_tile(const __m256i (&acc)[kTileRows][2], int64_t rows, int64_t c0,
                                                int64_t out_channels, const Stage8* stages, uint8_t* out) {
  for (int h = 0; h < 2; ++h) {
    const int64_t c = c0 + 8 * h;
    if (c >= out_channels) break;
    const Stage8 stage = stages[c / 8];  // a copy: the stores through uint8_t* cannot change it, so it stays in
                                         // registers (the table would be read again after every store)
    for (int64_t r = 0; r < rows; ++r)
      qc_avx2::store_codes(out + r * out_channels + c, stage8(acc[r][h], stage), out_channels - c);
  }
}

// A byte tile's accumulators finished: taps outside the input (set in `outside`, one mask per row) get
// z * (their weights' sum) back, which the bias took off for every tap; then the output stage and the store.
template <int kTileRows>
__attribute__((target("avx2"))) void finish_tile(__m256i (&acc)[kTileRows][2], const int32_t* tap_sums,
                                                 int64_t rows, const uint64_t* outside, int32_t x_zero, int64_t c0,
                                                 int64_t out_channels, const Stage8* stages, uint8_t* out) {
  const __m256i zero = _mm256_set1_epi32(x_zero);
  for (int64_t r = 0; r < rows; ++r)
    for (uint64_t mask = outside[r]; mask != 0; mask &= mask - 1) {
      const int32_t* sums = tap_sums + __builtin_ctzll(mask) * kChannels;
      for (int h = 0; h < 2; ++h) {
        const __m256i w = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(sums + 8 * h));
        acc[r][h] = _mm256_add_epi32(acc[r][h], _mm256_mullo_epi32(zero, w));
      }
    }
  store_tile(acc, rows, c0, out_channels, stages, out);
}

// kRows x 16 accumulators over the whole depth for one tile and one panel, then the output stage, stored as
// uint8 at out[m, c] for the tile's valid rows and the panel's valid channels. The accumulators are named
// variables, not an array, so that they stay in the sixteen vector registers with the two weight vectors and
// the broadcast activations.
#define QC_ROWS(X) X(0) X(1) X(2) X(3) X(4) X(5)
__attribute__((target("avx2"))) void tile_panel(const int16_t* a, const int16_t* b, int64_t pairs, int64_t rows,
                                                int64_t c0, int64_t out_channels, const Stage8* stages,
                                                uint8_t* out) {
  static_assert(kRows == 6, "QC_ROWS names six rows");
#define QC_ZERO(r) __m256i acc##r##_0 = _mm256_setzero_si256(), acc##r##_1 = _mm256_setzero_si256();
  QC_ROWS(QC_ZERO)
#undef QC_ZERO
  const int64_t stride = 2 * pairs;
  for (int64_t j = 0; j < pairs; ++j) {
    const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + 32 * j));
    const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + 32 * j + 16));
#define QC_STEP(r)                                                         \
  {                                                                        \
    int32_t pair;                                                          \
    memcpy(&pair, a + r * stride + 2 * j, sizeof pair);                    \
    const __m256i v = _mm256_set1_epi32(pair);                             \
    acc##r##_0 = _mm256_add_epi32(acc##r##_0, _mm256_madd_epi16(v, b0));   \
    acc##r##_1 = _mm256_add_epi32(acc##r##_1, _mm256_madd_epi16(v, b1));   \
  }
    QC_ROWS(QC_STEP)
#undef QC_STEP
  }
  alignas(32) __m256i acc[kRows][2];
#define QC_SAVE(r) acc[r][0] = acc##r##_0, acc[r][1] = acc##r##_1;
  QC_ROWS(QC_SAVE)
#undef QC_SAVE
  store_tile(acc, rows, c0, out_channels, stages, out);
}
#undef QC_ROWS

// Weight panels whose bytes stay in the L2 cache while every tile of a thread passes over them.
int64_t panels_per_block(int64_t pairs) { return std::max<int64_t>(1, (192 * 1024) / (pairs * 64)); }

// The byte form (see the top of this file).
constexpr int kByteRows = 4;  // 4 x 2 accumulators, 2 weight vectors, the broadcast, the ones and a product

#define QC_BYTE_ROWS(X) X(0) X(1) X(2) X(3)
// The byte GEMM over one tile and one panel; MAC(acc, v, b) adds the four products of each 32-bit lane.
#define QC_BYTE_TILE_PANEL(NAME, TARGET, SETUP, MAC)                                                        \
  __attribute__((target(TARGET))) void NAME(const uint8_t* a, const int8_t* b, int64_t quads,              \
                                            __m256i(&out)[kByteRows][2]) {                                   \
    static_assert(kByteRows == 4, "QC_BYTE_ROWS names four rows");                                         \
    SETUP                                                                                                   \
    QC_BYTE_ROWS(QC_ZERO)                                                                                   \
    const int64_t stride = 4 * quads;                                                                       \
    for (int64_t q = 0; q < quads; ++q) {                                                                   \
      const __m256i b0 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + 64 * q));                  \
      const __m256i b1 = _mm256_load_si256(reinterpret_cast<const __m256i*>(b + 64 * q + 32));             \
      QC_BYTE_ROWS(QC_STEP)                                                                                 \
    }                                                                                                       \
    QC_BYTE_ROWS(QC_SAVE)                                                                                   \
  }
#define QC_ZERO(r) __m256i acc##r##_0 = _mm256_setzero_si256(), acc##r##_1 = _mm256_setzero_si256();
#define QC_STEP(r)                                                                                          \
  {                                                                                                         \
    int32_t quad;                                                                                           \
    memcpy(&quad, a + r * stride + 4 * q, sizeof quad);                                                     \
    const __m256i v = _mm256_set1_epi32(quad);                                                              \
    acc##r##_0 = QC_MAC(acc##r##_0, v, b0);                                                                 \
    acc##r##_1 = QC_MAC(acc##r##_1, v, b1);                                                                 \
  }
#define QC_SAVE(r) out[r][0] = acc##r##_0, out[r][1] = acc##r##_1;
// AVX2: vpmaddubsw sums pairs in saturating int16 (exact for codes up to 127), vpmaddwd the pairs in int32
#define QC_MAC(acc, v, w) _mm256_add_epi32(acc, _mm256_madd_epi16(_mm256_maddubs_epi16(v, w), ones))
QC_BYTE_TILE_PANEL(byte_tile_panel, "avx2", const __m256i ones = _mm256_set1_epi16(1);, QC_MAC)
#undef QC_MAC
// VNNI: vpdpbusd sums the four products of each lane into int32, exact for every uint8 code (compilers
// older than GCC 11 / Clang 12 know no AVX-VNNI target: the AVX2 form serves there)
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define QC_HAVE_VNNI 1
#define QC_MAC(acc, v, w) _mm256_dpbusd_avx_epi32(acc, v, w)
QC_BYTE_TILE_PANEL(byte_tile_panel_avx_vnni, "avx2,avxvnni", , QC_MAC)
#undef QC_MAC
#else
#define QC_HAVE_VNNI 0
#endif
#undef QC_ZERO
#undef QC_STEP
#undef QC_SAVE
#undef QC_BYTE_TILE_PANEL
#undef QC_BYTE_ROWS

// Which byte GEMM runs: qc_conv_vnni's answer, or 0 for AVX2.
enum ByteIsa : int { kAvx2 = 0, kAvxVnni = 1, kAvx512Vnni = 2, kAmx = 3 };

// One tile and one panel in the byte form: the GEMM, the exceptions, the taps outside the input, the output
// stage.
__attribute__((target("avx2"))) void byte_tile(const uint8_t* tile, const int8_t* b, const int32_t* tap_sums,
                                               int64_t quads, int64_t rows, const std::vector<Exception>& exceptions,
                                               const uint64_t* outside, int32_t x_zero, int64_t c0,
                                               int64_t out_channels, const Stage8* stages, uint8_t* out, int isa) {
  alignas(32) __m256i acc[kByteRows][2];
#if QC_HAVE_VNNI
  if (isa == kAvxVnni)
    byte_tile_panel_avx_vnni(tile, b, quads, acc);
  else
#endif
    byte_tile_panel(tile, b, quads, acc);
  for (const Exception& e : exceptions) {  // the codes above 127: excess * weight, one at a time
    alignas(32) int32_t lanes[2][8];
    memcpy(lanes, acc[e.row], sizeof lanes);
    const int8_t* w = b + (e.k / 4) * 64 + (e.k % 4);
    for (int i = 0; i < kChannels; ++i) lanes[i / 8][i % 8] += e.excess * w[4 * i];
    memcpy(acc[e.row], lanes, sizeof lanes);
  }
  finish_tile(acc, tap_sums, rows, outside, x_zero, c0, out_channels, stages, out);
}

// Weights in panels of 16 output channels, kGroup consecutive depth indices per channel (2 for int16 pairs,
// 4 for byte quads): packed[p, g, i, t] = weight[16 p + i, kGroup g + t], 0 beyond the channels and depth.
int64_t packed_size(int64_t out_channels, int64_t depth, int64_t group) {
  return panels(out_channels) * ((depth + group - 1) / group) * group * kChannels;
}

template <int kGroup, class T>
void pack_panels(const int8_t* weight, int64_t out_channels, int64_t depth, T* packed) {
  const int64_t groups = (depth + kGroup - 1) / kGroup;
  for (int64_t p = 0; p < panels(out_channels); ++p)
    for (int64_t g = 0; g < groups; ++g)
      for (int64_t i = 0; i < kChannels; ++i)
        for (int64_t t = 0; t < kGroup; ++t) {
          const int64_t c = p * kChannels + i, k = kGroup * g + t;
          *packed++ = (c < out_channels && k < depth) ? weight[c * depth + k] : 0;
        }
}

// The GEMM's loop: tiles of pixels under blocks of weight panels. Threads split the tiles when there are
// enough of them, else the panels (a linear layer over one row). Each thread makes its scratch (the tile's
// buffers) once; gather(scratch, t) fills it with tile t, panel(scratch, t, p) runs panel p over it. A tile
// is gathered again for every block: a small cost against the block's multiply-adds.
template <class Scratch, class Gather, class Panel>
void tile_loop(int64_t tiles, int64_t all_panels, int64_t block, int threads, Scratch scratch_for_thread,
               Gather gather, Panel panel) {
  const bool by_tiles = tiles >= 2 * threads || all_panels < 2;
  qc_host::parallel_for(by_tiles ? tiles : all_panels, threads, [&](int64_t begin, int64_t end) {
    const int64_t t0 = by_tiles ? begin : 0, t1 = by_tiles ? end : tiles;
    const int64_t p0 = by_tiles ? 0 : begin, p1 = by_tiles ? all_panels : end;
    auto scratch = scratch_for_thread();
    for (int64_t pb = p0; pb < p1; pb += block)
      for (int64_t t = t0; t < t1; ++t) {
        gather(scratch, t);
        for (int64_t p = pb; p < std::min(p1, pb + block); ++p) panel(scratch, t, p);
      }
  });
}

}  // namespace

extern "C" {

// host_vnni512.cpp's form of qc_conv_gemm_bytes
int qc_conv_vnni512_supported();
void qc_conv_gemm_vnni512(const uint8_t* x, int32_t x_zero, const int8_t* packed, const int32_t* tap_sums,
                          const int64_t* shape, const int32_t* bias, const int32_t* m0, const int32_t* exponent,
                          int32_t out_zero, int32_t lo, int32_t hi, uint8_t* out, int threads);

// 1 if this CPU runs the kernels below (AVX2).
int qc_conv_supported() { return __builtin_cpu_supports("avx2") ? 1 : 0; }

// The VNNI byte GEMM this CPU runs: 2 (AVX-512 VNNI, host_vnni512.cpp), 1 (AVX-VNNI), or 0 (none: AVX2).
int qc_conv_vnni() {
  if (qc_conv_vnni512_supported()) return kAvx512Vnni;
  if (!QC_HAVE_VNNI) return kAvx2;
  return __builtin_cpu_supports("avxvnni") ? kAvxVnni : kAvx2;
}

// The best byte GEMM this CPU runs: 3 (AMX-INT8), or qc_conv_vnni's answer.
int qc_conv_byte_isa() { return amx_usable() ? kAmx : qc_conv_vnni(); }

// Whether this build runs the byte GEMM `isa` on this CPU (a form asked for that it cannot run is AVX2's).
static bool byte_isa_runs(int isa) {
  if (isa == kAvx2) return true;
  if (isa == kAmx) return false;  // host_amx.cpp's qc_conv_gemm_amx, not this function's
  if (isa == kAvx512Vnni) return qc_conv_vnni512_supported();
  if (!QC_HAVE_VNNI) return false;
  return isa == kAvxVnni && __builtin_cpu_supports("avxvnni");
}

// The number of int16 values qc_conv_pack writes for this layer.
int64_t qc_conv_packed_size(int64_t out_channels, int64_t depth) { return packed_size(out_channels, depth, 2); }

// weight[c, k] (int8, k over taps then input channels: the layout of weight.permute(0, 2, 3, 1)) as int16
// panels: packed[p, j, i, t] = weight[16 p + i, 2 j + t], 0 beyond the layer's channels and depth.
void qc_conv_pack(const int8_t* weight, int64_t out_channels, int64_t depth, int16_t* packed) {
  pack_panels<2>(weight, out_channels, depth, packed);
}

// out[n, oh, ow, c] (uint8, channels last) = output_stage(sum over taps and input channels of
// (x - x_zero) * weight + bias[c]) for x[n, h, w, channels] (uint8, channels last) and weights packed by
// qc_conv_pack. The caller has checked qc_host_vector_form's conditions (kernels/host.py).
void qc_conv_gemm(const uint8_t* x, int32_t x_zero, const int16_t* packed, const int64_t* shape,
                  const int32_t* bias, const int32_t* m0, const int32_t* exponent, int32_t out_zero, int32_t lo,
                  int32_t hi, uint8_t* out, int threads) {
  const ConvShape s = ConvShape::read(shape);
  const int64_t pairs = s.pairs(), tiles = (s.pixels() + kRows - 1) / kRows;
  const int64_t all_panels = panels(s.out_channels), block = panels_per_block(pairs);
  const StageTable table(bias, m0, exponent, s.out_channels, out_zero, lo, hi);
  const Stage8* stages = table.data();
  struct Scratch {
    std::unique_ptr<int16_t[]> tile;
    int64_t rows;
  };
  tile_loop(
      tiles, all_panels, block, threads,
      [&] { return Scratch{std::unique_ptr<int16_t[]>(new int16_t[static_cast<size_t>(kRows * 2 * pairs)]), 0}; },
      [&](Scratch& scratch, int64_t t) {
        scratch.rows = std::min<int64_t>(kRows, s.pixels() - t * kRows);
        for (int64_t r = 0; r < kRows; ++r) {
          int16_t* row = scratch.tile.get() + r * 2 * pairs;
          if (r < scratch.rows)
            gather_row(x, s, x_zero, t * kRows + r, row);
          else
            std::fill(row, row + 2 * pairs, int16_t{0});
        }
      },
      [&](Scratch& scratch, int64_t t, int64_t p) {
        tile_panel(scratch.tile.get(), packed + p * pairs * 2 * kChannels, pairs, scratch.rows, p * kChannels,
                   s.out_channels, stages, out + t * kRows * s.out_channels);
      });
}

// The byte form's weights: packed[p, q, i, t] = weight[16 p + i, 4 q + t] (int8), 0 beyond the layer's
// channels and depth; qc_conv_byte_packed_size bytes.
int64_t qc_conv_byte_packed_size(int64_t out_channels, int64_t depth) { return packed_size(out_channels, depth, 4); }

void qc_conv_byte_pack(const int8_t* weight, int64_t out_channels, int64_t depth, int8_t* packed) {
  pack_panels<4>(weight, out_channels, depth, packed);
}

// qc_conv_gemm in the byte form: the same result. bias must be the layer's bias minus x_zero * (the sum of
// each channel's weights), and tap_sums[p, t, i] the sum of channel 16 p + i's weights at tap t (at most 64
// taps); the caller has checked that the bias and every accumulator stay in int32.
// isa: 0 for AVX2 (codes above 127 corrected one product at a time), or qc_conv_vnni's answer (every code
// whole, no correction).
void qc_conv_gemm_bytes(const uint8_t* x, int32_t x_zero, const int8_t* packed, const int32_t* tap_sums,
                        const int64_t* shape, const int32_t* bias, const int32_t* m0, const int32_t* exponent,
                        int32_t out_zero, int32_t lo, int32_t hi, uint8_t* out, int threads, int isa) {
  if (!byte_isa_runs(isa)) isa = kAvx2;
  if (isa == kAvx512Vnni) {  // 512-bit vectors (host_vnni512.cpp)
    qc_conv_gemm_vnni512(x, x_zero, packed, tap_sums, shape, bias, m0, exponent, out_zero, lo, hi, out, threads);
    return;
  }
  const ConvShape s = ConvShape::read(shape);
  const int64_t quads = (s.depth() + 3) / 4, tiles = (s.pixels() + kByteRows - 1) / kByteRows;
  const int64_t all_panels = panels(s.out_channels), block = panels_per_block(quads * 2);
  const StageTable table(bias, m0, exponent, s.out_channels, out_zero, lo, hi);
  const Stage8* stages = table.data();
  const int64_t taps = s.kernel_h * s.kernel_w;
  struct Scratch {
    std::unique_ptr<uint8_t[]> tile;
    int64_t rows;
    std::vector<Exception> exceptions;
    uint64_t outside[kByteRows];
  };
  tile_loop(
      tiles, all_panels, block, threads,
      [&] { return Scratch{std::unique_ptr<uint8_t[]>(new uint8_t[static_cast<size_t>(kByteRows * 4 * quads)]), 0,
                           {}, {}}; },
      [&](Scratch& scratch, int64_t t) {
        scratch.rows = std::min<int64_t>(kByteRows, s.pixels() - t * kByteRows);
        scratch.exceptions.clear();
        for (int32_t r = 0; r < kByteRows; ++r) {
          uint8_t* row = scratch.tile.get() + r * 4 * quads;
          scratch.outside[r] = 0;
          if (r < scratch.rows)
            scratch.outside[r] = gather_bytes(x, s, t * kByteRows + r, r, row, scratch.exceptions, isa != kAvx2);
          else
            std::fill(row, row + 4 * quads, uint8_t{0});
        }
      },
      [&](Scratch& scratch, int64_t t, int64_t p) {
        byte_tile(scratch.tile.get(), packed + p * quads * 4 * kChannels, tap_sums + p * taps * kChannels, quads,
                  scratch.rows, scratch.exceptions, scratch.outside, x_zero, p * kChannels, s.out_channels, stages,
                  out + t * kByteRows * s.out_channels, isa);
      });
}

}  // extern "C"
