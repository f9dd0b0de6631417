"""ACIQ: the clip value that minimises expected quantization error under a prior.

For ``M`` bits over ``[-a, a]`` the expected squared error is the clipping
error of the tails plus the rounding noise ``a^2 / (3 * 4^M)``:

* Laplace(b):  ``2 b^2 exp(-a/b) + a^2 / (3 4^M)``; setting the derivative to
  zero gives ``k e^k = 3 4^M`` for ``k = a/b``, so ``a* = b W0(3 4^M)`` with the
  principal Lambert W branch, in closed form.
* Gaussian(sigma): ``(a^2 + s^2)(1 - erf(a / (s sqrt 2))) - sqrt(2/pi) a s
  exp(-a^2 / 2s^2) + a^2 / (3 4^M)``, minimised numerically.

A one-sided tensor (after a ReLU, clipped at 0 below) with ``M`` bits has the
two-sided optimum of ``M + 1`` bits. The clip interval is centred on the mean
(``[max(min, mu - a), that + 2a]``), or ``[0, max(mu, 0) + a]`` one-sided.
"""

from __future__ import annotations

import math
from functools import cache


def lambert_w0(x: float) -> float:
    """Principal branch of the Lambert W function for ``x >= 0`` (Halley's iteration)."""
    if x < 0:
        raise ValueError("lambert_w0 is implemented for x >= 0")
    w = math.log1p(x) if x < 3 else math.log(x) - math.log(math.log(x))
    for _ in range(100):
        ew = math.exp(w)
        f = w * ew - x
        step = f / (ew * (w + 1) - (w + 2) * f / (2 * w + 2))
        w -= step
        if abs(step) <= 1e-15 * (1 + abs(w)):
            break
    return w


def mse_laplace(alpha: float, b: float, bits: int) -> float:
    return 2 * b * b * math.exp(-alpha / b) + alpha * alpha / (3 * 4**bits)


def mse_gauss(alpha: float, sigma: float, bits: int) -> float:
    z = alpha / (sigma * math.sqrt(2))
    return ((alpha**2 + sigma**2) * math.erfc(z)
            - math.sqrt(2 / math.pi) * alpha * sigma * math.exp(-(alpha**2) / (2 * sigma**2))
            + alpha**2 / (3 * 4**bits))


@cache
def laplace_ratio(bits: int, one_sided: bool = False) -> float:
    """Optimal ``alpha / b`` for a Laplace prior."""
    m = bits + 1 if one_sided else bits
    return lambert_w0(3 * 4**m)


@cache
def gauss_ratio(bits: int, one_sided: bool = False) -> float:
    """Optimal ``alpha / sigma`` for a Gaussian prior (root of the derivative, by bisection)."""
    m = bits + 1 if one_sided else bits

    def slope(a: float) -> float:  # half the derivative of mse_gauss with sigma = 1
        return a * math.erfc(a / math.sqrt(2)) - math.sqrt(2 / math.pi) * math.exp(-a * a / 2) + a / (3 * 4**m)

    lo, hi = 1e-9, 20.0
    for _ in range(200):
        mid = (lo + hi) / 2
        if slope(mid) > 0:
            hi = mid
        else:
            lo = mid
    return (lo + hi) / 2


def clip_interval(alpha: float, mean: float, minimum: float, one_sided: bool) -> tuple[float, float]:
    """The quantizer's range for a clip value ``alpha`` (spec section 2.7)."""
    if one_sided:
        return 0.0, max(mean, 0.0) + alpha
    lo = max(minimum, mean - alpha)
    return lo, lo + 2 * alpha
