"""Per-channel bit widths under an average-bits budget (paper eq. 10/11).

Minimising the rounding noise ``sum_i a_i^2 / (3 * 4^M_i)`` for a fixed total
number of bins gives ``2^M_i`` proportional to ``a_i^(2/3)``. The reference
code rounds ``log2`` of that and nudges a target until the mean bit width is
close, which can oscillate and end over budget (spec section 3.2). Here a
bisection finds the largest target whose rounded allocation fits the budget,
then bits are added greedily, one at a time to the channel whose noise drops
most, while the mean stays within budget: the budget is met exactly or from
below, always.
"""

from __future__ import annotations

import torch


def _rounded(p: torch.Tensor, target: float, max_bits: int) -> torch.Tensor:
    bins = len(p) * 2.0**target * p / p.sum()
    return torch.clamp(torch.round(torch.log2(bins.clamp(min=1e-30))), 0, max_bits)


def allocate_bits(alpha: torch.Tensor, budget: float, max_bits: int = 8) -> torch.Tensor:
    """Integer bits per channel, mean <= ``budget``, minimising sum(alpha^2 / 4^bits)."""
    alpha = alpha.double().clamp(min=0)
    channels = len(alpha)
    total = budget * channels
    if budget >= max_bits:
        return torch.full((channels,), max_bits, dtype=torch.int64)
    p = alpha.pow(2.0 / 3.0)
    if float(p.sum()) == 0.0:
        return torch.zeros(channels, dtype=torch.int64)
    lo, hi = -64.0, float(max_bits) + 64.0
    for _ in range(100):
        mid = (lo + hi) / 2
        if float(_rounded(p, mid, max_bits).sum()) <= total + 1e-9:
            lo = mid
        else:
            hi = mid
    bits = _rounded(p, lo, max_bits)
    while True:
        gain = alpha.pow(2) * (4.0 ** -bits - 4.0 ** -(bits + 1))
        gain[bits >= max_bits] = -1.0
        best = int(torch.argmax(gain))
        if gain[best] <= 0 or float(bits.sum()) + 1 > total + 1e-9:
            break
        bits[best] += 1
    return bits.to(torch.int64)
