// CUDA kernels of the gemmlowp backend's element-wise ops and pooling: quantize
// and dequantize (per tensor or per channel), add, multiply, requantize, max
// pooling and the global average pool, on uint8 codes; the convolutions are in
// qconv_kernels.cuh.
//
// These files hold only __global__ and __device__ functions and are compiled
// twice: by nvcc (gemmlowp_launch.cu, for the GPU) and by g++ against a host
// emulation of blocks, threads, shared memory, __syncthreads and mma.sync
// (emulation/cuda_host.h), which is how the tests run these very kernels on a
// machine without a GPU. Every kernel here is a grid-stride loop over its
// outputs, one thread per code: consecutive threads, consecutive bytes.
#pragma once

#include "gemmlowp.h"
#include "qconv_kernels.cuh"

namespace qc {

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

// TFLite's quantized add (gemmlowp.h's quantized_add) of two tensors of the same shape and memory order.
__global__ void qadd_u8(const uint8_t* __restrict__ a, const uint8_t* __restrict__ b, uint8_t* __restrict__ out,
                        int64_t total, int32_t a_zero, int32_t a_m0, int a_exponent, int32_t b_zero, int32_t b_m0,
                        int b_exponent, int32_t out_m0, int out_exponent, int32_t out_zero, int32_t lo, int32_t hi,
                        int left_shift) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = quantized_add(a[i], b[i], a_zero, a_m0, a_exponent, b_zero, b_m0, b_exponent, out_m0, out_exponent,
                           out_zero, lo, hi, left_shift);
}

// (a - a_zero)(b - b_zero) through the output stage, for two tensors of the same shape and memory order.
__global__ void qmul_u8(const uint8_t* __restrict__ a, const uint8_t* __restrict__ b, uint8_t* __restrict__ out,
                        int64_t total, int32_t a_zero, int32_t b_zero, int32_t m0, int exponent, int32_t out_zero,
                        int32_t lo, int32_t hi) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<uint8_t>(
        output_stage((a[i] - a_zero) * (b[i] - b_zero), 0, m0, exponent, out_zero, lo, hi));
}

// Codes onto another grid: (q - zero) through the output stage (bias 0, clamp 0..255).
__global__ void requantize_u8(const uint8_t* __restrict__ q, uint8_t* __restrict__ out, int64_t total, int32_t zero,
                              int32_t m0, int exponent, int32_t out_zero) {
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x)
    out[i] = static_cast<uint8_t>(output_stage(q[i] - zero, 0, m0, exponent, out_zero, 0, 255));
}

// Max pooling of NHWC codes; window positions outside the input are skipped (as torch skips them).
struct PoolShape {
  int batch, height, width, channels, out_height, out_width;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

QC_HD int64_t pool_outputs(const PoolShape& s) {
  return static_cast<int64_t>(s.batch) * s.out_height * s.out_width * s.channels;
}

__global__ void max_pool_u8(const uint8_t* __restrict__ x, uint8_t* __restrict__ out, PoolShape s) {
  const int64_t total = pool_outputs(s);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const OutputPlace p = place_of(i, s.channels, s.out_height, s.out_width);
    uint8_t best = 0;
    for_each_tap(s, p, [&](int64_t pixel, int, int) {
      const uint8_t v = x[pixel + p.c];
      best = v > best ? v : best;
    });
    out[i] = best;
  }
}

// Window averages of NHWC codes on one grid (reference.avg_pool_codes): the centred codes summed over the
// window's positions inside the input, divided by torch's count (the window clipped to the padded input, or
// to the input itself without count_include_pad), rounded half away from zero, plus the zero point.
__global__ void avg_pool_u8(const uint8_t* __restrict__ x, uint8_t* __restrict__ out, PoolShape s, int zero_point,
                            int count_include_pad) {
  const int64_t total = pool_outputs(s);
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const OutputPlace p = place_of(i, s.channels, s.out_height, s.out_width);
    const int64_t b = p.b;
    const int c = p.c;
    int y0 = p.oy * s.stride_h - s.pad_h, x0 = p.ox * s.stride_w - s.pad_w;
    int y1 = y0 + s.kernel_h < s.height + s.pad_h ? y0 + s.kernel_h : s.height + s.pad_h;
    int x1 = x0 + s.kernel_w < s.width + s.pad_w ? x0 + s.kernel_w : s.width + s.pad_w;
    const int padded_count = (y1 - y0) * (x1 - x0);
    y0 = y0 > 0 ? y0 : 0, x0 = x0 > 0 ? x0 : 0;
    y1 = y1 < s.height ? y1 : s.height, x1 = x1 < s.width ? x1 : s.width;
    const int64_t count = count_include_pad ? padded_count : (y1 - y0) * (x1 - x0);
    int64_t sum = 0;
    for (int y = y0; y < y1; ++y)
      for (int xx = x0; xx < x1; ++xx) sum += x[((b * s.height + y) * s.width + xx) * s.channels + c] - zero_point;
    const int64_t magnitude = (2 * (sum < 0 ? -sum : sum) + count) / (2 * count);
    const int64_t average = (sum < 0 ? -magnitude : magnitude) + zero_point;
    out[i] = static_cast<uint8_t>(average < 0 ? 0 : (average > 255 ? 255 : average));
  }
}

// out[n, c] = (sum over the pixels of x[n, p, c] + pixels / 2) / pixels, NHWC codes in.
__global__ void mean_pixels_u8(const uint8_t* __restrict__ x, uint8_t* __restrict__ out, int batch, int64_t pixels,
                               int channels) {
  const int64_t total = static_cast<int64_t>(batch) * channels;
  for (int64_t i = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x; i < total;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const int64_t b = i / channels;
    const int c = static_cast<int>(i % channels);
    int64_t sum = 0;
    for (int64_t p = 0; p < pixels; ++p) sum += x[(b * pixels + p) * channels + c];
    out[i] = static_cast<uint8_t>((sum + pixels / 2) / pixels);
  }
}

}  // namespace qc
