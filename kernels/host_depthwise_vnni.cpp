// The CPU twin's depthwise convolutions in integer arithmetic on AVX-512 VNNI: one filter per channel, uint8
// activations in channels-last order, int8 weights, the output stage of gemmlowp.h fused (stage16.h), uint8 out
// in channels-last order. Built with host_conv.cpp into one library (kernels/host_conv.py).
//
// vpdpbusd adds four uint8 x int8 products into each int32 lane. Here a lane is one channel and its four bytes
// are four taps of one window column, window rows ky = 4g .. 4g + 3 (g a "group"), so a 3x3 window is three
// instructions per sixteen channels and pixel. A channel's codes in those rows lie whole input rows apart, so
// for each output row (image n, row oy) and block of channels the columns its windows read are first gathered
// into groups of four, "quads":
//
//   quads[g][p][4c + j] = x[n, oy * stride_h - pad_h + (4g + j) * dilation_h, p - pad_w, c]
//
// for every padded column p, with the zero point where that row or column is padding, for 4g + j >= kernel_h
// (whose weights are 0) and for the channels beyond the layer's. Pixel ox then sums
// vpdpbusd(quads[g][ox * stride_w + kx * dilation_w], w[g][kx]) over g and kx: each quad is read by up to
// kernel_w pixels while it is in the L1 cache. Padding adds zero_point * w like every tap, and the accumulator
// starts at bias[c] - zero_point * sum_t w[t, c], which takes it off again: exact in int32 arithmetic.
#include <stdint.h>
#include <string.h>

#include <algorithm>
#include <vector>

#include "conv_shape.h"
#include "parallel.h"
#include "stage16.h"

namespace {

using qc_avx2::ConvShape;
using qc_avx512::Stage16;
using qc_avx512::StageShared;
using qc_avx512::store16;

#define QC_DW_VNNI __attribute__((target("avx512f,avx512bw,avx512vl,avx512vnni")))

// A layer's dimensions as the row loop uses them.
struct Plan {
  int64_t groups;   // groups of four window rows: ceil(kernel_h / 4)
  int64_t blocks;   // blocks of sixteen channels
  int64_t padded;   // padded columns: width + 2 * pad_w
  int64_t block_bytes() const { return padded * groups * 64; }  // one block's quads
};

// The 4 x 4 transpose of four vectors' 128-bit lanes: lane k of v[m] goes to lane m of the k-th result.
QC_DW_VNNI inline void transpose_lanes(__m512i (&v)[4]) {
  const __m512i t0 = _mm512_shuffle_i64x2(v[0], v[1], 0x44), t1 = _mm512_shuffle_i64x2(v[0], v[1], 0xEE);
  const __m512i t2 = _mm512_shuffle_i64x2(v[2], v[3], 0x44), t3 = _mm512_shuffle_i64x2(v[2], v[3], 0xEE);
  v[0] = _mm512_shuffle_i64x2(t0, t2, 0x88), v[1] = _mm512_shuffle_i64x2(t0, t2, 0xDD);
  v[2] = _mm512_shuffle_i64x2(t1, t3, 0x88), v[3] = _mm512_shuffle_i64x2(t1, t3, 0xDD);
}

// The quads of blocks 4w .. 4w + 3 (64 channels, all the layer's) into quads[m * block_bytes]: the four rows'
// bytes interleaved by pairs of rows, then by pairs of pairs (which leaves channels 16k + 4m .. 16k + 4m + 3 in
// lane k of the m-th vector), then the lanes transposed into channel order. columns[r * padded + p]: where
// padded column p of window row r (4g + j) starts.
QC_DW_VNNI void gather_wide(const uint8_t* const* columns, const Plan& plan, int64_t w, uint8_t* quads) {
  const int64_t padded = plan.padded, groups = plan.groups, block_bytes = plan.block_bytes();
  for (int64_t p = 0; p < padded; ++p)
    for (int64_t g = 0; g < groups; ++g) {
      __m512i a[4];
      for (int j = 0; j < 4; ++j) a[j] = _mm512_loadu_si512(columns[(4 * g + j) * padded + p] + 64 * w);
      const __m512i lo01 = _mm512_unpacklo_epi8(a[0], a[1]), hi01 = _mm512_unpackhi_epi8(a[0], a[1]);
      const __m512i lo23 = _mm512_unpacklo_epi8(a[2], a[3]), hi23 = _mm512_unpackhi_epi8(a[2], a[3]);
      __m512i v[4] = {_mm512_unpacklo_epi16(lo01, lo23), _mm512_unpackhi_epi16(lo01, lo23),
                      _mm512_unpacklo_epi16(hi01, hi23), _mm512_unpackhi_epi16(hi01, hi23)};
      transpose_lanes(v);
      for (int m = 0; m < 4; ++m) _mm512_store_si512(quads + m * block_bytes + (p * groups + g) * 64, v[m]);
    }
}

// The quads of block b alone (sixteen channels, `count` of them the layer's): the four rows' sixteen codes, one
// row per 128-bit lane, in channel order by the 4 x 4 transpose of their dwords, then of each lane's bytes.
QC_DW_VNNI void gather_narrow(const uint8_t* const* columns, const Plan& plan, int64_t b, int64_t count,
                              uint8_t zero, uint8_t* quads) {
  const int64_t padded = plan.padded, groups = plan.groups;
  const __m512i across = _mm512_setr_epi32(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15);
  const __m512i within =
      _mm512_broadcast_i32x4(_mm_setr_epi8(0, 4, 8, 12, 1, 5, 9, 13, 2, 6, 10, 14, 3, 7, 11, 15));
  const __m128i zeros = _mm_set1_epi8(static_cast<char>(zero));
  const __mmask16 lanes = count >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << count) - 1);
  auto row = [&](int64_t r, int64_t p) { return columns[r * padded + p] + 16 * b; };  // (a lambda has no target)
  for (int64_t p = 0; p < padded; ++p)
    for (int64_t g = 0; g < groups; ++g) {
      __m512i v = _mm512_castsi128_si512(_mm_mask_loadu_epi8(zeros, lanes, row(4 * g, p)));
      v = _mm512_inserti32x4(v, _mm_mask_loadu_epi8(zeros, lanes, row(4 * g + 1, p)), 1);
      v = _mm512_inserti32x4(v, _mm_mask_loadu_epi8(zeros, lanes, row(4 * g + 2, p)), 2);
      v = _mm512_inserti32x4(v, _mm_mask_loadu_epi8(zeros, lanes, row(4 * g + 3, p)), 3);
      _mm512_store_si512(quads + (p * groups + g) * 64,
                         _mm512_shuffle_epi8(_mm512_permutexvar_epi32(across, v), within));
    }
}

