"""Cross-layer equalization and high-bias absorption on weight tensors (Nagel et al. 2019, "Data-Free Quantization").

Two layers in a row, ``y = W2 f(W1 x + b1) + b2`` with ``f`` a ReLU or the
identity, compute the same function when output channel ``i`` of the first
is divided by ``s_i > 0`` and input channel ``i`` of the second multiplied by
it (``f(z / s) = f(z) / s`` for positive ``s``). With ``r1_i`` the largest
``|w|`` of the first layer's output channel ``i`` and ``r2_i`` that of the
second layer's input channel ``i``, ``s_i = sqrt(r1_i / r2_i)`` makes both
``sqrt(r1_i * r2_i)``: the channels' ranges meet in the middle, so a grid
per tensor wastes less of its range on the widest channel.

High-bias absorption moves a constant ``c_i`` that channel ``i`` of the first
layer's output almost never falls below (``mean - 3 std`` of the BatchNorm
folded into it) from its bias into the second layer's bias:
``ReLU(z - c) + c = ReLU(z)`` wherever ``z >= c``, and ``W2 (v + c)`` is
``W2 v`` plus a constant per output channel, exactly so only when the second
layer pads nothing (a zero pad would see ``c`` where there is none).

Weights are ``[out, in / groups, *kernel]`` (convolutions) or ``[out, in]``
(linear layers); input channel ``i`` of a grouped weight is column
``i % (in / groups)`` of the output channels of group ``i // (in / groups)``.
"""

from __future__ import annotations

import torch

RELU6_CEILING = 6.0
SIGMAS = 3.0  # a channel of a folded BatchNorm's output stays within mean +- SIGMAS std


def _grouped(weight: torch.Tensor, groups: int) -> torch.Tensor:
    """``weight`` as ``[groups, out per group, in per group, kernel taps]`` (a view)."""
    return weight.reshape(groups, weight.shape[0] // groups, weight.shape[1], -1)


def output_ranges(weight: torch.Tensor) -> torch.Tensor:
    """Largest ``|w|`` of each output channel."""
    return weight.detach().reshape(weight.shape[0], -1).abs().amax(dim=1)


def input_ranges(weight: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Largest ``|w|`` over the weights that read each input channel, in input-channel order."""
    return _grouped(weight.detach(), groups).abs().amax(dim=(1, 3)).reshape(-1)


def equalizing_scales(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """``s = sqrt(first / second)`` per channel; 1 where either range is 0 (a dead channel stays as it is)."""
    live = (first > 0) & (second > 0)
    scales = torch.ones_like(first)
    scales[live] = torch.sqrt(first[live] / second[live])
    return scales


def scales_below_clamp(scales: torch.Tensor, mean: torch.Tensor, std: torch.Tensor, ceiling: float,
                       sigmas: float = SIGMAS) -> torch.Tensor:
    """``scales`` limited so that a clamp at ``ceiling`` (a ReLU6) stays exact under a prior of the channels.

    ``min(z / s, c) = min(z, c s) / s``, so scaling keeps a channel's clamp only
    where the channel never reaches it before or after: a channel whose prior
    reaches ``ceiling`` (``mean + sigmas * std``) keeps scale 1; the others may
    shrink freely but grow only until their prior touches ``ceiling``.
    """
    high = mean + sigmas * std
    limited = torch.maximum(scales, high / ceiling)
    return torch.where(high >= ceiling, torch.ones_like(scales), limited)


def scale_outputs(weight: torch.Tensor, bias: torch.Tensor | None, scales: torch.Tensor):
    """(weight, bias) with output channel ``i`` divided by ``scales[i]``."""
    shape = (-1,) + (1,) * (weight.dim() - 1)
    return weight / scales.reshape(shape), None if bias is None else bias / scales


def scale_inputs(weight: torch.Tensor, scales: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """``weight`` with every weight that reads input channel ``i`` multiplied by ``scales[i]``."""
    grouped = _grouped(weight, groups)
    return (grouped * scales.reshape(groups, 1, -1, 1)).reshape(weight.shape)


def absorbable_shift(mean: torch.Tensor, std: torch.Tensor, sigmas: float = SIGMAS) -> torch.Tensor:
    """``max(0, mean - sigmas * std)``: what a ReLU'd channel almost never falls below."""
    return torch.clamp(mean - sigmas * std, min=0.0)


def absorbed_bias(weight: torch.Tensor, shift: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """What the second layer adds to each output when its input channel ``i`` grows by ``shift[i]`` everywhere."""
    taps = _grouped(weight.detach(), groups).sum(dim=3)  # [groups, out per group, in per group]
    return (taps * shift.reshape(groups, 1, -1)).sum(dim=2).reshape(-1)
