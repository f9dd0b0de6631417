// The byte GEMM on AMX-INT8 tiles, read in place: the tiles of pixels are loaded straight from the layer's
// input (channels last), with no gathered copy of the receptive fields. One tdpbusd multiplies a tile of 16
// pixels x 64 depth bytes by a tile of 16 quads x 16 output channels (a weight panel's 64 depth bytes).
//
// A tile row is one output pixel; the rows of a tile are `stride` bytes apart in the input. The input is
// copied with its padding written out as the zero point (padded_input.h; a 1x1 layer without padding is read
// as it is). Under a stride of 1, the padded width Wp makes every tap a fixed offset from its pixel: output
// pixel (oh, ow) at virtual index v = oh * Wp + ow reads input pixel v + ky * Wp + kx. So consecutive virtual
// pixels are consecutive input pixels for every tap, across output rows too; the Wp - out_w virtual pixels
// past each row's end are computed and never stored (2 of 9 on a 7 x 7 output, 2 of 58 on a 56 x 56 one). A
// strided layer's tiles are segments of up to 16 pixels of one output row, s pixels apart.
//
//   before: x [N, H, W, C], 3x3 pad 1   after: x' [N, H + 2, W + 2, C] (the zero point around), virtual
//           pixels v in [0, (out_h - 1) * Wp + out_w) per image, kernel row ky at x' + (v + ky * Wp) * C
//
// The depth goes a kernel row at a time: a kernel row's KW * C codes are side by side in the input, read in
// tiles of 64 bytes, and each kernel row's weights are padded with zeros to whole tiles, which the bytes read
// past the row's taps meet (an RGB stem's 7 x 3 codes: 21 of 64 bytes). A block is 32 pixels (two tiles)
// times two panels of 16 channels (two weight tiles): four accumulator tiles, each tile load used twice. The
// accumulators go through memory (32 x 32 int32) to the 512-bit output stage (stage16.h). A batch over weights
// that stay in the L2 cache goes image by image, each padded by the thread that runs it just before its blocks.
// Exact: the padding's taps add x_zero * w, which the bias (less x_zero * sum(w)) takes off again.
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "amx_tiles.h"
#include "conv_shape.h"
#include "core_traits.h"
#include "padded_input.h"
#include "parallel.h"
#include "stage16.h"

namespace {

using qc_avx2::ConvShape;
using qc_avx512::Stage16;
using qc_avx512::StageShared;

constexpr int kChannels = 16;  // output channels per panel: one tile's columns
constexpr int kBlock = 32;     // pixels per block: two tiles of 16 rows

#if QC_HAVE_AMX
#define QC_AMX_STAGE __attribute__((target("avx512f,avx512bw,amx-tile,amx-int8")))

// What every block of a layer shares. A tile is 16 output pixels of one image whose rows are `stride` bytes
// apart in the input: 16 consecutive virtual pixels (`flat`, stride 1), or up to 16 pixels of one output row
// (a segment: a stride of s pixels). Tile t of an image starts at base(t) bytes into it.
struct Layer {
  const uint8_t* x;                   // the (padded) input: image n at x + n * image_bytes
  int64_t image_bytes, readable;      // bytes between images; bytes of x a tile may read
  int64_t stride, pixel_bytes, step;  // between a tile's rows; a pixel's; between output rows' first pixels
  bool flat;                          // virtual pixels (else segments)
  int64_t virtual_w, virtual_pixels;  // flat: pixels per virtual row (the input's), per image
  int64_t segments;                   // segments per output row (a tile of 16 pixels each)
  int64_t out_h, out_w, out_channels, tiles;  // tiles per image
  std::vector<int64_t> offsets;       // each depth tile's offset from its pixel: a kernel row, 64 bytes of it
  const int8_t* packed;               // panels of offsets.size() depth tiles, 1 KB each
  int64_t panel_bytes;
  const Stage16* stages;
  StageShared shared;
  uint8_t* out;