// kPixels pixels from ox of block_row's unrolled form: independent accumulators, so the instructions' latency
// overlaps.
template <int kPixels, int kTerms>
QC_DW_VNNI inline __attribute__((always_inline)) void pixels(const uint8_t* const (&base)[kTerms],
                                                              const __m512i (&w)[kTerms], int64_t ox, int64_t step,
                                                              const Stage16& stage, const StageShared& k,
                                                              uint8_t* o, int64_t out_channels, int64_t count) {
  __m512i acc[kPixels];
  for (int i = 0; i < kPixels; ++i) acc[i] = stage.bias;
  for (int t = 0; t < kTerms; ++t)
    for (int i = 0; i < kPixels; ++i)
      acc[i] = _mm512_dpbusd_epi32(acc[i], _mm512_load_si512(base[t] + (ox + i) * step), w[t]);
  for (int i = 0; i < kPixels; ++i)
    store16(o + (ox + i) * out_channels, qc_avx512::stage16_biased(acc[i], stage, k), count);
}

// Block b of one output row from its quads. weights: [blocks][groups][kernel_w] vectors of 64 bytes (channel
// c's four taps at 4c); each (g, kx) is a "term", one vpdpbusd per pixel. kTerms > 0 unrolls them (3: a 3x3
// window); 0 loops. The accumulators start at the bias (which holds the zero point's share).
template <int kTerms>
QC_DW_VNNI void block_row(const uint8_t* quads, const int8_t* weights, const ConvShape& s, const Plan& plan,
                          int64_t b, const Stage16& stage_in, const StageShared& shared, uint8_t* out) {
  // locals, not the structs' fields: the stores may alias anything, which would load those again
  const int64_t groups = plan.groups, kernel_w = s.kernel_w, terms = groups * kernel_w;
  const int64_t step = s.stride_w * groups * 64, out_w = s.out_w, out_channels = s.out_channels;
  const int64_t count = out_channels - 16 * b;
  const Stage16 stage = stage_in;  // kept in registers (see stage16.h)
  const StageShared k = shared;
  const int8_t* w0 = weights + b * terms * 64;
  // term t = (g, kx): its quads start at column kx * dilation_w, group g
  auto offset = [&](int64_t t) { return ((t % kernel_w) * s.dilation_w * groups + t / kernel_w) * 64; };
  uint8_t* o = out + 16 * b;
  int64_t ox = 0;
  if constexpr (kTerms > 0) {
    __m512i w[kTerms];
    const uint8_t* base[kTerms];
    for (int t = 0; t < kTerms; ++t) w[t] = _mm512_loadu_si512(w0 + t * 64), base[t] = quads + offset(t);
    for (; ox + 8 <= out_w; ox += 8) pixels<8>(base, w, ox, step, stage, k, o, out_channels, count);
    if (ox + 4 <= out_w) pixels<4>(base, w, ox, step, stage, k, o, out_channels, count), ox += 4;
    for (; ox < out_w; ++ox) pixels<1>(base, w, ox, step, stage, k, o, out_channels, count);
    return;
  }
  for (; ox < out_w; ++ox) {
    __m512i acc = stage.bias;
    for (int64_t t = 0; t < terms; ++t)
      acc = _mm512_dpbusd_epi32(acc, _mm512_load_si512(quads + offset(t) + ox * step),
                                _mm512_loadu_si512(w0 + t * 64));
    store16(o + ox * out_channels, qc_avx512::stage16_biased(acc, stage, k), count);
  }
}

