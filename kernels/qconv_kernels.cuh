// CUDA kernels of the gemmlowp backend's convolutions and linear layers, on
// channels-last (NHWC) uint8 codes in and out, int8 weights, the fixed-point
// output stage fused in the epilogue.
//
// qconv_mma: an implicit GEMM on int8 tensor cores. Output pixels are GEMM
// rows (M = N * OH * OW), output channels of one group its columns, and the
// depth runs over (ky, kx, c), c fastest, so that 16 consecutive depth
// positions of a pixel are 16 consecutive bytes of the input. A block of four
// warps computes a 128 x 64 tile of the output; each warp a 64 x 32 part as
// 4 x 4 mma.sync m16n8k32 instructions per 32 of depth, its operands loaded
// from shared memory with ldmatrix (one instruction per 16 x 32 or 2 x 8 x 32
// fragment). 64 bytes of depth of both operands are copied into shared memory
// with cp.async, 16 bytes per thread and instruction, the next stage's copies
// running while the current one is multiplied (two stages); rows are swizzled
// so that neither the copies nor ldmatrix meet bank conflicts. The uint8
// codes enter the signed instruction as a - 128 (a byte's top bit flipped,
// in the registers), and (128 - a_zero) * sum_k w[n, k] restores
// sum_k (a - a_zero) w; padding reads as the zero point, so it adds nothing.
// The epilogue runs the output stage on the accumulators, gathers the tile's
// codes in shared memory and stores them 16 bytes at a time.
//
// qconv_direct: one thread per output code, for grouped convolutions with
// few channels per group (depthwise), where a GEMM would be mostly padding.
// Consecutive threads compute consecutive channels of a pixel: coalesced
// reads of the input and the weights, coalesced stores.
#pragma once

#include "gemmlowp.h"
#include "sm80_ops.cuh"

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

// An output code's place in an NHWC tensor: its pixel (batch, row, column) and channel.
struct OutputPlace {
  int64_t b;
  int oy, ox, c;
};

__device__ __forceinline__ OutputPlace place_of(int64_t i, int channels, int out_height, int out_width) {
  const int64_t pixel = i / channels;
  return OutputPlace{pixel / (static_cast<int64_t>(out_width) * out_height),
                     static_cast<int>((pixel / out_width) % out_height), static_cast<int>(pixel % out_width),
                     static_cast<int>(i % channels)};
}

// visit(pixel offset in x, ky, kx) for every tap of output pixel p's window that lies inside the input
// (a shape with the fields of ConvShape's input, kernel, stride, padding and dilation).
template <class Shape, class Visit>
__device__ __forceinline__ void for_each_tap(const Shape& s, const OutputPlace& p, Visit visit) {
  for (int ky = 0; ky < s.kernel_h; ++ky) {
    const int iy = p.oy * s.stride_h - s.pad_h + ky * s.dilation_h;
    if (iy < 0 || iy >= s.height) continue;
    for (int kx = 0; kx < s.kernel_w; ++kx) {
      const int ix = p.ox * s.stride_w - s.pad_w + kx * s.dilation_w;
      if (ix < 0 || ix >= s.width) continue;
      visit(((p.b * s.height + iy) * s.width + ix) * s.channels, ky, kx);
    }
  }
}

constexpr int kBlockM = 128, kBlockN = 64, kBlockK = 64;  // bytes of depth per stage: two mma k-steps
constexpr int kConvThreads = 128;                           // four warps, 2 x 2, each 64 rows x 32 channels
constexpr int kStages = 2;

// A tile of `rows` x 64 bytes in shared memory, 16-byte chunk c of row r stored at chunk c ^ ((r / 2) % 4).
// With 64-byte rows, the eight rows an ldmatrix phase reads (same logical chunk) and the two rows of four
// chunks a phase of 16-byte stores writes each fall on eight different 16-byte bank groups: no conflicts.
__device__ __forceinline__ int swizzled(int row, int chunk) { return row * 64 + ((chunk ^ ((row >> 1) & 3)) << 4); }

__device__ __forceinline__ uint4 splat(uint32_t byte) {
  const uint32_t word = byte * 0x01010101u;
  return uint4{word, word, word, word};
}

__device__ __forceinline__ void store16(uint8_t* shared, uint4 value) { *reinterpret_cast<uint4*>(shared) = value; }

// The input code at depth position k of output pixel (b, oy, ox) in group `group`; the zero point in the
// padding, 128 (a signed 0 once flipped) past the depth.
__device__ __forceinline__ uint32_t input_byte(const uint8_t* x, const ConvShape& s, int depth, int b, int oy,
                                               int ox, int group, int k, int a_zero) {
  if (k >= depth) return 0x80u;
  const int cg = s.channels / s.groups;
  const int tap = k / cg, c = k - tap * cg, ky = tap / s.kernel_w, kx = tap - ky * s.kernel_w;
  const int iy = oy * s.stride_h - s.pad_h + ky * s.dilation_h, ix = ox * s.stride_w - s.pad_w + kx * s.dilation_w;
  if (iy < 0 || iy >= s.height || ix < 0 || ix >= s.width) return static_cast<uint32_t>(a_zero);
  return x[((static_cast<int64_t>(b) * s.height + iy) * s.width + ix) * s.channels + group * cg + c];
}

