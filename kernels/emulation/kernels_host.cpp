// The CUDA kernels of ../gemmlowp_kernels.cuh built for the host emulation,
// with C entry points for the tests (kernels/emulation.py loads this with
// ctypes). Launch shapes are the ones ../gemmlowp_launch.cu uses on a GPU.
#include "cuda_host.h"
#include "../gemmlowp_kernels.cuh"

extern "C" {

int32_t qc_srdhm(int32_t a, int32_t b) { return qc::srdhm(a, b); }
int32_t qc_rdbpot(int32_t x, int e) { return qc::rdbpot(x, e); }
int32_t qc_output_stage(int32_t acc, int32_t bias, int32_t m0, int exponent, int32_t zero_point, int32_t lo,
                        int32_t hi) {
  return qc::output_stage(acc, bias, m0, exponent, zero_point, lo, hi);
}
int32_t qc_quantize(float x, float scale, int32_t zero_point, int32_t qmin, int32_t qmax) {
  return qc::quantize(x, scale, zero_point, qmin, qmax);
}
uint8_t qc_pack_int4(int32_t even, int32_t odd) { return qc::pack_int4(even, odd); }
int32_t qc_unpack_int4(uint8_t byte, int high) { return qc::unpack_int4(byte, high); }

void qc_qgemm(const uint8_t* a, const int8_t* w, const int32_t* weight_sums, const int32_t* bias,
              const int32_t* multiplier, const int32_t* exponent, uint8_t* out, int groups, int rows,
              int n_per_group, int depth, int a_zero, int out_zero, int clamp_lo, int clamp_hi, int spatial,
              int out_channels) {
  const dim3 grid((n_per_group + qc::kTile - 1) / qc::kTile, (rows + qc::kTile - 1) / qc::kTile, groups);
  qc_host::launch(grid, dim3(qc::kTile, qc::kTile), qc::qgemm_dp4a, a, w, weight_sums, bias, multiplier, exponent,
                  out, rows, n_per_group, depth, a_zero, out_zero, clamp_lo, clamp_hi, spatial, out_channels);
}

void qc_im2col(const uint8_t* x, uint8_t* columns, int batch, int channels, int height, int width, int groups,
               int kernel_h, int kernel_w, int stride_h, int stride_w, int pad_h, int pad_w, int dilation_h,
               int dilation_w, int out_h, int out_w, int zero_point) {
  qc_host::launch(dim3(4), dim3(64), qc::im2col_u8, x, columns, batch, channels, height, width, groups, kernel_h,
                  kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, out_h, out_w, zero_point);
}

void qc_quantize_u8(const float* x, uint8_t* q, int64_t total, const float* scale, const int32_t* zero_point,
                    int channels, int64_t inner, int qmin, int qmax) {
  qc_host::launch(dim3(4), dim3(64), qc::quantize_u8, x, q, total, scale, zero_point, channels, inner, qmin, qmax);
}

void qc_dequantize_u8(const uint8_t* q, float* x, int64_t total, const float* scale, const int32_t* zero_point,
                      int channels, int64_t inner) {
  qc_host::launch(dim3(4), dim3(64), qc::dequantize_u8, q, x, total, scale, zero_point, channels, inner);
}

}  // extern "C"
