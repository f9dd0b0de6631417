// GPU launchers for the kernels in gemmlowp_kernels.cuh (device pointers,
// caller's stream). kernels/emulation/kernels_host.cpp launches the same
// kernels with the same shapes on the host emulation.
#include <cuda_runtime.h>

#include "gemmlowp_kernels.cuh"

namespace {
constexpr int kThreads = 256;
unsigned blocks_for(int64_t total) {
  const int64_t blocks = (total + kThreads - 1) / kThreads;
  return static_cast<unsigned>(blocks < 65535 ? (blocks > 0 ? blocks : 1) : 65535);  // grid-stride loops
}
}  // namespace

extern "C" {

cudaError_t qc_cuda_qgemm(const uint8_t* a, const int8_t* w, const int32_t* weight_sums, const int32_t* bias,
                          const int32_t* multiplier, const int32_t* exponent, uint8_t* out, int groups, int rows,
                          int n_per_group, int depth, int a_zero, int out_zero, int clamp_lo, int clamp_hi,
                          int spatial, int out_channels, cudaStream_t stream) {
  const dim3 grid((n_per_group + qc::kTile - 1) / qc::kTile, (rows + qc::kTile - 1) / qc::kTile, groups);
  qc::qgemm_dp4a<<<grid, dim3(qc::kTile, qc::kTile), 0, stream>>>(a, w, weight_sums, bias, multiplier, exponent,
                                                                    out, rows, n_per_group, depth, a_zero, out_zero,
                                                                    clamp_lo, clamp_hi, spatial, out_channels);
  return cudaGetLastError();
}

cudaError_t qc_cuda_im2col(const uint8_t* x, uint8_t* columns, int batch, int channels, int height, int width,
                           int groups, int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w,
                           int dilation_h, int dilation_w, int out_h, int out_w, int zero_point,
                           cudaStream_t stream) {
  const int64_t total = static_cast<int64_t>(batch) * out_h * out_w * channels * kernel_h * kernel_w;
  qc::im2col_u8<<<blocks_for(total), kThreads, 0, stream>>>(x, columns, batch, channels, height, width, groups,
                                                            kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w,
                                                            dilation_h, dilation_w, out_h, out_w, zero_point);
  return cudaGetLastError();
}

cudaError_t qc_cuda_quantize_u8(const float* x, uint8_t* q, int64_t total, const float* scale,
                                const int32_t* zero_point, int channels, int64_t inner, int qmin, int qmax,
                                cudaStream_t stream) {
  qc::quantize_u8<<<blocks_for(total), kThreads, 0, stream>>>(x, q, total, scale, zero_point, channels, inner, qmin,
                                                              qmax);
  return cudaGetLastError();
}

cudaError_t qc_cuda_dequantize_u8(const uint8_t* q, float* x, int64_t total, const float* scale,
                                  const int32_t* zero_point, int channels, int64_t inner, cudaStream_t stream) {
  qc::dequantize_u8<<<blocks_for(total), kThreads, 0, stream>>>(q, x, total, scale, zero_point, channels, inner);
  return cudaGetLastError();
}

}  // extern "C"
