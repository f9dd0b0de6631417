// AMX-INT8 tiles for the byte GEMM of host_amx.cpp: the tile configuration, the per-thread tile registers, and
// whether this CPU and this process may use them.
#pragma once

#include <cpuid.h>
#include <stdint.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <immintrin.h>

namespace qc_amx {

// AMX-INT8 (Intel Sapphire Rapids and later): one tile multiply (tdpbusd) sums the uint8 x int8 products of
// 16 rows x 64 depth bytes x 16 channels into a 16 x 16 int32 tile, every code whole, as VNNI does; the
// right-hand tile is 16 quads (4 depth bytes) x 16 channels, the byte form's panel layout. Linux hands out the
// tile registers only on request (arch_prctl), once per process.
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
  for (int t = 0; t < 8; ++t) c.rows[t] = 16, c.colsb[t] = 64;
  return c;
}
constexpr TileConfig kTileConfig = tile_config();

// The tile registers configured on this thread while it lives, released after: eight tiles of 16 rows x 64
// bytes (accumulators: 16 x 16 int32; pixels: 16 rows x 64 bytes; weights: 16 quads x 16 channels).
struct AmxTiles {
  __attribute__((target("amx-tile"))) AmxTiles() { _tile_loadconfig(&kTileConfig); }
  __attribute__((target("amx-tile"))) ~AmxTiles() { _tile_release(); }
  AmxTiles(const AmxTiles&) = delete;
  AmxTiles& operator=(const AmxTiles&) = delete;
};

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
