// CUDA kernels of the gemmlowp backend's convolutions and linear layers, on
// channels-last (NHWC) uint8 codes in and out, int8 weights, the fixed-point
// output stage fused in the epilogue.
//
// qconv_mma: an implicit GEMM on int8 tensor cores. Output pixels are GEMM
// rows (M = N * OH * OW), output channels of one group its columns, and the
// depth runs over (ky, kx, c), c fastest, so that 16 consecutive depth
// positions of a pixel are 16 consecutive bytes of the input. A block of four
// warps computes a 64 x 64 tile of the output; each warp a 32 x 32 part as
// 2 x 4 mma.sync m16n8k32 instructions per 32 of depth. Tiles of 64 x 64
// bytes of both operands go through shared memory in rows of 80 bytes: the
// fragment reads of a warp then fall on 32 different banks. The uint8 codes
// enter the signed instruction as a - 128 (a byte's top bit flipped), and
// (128 - a_zero) * sum_k w[n, k] restores sum_k (a - a_zero) w; padding reads
// as the zero point, so it adds nothing.
//
// qconv_direct: one thread per output code, for grouped convolutions with
// few channels per group (depthwise), where a GEMM would be mostly padding.
// Consecutive threads compute consecutive channels of a pixel: coalesced
// reads of the input and the weights, coalesced stores.
#pragma once

#include "gemmlowp.h"
#include "mma_s8.cuh"

