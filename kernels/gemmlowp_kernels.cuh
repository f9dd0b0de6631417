// CUDA kernels of the gemmlowp backend: int8 GEMM with dp4a and the fixed-point
// output stage, im2col for convolutions, per-tensor / per-channel quantize and
// dequantize.
//
// This file holds only __global__ functions and is compiled twice: by nvcc
// (gemmlowp_launch.cu, for the GPU) and by g++ against a host emulation of
// blocks, threads, shared memory and __syncthreads (emulation/cuda_host.h),
// which is how the tests run these very kernels on a machine without a GPU.
//
// Layouts: activations are uint8 with a per-tensor zero point; weights int8,
// symmetric (zero point 0), one row of K codes per output channel.
#pragma once

#include "gemmlowp.h"

namespace qc {

constexpr int kTile = 16;        // output tile: kTile x kTile threads, one output each
constexpr int kTileWords = 16;   // K step: kTileWords 32-bit words = 64 codes

// Four uint8 activations at a[k..k+3] as signed (a - 128) bytes in one word;
// codes past the end of the row are 128, i.e. zero after the shift.
__device__ __forceinline__ int32_t load_activation_word(const uint8_t* row, int k, int depth) {
  uint32_t word = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t code = (k + i < depth) ? row[k + i] : 128u;
    word |= (code ^ 0x80u) << (8 * i);  // a ^ 0x80 read as int8 is a - 128
  }
  return static_cast<int32_t>(word);
}

__device__ __forceinline__ int32_t load_weight_word(const int8_t* row, int k, int depth) {
  uint32_t word = 0;
  for (int i = 0; i < 4; ++i) {
    const uint32_t code = (k + i < depth) ? static_cast<uint8_t>(row[k + i]) : 0u;
    word |= code << (8 * i);
  }
  return static_cast<int32_t>(word);
}

// out = output_stage(sum_k (a[m,k] - a_zero) * w[n,k]) for one group of a grouped
// GEMM (blockIdx.z = group). Written to out[((m / spatial) * out_channels + g * n_per_group + n) * spatial
// + m % spatial]: NCHW for convolutions (spatial = OH * OW), row-major for linear layers (spatial = 1).
//
// The inner product runs on signed bytes with dp4a: sum (a - 128) w, then
// (128 - a_zero) * sum_k w[n,k] (weight_sums, precomputed) restores sum (a - a_zero) w.
__global__ void qgemm_dp4a(const uint8_t* __restrict__ a, const int8_t* __restrict__ w,
                           const int32_t* __restrict__ weight_sums, const int32_t* __restrict__ bias,
                           const int32_t* __restrict__ multiplier, const int32_t* __restrict__ exponent,
                           uint8_t* __restrict__ out, int rows, int n_per_group, int depth, int a_zero,
                           int out_zero, int clamp_lo, int clamp_hi, int spatial, int out_channels) {
  __shared__ int32_t a_tile[kTile][kTileWords];
  __shared__ int32_t w_tile[kTile][kTileWords];
  const int group = blockIdx.z;
  const int m = blockIdx.y * kTile + threadIdx.y;
  const int n = blockIdx.x * kTile + threadIdx.x;
  const uint8_t* a_group = a + static_cast<int64_t>(group) * rows * depth;
  const int8_t* w_group = w + static_cast<int64_t>(group) * n_per_group * depth;
  // thread (y, x) loads word x of row y of both tiles
  const int load_m = blockIdx.y * kTile + threadIdx.y;
  const int load_n = blockIdx.x * kTile + threadIdx.y;
  int32_t acc = 0;
  for (int k0 = 0; k0 < depth; k0 += 4 * kTileWords) {
    const int k = k0 + 4 * threadIdx.x;
    a_tile[threadIdx.y][threadIdx.x] =
        load_m < rows ? load_activation_word(a_group + static_cast<int64_t>(load_m) * depth, k, depth) : 0;
    w_tile[threadIdx.y][threadIdx.x] =
        load_n < n_per_group ? load_weight_word(w_group + static_cast<int64_t>(load_n) * depth, k, depth) : 0;
    __syncthreads();
    for (int i = 0; i < kTileWords; ++i) acc = __dp4a(a_tile[threadIdx.y][i], w_tile[threadIdx.x][i], acc);
    __syncthreads();
  }
  if (m < rows && n < n_per_group) {
    const int channel = group * n_per_group + n;
    acc += (128 - a_zero) * weight_sums[channel];
    const int32_t q = output_stage(acc, bias[channel], multiplier[channel], exponent[channel], out_zero,
                                   clamp_lo, clamp_hi);
    const int64_t index = (static_cast<int64_t>(m / spatial) * out_channels + channel) * spatial + m % spatial;
    out[index] = static_cast<uint8_t>(q);
  }
}

// columns[g][b * OH * OW + oy * OW + ox][c * KH * KW + ky * KW + kx] = x[b][g * C_g + c][iy][ix],
// or the zero point where the window reaches into the padding.
__global__ void im2col_u8(const uint8_t* __restrict__ x, uint8_t* __restrict__ columns, int batch, int channels,
                          int height, int width, int groups, int kernel_h, int kernel_w, int stride_h, int stride_w,
                          int pad_h, int pad_w, int dilation_h, int dilation_w, int out_h, int out_w,
                          int zero_point) {
  const int channels_per_group = channels / groups;
  const int depth = channels_per_group * kernel_h * kernel_w;
  const int64_t rows = static_cast<int64_t>(batch) * out_h * out_w;
  const int64_t total = groups * rows * depth;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int k = static_cast<int>(i % depth);
    const int64_t row = (i / depth) % rows;
    const int g = static_cast<int>(i / (depth * rows));
    const int kx = k % kernel_w, ky = (k / kernel_w) % kernel_h, c = k / (kernel_w * kernel_h);
    const int ox = static_cast<int>(row % out_w), oy = static_cast<int>((row / out_w) % out_h);
    const int b = static_cast<int>(row / (static_cast<int64_t>(out_w) * out_h));
    const int iy = oy * stride_h - pad_h + ky * dilation_h, ix = ox * stride_w - pad_w + kx * dilation_w;
    const bool inside = iy >= 0 && iy < height && ix >= 0 && ix < width;
    const int channel = g * channels_per_group + c;
    columns[i] = inside ? x[((static_cast<int64_t>(b) * channels + channel) * height + iy) * width + ix]
                        : static_cast<uint8_t>(zero_point);
  }
}

// Per-channel when channels > 1 (channel = (i / inner) % channels), per-tensor otherwise.
__global__ void quantize_u8(const float* __restrict__ x, uint8_t* __restrict__ q, int64_t total,
                            const float* __restrict__ scale, const int32_t* __restrict__ zero_point, int channels,
                            int64_t inner, int qmin, int qmax) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = channels > 1 ? static_cast<int>((i / inner) % channels) : 0;
    q[i] = static_cast<uint8_t>(quantize(x[i], scale[c], zero_point[c], qmin, qmax));
  }
}

__global__ void dequantize_u8(const uint8_t* __restrict__ q, float* __restrict__ x, int64_t total,
                              const float* __restrict__ scale, const int32_t* __restrict__ zero_point, int channels,
                              int64_t inner) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int c = channels > 1 ? static_cast<int>((i / inner) % channels) : 0;
    x[i] = dequantize(q[i], scale[c], zero_point[c]);
  }
}

}  // namespace qc