  // the bytes a tile reads from its first row's start: 16 rows, each its depth tiles
  int64_t reach() const { return 15 * stride + offsets.back() + 64; }
  int64_t base(int64_t t) const {
    if (flat) return 16 * t * stride;
    return (t / segments) * step + (t % segments) * 16 * stride;
  }
  // out_pixel[r]: the output pixel (n, oh, ow as one index) of tile t's row r, or -1 for none
  void pixels(int64_t n, int64_t t, int64_t* out_pixel) const {
    int64_t oh = t / segments, ow = (t % segments) * 16, left = 16;  // a segment: one output row
    if (flat) oh = 16 * t / virtual_w, ow = 16 * t % virtual_w, left = std::min<int64_t>(16, virtual_pixels - 16 * t);
    int64_t at = (n * out_h + oh) * out_w + ow;
    for (int r = 0; r < 16; ++r, ++ow, ++at) {
      if (flat && ow == virtual_w) oh += 1, ow = 0, at = (n * out_h + oh) * out_w;  // the next virtual row
      out_pixel[r] = r < left && ow < out_w ? at : -1;
    }
  }
};

// Tiles 0-3 = tiles a0, a1 (16 rows each, s0 and s1 bytes apart) times panels b and b + panel_bytes (kPair) or b
// alone, over the layer's depth tiles. Tiles 0, 1: rows of a0, a1 under the first panel, 2, 3 under the second;
// 4, 5 the rows' depth tile, 6, 7 the panels'.
template <bool kPair>
QC_AMX_STAGE void block_sums(const Layer& l, const uint8_t* a0, int64_t s0, const uint8_t* a1, int64_t s1,
                             const int8_t* b) {
  _tile_zero(0);
  _tile_zero(1);
  if constexpr (kPair) {
    _tile_zero(2);
    _tile_zero(3);
  }
  const int64_t chunks = static_cast<int64_t>(l.offsets.size());
  const int64_t* offsets = l.offsets.data();
  const int8_t* b2 = b + l.panel_bytes;
  for (int64_t k = 0; k < chunks; ++k) {
    _tile_loadd(4, a0 + offsets[k], s0);
    _tile_loadd(6, b + 1024 * k, 64);
    _tile_dpbusd(0, 4, 6);
    _tile_loadd(5, a1 + offsets[k], s1);
    _tile_dpbusd(1, 5, 6);
    if constexpr (kPair) {
      _tile_loadd(7, b2 + 1024 * k, 64);
      _tile_dpbusd(2, 4, 7);
      _tile_dpbusd(3, 5, 7);
    }
  }
}

// acc[32][32] = the sums of tiles 0-3 (block_sums): rows 0-15 from tiles 0 and 2, 16-31 from 1 and 3.
template <bool kPair>
QC_AMX_STAGE void block_save(int32_t* acc) {
  if constexpr (kPair) {
    _tile_stored(2, acc + 16, 4 * kBlock);
    _tile_stored(3, acc + 16 * kBlock + 16, 4 * kBlock);
  }
  _tile_stored(0, acc, 4 * kBlock);
  _tile_stored(1, acc + 16 * kBlock, 4 * kBlock);
}

// The output stage of a block's 32 rows for panel p (and p + 1 where `pair`), each stored at its pixel.
template <bool kNegative>
QC_AMX_STAGE void block_store(const Layer& l, const int64_t* out_pixel, int64_t p, bool pair, const int32_t* acc) {
  const Stage16 s0 = l.stages[p], s1 = l.stages[pair ? p + 1 : p];
  const StageShared k = l.shared;
  const int64_t count0 = std::min<int64_t>(kChannels, l.out_channels - p * kChannels);
  const int64_t count1 = std::min<int64_t>(kChannels, l.out_channels - (p + 1) * kChannels);
  for (int r = 0; r < kBlock; ++r) {
    if (out_pixel[r] < 0) continue;
    const __m512i* row = reinterpret_cast<const __m512i*>(acc + r * kBlock);
    uint8_t* at = l.out + out_pixel[r] * l.out_channels + p * kChannels;
    qc_avx512::store16(at, qc_avx512::stage16_clamped<kNegative>(_mm512_add_epi32(row[0], s0.bias), s0, k),
                       count0);
    if (pair)
      qc_avx512::store16(at + kChannels,
                         qc_avx512::stage16_clamped<kNegative>(_mm512_add_epi32(row[1], s1.bias), s1, k), count1);
  }
}

// Tile t of image n: its first row's address and its rows' stride; a tile that would read past the input
// (a 1x1 layer read in place: its last tiles) is copied first, its rows side by side in `copy`.
const uint8_t* tile_rows(const Layer& l, int64_t n, int64_t t, std::vector<uint8_t>& copy, int64_t* stride) {
  const int64_t at = n * l.image_bytes + l.base(t);
  *stride = l.stride;
  if (at + l.reach() <= l.readable) return l.x + at;
  const int64_t pixel = l.pixel_bytes;  // a 1x1 layer's kernel row: one pixel's channels
  copy.assign(static_cast<size_t>(16 * pixel + l.offsets.back() + 64), 0);
  for (int64_t r = 0; r < 16 && at + r * l.stride + pixel <= l.readable; ++r)
    memcpy(copy.data() + r * pixel, l.x + at + r * l.stride, static_cast<size_t>(pixel));
  *stride = pixel;
  return copy.data();
}

// Blocks [begin, end) of the layer (block i: tiles 2j and 2j + 1 of image i / blocks, j = i % blocks; the
// second repeats the first, unstored, past the image's last), panels [p0, p1), on a thread whose tiles are
// configured. Panels go in groups whose weights stay in the L2 cache while the blocks pass. The output stage of
// each block runs after the next block's tile multiplies are issued: the AMX unit works through them while the
// 512-bit stage runs (two accumulator buffers, two sets of output pixels).
QC_AMX_STAGE void run_blocks(const Layer& l, int64_t begin, int64_t end, int64_t p0, int64_t p1) {
  alignas(64) int32_t acc[2][kBlock * kBlock];
  int64_t out_pixel[2][kBlock];
  struct Pending {
    int64_t panel = -1;  // none
    bool pair = false;
    int acc = 0, pixels = 0;
  } pending;
  const auto finish = [&l, &acc, &out_pixel](const Pending& d) {
    if (d.panel < 0) return;
    if (l.shared.round_negative)
      block_store<true>(l, out_pixel[d.pixels], d.panel, d.pair, acc[d.acc]);
    else
      block_store<false>(l, out_pixel[d.pixels], d.panel, d.pair, acc[d.acc]);
  };
  std::vector<uint8_t> copy0, copy1;
  const int64_t group = std::max<int64_t>(2, qc_host::block_bytes() / l.panel_bytes / 2 * 2);
  const int64_t blocks = (l.tiles + 1) / 2;
  int buffer = 0, pixels = 0;
  for (int64_t g0 = p0; g0 < p1; g0 += group)
    for (int64_t i = begin; i < end; ++i) {
      const int64_t n = i / blocks, t = 2 * (i % blocks);
      const bool second = t + 1 < l.tiles;
      int64_t s0 = 0, s1 = 0;
      const uint8_t* a0 = tile_rows(l, n, t, copy0, &s0);
      const uint8_t* a1 = second ? tile_rows(l, n, t + 1, copy1, &s1) : a0;
      if (!second) s1 = s0;
      pixels ^= 1;  // the pending block's pixels are the other set
      l.pixels(n, t, out_pixel[pixels]);
      if (second)
        l.pixels(n, t + 1, out_pixel[pixels] + 16);
      else
        std::fill(out_pixel[pixels] + 16, out_pixel[pixels] + kBlock, int64_t{-1});
      for (int64_t p = g0; p < std::min(p1, g0 + group); p += 2) {
        const bool pair = p + 1 < std::min(p1, g0 + group);
        const int8_t* panel = l.packed + p * l.panel_bytes;
        if (pair)
          block_sums<true>(l, a0, s0, a1, s1, panel);
        else
          block_sums<false>(l, a0, s0, a1, s1, panel);
        finish(pending);
        if (pair)
          block_save<true>(acc[buffer]);
        else
          block_save<false>(acc[buffer]);
        pending = Pending{p, pair, buffer, pixels};
        buffer ^= 1;
      }
    }
  finish(pending);
}

// A batch whose layer's weights stay in the L2 cache, image by image: each image is padded just before its
// blocks run, by the thread that runs them, so that its copy is still in the L2 cache when the tiles read it
// (a whole batch's copies outgrow it). `l` as for the whole batch, its x and readable not yet set.
QC_AMX_STAGE void run_images(const Layer& l, const uint8_t* x, const ConvShape& s, uint8_t zero, int64_t panels,
                             int threads) {
  ConvShape one = s;
  one.batch = 1;
  const int64_t room = std::max<int64_t>(0, l.base(l.tiles - 1) + l.reach() - l.image_bytes);
  const int64_t in_image = s.height * s.width * s.channels, out_image = s.out_h * s.out_w * s.out_channels;
  qc_host::parallel_for(s.batch, threads, [&](int64_t begin, int64_t end) {
    qc_amx::AmxTiles tiles;
    std::vector<uint8_t> own;
    uint8_t* copy = qc_host::scratch(l.image_bytes + room, own);  // this thread's
    Layer image = l;
    image.x = copy, image.readable = l.image_bytes + room;
    for (int64_t n = begin; n < end; ++n) {
      qc_host::pad_input(x + n * in_image, one, 0, zero, copy, 1);
      memset(copy + l.image_bytes, zero, static_cast<size_t>(room));
      image.out = l.out + n * out_image;
      run_blocks(image, 0, (l.tiles + 1) / 2, 0, panels);
    }
  });
}
#endif

}  // namespace

