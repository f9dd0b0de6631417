"""The modules that the ``gemmlowp`` backend emits: thin wrappers around ``torch.ops.qcompile.*``.

Their state is plain tensors (int8 weights, int32 bias / multipliers /
exponents), so an emitted model saves with ``torch.save``, scripts with
TorchScript, and exports with ``torch.export`` (which torch's packed
quantized weights cannot). Settings (zero points, clamps, strides) are
constructor arguments, as codegen writes them.
"""

from __future__ import annotations

import qcompile.kernels.ops  # noqa: F401  (registers torch.ops.qcompile)
import torch
from torch import Tensor, nn


class _OnGrid(nn.Module):
    def __init__(self, scale: float, zero_point: int):
        super().__init__()
        # from the constructor arguments, so not part of the saved state
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32), persistent=False)
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=torch.int32), persistent=False)


class Quantize(_OnGrid):
    """float32 -> uint8 on one grid: ``round(clamp(zp + x / scale, 0, 255))``."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0):
        super().__init__(scale, zero_point)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.qcompile.quantize(x, self.scale, self.zero_point, 0, 255)


class Dequantize(_OnGrid):
    """uint8 -> float32: ``scale * (q - zp)``."""

    def __init__(self, scale: float = 1.0, zero_point: int = 0):
        super().__init__(scale, zero_point)

    def forward(self, q: Tensor) -> Tensor:
        return torch.ops.qcompile.dequantize(q, self.scale, self.zero_point)


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


class QConv2d(_Weighted):
    """uint8 convolution: int8 weights, int32 bias, per-channel fixed-point requantization, clamp."""

    def __init__(self, in_channels: int = 1, out_channels: int = 1, kernel_size: tuple[int, int] = (1, 1),
                 stride: tuple[int, int] = (1, 1), padding: tuple[int, int] = (0, 0),
                 dilation: tuple[int, int] = (1, 1), groups: int = 1, input_zero_point: int = 0,
                 output_zero_point: int = 0, clamp_min: int = 0, clamp_max: int = 255):
        super().__init__((out_channels, in_channels // groups, *kernel_size), input_zero_point, output_zero_point,
                         clamp_min, clamp_max)
        self.stride, self.padding, self.dilation = list(stride), list(padding), list(dilation)
        self.groups = groups

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.qcompile.qconv2d(x, self.input_zero_point, self.weight, self.bias, self.multiplier,
                                          self.exponent, self.output_zero_point, self.clamp_min, self.clamp_max,
                                          self.stride, self.padding, self.dilation, self.groups)


class QLinear(_Weighted):
    """uint8 linear layer, as :class:`QConv2d`."""

    def __init__(self, in_features: int = 1, out_features: int = 1, input_zero_point: int = 0,
                 output_zero_point: int = 0, clamp_min: int = 0, clamp_max: int = 255):
        super().__init__((out_features, in_features), input_zero_point, output_zero_point, clamp_min, clamp_max)

    def forward(self, x: Tensor) -> Tensor:
        return torch.ops.qcompile.qlinear(x, self.input_zero_point, self.weight, self.bias, self.multiplier,
                                          self.exponent, self.output_zero_point, self.clamp_min, self.clamp_max)


class QAdd(nn.Module):
    """``a + b`` of two uint8 tensors on their own grids, onto the output grid (optionally clamped: ReLU)."""

    def __init__(self, a_zero_point: int = 0, a_multiplier: int = 0, a_exponent: int = 0, b_zero_point: int = 0,
                 b_multiplier: int = 0, b_exponent: int = 0, output_multiplier: int = 0, output_exponent: int = 0,
                 output_zero_point: int = 0, clamp_min: int = 0, clamp_max: int = 255):
        super().__init__()
        self.a = (a_zero_point, a_multiplier, a_exponent)
        self.b = (b_zero_point, b_multiplier, b_exponent)
        self.output = (output_multiplier, output_exponent, output_zero_point)
        self.clamp_min, self.clamp_max = clamp_min, clamp_max

    def forward(self, a: Tensor, b: Tensor) -> Tensor:
        return torch.ops.qcompile.qadd(a, self.a[0], self.a[1], self.a[2], b, self.b[0], self.b[1], self.b[2],
                                       self.output[0], self.output[1], self.output[2], self.clamp_min,
                                       self.clamp_max)


class QClamp(nn.Module):
    """Clamp uint8 codes: ReLU / ReLU6 / hardtanh on a quantized grid, and the M-bit range."""

    def __init__(self, clamp_min: int = 0, clamp_max: int = 255):
        super().__init__()
        self.clamp_min, self.clamp_max = clamp_min, clamp_max

    def forward(self, q: Tensor) -> Tensor:
        return torch.clamp(q, self.clamp_min, self.clamp_max)


class QGlobalAvgPool(nn.Module):
    """Mean over H and W of uint8 codes (same grid in and out), rounded half up, kept as N x C x 1 x 1."""

    def forward(self, q: Tensor) -> Tensor:
        return torch.ops.qcompile.global_avg_pool(q)


def _pair(value) -> list[int]:
    return [value, value] if isinstance(value, int) else list(value)


class QMaxPool2d(nn.Module):
    """Max pooling of uint8 codes (any grid: max commutes with it); see ``torch.ops.qcompile.max_pool2d``."""

    def __init__(self, kernel_size=1, stride=None, padding=0, dilation=1, ceil_mode: bool = False):
        super().__init__()
        self.kernel_size, self.padding, self.dilation = _pair(kernel_size), _pair(padding), _pair(dilation)
        self.stride = _pair(stride) if stride is not None else list(self.kernel_size)
        self.ceil_mode = ceil_mode

    def forward(self, q: Tensor) -> Tensor:
        return torch.ops.qcompile.max_pool2d(q, self.kernel_size, self.stride, self.padding, self.dilation,
                                             self.ceil_mode)
