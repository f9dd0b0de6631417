"""AdaRound (Nagel et al. 2020, "Up or Down? Adaptive Rounding for Post-Training Quantization").

Rounding each weight to the nearest grid point minimises the error of each
weight, not of the layer's output. AdaRound learns, per weight, whether to
round down or up so that the layer's output on real inputs stays close to
the float layer's::

    w~ = s * (clamp(floor(w / s) + h(V) + z, qmin, qmax) - z)
    h(V) = clamp(sigmoid(V) * (zeta - gamma) + gamma, 0, 1),   zeta = 1.1, gamma = -0.1

    minimise  || f(x^ ; w~) - f(x ; w) ||^2  +  lambda * sum(1 - |2 h(V) - 1|^beta)

``x^`` is the layer's input in the quantized model (earlier layers already
rounded), ``x`` its input in the float model, ``f`` the layer with its fused
activation (the paper's asymmetric reconstruction). The regulariser pulls
every ``h(V)`` to 0 or 1 as ``beta`` anneals from 20 to 2, after a warm-up
without it; at the end each weight rounds up where ``V >= 0``. ``V`` starts
where ``h(V)`` equals the weight's fractional part, so the first step is
the float weight itself.

:func:`weight_grid` gives the grid ``convert`` will put a weight on (the
same as :func:`qcompile.quant.integer_weights.integer_weight`), so the
learned codes are exactly what the integer model holds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch

from qcompile.ir.node import QuantAnnotation

ZETA, GAMMA = 1.1, -0.1
TIMED_STEPS = 5  # steps timed before a time limit sets the number of steps
MIN_STEPS = 50  # the fewest steps a time limit leaves a layer
_EPS = float(torch.finfo(torch.float32).eps)


@dataclass(frozen=True)
class WeightGrid:
    """Per output channel: scale, zero point and the code range (float64, shaped to broadcast over the weight)."""

    scale: torch.Tensor
    zero_point: torch.Tensor
    qmin: torch.Tensor
    qmax: torch.Tensor
    float32_reciprocal: bool = False  # convert multiplies by 1 / scale in float32 (as torch's per-channel quantization does)

    def codes(self, weight: torch.Tensor) -> torch.Tensor:
        """Round to nearest: the codes ``convert`` gives without AdaRound, element for element."""
        if self.float32_reciprocal:
            scaled = (weight.float() * (1.0 / self.scale.float())).double()
        else:
            scaled = weight.double() / self.scale
        return torch.clamp(torch.round(scaled) + self.zero_point, self.qmin, self.qmax)

    def values(self, codes: torch.Tensor) -> torch.Tensor:
        """The float weight whose codes are ``codes`` (exactly on the grid)."""
        return ((codes - self.zero_point) * self.scale).float()


def weight_grid(weight: torch.Tensor, q: QuantAnnotation) -> WeightGrid:
    """The grid of ``weight`` under a node annotation whose grids ``convert``'s decisions filled in."""
    channels = weight.shape[0]
    shape = (-1,) + (1,) * (weight.dim() - 1)
    if q.weight_bits is not None:
        bits = q.weight_bits.double()
        qmax = torch.where(bits > 0, 2.0 ** (bits - 1) - 1, torch.zeros_like(bits))
        qmin = torch.where(bits > 0, -(2.0 ** (bits - 1)), torch.zeros_like(bits))
        lo, hi = q.weight_stats.lo.double(), q.weight_stats.hi.double()
        magnitude = torch.maximum(-lo.clamp(max=0), hi.clamp(min=0)).expand(channels)
        scale = (magnitude / ((qmax - qmin) / 2).clamp(min=0.5)).clamp(min=_EPS)
        zero = torch.zeros(channels, dtype=torch.float64)
        exact = False
    else:
        qparams = q.weight_qparams
        scale = qparams.scale.float().double().expand(channels)  # integer_weight divides by the float32 scale
        zero = qparams.zero_point.double().expand(channels)
        qmin = torch.full((channels,), float(qparams.quant_min), dtype=torch.float64)
        qmax = torch.full((channels,), float(qparams.quant_max), dtype=torch.float64)
        exact = True
    return WeightGrid(scale.reshape(shape), zero.reshape(shape), qmin.reshape(shape), qmax.reshape(shape), exact)


