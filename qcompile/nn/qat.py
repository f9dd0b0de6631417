"""Fake-quantized modules for quantization-aware training.

Forward passes round to the integer grid and back, so the loss sees the
quantization error; backward passes let gradients through unchanged inside
the grid (the straight-through estimator of torch's ``fake_quantize_*``).
"""

from __future__ import annotations

import torch
from torch import nn

_EPS = torch.finfo(torch.float32).eps


def _affine_qparams(lo: torch.Tensor, hi: torch.Tensor, qmin: int, qmax: int, symmetric: bool):
    lo = torch.clamp(lo, max=0.0)
    hi = torch.clamp(hi, min=0.0)
    if symmetric:
        hi = torch.maximum(-lo, hi)
        scale = torch.clamp(hi / ((qmax - qmin) / 2), min=_EPS)
        zero_point = torch.full_like(scale, (qmin + qmax + 1) // 2 if qmin >= 0 else 0, dtype=torch.int32)
    else:
        scale = torch.clamp((hi - lo) / (qmax - qmin), min=_EPS)
        zero_point = torch.clamp(qmin - torch.round(lo / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


class FakeQuantize(nn.Module):
    """Activation fake quantization with a moving-average range learned in training.

    Args:
        quant_min, quant_max: The integer grid (``0, 127`` for reduce-range quint8).
        symmetric: Zero point in the middle of the grid.
        averaging_constant: Weight of each training batch in the range average.
    """

    def __init__(self, quant_min: int = 0, quant_max: int = 255, symmetric: bool = False,
                 averaging_constant: float = 0.01):
        super().__init__()
        self.quant_min, self.quant_max = quant_min, quant_max
        self.symmetric = symmetric
        self.averaging_constant = averaging_constant
        self.register_buffer("min_val", torch.tensor(float("inf")))
        self.register_buffer("max_val", torch.tensor(float("-inf")))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            lo, hi = torch.aminmax(x.detach())
            if torch.isinf(self.min_val):
                self.min_val.copy_(lo)
                self.max_val.copy_(hi)
            else:
                c = self.averaging_constant
                self.min_val.add_(c * (lo - self.min_val))
                self.max_val.add_(c * (hi - self.max_val))
        if torch.isinf(self.min_val):
            return x  # no range yet: pass through
        scale, zero_point = _affine_qparams(self.min_val, self.max_val, self.quant_min, self.quant_max,
                                            self.symmetric)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, self.quant_min, self.quant_max)

    def extra_repr(self) -> str:
        return f"quant_min={self.quant_min}, quant_max={self.quant_max}, symmetric={self.symmetric}"


def fake_quantize_weight(weight: torch.Tensor, per_channel: bool) -> torch.Tensor:
    """Symmetric int8 fake quantization of a weight from its current range (as convert will do)."""
    qmin, qmax = -128, 127
    if per_channel:
        lo, hi = torch.aminmax(weight.detach().reshape(weight.shape[0], -1), dim=1)
        scale, zero_point = _affine_qparams(lo, hi, qmin, qmax, True)
        return torch.fake_quantize_per_channel_affine(weight, scale, zero_point, 0, qmin, qmax)
    lo, hi = torch.aminmax(weight.detach())
    scale, zero_point = _affine_qparams(lo, hi, qmin, qmax, True)
    return torch.fake_quantize_per_tensor_affine(weight, scale, zero_point, qmin, qmax)


class QATConv2d(nn.Conv2d):
    """``nn.Conv2d`` whose weight is fake-quantized (int8, symmetric) in every forward."""

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, padding=0, dilation=1, groups=1,
                 bias=True, padding_mode="zeros", weight_per_channel: bool = True):
        super().__init__(in_channels, out_channels, kernel_size, stride, padding, dilation, groups, bias,
                         padding_mode)
        self.weight_per_channel = weight_per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, fake_quantize_weight(self.weight, self.weight_per_channel), self.bias)


class QATLinear(nn.Linear):
    """``nn.Linear`` whose weight is fake-quantized (int8, symmetric) in every forward."""

    def __init__(self, in_features, out_features, bias=True, weight_per_channel: bool = True):
        super().__init__(in_features, out_features, bias)
        self.weight_per_channel = weight_per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, fake_quantize_weight(self.weight, self.weight_per_channel), self.bias)
