"""The gemmlowp backend's operators, registered with ``torch.library`` as ``torch.ops.qcompile.*``.

Each op has a fake (meta) kernel, so modules that call them trace with
torch.fx, export with ``torch.export`` (and save and load as ``.pt2``
archives) and script with TorchScript. The CPU implementation is the twin in
:mod:`qcompile.kernels.cpu`; the CUDA kernels (:mod:`qcompile.kernels.cuda`)
serve the same ops on CUDA tensors. Importing ``qcompile.kernels`` registers
both.

Tensors are plain: ``uint8`` activations, ``int8`` weights, ``int32`` bias
(in accumulator units), multipliers and exponents.
"""

from __future__ import annotations

import functools

import torch
from qcompile.kernels import cpu, host
from qcompile.kernels import fixed_point as fp
from qcompile.kernels.geometry import conv_output_size
from torch import Tensor

_LIBRARY = torch.library.Library("qcompile", "DEF")
_DEFINED: list[str] = []


def defined_ops() -> list[str]:
    """The names of the ops this module defines (``torch.ops.qcompile.<name>``)."""
    return list(_DEFINED)


def _operator(function):
    """Define ``torch.ops.qcompile.<name>`` from a typed Python function, which serves it on the CPU.

    ``torch.library.custom_op`` would do the same with about 50 microseconds of
    Python around every call; a model makes a hundred calls."""
    _LIBRARY.define(function.__name__ + torch.library.infer_schema(function, mutates_args=()))
    _DEFINED.append(function.__name__)
    _LIBRARY.impl(function.__name__, function, "CPU")
    return function


@_operator
def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """``round(clamp(zp + x / scale))`` to uint8 (per tensor: 0-d scale and zero point)."""
    if scale.numel() == 1 and zero_point.numel() == 1 and 0 <= qmin <= qmax <= 255 and host.library() is not None:
        return host.quantize(x, float(scale), int(zero_point), qmin, qmax)
    return fp.quantize(x, scale, zero_point, qmin, qmax).to(torch.uint8)


@torch.library.register_fake("qcompile::quantize")
def _(x, scale, zero_point, qmin, qmax):
    return torch.empty_like(x, dtype=torch.uint8)


@_operator
def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    if (q.dtype == torch.uint8 and scale.numel() == 1 and zero_point.numel() == 1 and scale.dtype == torch.float32
            and host.library() is not None):
        return host.dequantize(q, float(scale), int(zero_point))
    return fp.dequantize(q, scale, zero_point)


@torch.library.register_fake("qcompile::dequantize")
def _(q, scale, zero_point):
    return torch.empty_like(q, dtype=torch.float32)


@_operator
def qlinear(x: Tensor, x_zero: int, weight: Tensor, bias: Tensor, multiplier: Tensor, exponent: Tensor,
            out_zero: int, lo: int, hi: int) -> Tensor:
    """uint8 ``x[..., K]`` times int8 ``weight[N, K]``, through the fixed-point output stage."""
    return cpu.qlinear(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi)


@torch.library.register_fake("qcompile::qlinear")
def _(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi):
    return x.new_empty((*x.shape[:-1], weight.shape[0]), dtype=torch.uint8)


@_operator
def qconv2d(x: Tensor, x_zero: int, weight: Tensor, bias: Tensor, multiplier: Tensor, exponent: Tensor,
            out_zero: int, lo: int, hi: int, stride: list[int], padding: list[int], dilation: list[int],
            groups: int) -> Tensor:
    """uint8 ``x`` (N, C, H, W) convolved with int8 ``weight``, through the fixed-point output stage.

    The output is in channels-last memory order on every device: the order the CPU kernels read and
    write, so that a chain of convolutions never transposes."""
    out = cpu.qconv2d(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride, padding,
                      dilation, groups)
    return out.contiguous(memory_format=torch.channels_last)


@torch.library.register_fake("qcompile::qconv2d")
def _(x, x_zero, weight, bias, multiplier, exponent, out_zero, lo, hi, stride, padding, dilation, groups):
    h = conv_output_size(x.shape[2], weight.shape[2], stride[0], padding[0], dilation[0])
    w = conv_output_size(x.shape[3], weight.shape[3], stride[1], padding[1], dilation[1])
    return x.new_empty((x.shape[0], weight.shape[0], h, w), dtype=torch.uint8).contiguous(
        memory_format=torch.channels_last)


@_operator
def qadd(a: Tensor, a_zero: int, a_multiplier: int, a_exponent: int, b: Tensor, b_zero: int, b_multiplier: int,
         b_exponent: int, out_multiplier: int, out_exponent: int, out_zero: int, lo: int, hi: int) -> Tensor:
    """Elementwise ``a + b`` of two uint8 tensors on different grids, onto the output grid."""
    return cpu.qadd(a, a_zero, a_multiplier, a_exponent, b, b_zero, b_multiplier, b_exponent, out_multiplier,
                    out_exponent, out_zero, lo, hi)


@torch.library.register_fake("qcompile::qadd")
def _(a, a_zero, a_multiplier, a_exponent, b, b_zero, b_multiplier, b_exponent, out_multiplier, out_exponent,
      out_zero, lo, hi):
    return torch.empty_like(a, dtype=torch.uint8)