namespace qc {

// A convolution over NHWC codes; a linear layer is a 1 x 1 convolution of a 1 x 1 image (batch = rows).
struct ConvShape {
  int batch, height, width, channels;
  int out_height, out_width, out_channels;
  int groups, kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// The output stage's per-channel parameters and the grids of the input and output codes.
struct OutputStage {
  const int32_t* bias;
  const int32_t* multiplier;
  const int32_t* exponent;
  const int32_t* weight_sums;  // sum over the depth of each output channel's weights (qconv_mma only)
  int input_zero, output_zero, lo, hi;
};

constexpr int kBlockM = 64, kBlockN = 64, kBlockK = 64;
constexpr int kRowBytes = kBlockK + 16;  // 20 words: lanes (g, t) read words 20 g + t, 32 different banks
constexpr int kConvThreads = 128;

__device__ __forceinline__ uint4 splat(uint32_t byte) {
  const uint32_t word = byte * 0x01010101u;
  return uint4{word, word, word, word};
}

__device__ __forceinline__ uint4 flip_sign_bits(uint4 v) {
  return uint4{v.x ^ 0x80808080u, v.y ^ 0x80808080u, v.z ^ 0x80808080u, v.w ^ 0x80808080u};
}

__device__ __forceinline__ uint32_t load_word(const uint8_t* p) { return *reinterpret_cast<const uint32_t*>(p); }

// The input code at depth position k of output pixel (b, oy, ox) in group `group`, as a signed byte a - 128.
__device__ __forceinline__ uint32_t input_byte(const uint8_t* x, const ConvShape& s, int depth, int b, int oy,
                                               int ox, int group, int k, int a_zero) {
  if (k >= depth) return 0u;
  const int cg = s.channels / s.groups;
  const int tap = k / cg, c = k - tap * cg, ky = tap / s.kernel_w, kx = tap - ky * s.kernel_w;
  const int iy = oy * s.stride_h - s.pad_h + ky * s.dilation_h, ix = ox * s.stride_w - s.pad_w + kx * s.dilation_w;
  if (iy < 0 || iy >= s.height || ix < 0 || ix >= s.width) return static_cast<uint32_t>(a_zero) ^ 0x80u;
  return x[((static_cast<int64_t>(b) * s.height + iy) * s.width + ix) * s.channels + group * cg + c] ^ 0x80u;
}

// w: [out_channels][k_padded] int8, each row (ky, kx, c) with c fastest, zero from the depth to k_padded
// (a multiple of kBlockK). Grid: x over 64-row tiles of M, y over 64-channel tiles of a group, z over groups
// from group_offset.
__global__ void __launch_bounds__(kConvThreads)
    qconv_mma(const uint8_t* __restrict__ x, const int8_t* __restrict__ w, int k_padded, ConvShape s,
              OutputStage o, uint8_t* __restrict__ out, int group_offset) {
  __shared__ uint4 a_words[kBlockM * kRowBytes / 16];
  __shared__ uint4 b_words[kBlockN * kRowBytes / 16];
  uint8_t* a_tile = reinterpret_cast<uint8_t*>(a_words);
  uint8_t* b_tile = reinterpret_cast<uint8_t*>(b_words);

  const int cg = s.channels / s.groups, ng = s.out_channels / s.groups;
  const int depth = cg * s.kernel_h * s.kernel_w;
  const int64_t rows = static_cast<int64_t>(s.batch) * s.out_height * s.out_width;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  const int n0 = static_cast<int>(blockIdx.y) * kBlockN;
  const int group = static_cast<int>(blockIdx.z) + group_offset;
  const int thread = static_cast<int>(threadIdx.x), lane = thread % 32, warp = thread / 32;
  const int warp_m = (warp / 2) * 32, warp_n = (warp % 2) * 32, g = lane / 4, t = lane % 4;
  const bool whole_chunks = cg % 16 == 0;  // 16 depth positions in a row are one tap's 16 channels

  int32_t acc[2][4][4] = {};
  for (int k0 = 0; k0 < depth; k0 += kBlockK) {
    for (int chunk = thread; chunk < kBlockM * kBlockK / 16; chunk += kConvThreads) {
      const int r = chunk / (kBlockK / 16), kc = (chunk % (kBlockK / 16)) * 16;
      const int64_t m = m0 + r;
      uint4 value = splat(0);
      if (m < rows) {
        const int ox = static_cast<int>(m % s.out_width);
        const int64_t rest = m / s.out_width;
        const int oy = static_cast<int>(rest % s.out_height), b = static_cast<int>(rest / s.out_height);
        const int k = k0 + kc;
        if (whole_chunks && k < depth) {
          const int tap = k / cg, c = k - tap * cg, ky = tap / s.kernel_w, kx = tap - ky * s.kernel_w;
          const int iy = oy * s.stride_h - s.pad_h + ky * s.dilation_h;
          const int ix = ox * s.stride_w - s.pad_w + kx * s.dilation_w;
          if (iy >= 0 && iy < s.height && ix >= 0 && ix < s.width)
            value = flip_sign_bits(*reinterpret_cast<const uint4*>(
                x + ((static_cast<int64_t>(b) * s.height + iy) * s.width + ix) * s.channels + group * cg + c));
          else
            value = splat(static_cast<uint32_t>(o.input_zero) ^ 0x80u);
        } else if (!whole_chunks) {
          uint32_t words[4] = {0, 0, 0, 0};
          for (int i = 0; i < 16; ++i)
            words[i / 4] |= input_byte(x, s, depth, b, oy, ox, group, k + i, o.input_zero) << (8 * (i % 4));
          value = uint4{words[0], words[1], words[2], words[3]};
        }
      }
      *reinterpret_cast<uint4*>(a_tile + r * kRowBytes + kc) = value;
    }
    for (int chunk = thread; chunk < kBlockN * kBlockK / 16; chunk += kConvThreads) {
      const int r = chunk / (kBlockK / 16), kc = (chunk % (kBlockK / 16)) * 16;
      const int n = n0 + r;
      *reinterpret_cast<uint4*>(b_tile + r * kRowBytes + kc) =
          n < ng ? *reinterpret_cast<const uint4*>(w + static_cast<int64_t>(group * ng + n) * k_padded + k0 + kc)
                 : splat(0);
    }
    __syncthreads();
    for (int ks = 0; ks < kBlockK; ks += 32) {
      uint32_t a[2][4], b[4][2];
      for (int i = 0; i < 2; ++i) {
        const uint8_t* row = a_tile + (warp_m + 16 * i + g) * kRowBytes + ks + 4 * t;
        a[i][0] = load_word(row);
        a[i][1] = load_word(row + 8 * kRowBytes);
        a[i][2] = load_word(row + 16);
        a[i][3] = load_word(row + 8 * kRowBytes + 16);
      }
      for (int j = 0; j < 4; ++j) {
        const uint8_t* column = b_tile + (warp_n + 8 * j + g) * kRowBytes + ks + 4 * t;
        b[j][0] = load_word(column);
        b[j][1] = load_word(column + 16);
      }
      for (int j = 0; j < 4; ++j) {
        if (n0 + warp_n + 8 * j >= ng) break;  // the same for the whole warp: thin layers skip empty columns
        for (int i = 0; i < 2; ++i) mma_s8_16832(acc[i][j], a[i], b[j]);
      }
    }
    __syncthreads();
  }

  // epilogue: the output stage into a 64 x 64 byte tile (in a_tile's space), then 16-byte stores
  uint8_t* c_tile = a_tile;
  for (int i = 0; i < 2; ++i)
    for (int j = 0; j < 4; ++j)
      for (int r = 0; r < 4; ++r) {
        const int row = warp_m + 16 * i + g + (r >= 2 ? 8 : 0), column = warp_n + 8 * j + 2 * t + r % 2;
        const int n = n0 + column;
        if (n >= ng) continue;
        const int channel = group * ng + n;
        const int32_t sum = acc[i][j][r] + (128 - o.input_zero) * o.weight_sums[channel];
        const int32_t q = output_stage(sum, o.bias[channel], o.multiplier[channel], o.exponent[channel],
                                       o.output_zero, o.lo, o.hi);
        c_tile[row * kRowBytes + column] = static_cast<uint8_t>(q);
      }
  __syncthreads();
  const bool whole_stores = ng % 16 == 0 && s.out_channels % 16 == 0;
  for (int chunk = thread; chunk < kBlockM * kBlockN / 16; chunk += kConvThreads) {
    const int r = chunk / (kBlockN / 16), nc = (chunk % (kBlockN / 16)) * 16;
    const int64_t m = m0 + r;
    const int n = n0 + nc;
    if (m >= rows || n >= ng) continue;
    uint8_t* target = out + m * s.out_channels + group * ng + n;
    if (whole_stores) {
      *reinterpret_cast<uint4*>(target) = *reinterpret_cast<const uint4*>(c_tile + r * kRowBytes + nc);
    } else {
      for (int i = 0; i < 16 && n + i < ng; ++i) target[i] = c_tile[r * kRowBytes + nc + i];
    }
  }
}

// w: [out_channels][kernel_h][kernel_w][channels / groups] int8. Grid-stride over the output codes.
__global__ void qconv_direct(const uint8_t* __restrict__ x, const int8_t* __restrict__ w, ConvShape s,
                             OutputStage o, uint8_t* __restrict__ out) {
  const int cg = s.channels / s.groups, ng = s.out_channels / s.groups;
  const int64_t total = static_cast<int64_t>(s.batch) * s.out_height * s.out_width * s.out_channels;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int channel = static_cast<int>(i % s.out_channels);
    const int64_t pixel = i / s.out_channels;
    const int ox = static_cast<int>(pixel % s.out_width);
    const int oy = static_cast<int>((pixel / s.out_width) % s.out_height);
    const int b = static_cast<int>(pixel / (static_cast<int64_t>(s.out_width) * s.out_height));
    const int first = (channel / ng) * cg;
    const int8_t* filter = w + static_cast<int64_t>(channel) * s.kernel_h * s.kernel_w * cg;
    int32_t sum = 0;
    for (int ky = 0; ky < s.kernel_h; ++ky) {
      const int iy = oy * s.stride_h - s.pad_h + ky * s.dilation_h;
      if (iy < 0 || iy >= s.height) continue;
      for (int kx = 0; kx < s.kernel_w; ++kx) {
        const int ix = ox * s.stride_w - s.pad_w + kx * s.dilation_w;
        if (ix < 0 || ix >= s.width) continue;
        const uint8_t* input = x + ((static_cast<int64_t>(b) * s.height + iy) * s.width + ix) * s.channels + first;
        const int8_t* taps = filter + (ky * s.kernel_w + kx) * cg;
        for (int c = 0; c < cg; ++c) sum += (static_cast<int32_t>(input[c]) - o.input_zero) * taps[c];
      }
    }
    out[i] = static_cast<uint8_t>(output_stage(sum, o.bias[channel], o.multiplier[channel], o.exponent[channel],
                                               o.output_zero, o.lo, o.hi));
  }
}

}  // namespace qc
