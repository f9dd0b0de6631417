// The int8 tensor-core instruction the convolution kernel is built on:
// mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 (sm_80 and later), D = A * B + C
// for a 16x32 A, a 32x8 B and a 16x8 int32 C held across the 32 lanes of a warp.
//
// Fragments (lane = 4 g + t, PTX ISA "Matrix Fragments for mma.m16n8k32"):
//   a[0..3]: A's row g (a[0], a[2]) or g + 8 (a[1], a[3]), bytes at columns 4t..4t+3 (a[0], a[1]) or
//            16 + 4t.. (a[2], a[3]), the lowest column in the lowest byte;
//   b[0..1]: B's column g, rows 4t..4t+3 (b[0]) or 16 + 4t.. (b[1]);
//   c[0..3]: row g (c[0], c[1]) or g + 8 (c[2], c[3]), column 2t + (r % 2).
// On the host, emulation/cuda_host.h implements the same instruction from this layout.
#pragma once

#include <stdint.h>

namespace qc {

__device__ __forceinline__ void mma_s8_16832(int32_t (&acc)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(__CUDACC__)
  asm volatile(
      "mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%0, %1, %2, %3};\n"
      : "+r"(acc[0]), "+r"(acc[1]), "+r"(acc[2]), "+r"(acc[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#else
  const int32_t c[4] = {acc[0], acc[1], acc[2], acc[3]};
  qc_host::mma_s8_16832(acc, a, b, c);
#endif
}

}  // namespace qc