@_operator
def qmul(a: Tensor, a_zero: int, b: Tensor, b_zero: int, out_multiplier: int, out_exponent: int, out_zero: int,
         lo: int, hi: int) -> Tensor:
    """Elementwise ``a * b`` of two uint8 tensors on their own grids (``b`` may broadcast), onto the output grid."""
    product = (a.long() - a_zero) * (b.long() - b_zero)
    return _output_stage(product, out_multiplier, out_exponent, out_zero, lo, hi)


@torch.library.register_fake("qcompile::qmul")
def _(a, a_zero, b, b_zero, out_multiplier, out_exponent, out_zero, lo, hi):
    return a.new_empty(torch.broadcast_shapes(a.shape, b.shape), dtype=torch.uint8)


@_operator
def requantize_codes(q: Tensor, zero: int, multiplier: int, exponent: int, out_zero: int) -> Tensor:
    """uint8 codes onto another grid: ``(q - zero)`` times the fixed-point multiplier, plus ``out_zero``."""
    return _output_stage(q.long() - zero, multiplier, exponent, out_zero, 0, 255)


@torch.library.register_fake("qcompile::requantize_codes")
def _(q, zero, multiplier, exponent, out_zero):
    return torch.empty_like(q, dtype=torch.uint8)


def _output_stage(acc: Tensor, multiplier: int, exponent: int, out_zero: int, lo: int, hi: int) -> Tensor:
    from qcompile.integer.reference import output_stage

    return output_stage(acc, torch.zeros((), dtype=torch.int64), torch.tensor(multiplier), torch.tensor(exponent),
                        out_zero, lo, hi)


@_operator
def max_pool2d(q: Tensor, kernel_size: list[int], stride: list[int], padding: list[int], dilation: list[int],
               ceil_mode: bool) -> Tensor:
    """Max pooling of uint8 codes (N, C, H, W), channels-last memory order out, as :func:`qconv2d`.

    torch 2.14's max pooling refuses uint8 tensors in channels-last order (and
    is slow on uint8 in NCHW); the host kernel pools them in channels-last
    order, torch in NCHW without it."""
    shape = _pooled_shape(q, kernel_size, stride, padding, dilation, ceil_mode)
    if host.library() is not None and q.dim() == 4:
        return host.max_pool2d(q, shape, kernel_size, stride, padding, dilation)
    out = torch.nn.functional.max_pool2d(q.contiguous(), kernel_size, stride, padding, dilation, ceil_mode)
    return out.contiguous(memory_format=torch.channels_last)


def _pooled_shape(q, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[int, ...]:
    """torch's output shape of max pooling (its checks of the arguments included), worked out once per shape
    and arguments (on the meta device it costs more than pooling a small input)."""
    arguments = (tuple(q.shape), tuple(kernel_size), tuple(stride), tuple(padding), tuple(dilation),
                 bool(ceil_mode))
    if all(isinstance(d, int) for d in q.shape):  # not symbolic (export): cached
        return _pooled_shape_of(*arguments)
    return _pooled_shape_of.__wrapped__(*arguments)


@functools.lru_cache(maxsize=256)
def _pooled_shape_of(shape, kernel_size, stride, padding, dilation, ceil_mode) -> tuple[int, ...]:
    out = torch.nn.functional.max_pool2d(torch.empty(shape, device="meta"), list(kernel_size), list(stride),
                                         list(padding), list(dilation), ceil_mode)
    return tuple(out.shape)


@torch.library.register_fake("qcompile::max_pool2d")
def _(q, kernel_size, stride, padding, dilation, ceil_mode):
    shape = _pooled_shape(q, kernel_size, stride, padding, dilation, ceil_mode)
    return q.new_empty(shape, dtype=torch.uint8).contiguous(memory_format=torch.channels_last)


@_operator
def avg_pool2d(q: Tensor, zero_point: int, kernel_size: list[int], stride: list[int], padding: list[int],
               ceil_mode: bool, count_include_pad: bool) -> Tensor:
    """Window averages of uint8 codes (N, C, H, W) on one grid: the centred codes summed over each window
    (padding adds nothing), divided by torch's count for the window, rounded half away from zero."""
    from qcompile.integer.reference import avg_pool_codes

    return avg_pool_codes(q, zero_point, kernel_size, stride, padding, ceil_mode, count_include_pad)


@torch.library.register_fake("qcompile::avg_pool2d")
def _(q, zero_point, kernel_size, stride, padding, ceil_mode, count_include_pad):
    shape = torch.nn.functional.avg_pool2d(torch.empty(q.shape, device="meta"), kernel_size, stride, padding,
                                           ceil_mode, count_include_pad).shape
    return q.new_empty(shape, dtype=torch.uint8)


@_operator
def global_avg_pool(q: Tensor) -> Tensor:
    """The mean over H and W of uint8 codes (N, C, H, W), rounded half up, as (N, C, 1, 1) uint8 (one grid)."""
    if host.library() is not None and q.dim() == 4 and q.dtype == torch.uint8:  # the CPU key: a CPU tensor
        return host.mean_pixels(q)
    return _mean_pixels(q)


def _mean_pixels(q: Tensor) -> Tensor:
    count = q.shape[2] * q.shape[3]
    total = q.to(torch.int32).sum(dim=(2, 3), keepdim=True)
    return torch.div(total + count // 2, count, rounding_mode="floor").to(torch.uint8).contiguous()


@torch.library.register_fake("qcompile::global_avg_pool")
def _(q):
    return q.new_empty((q.shape[0], q.shape[1], 1, 1), dtype=torch.uint8)
