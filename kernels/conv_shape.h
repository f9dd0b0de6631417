// What the twin's convolution kernels share (host_conv.cpp: dense, host_depthwise.cpp: depthwise): the
// layer's shape as kernels/host_conv.py passes it, and the store of a vector of output codes.
#pragma once

#include <stdint.h>

#include <immintrin.h>

#include "stage8.h"

namespace qc_avx2 {

struct ConvShape {
  int64_t batch, height, width, channels;  // input, channels last
  int64_t out_channels, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int64_t out_h, out_w;
  // from the 15 values the Python side passes, in this order
  static ConvShape read(const int64_t* v) {
    return {v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14]};
  }
  int64_t depth() const { return kernel_h * kernel_w * channels; }
  int64_t pairs() const { return (depth() + 1) / 2; }
  int64_t pixels() const { return batch * out_h * out_w; }
  // Output pixel m's image, row and column: two 32-bit divisions, each giving quotient and remainder (64-bit
  // ones cost more per pixel than a receptive field's copies; a layer has far fewer than 2^32 output pixels).
  struct Pixel {
    int64_t n, oh, ow;
  };
  Pixel pixel(int64_t m) const {
    const auto index = static_cast<uint32_t>(m), width = static_cast<uint32_t>(out_w);
    const uint32_t rows = index / width, ow = index % width;
    return {rows / static_cast<uint32_t>(out_h), rows % static_cast<uint32_t>(out_h), ow};
  }
};

// The low byte of q's first `count` lanes (codes 0..255) at out[0, count): all eight at once, or, for a
// layer's last few channels, one at a time.
__attribute__((target("avx2"))) inline void store_codes(uint8_t* out, __m256i q, int64_t count) {
  if (count >= 8) {
    store8(out, q);
    return;
  }
  alignas(32) int32_t lanes[8];
  _mm256_store_si256(reinterpret_cast<__m256i*>(lanes), q);
  for (int64_t k = 0; k < count; ++k) out[k] = static_cast<uint8_t>(lanes[k]);
}

}  // namespace qc_avx2
