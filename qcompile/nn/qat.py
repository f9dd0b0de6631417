"""Fake-quantized modules for quantization-aware training.

Forward passes round to the integer grid and back, so the loss sees the
quantization error; backward passes let gradients through unchanged inside
the grid (the straight-through estimator of torch's ``fake_quantize_*``).
"""

from __future__ import annotations

import torch
from torch import nn

from qcompile.distributed.world import data_parallel

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


def storage_range(quant_min: int) -> tuple[int, int]:
    """The codes an int8 tensor holds whatever its grid: uint8's for a grid from 0 up, else int8's."""
    return (0, 255) if quant_min >= 0 else (-128, 127)


class FakeQuantize(nn.Module):
    """Activation fake quantization with a moving-average range learned in training.

    The scale and zero point put the learned range on ``[quant_min,
    quant_max]``, but codes saturate where the int8 model's do: at the limits
    of its dtype (0 and 255 for uint8). A reduce-range grid (``0, 127``, the
    x86 preset's) leaves torch's and onnxruntime's kernels twice the learned
    range above its top; clamping there in training, as PyTorch's fake
    quantization does, clipped what the int8 model then computed (a QAT model
    at 0.627 on Fashion-MNIST gave 0.566 in int8; saturating at 255, 0.699 and
    0.700).

    Args:
        quant_min, quant_max: The integer grid (``0, 127`` for reduce-range uint8).
        symmetric: Zero point in the middle of the grid.
        averaging_constant: Weight of each training batch in the range average.

    In data-parallel training (torch.distributed initialized, more than one
    process) the batch's range is the range over every rank's slice of it,
    so each rank learns the range one process learns on the whole batch.
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
            if data_parallel():
                import torch.distributed as dist

                lo, hi = lo.clone(), hi.clone()
                dist.all_reduce(lo, op=dist.ReduceOp.MIN)
                dist.all_reduce(hi, op=dist.ReduceOp.MAX)
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
        low, high = storage_range(self.quant_min)
        return torch.fake_quantize_per_tensor_affine(x, scale, zero_point, low, high)

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


class _QATConv:
    """A convolution whose weight is fake-quantized (int8, symmetric) in every forward, per channel or not."""

    def __init__(self, *args, weight_per_channel: bool = True, **kwargs):
        super().__init__(*args, **kwargs)
        self.weight_per_channel = weight_per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, fake_quantize_weight(self.weight, self.weight_per_channel), self.bias)


class QATConv1d(_QATConv, nn.Conv1d):
    """``nn.Conv1d`` whose weight is fake-quantized (int8, symmetric) in every forward."""


class QATConv2d(_QATConv, nn.Conv2d):
    """``nn.Conv2d`` whose weight is fake-quantized (int8, symmetric) in every forward."""


class QATConv3d(_QATConv, nn.Conv3d):
    """``nn.Conv3d`` whose weight is fake-quantized (int8, symmetric) in every forward."""


class _QATConvTranspose:
    """A transposed convolution whose weight is fake-quantized (int8, symmetric) with one scale, as
    ``convert`` quantizes it: torch's int8 transposed convolutions take no per-channel weights."""

    _functional = None  # F.conv_transpose1d / 2d / 3d

    def __init__(self, *args, weight_per_channel: bool = False, **kwargs):
        if weight_per_channel:
            raise ValueError("torch's int8 transposed convolutions take one weight scale: "
                             "weight_per_channel must be False")
        super().__init__(*args, **kwargs)
        self.weight_per_channel = False

    def forward(self, x: torch.Tensor, output_size: list[int] | None = None) -> torch.Tensor:
        spatial = self.weight.dim() - 2
        output_padding = self._output_padding(x, output_size, self.stride, self.padding, self.kernel_size, spatial,
                                              self.dilation)
        weight = fake_quantize_weight(self.weight, self.weight_per_channel)
        return type(self)._functional(x, weight, self.bias, self.stride, self.padding, output_padding, self.groups,
                                      self.dilation)


class QATConvTranspose1d(_QATConvTranspose, nn.ConvTranspose1d):
    """``nn.ConvTranspose1d`` whose weight is fake-quantized (int8, one scale) in every forward."""

    _functional = staticmethod(nn.functional.conv_transpose1d)


class QATConvTranspose2d(_QATConvTranspose, nn.ConvTranspose2d):
    """``nn.ConvTranspose2d`` whose weight is fake-quantized (int8, one scale) in every forward."""

    _functional = staticmethod(nn.functional.conv_transpose2d)


class QATConvTranspose3d(_QATConvTranspose, nn.ConvTranspose3d):
    """``nn.ConvTranspose3d`` whose weight is fake-quantized (int8, one scale) in every forward."""

    _functional = staticmethod(nn.functional.conv_transpose3d)


class QATLinear(nn.Linear):
    """``nn.Linear`` whose weight is fake-quantized (int8, symmetric) in every forward."""

    def __init__(self, in_features, out_features, bias=True, weight_per_channel: bool = True):
        super().__init__(in_features, out_features, bias)
        self.weight_per_channel = weight_per_channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return nn.functional.linear(x, fake_quantize_weight(self.weight, self.weight_per_channel), self.bias)
