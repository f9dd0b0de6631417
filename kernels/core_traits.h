// What the 512-bit GEMM (host_vnni512.cpp) asks of the core it runs on: whether its 512-bit units are half
// width, and how much of its L2 cache a block of weight panels may take.
#pragma once

#include <cpuid.h>
#include <stdint.h>
#include <unistd.h>

#include <algorithm>

namespace qc_host {

// Whether this core runs 512-bit vpdpbusd as two 256-bit halves (AMD Zen 4: family 25; Zen 3, the same family,
// has no AVX-512 and never gets here). There eight accumulators keep it busy and the direct 1x1 path ran 35-40%
// slower on two panels per pass; on full-width cores (Zen 5, Intel's) one panel's eight chains left half the
// units idle, and two panels per pass ran 15-28% faster.
inline bool half_width_512() {
  static const bool half = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (__get_cpuid(0, &a, &b, &c, &d) == 0) return false;
    const bool amd = b == 0x68747541 && d == 0x69746e65 && c == 0x444d4163;  // "AuthenticAMD"
    if (!amd || __get_cpuid(1, &a, &b, &c, &d) == 0) return false;
    const unsigned base = (a >> 8) & 0xF, family = base + (base == 0xF ? (a >> 20) & 0xFF : 0);
    return family == 0x19;
  }();
  return half;
}

// The weights of a block of panels, in bytes: 5/8 of the core's L2 cache (192 KB to 640 KB; 192 KB where the
// system does not say). On a 1 MB L2 (Zen 4) the 640 KB blocks hold all of ResNet-18's layer 3 weights:
// its tiles are then gathered once and used for every panel (faster at batch 8, measured)
// instead of being kept and read again for each block.
inline int64_t block_bytes() {
  static const int64_t bytes = [] {
    const long l2 = sysconf(_SC_LEVEL2_CACHE_SIZE);
    return l2 > 0 ? std::clamp<int64_t>(l2 / 8 * 5, 192 << 10, 640 << 10) : int64_t{192 << 10};
  }();
  return bytes;
}

}  // namespace qc_host