extern "C" {

// Whether qc_conv_gemm_amx runs this layer: AMX usable, no dilation, a tile's rows at least (a linear layer
// over fewer rows fills a sixteenth of a tile per row: the 512-bit VNNI form streams the weights faster), and
// not a 1x1 layer over 32 channels or fewer (their output stage outweighs their sums, and the VNNI form's thin
// tiles run it from the registers: 4-10% faster on MobileNetV2's, measured).
int qc_conv_amx_runs(const int64_t* shape) {
  const ConvShape s = ConvShape::read(shape);
  if (!qc_amx::amx_usable() || s.dilation_h != 1 || s.dilation_w != 1 || s.pixels() < 16) return 0;
  return s.kernel_h * s.kernel_w == 1 && s.channels <= 32 ? 0 : 1;
}

// out[n, oh, ow, c] (uint8, channels last) = output_stage(sum over taps and input channels of
// (x - x_zero) * weight + bias[c]) for x[n, h, w, channels] (uint8, channels last), the bias less x_zero * each
// channel's weight sum, for a layer qc_conv_amx_runs accepts; the caller has checked that the bias and every
// accumulator stay in int32. The weights: weight[c, k] (k over kernel rows, each KW * C taps padded with zeros
// to a multiple of 64) packed by host_conv.cpp's qc_conv_byte_pack, whose panels of 16 channels x 4 depth bytes
// are, 16 quads at a time, the 1 KB weight tiles.
void qc_conv_gemm_amx(const uint8_t* x, int32_t x_zero, const int8_t* packed, const int64_t* shape,
                      const int32_t* bias, const int32_t* m0, const int32_t* exponent, int32_t out_zero, int32_t lo,
                      int32_t hi, uint8_t* out, int threads) {
#if QC_HAVE_AMX
  const ConvShape s = ConvShape::read(shape);
  const int64_t row_chunks = (s.kernel_w * s.channels + 63) / 64;  // depth tiles per kernel row
  // a 1x1 layer without padding reads its input in place; others a copy with the padding written out, and
  // room after the last image for the last tiles' reads
  const bool in_place = s.kernel_h * s.kernel_w == 1 && s.pad_h == 0 && s.pad_w == 0;
  const ConvShape p = in_place ? s : qc_host::padded_shape(s, 0);
  const int64_t c = s.channels, bytes = p.batch * p.height * p.width * c;
  const bool flat = s.stride_h == 1 && s.stride_w == 1;
  const qc_avx512::Stage16Table table(bias, m0, exponent, s.out_channels);
  Layer l{nullptr, p.height * p.width * c, bytes, s.stride_w * c, c, s.stride_h * p.width * c, flat,
          p.width, (s.out_h - 1) * p.width + s.out_w, (s.out_w + 15) / 16, s.out_h, s.out_w, s.out_channels, 0, {},
          packed, 0, table.data(), qc_avx512::make_shared(out_zero, lo, hi), out};
  for (int64_t ky = 0; ky < s.kernel_h; ++ky)
    for (int64_t k = 0; k < row_chunks; ++k) l.offsets.push_back(ky * p.width * c + 64 * k);
  l.panel_bytes = static_cast<int64_t>(l.offsets.size()) * 1024;
  int64_t batch = s.batch;
  if (in_place && flat) {  // 1x1: the images' pixels are one range of virtual pixels, every one stored
    l.virtual_pixels = l.virtual_w = l.out_w = s.batch * s.out_h * s.out_w;
    l.out_h = batch = 1, l.image_bytes = 0;
  }
  l.tiles = flat ? (l.virtual_pixels + 15) / 16 : s.out_h * l.segments;
  const int64_t panels = (s.out_channels + kChannels - 1) / kChannels;
  if (!in_place && batch > 1 && batch >= threads && panels * l.panel_bytes <= qc_host::block_bytes()) {
    run_images(l, x, s, static_cast<uint8_t>(x_zero), panels, threads);
    return;
  }
  std::vector<uint8_t> own;
  if (in_place) {
    l.x = x;
  } else {
    const int64_t room = std::max<int64_t>(0, (batch - 1) * l.image_bytes + l.base(l.tiles - 1) + l.reach() - bytes);
    uint8_t* copy = qc_host::scratch(bytes + room, own);
    qc_host::pad_input(x, s, 0, static_cast<uint8_t>(x_zero), copy, threads);
    memset(copy + bytes, x_zero, static_cast<size_t>(room));
    l.x = copy, l.readable = bytes + room;
  }
  const int64_t blocks = batch * ((l.tiles + 1) / 2);
  // threads split the blocks, each thread's weights read by every block; or, where the weights outweigh the
  // (padded) input eightfold (ResNet-18's last layers at batch 1), the panels, each thread reading half of them
  const bool heavy = panels * l.panel_bytes > 8 * l.readable;
  const bool by_blocks = (blocks >= 2 * threads && !heavy) || panels < 4;
  qc_host::parallel_for(by_blocks ? blocks : (panels + 1) / 2, threads, [&](int64_t begin, int64_t end) {
    qc_amx::AmxTiles tiles;
    if (by_blocks)
      run_blocks(l, begin, end, 0, panels);
    else
      run_blocks(l, 0, blocks, 2 * begin, std::min(panels, 2 * end));
  });
#else
  (void)x, (void)x_zero, (void)packed, (void)shape, (void)bias, (void)m0, (void)exponent, (void)out_zero;
  (void)lo, (void)hi, (void)out, (void)threads;
#endif
}

}  // extern "C"
