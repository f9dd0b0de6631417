// A run of a plan's kernel calls in one call from Python (kernels/plan.py's segments): each step calls one
// entry point of the host libraries (a convolution, linear layer, add, pooling, copy, dequantize) with the
// arguments its module's kept call would pass through ctypes. The values between steps that no Python code
// reads live in one arena, at offsets chosen by the caller (a value's bytes are reused once its last reader has
// run); the others are tensors whose addresses the caller writes into `values` before the call.
//
//   before: for each step: torch.empty_strided (output), ctypes call of the entry point   (about 3 us a step)
//   after:  one ctypes call; per step a switch on its kind and the entry point's call
//
// A step is 24 int64: kind, entry point, the values it reads (a, b: indices, b -1 for none) and writes (out),
// the output's offset in the arena (-1: an address the caller wrote), then the entry point's arguments other
// than the values' addresses, in its order (pointers as integers).
#include <stdint.h>
#include <string.h>

namespace {

enum Kind : int64_t {
  kGemm16 = 0,         // qc_conv_gemm
  kGemmAmx = 1,        // qc_conv_gemm_amx
  kDepthwiseVnni = 2,  // qc_conv_depthwise_vnni
  kDepthwise = 3,      // qc_conv_depthwise
  kGemmBytes = 4,      // qc_conv_gemm_bytes
  kAddLookup = 5,      // qc_host_add_lookup
  kAdd = 6,            // qc_host_add
  kMaxPool = 7,        // qc_host_max_pool
  kToChannelsLast = 8,  // qc_host_to_channels_last
  kMeanPixels = 9,      // qc_host_mean_pixels
  kDequantize = 10,     // qc_host_dequantize
  kQuantize = 11,       // qc_host_quantize
};

constexpr int64_t kStepWords = 24;

using Gemm16 = void (*)(const uint8_t*, int32_t, const int16_t*, const int64_t*, const int32_t*, const int32_t*,
                        const int32_t*, int32_t, int32_t, int32_t, uint8_t*, int);
using GemmBytes = void (*)(const uint8_t*, int32_t, const int8_t*, const int64_t*, const int32_t*, const int32_t*,
                           const int32_t*, int32_t, int32_t, int32_t, uint8_t*, int);
using Depthwise = void (*)(const uint8_t*, int32_t, const float*, const int64_t*, const int32_t*, const int32_t*,
                           const int32_t*, int32_t, int32_t, int32_t, uint8_t*, int, int);
using GemmTaps = void (*)(const uint8_t*, int32_t, const int8_t*, const int32_t*, const int64_t*, const int32_t*,
                          const int32_t*, const int32_t*, int32_t, int32_t, int32_t, uint8_t*, int, int);
using MaxPool = void (*)(const uint8_t*, uint8_t*, const int64_t*, int);
using ToChannelsLast = void (*)(const uint8_t*, uint8_t*, int64_t, int64_t, int64_t, int);  // and MeanPixels
using Dequantize = void (*)(const uint8_t*, float*, int64_t, float, int32_t, int);
using Quantize = void (*)(const float*, uint8_t*, int64_t, float, int32_t, int32_t, int32_t, int);
using AddLookup = int (*)(const uint8_t*, const uint8_t*, uint8_t*, int64_t, const uint8_t*, int);
using Add = int (*)(const uint8_t*, const uint8_t*, uint8_t*, int64_t, int32_t, int32_t, int, int32_t, int32_t, int,
                    int32_t, int, int32_t, int32_t, int32_t, int, int, int);

template <class T>
T* as(int64_t word) {
  return reinterpret_cast<T*>(static_cast<uintptr_t>(word));
}

template <class Fn>
Fn entry(int64_t word) {
  return reinterpret_cast<Fn>(static_cast<uintptr_t>(word));
}

// A float32 argument: its bits in the low half of the word.
float float_bits(int64_t word) {
  const uint32_t bits = static_cast<uint32_t>(word);
  float f = 0;
  memcpy(&f, &bits, sizeof f);
  return f;
}

// A convolution's arguments after x: x_zero, weights, shape, bias, m0, exponent, out_zero, lo, hi; then out and
// the trailing ints (threads, and for some a form).
template <class Fn, class W, class... Tail>
void conv(const int64_t* s, const uint8_t* x, uint8_t* out, Tail... tail) {
  const int64_t* a = s + 6;
  entry<Fn>(s[1])(x, static_cast<int32_t>(a[0]), as<const W>(a[1]), as<const int64_t>(a[2]), as<const int32_t>(a[3]),
                  as<const int32_t>(a[4]), as<const int32_t>(a[5]), static_cast<int32_t>(a[6]),
                  static_cast<int32_t>(a[7]), static_cast<int32_t>(a[8]), out, tail...);
}

}  // namespace

