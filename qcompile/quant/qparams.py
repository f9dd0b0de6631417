"""From a real range to a scale and zero point.

The arithmetic is done in float32 torch ops in the same order as PyTorch's
observers, so that min/max ranges give bit-identical qparams and the emitted
models can be compared with PyTorch's element for element:

* the range is first widened to contain 0 (so zero-padding is exact);
* affine: ``scale = (hi - lo) / (qmax - qmin)``, ``zp = qmin - round(lo / scale)``,
  clamped to ``[qmin, qmax]``;
* symmetric: ``scale = max(-lo, hi) / ((qmax - qmin) / 2)``, ``zp`` at the middle
  of the grid (0 for int8);
* scales are floored at float32's epsilon; ``round`` is half-to-even.
"""

from __future__ import annotations

import torch

from qcompile.ir.quant_types import ObserverSpec, QParams

_EPS = torch.tensor(torch.finfo(torch.float32).eps)


def qparams_from_range(lo: torch.Tensor, hi: torch.Tensor, spec: ObserverSpec,
                       axis: int | None = None) -> QParams:
    """Scale and zero point for the range ``[lo, hi]`` (tensors, one value or per channel)."""
    qmin, qmax = spec.quant_range
    lo = torch.as_tensor(lo, dtype=torch.float32)
    hi = torch.as_tensor(hi, dtype=torch.float32)
    lo_neg = torch.minimum(lo, torch.zeros_like(lo))
    hi_pos = torch.maximum(hi, torch.zeros_like(hi))
    zero_point = torch.zeros(lo_neg.size(), dtype=torch.int64)
    if spec.symmetric:
        hi_pos = torch.maximum(-lo_neg, hi_pos)
        scale = hi_pos / (float(qmax - qmin) / 2)
        scale = torch.maximum(scale, _EPS)
        if spec.dtype == "uint8":
            zero_point = zero_point.new_full(zero_point.size(), (qmin + qmax + 1) // 2)
    else:
        scale = (hi_pos - lo_neg) / float(qmax - qmin)
        scale = torch.maximum(scale, _EPS)
        zero_point = qmin - torch.round(lo_neg / scale).to(torch.int64)
        zero_point = torch.clamp(zero_point, qmin, qmax)
    return QParams(scale, zero_point, spec.dtype, qmin, qmax, axis)


def quantize_bias(bias: torch.Tensor, accumulator_scale: torch.Tensor) -> torch.Tensor:
    """A float bias in int32 accumulator units (``round(bias / (s_in * s_w))``, saturated), as kernels add it."""
    return torch.round(bias.detach().double() / accumulator_scale.double()).clamp(-(2**31), 2**31 - 1).to(torch.int32)
