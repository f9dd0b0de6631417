// This CPU's int8 multiply-accumulate peak on one core, measured with the AVX2
// sequence fbgemm's kernels use without VNNI: two vpmaddubsw (u8 x s8 pairs to
// int16), their saturating int16 sum (vpaddsw), vpmaddwd to int32, vpaddd; in 8
// independent chains held in registers so the loop is throughput-bound. Each
// vpmaddubsw does 32 multiply-accumulates. And the AVX-512 VNNI peak: 512-bit
// vpdpbusd (64 multiply-accumulates each) in 16 independent chains, called only
// where the CPU has it.
#include <immintrin.h>
#include <stdint.h>

#define QC_STEP(k)                                                                              \
  a##k = _mm256_xor_si256(a##k, flip); /* new activations each step: nothing hoists */         \
  acc##k = _mm256_add_epi32(acc##k, _mm256_madd_epi16(_mm256_adds_epi16(_mm256_maddubs_epi16(a##k, b), \
                                                                         _mm256_maddubs_epi16(a##k, c)), ones));

extern "C" int64_t qc_int8_peak_loop(int64_t iterations, int32_t* sink) {
  const __m256i b = _mm256_set1_epi8(-2), c = _mm256_set1_epi8(3), ones = _mm256_set1_epi16(1), flip = _mm256_set1_epi8(5);
  __m256i a0 = _mm256_set1_epi8(1), a1 = _mm256_set1_epi8(2), a2 = _mm256_set1_epi8(3), a3 = _mm256_set1_epi8(4);
  __m256i a4 = _mm256_set1_epi8(5), a5 = _mm256_set1_epi8(6), a6 = _mm256_set1_epi8(7), a7 = _mm256_set1_epi8(8);
  __m256i acc0 = _mm256_setzero_si256(), acc1 = acc0, acc2 = acc0, acc3 = acc0, acc4 = acc0, acc5 = acc0,
          acc6 = acc0, acc7 = acc0;
  for (int64_t i = 0; i < iterations; ++i) {
    QC_STEP(0) QC_STEP(1) QC_STEP(2) QC_STEP(3) QC_STEP(4) QC_STEP(5) QC_STEP(6) QC_STEP(7)
  }
  __m256i total = _mm256_add_epi32(_mm256_add_epi32(_mm256_add_epi32(acc0, acc1), _mm256_add_epi32(acc2, acc3)),
                                   _mm256_add_epi32(_mm256_add_epi32(acc4, acc5), _mm256_add_epi32(acc6, acc7)));
  *sink = _mm256_extract_epi32(total, 0);
  return iterations * 8 * 64;  // multiply-accumulates
}

#define QC_CHAINS(X) X(0) X(1) X(2) X(3) X(4) X(5) X(6) X(7) X(8) X(9) X(10) X(11) X(12) X(13) X(14) X(15)

extern "C" __attribute__((target("avx512f,avx512vnni"))) int64_t qc_int8_peak_vnni512_loop(int64_t iterations,
                                                                                         int32_t* sink) {
  const __m512i w = _mm512_set1_epi8(-2), flip = _mm512_set1_epi8(5);
  __m512i a = _mm512_set1_epi8(1);
#define QC_ZERO(k) __m512i acc##k = _mm512_set1_epi32(k);  // distinct chains: none merges with another
  QC_CHAINS(QC_ZERO)
  for (int64_t i = 0; i < iterations; ++i) {
    a = _mm512_xor_si512(a, flip);  // new activations each step: nothing hoists
#define QC_DOT(k) acc##k = _mm512_dpbusd_epi32(acc##k, a, w);
    QC_CHAINS(QC_DOT)
  }
  __m512i total = _mm512_setzero_si512();
#define QC_SUM(k) total = _mm512_add_epi32(total, acc##k);
  QC_CHAINS(QC_SUM)
  alignas(64) int32_t lanes[16];
  _mm512_store_si512(lanes, total);
  *sink = lanes[0];
  return iterations * 16 * 64;  // multiply-accumulates
}

// The AMX-INT8 peak: tdpbusd (16 x 16 x 64 = 16,384 multiply-accumulates each) into four accumulator tiles,
// the 2 x 2 pattern of the kernels (host_amx.cpp): with `loads` set, two pixel tiles and two weight tiles are
// loaded again before each four multiplies (from a buffer the L1 cache holds), else loaded once. Returns 0
// where the compiler or the process has no AMX (the tiles are requested from Linux first).
#if (defined(__clang__) && __clang_major__ >= 12) || (!defined(__clang__) && __GNUC__ >= 11)
#include <sys/syscall.h>
#include <unistd.h>

struct alignas(64) QcPeakTiles {
  uint8_t palette, start_row, reserved[14];
  uint16_t colsb[16];
  uint8_t rows[16];
};

extern "C" __attribute__((target("amx-tile,amx-int8"))) int64_t qc_int8_peak_amx_loop(int64_t iterations,
                                                                                     int32_t* sink, int loads) {
  if (syscall(SYS_arch_prctl, 0x1023, 18) != 0) return 0;
  static QcPeakTiles config{};
  config.palette = 1;
  for (int t = 0; t < 8; ++t) config.rows[t] = 16, config.colsb[t] = 64;
  _tile_loadconfig(&config);
  alignas(64) static uint8_t a[4][1024];
  alignas(64) static int32_t c[256];
  for (int i = 0; i < 4; ++i)
    for (int j = 0; j < 1024; ++j) a[i][j] = static_cast<uint8_t>(i + j);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  _tile_loadd(4, a[0], 64);
  _tile_loadd(5, a[1], 64);
  _tile_loadd(6, a[2], 64);
  _tile_loadd(7, a[3], 64);
  for (int64_t i = 0; i < iterations; ++i) {
    if (loads) {
      _tile_loadd(4, a[0], 64);
      _tile_loadd(6, a[2], 64);
    }
    _tile_dpbusd(0, 4, 6);
    if (loads) _tile_loadd(5, a[1], 64);
    _tile_dpbusd(1, 5, 6);
    if (loads) _tile_loadd(7, a[3], 64);
    _tile_dpbusd(2, 4, 7);
    _tile_dpbusd(3, 5, 7);
  }
  _tile_stored(0, c, 64);
  _tile_release();
  *sink = c[0];
  return iterations * 4 * 16 * 16 * 64;
}
#else
extern "C" int64_t qc_int8_peak_amx_loop(int64_t, int32_t*, int) { return 0; }
#endif
