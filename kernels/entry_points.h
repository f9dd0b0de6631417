// The C entry points of the CUDA kernels, the same for the GPU build
// (gemmlowp_launch.cu, called by torch_cuda.cpp) and the host emulation
// (emulation/kernels_host.cpp, called by emulation.py through ctypes). The
// including file defines `qc::Launcher`, made from the caller's stream (a
// cudaStream_t on the GPU, unused on the host), before including this one.
//
// Each returns nullptr, or a message naming what the kernels cannot take.
// Parameters travel in small int32 arrays to keep the signatures short:
//   conv shape: batch, height, width, channels, out_height, out_width, out_channels, groups, kernel (h, w),
//               stride (h, w), padding (h, w), dilation (h, w)
//   conv grids: input zero point, output zero point, clamp low, clamp high
//   pool shape: batch, height, width, channels, out_height, out_width, kernel, stride, padding, dilation
#pragma once

#include "launchers.h"

namespace qc {

// A launcher's refusal of the shapes, else the first error of a launch.
inline const char* outcome(const char* refused) {
  const char* failed = Launcher::last_error();
  return refused != nullptr ? refused : failed;
}

inline ConvShape conv_shape_of(const int32_t* v) {
  return ConvShape{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13], v[14],
                   v[15]};
}

inline PoolShape pool_shape_of(const int32_t* v) {
  return PoolShape{v[0], v[1], v[2], v[3], v[4], v[5], v[6], v[7], v[8], v[9], v[10], v[11], v[12], v[13]};
}

}  // namespace qc

extern "C" {

// Launches from this thread go to GPU `device` (torch's index) until told otherwise.
void qc_kernels_use_device(int device) { qc::Launcher::use_device(device); }

// w packed for the kernel the shape takes (qc_kernels_conv_uses_mma): [out_channels][padded depth] with
// qc_kernels_padded_depth, or [out_channels][kh][kw][channels / groups].
int qc_kernels_conv_uses_mma(const int32_t* shape) { return qc::conv_uses_mma(qc::conv_shape_of(shape)); }
int qc_kernels_padded_depth(const int32_t* shape) { return qc::padded_depth(qc::conv_shape_of(shape)); }

// qconv_mma's grid for the shape: row tiles, channel tiles, groups per launch, launches.
void qc_kernels_conv_grid(const int32_t* shape, int64_t* grid) {
  const qc::ConvGrid g = qc::conv_grid(qc::conv_shape_of(shape));
  grid[0] = g.row_tiles, grid[1] = g.channel_tiles, grid[2] = g.groups_per_launch, grid[3] = g.launches;
}

const char* qc_kernels_conv(const uint8_t* x, const int8_t* w, const int32_t* shape, const int32_t* bias,
                            const int32_t* multiplier, const int32_t* exponent, const int32_t* weight_sums,
                            const int32_t* grids, uint8_t* out, void* stream) {
  const qc::OutputStage o{bias, multiplier, exponent, weight_sums, grids[0], grids[1], grids[2], grids[3]};
  return qc::outcome(qc::launch_qconv(qc::Launcher{stream}, x, w, qc::conv_shape_of(shape), o, out));
}

const char* qc_kernels_quantize(const float* x, uint8_t* q, int64_t total, const float* scale,
                                const int32_t* zero_point, int channels, int64_t inner, int qmin, int qmax,
                                void* stream) {
  return qc::outcome(
      qc::launch_quantize(qc::Launcher{stream}, x, q, total, scale, zero_point, channels, inner, qmin, qmax));
}

const char* qc_kernels_dequantize(const uint8_t* q, float* x, int64_t total, const float* scale,
                                  const int32_t* zero_point, int channels, int64_t inner, void* stream) {
  return qc::outcome(qc::launch_dequantize(qc::Launcher{stream}, q, x, total, scale, zero_point, channels, inner));
}

const char* qc_kernels_add(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t total, const int32_t* params,
                           int left_shift, void* stream) {
  return qc::outcome(qc::launch_qadd(qc::Launcher{stream}, a, b, out, total, params, left_shift));
}

const char* qc_kernels_mul(const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t total, const int32_t* params,
                           void* stream) {
  return qc::outcome(qc::launch_qmul(qc::Launcher{stream}, a, b, out, total, params));
}

const char* qc_kernels_requantize(const uint8_t* q, uint8_t* out, int64_t total, int32_t zero, int32_t m0,
                                  int exponent, int32_t out_zero, void* stream) {
  return qc::outcome(qc::launch_requantize(qc::Launcher{stream}, q, out, total, zero, m0, exponent, out_zero));
}

const char* qc_kernels_max_pool(const uint8_t* x, uint8_t* out, const int32_t* v, void* stream) {
  return qc::outcome(qc::launch_max_pool(qc::Launcher{stream}, x, out, qc::pool_shape_of(v)));
}

// v: the pool shape with dilation 1
const char* qc_kernels_avg_pool(const uint8_t* x, uint8_t* out, const int32_t* v, int zero_point,
                                int count_include_pad, void* stream) {
  return qc::outcome(qc::launch_avg_pool(qc::Launcher{stream}, x, out, qc::pool_shape_of(v), zero_point,
                                         count_include_pad));
}

const char* qc_kernels_mean_pixels(const uint8_t* x, uint8_t* out, int batch, int64_t pixels, int channels,
                                   void* stream) {
  return qc::outcome(qc::launch_mean_pixels(qc::Launcher{stream}, x, out, batch, pixels, channels));
}

}  // extern "C"
