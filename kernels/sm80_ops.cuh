// The sm_80 (Ampere and later) instructions the convolution kernel is built on: the int8 tensor-core
// multiply mma.sync.aligned.m16n8k32.row.col.s32.s8.s8.s32, the warp's shared-memory matrix load ldmatrix,
// and cp.async, the copy from global to shared memory that runs while the warp computes.
//
// mma, D = A * B + C for a 16x32 A, a 32x8 B and a 16x8 int32 C held across the 32 lanes of a warp
// (lane = 4 g + t; PTX ISA, "Matrix Fragments for mma.m16n8k32"):
//   a[0..3]: A's row g (a[0], a[2]) or g + 8 (a[1], a[3]), bytes at columns 4t..4t+3 (a[0], a[1]) or
//            16 + 4t.. (a[2], a[3]), the lowest column in the lowest byte;
//   b[0..1]: B's column g, rows 4t..4t+3 (b[0]) or 16 + 4t.. (b[1]);
//   c[0..3]: row g (c[0], c[1]) or g + 8 (c[2], c[3]), column 2t + (r % 2).
// ldmatrix .x4: lanes 8i..8i+7 give the addresses of the eight 16-byte rows of matrix i; lane l receives in
// r[i] the bytes 4 (l % 4)..4 (l % 4) + 3 of row l / 4 of matrix i: for 16-byte rows of int8 codes, exactly
// the A and B fragments above.
//
// On the host, emulation/cuda_host.h implements the same instructions from these layouts (cp.async as a
// plain copy: the emulation does not check the waits).
#pragma once

#include <stdint.h>

#if !defined(__CUDACC__)
#include <cstring>
#endif

// A loop the compiler unrolls fully on the GPU (so that arrays indexed by its counter stay in registers).
#if defined(__CUDACC__)
#define QC_UNROLL _Pragma("unroll")
#else
#define QC_UNROLL
#endif

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

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const uint8_t* row) {
#if defined(__CUDACC__)
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(address));
#else
  qc_host::ldmatrix_x4(r, row);
#endif
}

__device__ __forceinline__ void cp_async_16(uint8_t* shared, const void* global) {
#if defined(__CUDACC__)
  const uint32_t address = static_cast<uint32_t>(__cvta_generic_to_shared(shared));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(address), "l"(global) : "memory");
#else
  std::memcpy(shared, global, 16);
#endif
}

__device__ __forceinline__ void cp_async_commit() {
#if defined(__CUDACC__)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}

// Waits until at most `pending` of this thread's committed groups of copies are still in flight.
template <int pending>
__device__ __forceinline__ void cp_async_wait() {
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_group %0;\n" ::"n"(pending) : "memory");
#endif
}

}  // namespace qc
