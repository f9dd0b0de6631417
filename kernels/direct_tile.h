// A whole tile of a thin 1x1 layer read in place, for host_vnni512.cpp's direct path: eight consecutive pixels
// (`channels` codes apart) under one panel of sixteen output channels, or with P = 2 under the next panel too
// (each broadcast code feeding both; full-width 512-bit cores: 7-13% faster), sums, output stage and stores in
// one piece, so that the rows' addresses and the accumulators stay in registers. Taken up to kDirectTileQuads
// groups of four (depth 64), where the per-tile cost of panel_sums and finish_rows outweighed the sums
// (MobileNetV2's 16->96 and 24->144 layers 1.3-1.5x faster); deeper layers ran slower in this form.
#pragma once

#include <stdint.h>
#include <string.h>

#include "stage16.h"

namespace qc_avx512 {

constexpr int64_t kDirectTileQuads = 16;

// The tile with the stage's rounding of negative products chosen at compile time (StageShared::round_negative).
#define QC_EIGHT(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7)
template <bool kNegative, int P>
__attribute__((target("avx512f,avx512vnni"))) inline __attribute__((always_inline)) void direct_tile_as(
    const uint8_t* x, int64_t channels, const int8_t* panel, int64_t quads, const Stage16& st,
    const StageShared& k, uint8_t* out, int64_t out_channels, int64_t count, const int8_t* next,
    const Stage16* next_st) {
  static_assert(P == 1 || P == 2, "one or two panels");
#define QC_ZERO(r)                                                   \
  __m512i a##r = st.bias, b##r = P == 2 ? next_st->bias : st.bias; \
  const uint8_t* x##r = x + (r) * channels;
  QC_EIGHT(QC_ZERO)
#undef QC_ZERO
  for (int64_t q = 0; q < quads; ++q) {
    const __m512i w = _mm512_loadu_si512(panel + 64 * q);
    const __m512i v = P == 2 ? _mm512_loadu_si512(next + 64 * q) : w;
#define QC_STEP(r)                                                  \
  {                                                                 \
    int32_t quad;                                                   \
    memcpy(&quad, x##r + 4 * q, sizeof quad);                       \
    const __m512i xq = _mm512_set1_epi32(quad);                     \
    a##r = _mm512_dpbusd_epi32(a##r, xq, w);                        \
    if constexpr (P == 2) b##r = _mm512_dpbusd_epi32(b##r, xq, v); \
  }
    QC_EIGHT(QC_STEP)
#undef QC_STEP
  }
#define QC_FIRST(r) store16(out + (r) * out_channels, stage16_clamped<kNegative>(a##r, st, k), count);
  QC_EIGHT(QC_FIRST)
#undef QC_FIRST
  if constexpr (P == 2) {
    const Stage16 nst = *next_st;  // a copy, kept in registers (see stage16.h)
#define QC_SECOND(r) \
  store16(out + 16 + (r) * out_channels, stage16_clamped<kNegative>(b##r, nst, k), count - 16);
    QC_EIGHT(QC_SECOND)
#undef QC_SECOND
  }
}
#undef QC_EIGHT

// direct_tile_as for the layer's StageShared: P panels, `next` and `next_st` the second one's (P = 2).
template <int P>
__attribute__((target("avx512f,avx512vnni"))) inline __attribute__((always_inline)) void direct_tile(
    const uint8_t* x, int64_t channels, const int8_t* panel, int64_t quads, const Stage16& st,
    const StageShared& k, uint8_t* out, int64_t out_channels, int64_t count, const int8_t* next = nullptr,
    const Stage16* next_st = nullptr) {
  if (k.round_negative)
    direct_tile_as<true, P>(x, channels, panel, quads, st, k, out, out_channels, count, next, next_st);
  else
    direct_tile_as<false, P>(x, channels, panel, quads, st, k, out, out_channels, count, next, next_st);
}

}  // namespace qc_avx512