// w: [out_channels][k_padded] int8, each row (ky, kx, c) with c fastest, zero from the depth to k_padded
// (a multiple of kBlockK). Grid: x over 128-row tiles of M, y over 64-channel tiles of a group, z over groups
// from group_offset. Codes go to shared memory as they are (cp.async copies them); the fragments flip their
// top bits after ldmatrix.
__global__ void __launch_bounds__(kConvThreads)
    qconv_mma(const uint8_t* __restrict__ x, const int8_t* __restrict__ w, int k_padded, ConvShape s,
              OutputStage o, uint8_t* __restrict__ out, int group_offset) {
  __shared__ uint4 a_words[kStages][kBlockM * kBlockK / 16];
  __shared__ uint4 b_words[kStages][kBlockN * kBlockK / 16];

  const int cg = s.channels / s.groups, ng = s.out_channels / s.groups;
  const int depth = cg * s.kernel_h * s.kernel_w;
  const int64_t rows = static_cast<int64_t>(s.batch) * s.out_height * s.out_width;
  const int64_t m0 = static_cast<int64_t>(blockIdx.x) * kBlockM;
  const int n0 = static_cast<int>(blockIdx.y) * kBlockN;
  const int group = static_cast<int>(blockIdx.z) + group_offset;
  const int thread = static_cast<int>(threadIdx.x), lane = thread % 32, warp = thread / 32;
  const int warp_m = (warp / 2) * 64, warp_n = (warp % 2) * 32;
  const bool whole_chunks = cg % 16 == 0;  // 16 depth positions in a row are one tap's 16 channels

  // this thread's loads: chunk `kc` of A rows thread / 4 + 32 i and of B rows thread / 4 + 32 i
  const int kc = thread % 4;
  int pixel_b[4], pixel_y[4], pixel_x[4];
  QC_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int64_t m = m0 + thread / 4 + 32 * i;
    pixel_b[i] = -1;  // past the last row
    if (m < rows) {
      pixel_x[i] = static_cast<int>(m % s.out_width);
      const int64_t rest = m / s.out_width;
      pixel_y[i] = static_cast<int>(rest % s.out_height);
      pixel_b[i] = static_cast<int>(rest / s.out_height);
    }
  }

  auto load_stage = [&](int stage, int k0) {
    uint8_t* a_tile = reinterpret_cast<uint8_t*>(a_words[stage]);
    uint8_t* b_tile = reinterpret_cast<uint8_t*>(b_words[stage]);
    const int k = k0 + 16 * kc;
    int tap = 0, c = 0, ky = 0, kx = 0;
    if (whole_chunks && k < depth) tap = k / cg, c = k - tap * cg, ky = tap / s.kernel_w, kx = tap - ky * s.kernel_w;
    QC_UNROLL
    for (int i = 0; i < 4; ++i) {
      const int r = thread / 4 + 32 * i;
      uint8_t* target = a_tile + swizzled(r, kc);
      if (pixel_b[i] < 0 || k >= depth) {
        store16(target, splat(0x80u));
      } else if (whole_chunks) {
        const int iy = pixel_y[i] * s.stride_h - s.pad_h + ky * s.dilation_h;
        const int ix = pixel_x[i] * s.stride_w - s.pad_w + kx * s.dilation_w;
        if (iy >= 0 && iy < s.height && ix >= 0 && ix < s.width)
          cp_async_16(target, x + ((static_cast<int64_t>(pixel_b[i]) * s.height + iy) * s.width + ix) * s.channels +
                                  group * cg + c);
        else
          store16(target, splat(static_cast<uint32_t>(o.input_zero)));
      } else {
        uint32_t words[4] = {0, 0, 0, 0};
        QC_UNROLL
        for (int j = 0; j < 16; ++j)
          words[j / 4] |= input_byte(x, s, depth, pixel_b[i], pixel_y[i], pixel_x[i], group, k + j, o.input_zero)
                          << (8 * (j % 4));
        store16(target, uint4{words[0], words[1], words[2], words[3]});
      }
    }
    QC_UNROLL
    for (int i = 0; i < 2; ++i) {
      const int r = thread / 4 + 32 * i, n = n0 + r;
      uint8_t* target = b_tile + swizzled(r, kc);
      if (n < ng)
        cp_async_16(target, w + static_cast<int64_t>(group * ng + n) * k_padded + k);
      else
        store16(target, splat(0));
    }
  };

  int32_t acc[4][4][4] = {};
  const int k_tiles = (depth + kBlockK - 1) / kBlockK;
  load_stage(0, 0);
  cp_async_commit();
  for (int kt = 0; kt < k_tiles; ++kt) {
    if (kt + 1 < k_tiles) {  // the next stage's copies run while this one is multiplied
      load_stage((kt + 1) % kStages, (kt + 1) * kBlockK);
      cp_async_commit();
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint8_t* a_tile = reinterpret_cast<const uint8_t*>(a_words[kt % kStages]);
    const uint8_t* b_tile = reinterpret_cast<const uint8_t*>(b_words[kt % kStages]);
    const int quad = lane / 8, row_in = lane % 8;
    QC_UNROLL
    for (int ks = 0; ks < kBlockK / 16; ks += 2) {  // 32 bytes of depth: chunks ks and ks + 1
      uint32_t a[4][4], b[4][2];
      QC_UNROLL
      for (int i = 0; i < 4; ++i) {  // matrices: rows +0 / +8 (quad % 2) of chunk ks / ks + 1 (quad / 2)
        const int r = warp_m + 16 * i + row_in + 8 * (quad % 2);
        ldmatrix_x4(a[i], a_tile + swizzled(r, ks + quad / 2));
        QC_UNROLL
        for (int j = 0; j < 4; ++j) a[i][j] ^= 0x80808080u;  // uint8 a as the signed byte a - 128
      }
      QC_UNROLL
      for (int j = 0; j < 4; j += 2) {  // matrices: channel tile j / j + 1 (quad / 2), chunk ks / ks + 1
        const int r = warp_n + 8 * (j + quad / 2) + row_in;
        uint32_t pair[4];
        ldmatrix_x4(pair, b_tile + swizzled(r, ks + quad % 2));
        b[j][0] = pair[0], b[j][1] = pair[1], b[j + 1][0] = pair[2], b[j + 1][1] = pair[3];
      }
      QC_UNROLL
      for (int j = 0; j < 4; ++j) {
        if (n0 + warp_n + 8 * j < ng) {  // the same for the whole warp: thin layers skip empty columns
          QC_UNROLL
          for (int i = 0; i < 4; ++i) mma_s8_16832(acc[i][j], a[i], b[j]);
        }
      }
    }
    __syncthreads();  // the next iteration's copies overwrite this stage
  }

  // epilogue: the output stage into a 128 x 64 byte tile (stage 0's A space, swizzled), then 16-byte stores
  uint8_t* c_tile = reinterpret_cast<uint8_t*>(a_words[0]);
  const int g = lane / 4, t = lane % 4;
  QC_UNROLL
  for (int i = 0; i < 4; ++i)
    QC_UNROLL
    for (int j = 0; j < 4; ++j)
      QC_UNROLL
      for (int r = 0; r < 4; ++r) {
        const int row = warp_m + 16 * i + g + (r >= 2 ? 8 : 0), column = warp_n + 8 * j + 2 * t + r % 2;
        const int n = n0 + column;
        if (n >= ng) continue;
        const int channel = group * ng + n;
        const int32_t sum = acc[i][j][r] + (128 - o.input_zero) * o.weight_sums[channel];
        const int32_t q = output_stage(sum, o.bias[channel], o.multiplier[channel], o.exponent[channel],
                                       o.output_zero, o.lo, o.hi);
        c_tile[swizzled(row, column / 16) + column % 16] = static_cast<uint8_t>(q);
      }
  __syncthreads();
  const bool whole_stores = ng % 16 == 0 && s.out_channels % 16 == 0;
  QC_UNROLL
  for (int i = 0; i < 4; ++i) {
    const int r = thread / 4 + 32 * i, nc = 16 * kc;
    const int64_t m = m0 + r;
    const int n = n0 + nc;
    if (m >= rows || n >= ng) continue;
    uint8_t* target = out + m * s.out_channels + group * ng + n;
    const uint8_t* source = c_tile + swizzled(r, kc);
    if (whole_stores) {
      *reinterpret_cast<uint4*>(target) = *reinterpret_cast<const uint4*>(source);
    } else {
      for (int j = 0; j < 16 && n + j < ng; ++j) target[j] = source[j];
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
    const OutputPlace p = place_of(i, s.out_channels, s.out_height, s.out_width);
    const int channel = p.c, first = (channel / ng) * cg;
    const int8_t* filter = w + static_cast<int64_t>(channel) * s.kernel_h * s.kernel_w * cg;
    int32_t sum = 0;
    for_each_tap(s, p, [&](int64_t pixel, int ky, int kx) {
      const uint8_t* input = x + pixel + first;
      const int8_t* taps = filter + (ky * s.kernel_w + kx) * cg;
      for (int c = 0; c < cg; ++c) sum += (static_cast<int32_t>(input[c]) - o.input_zero) * taps[c];
    });
    out[i] = static_cast<uint8_t>(output_stage(sum, o.bias[channel], o.multiplier[channel], o.exponent[channel],
                                               o.output_zero, o.lo, o.hi));
  }
}

}  // namespace qc