// kPixels pixels of two output rows from the same quads (window rows 0..3): the upper row's weights hold the
// taps in rows 0..2 of each lane, the lower row's in rows 1..3.
template <int kPixels>
QC_DW_VNNI inline __attribute__((always_inline)) void pixel_pairs(const uint8_t* const (&base)[3],
                                                                   const __m512i (&upper)[3],
                                                                   const __m512i (&lower)[3], int64_t ox,
                                                                   int64_t step, const Stage16& stage,
                                                                   const StageShared& k, uint8_t* o,
                                                                   int64_t row_bytes, int64_t out_channels,
                                                                   int64_t count) {
  __m512i a[kPixels], b[kPixels];
  for (int i = 0; i < kPixels; ++i) a[i] = b[i] = stage.bias;
  for (int t = 0; t < 3; ++t)
    for (int i = 0; i < kPixels; ++i) {
      const __m512i q = _mm512_load_si512(base[t] + (ox + i) * step);
      a[i] = _mm512_dpbusd_epi32(a[i], q, upper[t]);
      b[i] = _mm512_dpbusd_epi32(b[i], q, lower[t]);
    }
  for (int i = 0; i < kPixels; ++i) {
    store16(o + (ox + i) * out_channels, qc_avx512::stage16_biased(a[i], stage, k), count);
    store16(o + row_bytes + (ox + i) * out_channels, qc_avx512::stage16_biased(b[i], stage, k), count);
  }
}

// Block b of two output rows of a 3x3 window with stride 1 down the rows (see depthwise_rows): one gather of
// four input rows serves both. weights_lower: the weights one window row down in each lane.
QC_DW_VNNI void block_pair(const uint8_t* quads, const int8_t* weights, const int8_t* weights_lower,
                           const ConvShape& s, int64_t b, const Stage16& stage_in, const StageShared& shared,
                           uint8_t* out) {
  const int64_t step = s.stride_w * 64, out_w = s.out_w, out_channels = s.out_channels;
  const int64_t count = out_channels - 16 * b, row_bytes = out_w * out_channels;
  const Stage16 stage = stage_in;  // kept in registers (see stage16.h)
  const StageShared k = shared;
  __m512i upper[3], lower[3];
  const uint8_t* base[3];
  for (int t = 0; t < 3; ++t) {
    upper[t] = _mm512_loadu_si512(weights + (3 * b + t) * 64);
    lower[t] = _mm512_loadu_si512(weights_lower + (3 * b + t) * 64);
    base[t] = quads + t * s.dilation_w * 64;
  }
  uint8_t* o = out + 16 * b;
  int64_t ox = 0;
  for (; ox + 4 <= out_w; ox += 4)
    pixel_pairs<4>(base, upper, lower, ox, step, stage, k, o, row_bytes, out_channels, count);
  for (; ox < out_w; ++ox)
    pixel_pairs<1>(base, upper, lower, ox, step, stage, k, o, row_bytes, out_channels, count);
}

