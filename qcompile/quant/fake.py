"""Fake quantization with per-channel ranges and per-channel bit widths, in float.

The grid is the reference repository's: ``levels = 2^bits - 1`` steps over
``[lo, hi]``, ``step = (hi - lo) / levels``, integer zero point ``z =
round(-lo / step)`` (not clamped), codes ``clamp(round(x / step) + z, 0,
levels)``, values ``step * (code - z)``. A channel with 0 bits has no levels and
becomes the constant ``lo``. Integer kernels cannot mix bit widths along a
reduction, so this is the research mode (``simulate``).
"""

from __future__ import annotations

import torch


def _broadcast(t: torch.Tensor, x: torch.Tensor, axis: int) -> torch.Tensor:
    if t.dim() == 0:
        return t
    shape = [1] * x.dim()
    shape[axis] = -1
    return t.reshape(shape)


def fake_quantize(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: torch.Tensor,
                  axis: int = 1) -> torch.Tensor:
    """``x`` quantized and dequantized on per-tensor or per-channel (along ``axis``) grids."""
    lo, hi = _broadcast(lo.to(x.dtype), x, axis), _broadcast(hi.to(x.dtype), x, axis)
    levels = _broadcast(2.0 ** bits.to(x.dtype) - 1, x, axis)
    step = torch.where(levels > 0, (hi - lo) / levels.clamp(min=1), torch.ones_like(hi)).clamp(min=1e-8)
    zero = torch.round(-lo / step)
    # clamp(round(x / step) + z, 0, levels) - z is clamp(round(x / step), -z, levels - z): the codes are
    # small integers, exact in float, so this is the same value in four passes over x instead of eight
    out = torch.div(x, step).round_().clamp_(-zero, levels - zero).mul_(step)
    if bool((levels > 0).all()):
        return out
    return torch.where(levels > 0, out, lo.expand_as(x))
