"""What the integer model computes: the modules of the neutral integer stage, in exact int64 arithmetic.

Each module is the textbook definition of its op (spec section 7), written
for clarity, not speed, and independent of any backend's kernels: products
and sums as exact integers (float64 holds every partial sum of a uint8 x
int8 reduction below 2^53 exactly), requantization as the literal
composition ``clamp(RDBPOT(SRDHM(sat(acc + bias) << left, m0), right) + zo)``.
Every backend that lowers from the stage is tested against these modules.

The constructor arguments and the state (int8 ``weight``, int32 ``bias``,
``multiplier``, ``exponent``) are those of the ``gemmlowp`` backend's
modules, :mod:`qcompile.kernels.modules`, one for one, so lowering onto
them keeps every tensor and setting. Values are plain ``uint8`` tensors.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from qcompile.kernels.cpu import ADD_LEFT_SHIFT  # an add's inputs go onto a grid 2^20 times finer
from qcompile.kernels.fixed_point import INT32_MAX, INT32_MIN, dequantize, quantize, rdbpot, srdhm


def requantize(acc: Tensor, m0: Tensor, exponent: Tensor) -> Tensor:
    """``acc * m0 * 2^(exponent - 31)`` in gemmlowp's fixed point: saturating left shift, SRDHM, RDBPOT."""
    exponent = exponent.long()
    left, right = exponent.clamp(min=0), (-exponent).clamp(min=0)
    shifted = (acc.long() * (torch.ones_like(left) << left)).clamp(INT32_MIN, INT32_MAX)
    return rdbpot(srdhm(shifted, m0.long()), right)


def output_stage(acc: Tensor, bias: Tensor, m0: Tensor, exponent: Tensor, zero_point: int, lo: int,
                 hi: int) -> Tensor:
    """uint8 codes from int32 accumulators: bias (saturating), requantization, zero point, clamp."""
    total = (acc.long() + bias.long()).clamp(INT32_MIN, INT32_MAX)
    return (requantize(total, m0, exponent) + zero_point).clamp(lo, hi).to(torch.uint8)


def _per_channel(t: Tensor, dims: int, axis: int = 1) -> Tensor:
    shape = [1] * dims
    shape[axis] = -1
    return t.reshape(shape)


class Quantize(nn.Module):
    """float32 -> uint8: ``round_half_away(clamp(zp + x / scale, 0, 255))`` in float32."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0):
        super().__init__()
        self.scale, self.zero_point = scale, zero_point

    def forward(self, x: Tensor) -> Tensor:
        scale = torch.tensor(self.scale, dtype=torch.float32)
        return quantize(x, scale, torch.tensor(self.zero_point), 0, 255).to(torch.uint8)


class Dequantize(nn.Module):
    """uint8 -> float32: ``scale * (q - zp)``."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0):
        super().__init__()
        self.scale, self.zero_point = scale, zero_point

    def forward(self, q: Tensor) -> Tensor:
        # the float code after a quantized region may reshape with .view(): give it the standard layout
        return dequantize(q, torch.tensor(self.scale, dtype=torch.float32), torch.tensor(self.zero_point)).contiguous()


class _Weighted(nn.Module):
    def __init__(self, weight_shape: tuple[int, ...], input_zero_point: int, output_zero_point: int,
                 clamp_min: int, clamp_max: int):
        super().__init__()
        self.input_zero_point, self.output_zero_point = input_zero_point, output_zero_point
        self.clamp_min, self.clamp_max = clamp_min, clamp_max
        channels = weight_shape[0]
        self.register_buffer("weight", torch.zeros(weight_shape, dtype=torch.int8))
        self.register_buffer("bias", torch.zeros(channels, dtype=torch.int32))
        self.register_buffer("multiplier", torch.zeros(channels, dtype=torch.int32))
        self.register_buffer("exponent", torch.zeros(channels, dtype=torch.int32))

    def _output(self, acc: Tensor, axis: int) -> Tensor:
        dims = acc.dim()
        return output_stage(acc, _per_channel(self.bias, dims, axis), _per_channel(self.multiplier, dims, axis),
                            _per_channel(self.exponent, dims, axis), self.output_zero_point, self.clamp_min,
                            self.clamp_max)