@dataclass(frozen=True)
class Rows:
    """A layer as a GEMM over sampled output positions: its input patches at those positions, the float
    model's outputs there, and ``layer(patches, weight)`` computing the layer's outputs from the patches."""

    inputs: torch.Tensor
    targets: torch.Tensor
    layer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def sampled_rows(module: torch.nn.Module, activation: Callable | None, x: torch.Tensor, target: torch.Tensor,
                 positions: int, generator: torch.Generator) -> Rows | None:
    """At most ``positions`` output positions of a ``Conv2d`` or ``Linear`` layer drawn at random (all of them
    when there are fewer), as :class:`Rows`; None for another layer. A reconstruction step then costs a GEMM
    of a few hundred rows instead of the layer over whole images, and every position of every sample can be
    drawn."""
    bias = module.bias.detach() if getattr(module, "bias", None) is not None else None

    def finish(out: torch.Tensor) -> torch.Tensor:
        out = out + bias if bias is not None else out
        return activation(out) if activation is not None else out

    if isinstance(module, torch.nn.Linear):
        rows, wanted = x.reshape(-1, x.shape[-1]), target.reshape(-1, target.shape[-1])
        pick = _pick(len(rows), positions, generator)
        return Rows(rows[pick].contiguous(), wanted[pick].contiguous(), lambda r, w: finish(r @ w.t()))
    if not isinstance(module, torch.nn.Conv2d) or isinstance(module.padding, str) or module.padding_mode != "zeros":
        return None
    n, _, out_h, out_w = target.shape
    pick = _pick(n * out_h * out_w, positions, generator)
    b, rest = pick // (out_h * out_w), pick % (out_h * out_w)
    oy, ox = rest // out_w, rest % out_w
    (kh, kw), (sh, sw), (ph, pw), (dh, dw) = module.kernel_size, module.stride, module.padding, module.dilation
    height, width = x.shape[2:]

    def tap(ky: int, kx: int) -> torch.Tensor:  # every drawn position's input at one kernel tap: (rows, channels)
        iy, ix = oy * sh + ky * dh - ph, ox * sw + kx * dw - pw
        inside = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)  # else zero padding
        values = x[b, :, iy.clamp(0, height - 1), ix.clamp(0, width - 1)]
        return values if bool(inside.all()) else values * inside[:, None]

    patches = torch.stack([tap(ky, kx) for ky in range(kh) for kx in range(kw)], dim=2)  # the weight's order
    groups = module.groups
    patches = patches.reshape(len(pick), groups, -1).contiguous()  # (rows, groups, C/groups * kh * kw)
    wanted = target[b, :, oy, ox].contiguous()

    def layer(r: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if groups == 1:
            return finish(r[:, 0] @ w.reshape(w.shape[0], -1).t())
        grouped = w.reshape(groups, w.shape[0] // groups, -1)
        return finish(torch.einsum("bgk,gok->bgo", r, grouped).reshape(len(r), -1))

    return Rows(patches, wanted, layer)


def _pick(total: int, count: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(total, generator=generator)[:count] if total > count else torch.arange(total)


def rectified_sigmoid(v: torch.Tensor) -> torch.Tensor:
    return torch.clamp(torch.sigmoid(v) * (ZETA - GAMMA) + GAMMA, 0, 1)


@dataclass(frozen=True)
class Rounding:
    """What :func:`learn_rounding` found: the codes, and the output error before and after."""

    codes: torch.Tensor
    nearest_error: float
    learned_error: float
    flipped: float  # share of weights rounded the other way than to nearest


def reconstruction_error(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Squared error summed over channels (axis 1), averaged over the rest."""
    return (output - target).pow(2).sum(1).mean()


class RoundingVariables:
    """One layer's learnable rounding: ``V`` per weight (starting where ``h(V)`` is the weight's fractional part,
    so that the first soft weight is the float weight) and the grid it rounds onto."""

    def __init__(self, weight: torch.Tensor, grid: WeightGrid):
        scaled = weight.detach().double() / grid.scale
        floor = torch.floor(scaled)
        rest = (scaled - floor).clamp(1e-4, 1 - 1e-4)
        self.v = (-torch.log((ZETA - GAMMA) / (rest - GAMMA) - 1)).float().requires_grad_(True)
        self.grid = grid
        self._floor = floor
        self._float = [t.float() for t in (floor, grid.scale, grid.zero_point, grid.qmin, grid.qmax)]

    def soft_weight(self, h: torch.Tensor) -> torch.Tensor:
        """The weight with each rounding at ``h`` (0: down, 1: up), differentiable in ``h``."""
        floor, scale, zero, qmin, qmax = self._float
        return scale * (torch.maximum(torch.minimum(floor + h + zero, qmax), qmin) - zero)

    def codes(self) -> torch.Tensor:
        """The learned codes: up where ``V >= 0``."""
        grid = self.grid
        return torch.clamp(self._floor + (self.v.detach() >= 0).double() + grid.zero_point, grid.qmin, grid.qmax)


def rounding_penalty(h: torch.Tensor, step: int, start: int, iterations: int,
                     beta: tuple[float, float]) -> torch.Tensor:
    """The regulariser at ``step`` of a schedule whose annealing of ``beta`` begins at step ``start``."""
    progress = (step - start) / max(iterations - start, 1)
    b = beta[1] + (beta[0] - beta[1]) * max(0.0, 1.0 - progress)
    return (1 - (2 * h - 1).abs().pow(b)).sum()


def schedule(iterations: int, warmup: float, seconds: float | None) -> Iterator[tuple[int, int, int]]:
    """The steps of a rounding schedule as ``(step, start, steps)``: the annealing starts at step ``start`` of
    ``steps``. With ``seconds``, the first :data:`TIMED_STEPS` steps (all in the warm-up, where the schedule is
    still free) are timed and ``steps`` shrinks, to no fewer than :data:`MIN_STEPS`, so the rest fits."""
    start = int(warmup * iterations)
    clock = time.perf_counter()
    step = 0
    while step < iterations:
        if seconds is not None and step == TIMED_STEPS:
            per_step = (time.perf_counter() - clock) / TIMED_STEPS
            iterations = max(MIN_STEPS, min(iterations, int(seconds / max(per_step, 1e-9))))
            start = int(warmup * iterations)
        yield step, start, iterations
        step += 1


def learn_rounding(weight: torch.Tensor, grid: WeightGrid, layer: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
                   inputs: torch.Tensor, targets: torch.Tensor, *, iterations: int, batch_size: int,
                   regularization: float = 0.01, beta: tuple[float, float] = (20.0, 2.0), warmup: float = 0.2,
                   lr: float = 1e-2, generator: torch.Generator | None = None,
                   seconds: float | None = None) -> Rounding:
    """Learn up / down rounding of ``weight`` for ``layer(inputs, weight) ~ targets`` (see the module docstring).

    ``layer(x, w)`` computes the layer's output (with its fused activation)
    on a batch ``x`` with weight ``w``; ``inputs`` are the quantized model's
    inputs to the layer, ``targets`` the float model's outputs, sample by sample.
    With ``seconds``, the first steps are timed and the number of steps
    shrinks (to no fewer than :data:`MIN_STEPS`) so that the whole schedule,
    warm-up and annealing included, fits in that time.
    """
    variables = RoundingVariables(weight, grid)
    optimizer = torch.optim.Adam([variables.v], lr=lr)
    count = len(inputs)
    with torch.enable_grad():
        for step, start, steps in schedule(iterations, warmup, seconds):
            pick = torch.randint(count, (min(batch_size, count),), generator=generator)
            h = rectified_sigmoid(variables.v)
            loss = reconstruction_error(layer(inputs[pick], variables.soft_weight(h)), targets[pick])
            if step >= start:
                loss = loss + regularization * rounding_penalty(h, step, start, steps, beta)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    codes = variables.codes()
    nearest = grid.codes(weight)
    with torch.no_grad():
        errors = [float(reconstruction_error(layer(inputs, grid.values(c)), targets)) for c in (nearest, codes)]
    flipped = float((codes != nearest).double().mean())
    if not all(math.isfinite(e) for e in errors):
        raise ValueError("the reconstruction error is not finite")
    return Rounding(codes, errors[0], errors[1], flipped)