// Output row r (image r / out_h), and with `pair` row r + 1 as well (a 3x3 window with stride and dilation 1
// down the rows, whose next row reads the same input rows but the first and one more): where each window row's
// padded columns start, then block by block (64 channels at a time, then sixteen) the quads and the pixels.
// columns: room for 4 * groups * padded pointers; quads: for four blocks' quads, 64-byte aligned; zeros: the zero
// point, channels rounded up to 64 of it. weights_lower: block_pair's, where `pair`.
QC_DW_VNNI void depthwise_rows(const uint8_t* x, const ConvShape& s, const Plan& plan, const uint8_t* zeros,
                               uint8_t zero, const int8_t* weights, const int8_t* weights_lower,
                               const Stage16* stages, const StageShared& shared, int64_t r, bool pair,
                               const uint8_t** columns, uint8_t* quads, uint8_t* out) {
  const int64_t n = r / s.out_h, oy = r % s.out_h, padded = plan.padded, rows = s.kernel_h + (pair ? 1 : 0);
  for (int64_t ky = 0; ky < 4 * plan.groups; ++ky) {
    const int64_t iy = oy * s.stride_h - s.pad_h + ky * s.dilation_h;
    const bool inside = ky < rows && iy >= 0 && iy < s.height;
    const uint8_t* row = inside ? x + (n * s.height + iy) * s.width * s.channels : nullptr;
    for (int64_t p = 0; p < padded; ++p)
      columns[ky * padded + p] =
          inside && p >= s.pad_w && p < s.pad_w + s.width ? row + (p - s.pad_w) * s.channels : zeros;
  }
  const bool three = s.kernel_h == 3 && s.kernel_w == 3;
  auto block = [&](const uint8_t* q, int64_t b) {
    if (pair)
      block_pair(q, weights, weights_lower, s, b, stages[b], shared, out);
    else if (three)
      block_row<3>(q, weights, s, plan, b, stages[b], shared, out);
    else
      block_row<0>(q, weights, s, plan, b, stages[b], shared, out);
  };
  const int64_t wide = s.channels / 64, block_bytes = plan.block_bytes();
  for (int64_t w = 0; w < wide; ++w) {
    gather_wide(columns, plan, w, quads);
    for (int64_t m = 0; m < 4; ++m) block(quads + m * block_bytes, 4 * w + m);
  }
  for (int64_t b = 4 * wide; b < plan.blocks; ++b) {
    gather_narrow(columns, plan, b, s.channels - 16 * b, zero, quads);
    block(quads, b);
  }
}

}  // namespace

extern "C" {

// 1 if this CPU runs qc_conv_depthwise_vnni.
int qc_conv_depthwise_vnni_supported() {
  return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
                 __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512vnni")
             ? 1
             : 0;
}

// qc_conv_depthwise's convolution in the integer form above. packed: int8 [blocks][groups][kernel_w][16][4], the
// weight of channel 16b + c, tap (4g + j, kx) at [b][g][kx][c][j] (0 beyond the window and the channels), and
// for a 3x3 window after it the same with each tap one row down (j = ky + 1); start: int32 [channels],
// bias[c] - x_zero * sum_t w[t, c] (wrapped to 32 bits). The caller has checked qc_host_vector_form's
// conditions (for the bias, not the start) and qc_conv_depthwise_vnni_supported().
void qc_conv_depthwise_vnni(const uint8_t* x, int32_t x_zero, const int8_t* packed, const int64_t* shape,
                            const int32_t* start, const int32_t* m0, const int32_t* exponent, int32_t out_zero,
                            int32_t lo, int32_t hi, uint8_t* out, int threads) {
  const ConvShape s = ConvShape::read(shape);
  const Plan plan{(s.kernel_h + 3) / 4, (s.channels + 15) / 16, s.width + 2 * s.pad_w};
  const qc_avx512::Stage16Table table(start, m0, exponent, s.out_channels);
  const StageShared shared = qc_avx512::make_shared(out_zero, lo, hi);
  const auto zero = static_cast<uint8_t>(x_zero);
  const std::vector<uint8_t> zeros(static_cast<size_t>((s.channels + 63) / 64 * 64), zero);
  const bool three = s.kernel_h == 3 && s.kernel_w == 3;
  const bool pairs = three && s.stride_h == 1 && s.dilation_h == 1;  // two output rows per gather
  const int8_t* lower = three ? packed + plan.blocks * 3 * 64 : nullptr;
  const int64_t units = pairs ? (s.out_h + 1) / 2 : s.out_h;  // per image
  qc_host::parallel_for(s.batch * units, threads, [&](int64_t begin, int64_t end) {
    std::vector<const uint8_t*> columns(static_cast<size_t>(4 * plan.groups * plan.padded));
    std::vector<uint8_t> storage(static_cast<size_t>(4 * plan.block_bytes() + 64));
    uint8_t* quads = reinterpret_cast<uint8_t*>((reinterpret_cast<uintptr_t>(storage.data()) + 63) & ~uintptr_t{63});
    for (int64_t u = begin; u < end; ++u) {
      const int64_t n = u / units, oy = pairs ? 2 * (u % units) : u % units, r = n * s.out_h + oy;
      depthwise_rows(x, s, plan, zeros.data(), zero, packed, lower, table.data(), shared, r,
                     pairs && oy + 1 < s.out_h, columns.data(), quads, out + r * s.out_w * s.out_channels);
    }
  });
}

}  // extern "C"
