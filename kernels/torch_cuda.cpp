// Python bindings of the GPU launchers (gemmlowp_launch.cu) for torch tensors.
// kernels/cuda.py builds this with torch.utils.cpp_extension on a machine with
// a GPU and registers the functions as the CUDA kernels of torch.ops.qcompile.*.
#include <c10/cuda/CUDAStream.h>
#include <cuda_runtime.h>
#include <torch/extension.h>

extern "C" {
cudaError_t qc_cuda_qgemm(const uint8_t*, const int8_t*, const int32_t*, const int32_t*, const int32_t*,
                          const int32_t*, uint8_t*, int, int, int, int, int, int, int, int, int, int, cudaStream_t);
cudaError_t qc_cuda_im2col(const uint8_t*, uint8_t*, int, int, int, int, int, int, int, int, int, int, int, int,
                           int, int, int, int, cudaStream_t);
cudaError_t qc_cuda_quantize_u8(const float*, uint8_t*, int64_t, const float*, const int32_t*, int, int64_t, int,
                                int, cudaStream_t);
cudaError_t qc_cuda_dequantize_u8(const uint8_t*, float*, int64_t, const float*, const int32_t*, int, int64_t,
                                  cudaStream_t);
}

namespace {

void check(cudaError_t status, const char* what) {
  TORCH_CHECK(status == cudaSuccess, what, " failed: ", cudaGetErrorString(status));
}

void expect(const at::Tensor& t, at::ScalarType type, const char* name) {
  TORCH_CHECK(t.is_cuda() && t.is_contiguous() && t.scalar_type() == type, name,
              " must be a contiguous CUDA tensor of ", type);
}

// a: [groups, rows, depth] uint8; w: [channels, depth] int8; returns [rows / spatial, channels, spatial] uint8.
at::Tensor qgemm(const at::Tensor& a, const at::Tensor& w, const at::Tensor& bias, const at::Tensor& multiplier,
                 const at::Tensor& exponent, int64_t a_zero, int64_t out_zero, int64_t lo, int64_t hi,
                 int64_t spatial) {
  expect(a, at::kByte, "a");
  expect(w, at::kChar, "w");
  for (const auto* t : {&bias, &multiplier, &exponent}) expect(*t, at::kInt, "bias/multiplier/exponent");
  const int64_t groups = a.size(0), rows = a.size(1), depth = a.size(2), channels = w.size(0);
  TORCH_CHECK(w.size(1) == depth && channels % groups == 0 && rows % spatial == 0, "qgemm: shapes do not fit");
  const at::Tensor sums = w.sum(1, /*keepdim=*/false, at::kInt).contiguous();
  at::Tensor out = at::empty({rows / spatial, channels, spatial}, a.options());
  check(qc_cuda_qgemm(a.data_ptr<uint8_t>(), w.data_ptr<int8_t>(), sums.data_ptr<int32_t>(),
                      bias.data_ptr<int32_t>(), multiplier.data_ptr<int32_t>(), exponent.data_ptr<int32_t>(),
                      out.data_ptr<uint8_t>(), groups, rows, channels / groups, depth, a_zero, out_zero, lo, hi,
                      spatial, channels, c10::cuda::getCurrentCUDAStream()),
        "qgemm_dp4a");
  return out;
}

at::Tensor im2col(const at::Tensor& x, int64_t groups, int64_t kernel_h, int64_t kernel_w, int64_t stride_h,
                  int64_t stride_w, int64_t pad_h, int64_t pad_w, int64_t dilation_h, int64_t dilation_w,
                  int64_t out_h, int64_t out_w, int64_t zero_point) {
  expect(x, at::kByte, "x");
  const int64_t n = x.size(0), c = x.size(1);
  at::Tensor columns = at::empty({groups, n * out_h * out_w, c / groups * kernel_h * kernel_w}, x.options());
  check(qc_cuda_im2col(x.data_ptr<uint8_t>(), columns.data_ptr<uint8_t>(), n, c, x.size(2), x.size(3), groups,
                       kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, out_h, out_w,
                       zero_point, c10::cuda::getCurrentCUDAStream()),
        "im2col_u8");
  return columns;
}

at::Tensor quantize(const at::Tensor& x, const at::Tensor& scale, const at::Tensor& zero_point, int64_t channels,
                    int64_t inner, int64_t qmin, int64_t qmax) {
  expect(x, at::kFloat, "x");
  at::Tensor q = at::empty(x.sizes(), x.options().dtype(at::kByte));
  check(qc_cuda_quantize_u8(x.data_ptr<float>(), q.data_ptr<uint8_t>(), x.numel(), scale.data_ptr<float>(),
                            zero_point.data_ptr<int32_t>(), channels, inner, qmin, qmax,
                            c10::cuda::getCurrentCUDAStream()),
        "quantize_u8");
  return q;
}

at::Tensor dequantize(const at::Tensor& q, const at::Tensor& scale, const at::Tensor& zero_point, int64_t channels,
                      int64_t inner) {
  expect(q, at::kByte, "q");
  at::Tensor x = at::empty(q.sizes(), q.options().dtype(at::kFloat));
  check(qc_cuda_dequantize_u8(q.data_ptr<uint8_t>(), x.data_ptr<float>(), q.numel(), scale.data_ptr<float>(),
                              zero_point.data_ptr<int32_t>(), channels, inner, c10::cuda::getCurrentCUDAStream()),
        "dequantize_u8");
  return x;
}

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.def("qgemm", &qgemm);
  m.def("im2col", &im2col);
  m.def("quantize", &quantize);
  m.def("dequantize", &dequantize);
}