class QConv2d(_Weighted):
    """uint8 convolution: ``sum (q_x - z_x) * q_w`` over the window (padding contributes 0), then the output stage."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, kernel_size: tuple[int, int] = (1, 1),
                 stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                 dilation: tuple[int, int] = (1, 1), groups: int = 1, input_zero_point: int = 0,
                 output_zero_point: int = 0, clamp_min: int = 0, clamp_max: int = 255):
        super().__init__((out_channels, in_channels // groups, *kernel_size), input_zero_point, output_zero_point,
                         clamp_min, clamp_max)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        centered = x.double() - self.input_zero_point  # the zero point's code is 0.0, as padding is
        acc = F.conv2d(centered, self.weight.double(), None, self.stride, self.padding, self.dilation, self.groups)
        return self._output(acc.long(), 1)


class QLinear(_Weighted):
    """uint8 linear layer: ``sum_k (q_x - z_x) * q_w``, then the output stage."""

    def __init__(self, in_features: int = 1, out_features: int = 1, input_zero_point: int = 0,
                 output_zero_point: int = 0, clamp_min: int = 0, clamp_max: int = 255):
        super().__init__((out_features, in_features), input_zero_point, output_zero_point, clamp_min, clamp_max)

    def forward(self, x: Tensor) -> Tensor:
        acc = F.linear(x.double() - self.input_zero_point, self.weight.double())
        return self._output(acc.long(), acc.dim() - 1)


class QAdd(nn.Module):
    """``a + b`` on their own grids onto the output grid: both to a grid 2^20 finer, add, requantize, clamp."""

    def __init__(self, a_zero_point: int = 0, a_multiplier: int = 0, a_exponent: int = 0, b_zero_point: int = 0,
                 b_multiplier: int = 0, b_exponent: int = 0, output_multiplier: int = 0, output_exponent: int = 0,
                 output_zero_point: int = 0, clamp_min: int = 0, clamp_max: int = 255):
        super().__init__()
        self.a = (a_zero_point, a_multiplier, a_exponent)
        self.b = (b_zero_point, b_multiplier, b_exponent)
        self.output = (output_multiplier, output_exponent, output_zero_point)
        self.clamp_min, self.clamp_max = clamp_min, clamp_max

    @staticmethod
    def _fine(q: Tensor, zero_point: int, m0: int, exponent: int) -> Tensor:
        return requantize((q.long() - zero_point) << ADD_LEFT_SHIFT, torch.tensor(m0), torch.tensor(exponent))

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        total = (self._fine(a, *self.a) + self._fine(b, *self.b)).clamp(INT32_MIN, INT32_MAX)
        m0, exponent, zero_point = self.output
        return output_stage(total, torch.zeros((), dtype=torch.int64), torch.tensor(m0), torch.tensor(exponent),
                            zero_point, self.clamp_min, self.clamp_max)


class QMul(nn.Module):
    """``a * b`` on their own grids onto the output grid: the product of the centred codes (at most 255^2 in
    magnitude), requantized by ``s_a s_b / s_out``, then zero point and clamp; ``b`` may broadcast (a
    squeeze-and-excitation block's per-channel scale)."""

    def __init__(self, a_zero_point: int = 0, b_zero_point: int = 0, output_multiplier: int = 0,
                 output_exponent: int = 0, output_zero_point: int = 0, clamp_min: int = 0, clamp_max: int = 255):
        super().__init__()
        self.a_zero_point, self.b_zero_point = a_zero_point, b_zero_point
        self.output = (output_multiplier, output_exponent, output_zero_point)
        self.clamp_min, self.clamp_max = clamp_min, clamp_max

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        product = (a.long() - self.a_zero_point) * (b.long() - self.b_zero_point)
        m0, exponent, zero_point = self.output
        return output_stage(product, torch.zeros((), dtype=torch.int64), torch.tensor(m0), torch.tensor(exponent),
                            zero_point, self.clamp_min, self.clamp_max)


class QLookup(nn.Module):
    """A function of one value (sigmoid, hardswish, ...) as a table of its 256 output codes, one per input code:
    the exact integer form of any elementwise op from one grid to another."""

    def __init__(self):
        super().__init__()
        self.register_buffer("table", torch.zeros(256, dtype=torch.uint8))

    def forward(self, q: Tensor) -> Tensor:
        return self.table[q.long()]


class QClamp(nn.Module):
    """Codes clamped to ``[clamp_min, clamp_max]``: ReLU, ReLU6, hardtanh on a grid, an M-bit range."""

    def __init__(self, clamp_min: int = 0, clamp_max: int = 255):
        super().__init__()
        self.clamp_min, self.clamp_max = clamp_min, clamp_max

    def forward(self, q: Tensor) -> Tensor:
        return torch.clamp(q, self.clamp_min, self.clamp_max)


class QGlobalAvgPool(nn.Module):
    """The mean of each channel's codes over H and W, rounded half up (one grid in and out), as N x C x 1 x 1."""

    def forward(self, q: Tensor) -> Tensor:
        count = q.shape[2] * q.shape[3]
        total = q.long().sum(dim=(2, 3), keepdim=True)
        return torch.div(total + count // 2, count, rounding_mode="floor").to(torch.uint8)


class QMean(QGlobalAvgPool):
    """``x.mean((2, 3))`` of the codes: the global average pool, without the 1 x 1 dimensions unless kept."""

    def __init__(self, keepdim: bool = False):
        super().__init__()
        self.keepdim = keepdim

    def forward(self, q: Tensor) -> Tensor:
        pooled = super().forward(q)
        return pooled if self.keepdim else pooled.flatten(1)


class QCat(nn.Module):
    """Concatenation onto the output grid: each input's centred codes requantized by ``s_in / s_out`` in
    gemmlowp's fixed point, plus the output zero point, clamped (one step of rounding per value)."""

    def __init__(self, dim: int = 1, zero_points: tuple = (), multipliers: tuple = (), exponents: tuple = (),
                 output_zero_point: int = 0):
        super().__init__()
        self.dim, self.output_zero_point = dim, output_zero_point
        self.zero_points, self.multipliers, self.exponents = list(zero_points), list(multipliers), list(exponents)

    def forward(self, codes: list[Tensor]) -> Tensor:
        parts = [output_stage(q.long() - z, torch.zeros((), dtype=torch.int64), torch.tensor(m0), torch.tensor(e),
                              self.output_zero_point, 0, 255)
                 for q, z, m0, e in zip(codes, self.zero_points, self.multipliers, self.exponents, strict=True)]
        return torch.cat(parts, self.dim)


class QAvgPool2d(nn.Module):
    """Window averages of the codes on one grid in and out: the sum of the centred codes over each window
    (padding counts as the value 0), divided by the window's count (with or without the padding, as torch's
    ``count_include_pad``) and rounded half away from zero, plus the zero point."""

    def __init__(self, kernel_size=(1, 1), stride=None, padding=(0, 0), ceil_mode: bool = False,
                 count_include_pad: bool = True, zero_point: int = 0):
        super().__init__()
        # lists of two (TorchScript reads them as such); the stage writes pairs
        self.kernel_size, self.stride, self.padding = list(kernel_size), list(stride or kernel_size), list(padding)
        self.ceil_mode, self.count_include_pad, self.zero_point = ceil_mode, count_include_pad, zero_point

    def forward(self, q: Tensor) -> Tensor:
        return avg_pool_codes(q, self.zero_point, self.kernel_size, self.stride, self.padding, self.ceil_mode,
                              self.count_include_pad)


def avg_pool_codes(q: Tensor, zero_point: int, kernel_size: list[int], stride: list[int], padding: list[int],
                   ceil_mode: bool, count_include_pad: bool) -> Tensor:
    """:class:`QAvgPool2d`'s window averages of uint8 codes (N, C, H, W), as torch ops (float64 holds every sum
    of codes exactly)."""
    total = F.avg_pool2d(q.double() - zero_point, kernel_size, stride, padding, ceil_mode, count_include_pad,
                         divisor_override=1).long()
    if count_include_pad:  # torch counts the padding but not a ceil_mode window's overhang
        widths = [padding[1], padding[1], padding[0], padding[0]]  # last axis first
        ones = F.pad(torch.ones_like(q[:1, :1], dtype=torch.float64), widths, value=1.0)
        counts = F.avg_pool2d(ones, kernel_size, stride, 0, ceil_mode, True, divisor_override=1).long()
    else:
        counts = F.avg_pool2d(torch.ones_like(q[:1, :1], dtype=torch.float64), kernel_size, stride, padding,
                              ceil_mode, False, divisor_override=1).long()
    half_away = torch.div(2 * total.abs() + counts, 2 * counts, rounding_mode="floor") * total.sign()
    return (half_away + zero_point).clamp(0, 255).to(torch.uint8)


class QMaxPool2d(nn.Module):
    """Max pooling of the codes (max commutes with any grid's increasing map); padding never wins."""

    def __init__(self, kernel_size=1, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.stride, self.padding, self.dilation = kernel_size, stride, padding, dilation
        self.ceil_mode = ceil_mode

    def forward(self, q: Tensor) -> Tensor:
        # float64 holds every code exactly; torch pads max pooling with -inf
        out = F.max_pool2d(q.double(), self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)
        return out.to(torch.uint8)
