"""``torch.ops.qcompile``'s ops on the CUDA kernels' C entry points (``entry_points.h``), for either build.

One driver serves both builds of the same kernel source: :mod:`qcompile.kernels.cuda`
loads the nvcc build and runs it on CUDA tensors, on torch's current stream;
:mod:`qcompile.kernels.emulation` loads the host build and runs it on CPU
tensors, with the same launch shapes. Each method takes an op's arguments
(:mod:`qcompile.kernels.ops`) and returns what the op returns: convolutions
and pooling write channels-last codes, element-wise ops keep their input's
memory order.

The convolution kernels read weights packed their way (``[out][ky][kx][c]``,
padded to the K tile for the tensor-core kernel) with per-channel weight sums;
a layer's packing and its int32 parameters are made once and kept while its
tensors are unchanged, in the CPU kernels' memo (``host_conv._cached``).
"""

from __future__ import annotations

import ctypes
import math
from collections.abc import Callable

import torch
from qcompile.kernels import fixed_point as fp
from qcompile.kernels.cpu import ADD_LEFT_SHIFT
from qcompile.kernels.geometry import conv_output_size
from qcompile.kernels.host import memory_order
from qcompile.kernels.host_conv import _cached, _weight_rows
from torch import Tensor

i32, i64, ptr, cint = ctypes.c_int32, ctypes.c_int64, ctypes.c_void_p, ctypes.c_int

_SIGNATURES = {
    "qc_kernels_use_device": (None, [cint]),
    "qc_kernels_conv_uses_mma": (cint, [ptr]),
    "qc_kernels_padded_depth": (cint, [ptr]),
    "qc_kernels_conv_grid": (None, [ptr, ptr]),
    "qc_kernels_conv": (ctypes.c_char_p, [ptr] * 9 + [ptr]),
    "qc_kernels_quantize": (ctypes.c_char_p, [ptr, ptr, i64, ptr, ptr, cint, i64, cint, cint, ptr]),
    "qc_kernels_dequantize": (ctypes.c_char_p, [ptr, ptr, i64, ptr, ptr, cint, i64, ptr]),
    "qc_kernels_add": (ctypes.c_char_p, [ptr, ptr, ptr, i64, ptr, cint, ptr]),
    "qc_kernels_mul": (ctypes.c_char_p, [ptr, ptr, ptr, i64, ptr, ptr]),
    "qc_kernels_requantize": (ctypes.c_char_p, [ptr, ptr, i64, i32, i32, cint, i32, ptr]),
    "qc_kernels_max_pool": (ctypes.c_char_p, [ptr, ptr, ptr, ptr]),
    "qc_kernels_avg_pool": (ctypes.c_char_p, [ptr, ptr, ptr, cint, cint, ptr]),
    "qc_kernels_mean_pixels": (ctypes.c_char_p, [ptr, ptr, cint, i64, cint, ptr]),
}


class KernelError(RuntimeError):
    """A kernel launch that failed, or shapes the kernels cannot take."""


def _ints(*values: int) -> ctypes.Array:
    return (ctypes.c_int32 * len(values))(*values)


def conv_shape(x_shape, weight_shape, stride, padding, dilation, groups) -> tuple[int, ...]:
    """The 16 numbers of ``entry_points.h``'s conv shape for an NCHW input and an OIHW weight."""
    n, c, h, w = x_shape
    oh = conv_output_size(h, weight_shape[2], stride[0], padding[0], dilation[0])
    ow = conv_output_size(w, weight_shape[3], stride[1], padding[1], dilation[1])
    return (n, h, w, c, oh, ow, weight_shape[0], groups, weight_shape[2], weight_shape[3], *stride, *padding,
            *dilation)


