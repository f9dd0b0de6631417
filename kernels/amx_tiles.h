// AMX-INT8 tiles for the byte GEMM of host_conv.cpp: the tile configuration, the per-thread tile registers, the
// tile multiplies, and whether this CPU and this process may use them.
#pragma once

#include <cpuid.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <immintrin.h>

namespace qc_amx {

// AMX-INT8 (Intel Sapphire Rapids and later): the byte GEMM on tiles. One tile multiply (tdpbusd) sums the
// uint8 x int8 products of 16 pixels x 64 depth bytes x 16 channels into a 16 x 16 int32 tile, every code whole,
// as VNNI does. The byte form's weights already are tdpbusd's right-hand layout (a panel's quads are rows of
// 16 channels x 4 bytes); the depth is padded with zero quads to whole tiles of 64 bytes, in the weights and
// in the gathered rows alike. Linux hands out the tile registers only on request (arch_prctl), once per process.
constexpr int kAmxRows = 32;  // pixels per scratch tile, at most: two tiles of 16 rows under each weight tile
constexpr int64_t kAmxQuads = 16;  // quads per tile multiply: 64 bytes of depth

inline int64_t amx_quads(int64_t depth) { return kAmxQuads * ((depth + 4 * kAmxQuads - 1) / (4 * kAmxQuads)); }

#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#define QC_HAVE_AMX 1
struct alignas(64) TileConfig {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

// A constant in memory: GCC's ldtilecfg names only the first bytes of its operand as read, so the stores that
// fill a local configuration before it may be dropped.
constexpr TileConfig tile_config() {
  TileConfig c{};
  c.palette = 1;
  for (int t = 0; t < 5; ++t) c.rows[t] = 16, c.colsb[t] = 64;
  return c;
}
constexpr TileConfig kTileConfig = tile_config();

// The tile registers configured on this thread while it lives (tiles 0, 1: 16 x 16 int32; 2: 16 quads x 16
// channels of weights; 3, 4: 16 rows x 64 bytes of pixels), released after.
struct AmxTiles {
  __attribute__((target("amx-tile"))) AmxTiles() { _tile_loadconfig(&kTileConfig); }
  __attribute__((target("amx-tile"))) ~AmxTiles() { _tile_release(); }
  AmxTiles(const AmxTiles&) = delete;
  AmxTiles& operator=(const AmxTiles&) = delete;
};

// acc (16 rows x 16 int32) = the 16 rows a[r * a_stride ...] times one panel b over `chunks` x 64 bytes, on a
// thread whose AmxTiles live.
__attribute__((target("amx-tile,amx-int8"))) inline void amx_tile_panel(const uint8_t* a, int64_t a_stride,
                                                                  const int8_t* b, int64_t chunks, int32_t* acc) {
  _tile_zero(0);
  for (int64_t k = 0; k < chunks; ++k) {
    _tile_loadd(2, b + 1024 * k, 64);
    _tile_loadd(3, a + 64 * k, a_stride);
    _tile_dpbusd(0, 3, 2);
  }
  _tile_stored(0, acc, 64);
}

// The same for 32 rows, each weight tile loaded once for both halves (deep layers, whose 16 rows alone fill
// the L1 cache: the weights then come from L2 half as often).
__attribute__((target("amx-tile,amx-int8"))) inline void amx_tile_panel32(const uint8_t* a, int64_t a_stride,
                                                                    const int8_t* b, int64_t chunks, int32_t* acc) {
  _tile_zero(0);
  _tile_zero(1);
  const uint8_t* lower = a + 16 * a_stride;
  for (int64_t k = 0; k < chunks; ++k) {
    _tile_loadd(2, b + 1024 * k, 64);
    _tile_loadd(3, a + 64 * k, a_stride);
    _tile_dpbusd(0, 3, 2);
    _tile_loadd(4, lower + 64 * k, a_stride);
    _tile_dpbusd(1, 4, 2);
  }
  _tile_stored(0, acc, 64);
  _tile_stored(1, acc + 16 * 16, 64);
}
#else
struct AmxTiles {};
#define QC_HAVE_AMX 0
#endif

// Whether this CPU has AMX-INT8 and the kernel lets this process use the tiles.
inline bool amx_usable() {
#if QC_HAVE_AMX
  static const bool usable = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d) || !((d >> 24) & 1) || !((d >> 25) & 1)) return false;
    return syscall(SYS_arch_prctl, 0x1023 /* ARCH_REQ_XCOMP_PERM */, 18 /* XFEATURE_XTILEDATA */) == 0;
  }();
  return usable;
#else
  return false;
#endif
}

}  // namespace qc_amx