extern "C" {

// Runs `count` steps (kStepWords int64 each) in order; values[i] is value i's address, written here for those
// in the arena. Returns the index of the first step of an unknown kind (nothing run from there), or -1.
int64_t qc_plan_run(const int64_t* steps, int64_t count, int64_t* values, uint8_t* arena) {
  for (int64_t i = 0; i < count; ++i) {
    const int64_t* s = steps + i * kStepWords;
    if (s[5] >= 0) values[s[4]] = static_cast<int64_t>(reinterpret_cast<uintptr_t>(arena + s[5]));
    const uint8_t* x = as<const uint8_t>(values[s[2]]);
    uint8_t* out = as<uint8_t>(values[s[4]]);
    const int64_t* a = s + 6;
    switch (s[0]) {
      case kGemm16:
        conv<Gemm16, int16_t>(s, x, out, static_cast<int>(a[9]));
        break;
      case kGemmAmx:
      case kDepthwiseVnni:
        conv<GemmBytes, int8_t>(s, x, out, static_cast<int>(a[9]));
        break;
      case kDepthwise:
        conv<Depthwise, float>(s, x, out, static_cast<int>(a[9]), static_cast<int>(a[10]));
        break;
      case kGemmBytes:
        entry<GemmTaps>(s[1])(x, static_cast<int32_t>(a[0]), as<const int8_t>(a[1]), as<const int32_t>(a[2]),
                              as<const int64_t>(a[3]), as<const int32_t>(a[4]), as<const int32_t>(a[5]),
                              as<const int32_t>(a[6]), static_cast<int32_t>(a[7]), static_cast<int32_t>(a[8]),
                              static_cast<int32_t>(a[9]), out, static_cast<int>(a[10]), static_cast<int>(a[11]));
        break;
      case kAddLookup:
        entry<AddLookup>(s[1])(x, as<const uint8_t>(values[s[3]]), out, a[0], as<const uint8_t>(a[1]),
                               static_cast<int>(a[2]));
        break;
      case kAdd: {
        auto i32 = [&](int k) { return static_cast<int32_t>(a[k]); };
        entry<Add>(s[1])(x, as<const uint8_t>(values[s[3]]), out, a[0], i32(1), i32(2), i32(3), i32(4), i32(5),
                         i32(6), i32(7), i32(8), i32(9), i32(10), i32(11), i32(12), i32(13), i32(14));
        break;
      }
      case kMaxPool:
        entry<MaxPool>(s[1])(x, out, as<const int64_t>(a[0]), static_cast<int>(a[1]));
        break;
      case kToChannelsLast:
      case kMeanPixels:
        entry<ToChannelsLast>(s[1])(x, out, a[0], a[1], a[2], static_cast<int>(a[3]));
        break;
      case kDequantize:
        entry<Dequantize>(s[1])(x, as<float>(values[s[4]]), a[0], float_bits(a[1]), static_cast<int32_t>(a[2]),
                                static_cast<int>(a[3]));
        break;
      case kQuantize:
        entry<Quantize>(s[1])(as<const float>(values[s[2]]), out, a[0], float_bits(a[1]), static_cast<int32_t>(a[2]),
                              static_cast<int32_t>(a[3]), static_cast<int32_t>(a[4]), static_cast<int>(a[5]));
        break;
      default:
        return i;
    }
  }
  return -1;
}

}  // extern "C"