class Kernels:
    """The ops on one build of the kernels. ``stream(device)`` gives the stream handle to launch on."""

    def __init__(self, library: ctypes.CDLL, stream: Callable[[torch.device], int | None], name: str):
        for function, (restype, argtypes) in _SIGNATURES.items():
            getattr(library, function).restype = restype
            getattr(library, function).argtypes = argtypes
        self.library, self.stream, self.name = library, stream, name

    # ------------------------------------------------------------------ plumbing

    def _run(self, function: str, *args, device: torch.device) -> None:
        if device.type == "cuda":
            self.library.qc_kernels_use_device(device.index if device.index is not None else
                                               torch.cuda.current_device())
        failed = getattr(self.library, function)(*args, self.stream(device))
        if failed is not None:
            raise KernelError(f"{self.name}: {function.removeprefix('qc_kernels_')} failed: {failed.decode()}")

    @staticmethod
    def _one_device(op: str, *tensors: Tensor) -> torch.device:
        """The device all of an op's tensors are on; a clear error when they are not on one (a CPU input to a
        model moved to the GPU, say), before any pointer reaches a kernel."""
        devices = {t.device for t in tensors}
        if len(devices) > 1:
            found = ", ".join(sorted(str(d) for d in devices))
            raise KernelError(f"qcompile.{op}: its tensors are on different devices ({found}); move the input to "
                              "the model's device (x.to(device)) or the model to the input's (model.to(device))")
        return devices.pop()

    def uses_mma(self, shape: tuple[int, ...]) -> bool:
        """Whether a convolution of this shape runs on tensor cores (else the direct kernel)."""
        return bool(self.library.qc_kernels_conv_uses_mma(_ints(*shape)))

    def conv_grid(self, shape: tuple[int, ...]) -> tuple[int, int, int, int]:
        """The tensor-core kernel's grid: row tiles, channel tiles, groups per launch, launches."""
        grid = (ctypes.c_int64 * 4)()
        self.library.qc_kernels_conv_grid(_ints(*shape), grid)
        return tuple(grid)

    def pack_conv_weights(self, weight: Tensor, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
        """``weight`` (OIHW int8, or a linear layer's [out, in]) as the kernel for ``shape`` reads it, and its
        per-channel sums (int32)."""
        rows = _weight_rows(weight).to(torch.int8)
        sums = rows.to(torch.int32).sum(dim=1, dtype=torch.int32)
        if self.uses_mma(shape):
            padded = self.library.qc_kernels_padded_depth(_ints(*shape))
            rows = torch.nn.functional.pad(rows, (0, padded - rows.shape[1]))
        return rows.contiguous(), sums.contiguous()

    @staticmethod
    def _aligned(t: Tensor) -> Tensor:
        """``t`` itself when its data starts on 16 bytes (the kernels' vector loads), else a copy that does."""
        return t if t.data_ptr() % 16 == 0 else t.clone(memory_format=torch.preserve_format)

    # ------------------------------------------------------------------ the ops

    def _conv(self, x_nhwc: Tensor, weight: Tensor, bias: Tensor, multiplier: Tensor, exponent: Tensor,
              shape: tuple[int, ...], x_zero: int, out_zero: int, lo: int, hi: int, out: Tensor) -> None:
        device = x_nhwc.device
        packed, sums, *params = _cached(
            (weight, bias, multiplier, exponent), (self.name, shape[3], shape[7], str(device)),
            lambda: (*self.pack_conv_weights(weight.to(device), shape),
                     *(t.to(device=device, dtype=torch.int32).reshape(-1).contiguous()
                       for t in (bias, multiplier, exponent))))
        self._run("qc_kernels_conv", x_nhwc.data_ptr(), packed.data_ptr(), _ints(*shape),
                  *(t.data_ptr() for t in params), sums.data_ptr(), _ints(x_zero, out_zero, lo, hi), out.data_ptr(),
                  device=device)

    def qconv2d(self, x: Tensor, x_zero: int, weight: Tensor, bias: Tensor, multiplier: Tensor, exponent: Tensor,
                out_zero: int, lo: int, hi: int, stride, padding, dilation, groups: int) -> Tensor:
        self._one_device("qconv2d", x, weight, bias, multiplier, exponent)
        shape = conv_shape(x.shape, weight.shape, stride, padding, dilation, groups)
        x_nhwc = self._aligned(x.to(torch.uint8).contiguous(memory_format=torch.channels_last))
        out = torch.empty((shape[0], shape[4], shape[5], shape[6]), dtype=torch.uint8, device=x.device)
        self._conv(x_nhwc, weight, bias, multiplier, exponent, shape, x_zero, out_zero, lo, hi, out)
        return out.permute(0, 3, 1, 2)  # NCHW indexing, channels-last memory

    def qlinear(self, x: Tensor, x_zero: int, weight: Tensor, bias: Tensor, multiplier: Tensor, exponent: Tensor,
                out_zero: int, lo: int, hi: int) -> Tensor:
        self._one_device("qlinear", x, weight, bias, multiplier, exponent)
        depth, channels = x.shape[-1], weight.shape[0]
        rows = math.prod(x.shape[:-1])
        shape = (rows, 1, 1, depth, 1, 1, channels, 1, 1, 1, 1, 1, 0, 0, 1, 1)
        x_rows = self._aligned(x.to(torch.uint8).reshape(rows, depth).contiguous())
        out = torch.empty((rows, channels), dtype=torch.uint8, device=x.device)
        self._conv(x_rows, weight, bias, multiplier, exponent, shape, x_zero, out_zero, lo, hi, out)
        return out.reshape(*x.shape[:-1], channels)

    @staticmethod
    def _channel_axis(x: Tensor, scale: Tensor, zero_point: Tensor) -> int | None:
        """The one axis of ``x`` that ``scale`` and ``zero_point`` vary along (broadcast), else None."""
        if scale.dim() > x.dim() or zero_point.shape != scale.shape:
            return None
        shape = (1,) * (x.dim() - scale.dim()) + tuple(scale.shape)
        varying = [d for d, size in enumerate(shape) if size != 1]
        if len(varying) == 1 and shape[varying[0]] == x.shape[varying[0]]:
            return varying[0]
        return None

    def _on_grid(self, t: Tensor, dtype: torch.dtype, scale: Tensor, zero_point: Tensor):
        """``t`` laid out for the quantize / dequantize kernels, with the grid's channel count, the elements per
        channel step, and the scales and zero points as they read them; None for a broadcast they have no form
        for (then torch ops serve it, on the same device)."""
        per_tensor = scale.numel() == 1 and zero_point.numel() == 1
        axis = None if per_tensor else self._channel_axis(t, scale, zero_point)
        if not per_tensor and axis is None:
            return None
        t = t.to(dtype).contiguous(memory_format=memory_order(t) if per_tensor else torch.contiguous_format)
        channels = 1 if per_tensor else t.shape[axis]
        inner = 1 if per_tensor else math.prod(t.shape[axis + 1:])
        return (t, channels, inner, scale.to(device=t.device, dtype=torch.float32).reshape(-1).contiguous(),
                zero_point.to(device=t.device, dtype=torch.int32).reshape(-1).contiguous())

    def quantize(self, x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
        self._one_device("quantize", x, scale, zero_point)
        laid_out = self._on_grid(x, torch.float32, scale, zero_point)
        if laid_out is None:
            return fp.quantize(x, scale, zero_point, qmin, qmax).to(torch.uint8)
        x, channels, inner, scale_, zero_ = laid_out
        out = torch.empty_like(x, dtype=torch.uint8)
        self._run("qc_kernels_quantize", x.data_ptr(), out.data_ptr(), x.numel(), scale_.data_ptr(),
                  zero_.data_ptr(), channels, inner, qmin, qmax, device=x.device)
        return out

    def dequantize(self, q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
        self._one_device("dequantize", q, scale, zero_point)
        laid_out = self._on_grid(q, torch.uint8, scale, zero_point)
        if laid_out is None:
            return fp.dequantize(q, scale, zero_point)
        q, channels, inner, scale_, zero_ = laid_out
        out = torch.empty_like(q, dtype=torch.float32)
        self._run("qc_kernels_dequantize", q.data_ptr(), out.data_ptr(), q.numel(), scale_.data_ptr(),
                  zero_.data_ptr(), channels, inner, device=q.device)
        return out

    @staticmethod
    def _pair(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor]:
        """Two operands broadcast to one shape, both in the first's memory order (as the CPU twin keeps it)."""
        Kernels._one_device("an element-wise op", a, b)
        a, b = torch.broadcast_tensors(a, b)
        layout = memory_order(a)
        return tuple(t.to(torch.uint8).contiguous(memory_format=layout) for t in (a, b))

    def qadd(self, a: Tensor, a_zero: int, a_multiplier: int, a_exponent: int, b: Tensor, b_zero: int,
             b_multiplier: int, b_exponent: int, out_multiplier: int, out_exponent: int, out_zero: int, lo: int,
             hi: int) -> Tensor:
        a, b = self._pair(a, b)
        out = torch.empty_like(a)
        params = _ints(a_zero, a_multiplier, a_exponent, b_zero, b_multiplier, b_exponent, out_multiplier,
                       out_exponent, out_zero, lo, hi)
        self._run("qc_kernels_add", a.data_ptr(), b.data_ptr(), out.data_ptr(), a.numel(), params, ADD_LEFT_SHIFT,
                  device=a.device)
        return out

    def qmul(self, a: Tensor, a_zero: int, b: Tensor, b_zero: int, out_multiplier: int, out_exponent: int,
             out_zero: int, lo: int, hi: int) -> Tensor:
        a, b = self._pair(a, b)
        out = torch.empty_like(a)
        params = _ints(a_zero, b_zero, out_multiplier, out_exponent, out_zero, lo, hi)
        self._run("qc_kernels_mul", a.data_ptr(), b.data_ptr(), out.data_ptr(), a.numel(), params, device=a.device)
        return out

    def requantize_codes(self, q: Tensor, zero: int, multiplier: int, exponent: int, out_zero: int) -> Tensor:
        q = q.to(torch.uint8).contiguous(memory_format=memory_order(q))
        out = torch.empty_like(q)
        self._run("qc_kernels_requantize", q.data_ptr(), out.data_ptr(), q.numel(), zero, multiplier, exponent,
                  out_zero, device=q.device)
        return out

    def max_pool2d(self, q: Tensor, kernel_size, stride, padding, dilation, ceil_mode: bool) -> Tensor:
        from qcompile.kernels.ops import _pooled_shape

        out_shape = _pooled_shape(q, kernel_size, stride, padding, dilation, ceil_mode)
        n, c, h, w = q.shape
        q = q.to(torch.uint8).contiguous(memory_format=torch.channels_last)
        out = torch.empty((n, out_shape[2], out_shape[3], c), dtype=torch.uint8, device=q.device)
        shape = _ints(n, h, w, c, out_shape[2], out_shape[3], *kernel_size, *stride, *padding, *dilation)
        self._run("qc_kernels_max_pool", q.data_ptr(), out.data_ptr(), shape, device=q.device)
        return out.permute(0, 3, 1, 2)

    def avg_pool2d(self, q: Tensor, zero_point: int, kernel_size, stride, padding, ceil_mode: bool,
                   count_include_pad: bool) -> Tensor:
        n, c, h, w = q.shape
        oh, ow = torch.nn.functional.avg_pool2d(torch.empty(1, 1, h, w, device="meta"), kernel_size, stride, padding,
                                                ceil_mode, count_include_pad).shape[2:]
        q = q.to(torch.uint8).contiguous(memory_format=torch.channels_last)
        out = torch.empty((n, oh, ow, c), dtype=torch.uint8, device=q.device)
        shape = _ints(n, h, w, c, oh, ow, *kernel_size, *stride, *padding, 1, 1)
        self._run("qc_kernels_avg_pool", q.data_ptr(), out.data_ptr(), shape, zero_point, int(count_include_pad),
                  device=q.device)
        return out.permute(0, 3, 1, 2)

    def global_avg_pool(self, q: Tensor) -> Tensor:
        n, c, h, w = q.shape
        q = q.to(torch.uint8).contiguous(memory_format=torch.channels_last)
        out = torch.empty((n, c, 1, 1), dtype=torch.uint8, device=q.device)
        self._run("qc_kernels_mean_pixels", q.data_ptr(), out.data_ptr(), n, h * w, c, device=q.device)
        return out
