// The launch shapes of every CUDA kernel, written once: gemmlowp_launch.cu
// calls these with a launch that runs on the GPU, emulation/kernels_host.cpp
// with one that runs on the host emulation, so the tests run the kernels with
// exactly the grids and blocks a GPU gets.
//
// `launch(grid, block, kernel, args...)` starts one kernel. Each function
// returns nullptr, or what in the shapes the kernels cannot take.
#pragma once

#include "gemmlowp_kernels.cuh"

namespace qc {

constexpr int kElementThreads = 256;
constexpr int64_t kMaxElementBlocks = 65535;  // grid-stride loops cover the rest

inline unsigned element_blocks(int64_t total) {
  const int64_t blocks = (total + kElementThreads - 1) / kElementThreads;
  return static_cast<unsigned>(blocks < kMaxElementBlocks ? blocks : kMaxElementBlocks);
}

// A grid-stride kernel over `total` outputs, kElementThreads a block (nothing to launch for none).
template <class Launch, class Kernel, class... Args>
const char* launch_over(Launch&& launch, int64_t total, Kernel kernel, Args... args) {
  if (total > 0) launch(dim3(element_blocks(total)), dim3(kElementThreads), kernel, args...);
  return nullptr;
}

inline int64_t conv_rows(const ConvShape& s) { return static_cast<int64_t>(s.batch) * s.out_height * s.out_width; }

// Tensor cores for every convolution whose groups hold 16 channels or more (and every ungrouped one);
// the direct kernel for depthwise and other thin groups.
inline bool conv_uses_mma(const ConvShape& s) { return s.groups == 1 || s.channels / s.groups >= 16; }

// The depth of the packed weights of qconv_mma: the depth rounded up to the K tile.
inline int padded_depth(const ConvShape& s) {
  const int depth = s.channels / s.groups * s.kernel_h * s.kernel_w;
  return (depth + kBlockK - 1) / kBlockK * kBlockK;
}

// qconv_mma's grid: 64-row tiles of the output pixels in x (up to 2^31 - 1), 64-channel tiles of a group in y,
// groups in z, in launches of at most 65,535 groups.
struct ConvGrid {
  int64_t row_tiles;
  int channel_tiles;
  int groups_per_launch, launches;
};

inline ConvGrid conv_grid(const ConvShape& s) {
  const int ng = s.out_channels / s.groups;
  const int groups_per_launch = s.groups < 65535 ? s.groups : 65535;
  return ConvGrid{(conv_rows(s) + kBlockM - 1) / kBlockM, (ng + kBlockN - 1) / kBlockN, groups_per_launch,
                  (s.groups + groups_per_launch - 1) / groups_per_launch};
}

// w: packed as qconv_mma (conv_uses_mma) or qconv_direct reads it; out: NHWC.
template <class Launch>
const char* launch_qconv(Launch&& launch, const uint8_t* x, const int8_t* w, const ConvShape& s,
                         const OutputStage& o, uint8_t* out) {
  if (conv_rows(s) == 0 || s.out_channels == 0) return nullptr;
  if (!conv_uses_mma(s))
    return launch_over(launch, conv_rows(s) * s.out_channels, qconv_direct, x, w, s, o, out);
  const ConvGrid grid = conv_grid(s);
  if (grid.row_tiles > 2147483647) return "more than 2^37 output pixels";
  if (grid.channel_tiles > 65535) return "more than 4,194,240 output channels in a group";
  for (int launch_index = 0; launch_index < grid.launches; ++launch_index) {
    const int first = launch_index * grid.groups_per_launch;
    const int groups = s.groups - first < grid.groups_per_launch ? s.groups - first : grid.groups_per_launch;
    launch(dim3(static_cast<unsigned>(grid.row_tiles), static_cast<unsigned>(grid.channel_tiles),
                static_cast<unsigned>(groups)),
           dim3(kConvThreads), qconv_mma, x, w, padded_depth(s), s, o, out, first);
  }
  return nullptr;
}

template <class Launch>
const char* launch_quantize(Launch&& launch, const float* x, uint8_t* q, int64_t total, const float* scale,
                            const int32_t* zero_point, int channels, int64_t inner, int qmin, int qmax) {
  return launch_over(launch, total, quantize_u8, x, q, total, scale, zero_point, channels, inner, qmin, qmax);
}

template <class Launch>
const char* launch_dequantize(Launch&& launch, const uint8_t* q, float* x, int64_t total, const float* scale,
                              const int32_t* zero_point, int channels, int64_t inner) {
  return launch_over(launch, total, dequantize_u8, q, x, total, scale, zero_point, channels, inner);
}

template <class Launch>
const char* launch_qadd(Launch&& launch, const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t total,
                        const int32_t* p, int left_shift) {
  // p: a_zero, a_m0, a_exponent, b_zero, b_m0, b_exponent, out_m0, out_exponent, out_zero, lo, hi
  return launch_over(launch, total, qadd_u8, a, b, out, total, p[0], p[1], static_cast<int>(p[2]), p[3], p[4],
                     static_cast<int>(p[5]), p[6], static_cast<int>(p[7]), p[8], p[9], p[10], left_shift);
}

template <class Launch>
const char* launch_qmul(Launch&& launch, const uint8_t* a, const uint8_t* b, uint8_t* out, int64_t total,
                        const int32_t* p) {
  // p: a_zero, b_zero, m0, exponent, out_zero, lo, hi
  return launch_over(launch, total, qmul_u8, a, b, out, total, p[0], p[1], p[2], static_cast<int>(p[3]), p[4], p[5],
                     p[6]);
}

template <class Launch>
const char* launch_requantize(Launch&& launch, const uint8_t* q, uint8_t* out, int64_t total, int32_t zero,
                              int32_t m0, int exponent, int32_t out_zero) {
  return launch_over(launch, total, requantize_u8, q, out, total, zero, m0, exponent, out_zero);
}

template <class Launch>
const char* launch_max_pool(Launch&& launch, const uint8_t* x, uint8_t* out, const PoolShape& s) {
  return launch_over(launch, pool_outputs(s), max_pool_u8, x, out, s);
}

template <class Launch>
const char* launch_avg_pool(Launch&& launch, const uint8_t* x, uint8_t* out, const PoolShape& s, int zero_point,
                            int count_include_pad) {
  return launch_over(launch, pool_outputs(s), avg_pool_u8, x, out, s, zero_point, count_include_pad);
}

template <class Launch>
const char* launch_mean_pixels(Launch&& launch, const uint8_t* x, uint8_t* out, int batch, int64_t pixels,
                               int channels) {
  const int64_t total = static_cast<int64_t>(batch) * channels;
  if (pixels == 0) return "a global average pool of an empty image";
  return launch_over(launch, total, mean_pixels_u8, x, out, batch, pixels, channels);
}

}  // namespace qc
