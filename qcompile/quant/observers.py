"""Streaming observers: each sees a tensor batch by batch in bounded memory.

* ``minmax``: running extremes (per tensor or per channel).
* ``moving_average``: extremes averaged over batches (first batch exact).
* ``histogram``: ``bins`` to ``2 * bins`` bins of a power-of-two width over
  the range seen so far (pairs merge when the range grows), and the
  sub-range that minimises the expected L2 quantization error (rounding
  noise inside, clipping error outside).
* ``percentile``: the range between the lower and upper percentile.
* ``entropy``: the symmetric (or, for non-negative data, one-sided) threshold
  whose quantized distribution is closest to the observed one in KL divergence.

Memory per observer is O(bins) or O(channels), independent of the number of
samples (unless it keeps per-batch records for a distributed merge, below).

Merging across processes (``reduce(world)``, :mod:`qcompile.distributed`)
gives exactly what one process computes on the same batches: extremes by
all-reduce min / max, histograms by summing counts on a common aligned bin
grid; the two results that depend on batch order (the moving average and
:class:`MomentsObserver`'s per-batch averages) keep one small record per batch
when ``keep_batches`` is set and replay them in the global batch order.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from qcompile.ir.quant_types import ChannelMoments, Moments, ObserverSpec, TensorStats


def _per_channel(x: torch.Tensor, axis: int) -> torch.Tensor:
    return x.detach().transpose(0, axis).reshape(x.shape[axis], -1)


class Observer:
    """Base class: ``update`` with batches, then ``stats``."""

    def __init__(self, spec: ObserverSpec, keep_batches: bool = False):
        self.spec = spec
        self.keep_batches = keep_batches
        self.count = 0
        self.min: torch.Tensor | None = None
        self.max: torch.Tensor | None = None

    def _extremes(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = x.detach().float()
        if self.spec.per_channel:
            return torch.aminmax(_per_channel(x, self.spec.axis), dim=1)
        return torch.aminmax(x)

    def update(self, x: torch.Tensor) -> None:
        lo, hi = self._extremes(x)
        if self.min is None:
            self.min, self.max = lo, hi
        else:
            self.min, self.max = torch.minimum(self.min, lo), torch.maximum(self.max, hi)
        self.count += x.numel()

    def reduce(self, world) -> None:
        """Become the observer of every rank's batches (each rank must have seen data)."""
        self.min, self.max = world.all_reduce(self.min, "min"), world.all_reduce(self.max, "max")
        self.count = int(world.all_reduce(torch.tensor(self.count, dtype=torch.int64)))

    def _range(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.min, self.max

    def stats(self) -> TensorStats:
        if self.min is None:
            raise RuntimeError("the observer saw no data")
        lo, hi = self._range()
        return TensorStats(lo, hi, self.min, self.max, self.count,
                           self.spec.axis if self.spec.per_channel else None)


class MinMaxObserver(Observer):
    """Running min and max."""


class MovingAverageObserver(Observer):
    """Min and max averaged over batches with weight ``averaging_constant``."""

    def __init__(self, spec: ObserverSpec, keep_batches: bool = False):
        super().__init__(spec, keep_batches)
        self.avg_min: torch.Tensor | None = None
        self.avg_max: torch.Tensor | None = None
        self.batches: list[tuple[torch.Tensor, torch.Tensor]] = []  # (min, max) per batch, if kept

    def update(self, x: torch.Tensor) -> None:
        lo, hi = self._extremes(x)
        self._average(lo, hi)
        if self.keep_batches:
            self.batches.append((lo, hi))
        super().update(x)

    def _average(self, lo: torch.Tensor, hi: torch.Tensor) -> None:
        c = self.spec.averaging_constant
        if self.avg_min is None:
            self.avg_min, self.avg_max = lo, hi
        else:
            self.avg_min = self.avg_min + c * (lo - self.avg_min)
            self.avg_max = self.avg_max + c * (hi - self.avg_max)

    def reduce(self, world) -> None:
        if world.distributed and not self.keep_batches:
            raise RuntimeError("a moving average merges across processes only with keep_batches=True")
        super().reduce(world)
        if world.distributed:
            self.avg_min = self.avg_max = None
            for lo, hi in world.interleave(world.all_gather(self.batches)):
                self._average(lo, hi)

    def _range(self):
        return self.avg_min, self.avg_max


class HistogramObserver(Observer):
    """A histogram over the range seen so far; the range minimising expected L2 error.

    Bins are aligned to multiples of a power-of-two width ``w`` (bin ``k`` holds
    ``[k w, (k + 1) w)``), the smallest width at which the range seen so far
    fits in ``2 * bins`` bins. When the range grows, the width doubles as often
    as needed and neighbouring bins merge, which is exact: a value's bin
    depends only on the final width, never on the order the values came in.
    So histograms of disjoint parts of the data merge into exactly the
    histogram of the whole (:meth:`reduce`), and the range chosen from it
    keeps between ``bins`` and ``2 * bins`` bins of resolution.
    """

    def __init__(self, spec: ObserverSpec, keep_batches: bool = False):
        if spec.per_channel:
            raise ValueError(f"{spec.kind} observers are per-tensor; use minmax for per-channel weights")
        super().__init__(spec)
        self.hist = torch.zeros(0, dtype=torch.float64)
        self.exponent = 0
        self.first_bin = 0

    @property
    def capacity(self) -> int:
        return 2 * self.spec.bins

    @property
    def width(self) -> float:
        return 2.0**self.exponent

    @property
    def lo_edge(self) -> float:
        return self.first_bin * self.width

    @property
    def hi_edge(self) -> float:
        return (self.first_bin + len(self.hist)) * self.width

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float().reshape(-1)
        if x.numel() == 0:
            return
        super().update(x)
        self._fit(float(self.min), float(self.max))
        bins = torch.floor(x / self.width).long() - self.first_bin  # exact: the width is a power of two
        self.hist += torch.bincount(bins, minlength=len(self.hist)).double()

    def _fit(self, lo: float, hi: float) -> None:
        """Widen the bins and the span so that ``[lo, hi]`` is covered (counts merge exactly)."""
        exponent = max(aligned_exponent(lo, hi, self.capacity), self.exponent if len(self.hist) else -1000)
        first, last = math.floor(lo / 2.0**exponent), math.floor(hi / 2.0**exponent)
        if len(self.hist) and (exponent, first, last + 1 - first) == (self.exponent, self.first_bin,
                                                                       len(self.hist)):
            return
        merged = torch.zeros(last + 1 - first, dtype=torch.float64)
        if len(self.hist):
            old = torch.arange(self.first_bin, self.first_bin + len(self.hist))
            new = torch.bitwise_right_shift(old, min(exponent - self.exponent, 63)) - first
            merged.index_add_(0, new, self.hist)
        self.hist, self.exponent, self.first_bin = merged, exponent, first

    def reduce(self, world) -> None:
        super().reduce(world)
        self._fit(float(self.min), float(self.max))  # the union's range, the same on every rank
        self.hist = world.all_reduce(self.hist)

    def _centers(self) -> np.ndarray:
        edges = self.lo_edge + np.arange(len(self.hist) + 1) * self.width
        return (edges[:-1] + edges[1:]) / 2

    def _inside_data(self, lo: float, hi: float):
        """``[lo, hi]`` cut to the data's extremes (widened to 0), as tensors: aligned bins overhang the data."""
        lo = max(lo, min(float(self.min), 0.0))
        hi = min(hi, max(float(self.max), 0.0))
        return torch.tensor(lo, dtype=torch.float32), torch.tensor(hi, dtype=torch.float32)

    def _range(self):
        lo, hi = l2_optimal_range(self.hist.numpy(), self.lo_edge, self.hi_edge, self.spec.quant_range)
        return self._inside_data(lo, hi)


def aligned_exponent(lo: float, hi: float, capacity: int) -> int:
    """The smallest ``e`` whose bins ``[k 2^e, (k + 1) 2^e)`` cover ``[lo, hi]`` in at most ``capacity`` bins.

    ``e`` is also kept within 40 binary orders of the largest magnitude (bin
    indices stay small integers) and at or above -126 (the width is a normal
    float32). It never decreases when the range grows, so the width a
    stream of batches ends with depends only on the union of their ranges.
    """
    top = max(abs(lo), abs(hi))
    exponent = max(math.frexp(top)[1] - 40 if top > 0 else -126, -126)
    if hi > lo:
        exponent = max(exponent, math.floor(math.log2((hi - lo) / capacity)) - 1)
    while math.floor(hi / 2.0**exponent) - math.floor(lo / 2.0**exponent) + 1 > capacity:
        exponent += 1
    return exponent


def l2_optimal_range(hist: np.ndarray, lo_edge: float, hi_edge: float,
                     quant_range: tuple[int, int], candidates: int = 256) -> tuple[float, float]:
    """The clip range ``[a, b]`` (containing 0) with the least expected squared error.

    Inside the range each value costs the rounding noise ``step^2 / 12``;
    outside it costs its squared distance to the nearer bound. With prefix
    sums every candidate pair is evaluated in O(1).
    """
    bins = len(hist)
    width = (hi_edge - lo_edge) / bins
    centers = lo_edge + (np.arange(bins) + 0.5) * width
    c0 = np.concatenate([[0.0], np.cumsum(hist)])
    c1 = np.concatenate([[0.0], np.cumsum(hist * centers)])
    c2 = np.concatenate([[0.0], np.cumsum(hist * centers**2)])
    edges = lo_edge + np.arange(bins + 1) * width
    levels = quant_range[1] - quant_range[0]
    idx = np.unique(np.linspace(0, bins, candidates + 1).round().astype(int))
    lo_idx = idx[edges[idx] <= max(0.0, lo_edge) + 1e-12] if lo_edge < 0 else np.array([0])
    hi_idx = idx[edges[idx] >= min(0.0, hi_edge) - 1e-12] if hi_edge > 0 else np.array([bins])
    i = lo_idx[:, None]
    j = hi_idx[None, :]
    a = np.minimum(edges[i], 0.0)
    b = np.maximum(edges[j], 0.0)
    step = (b - a) / levels
    inside = c0[j] - c0[i]
    below = c2[i] - 2 * a * c1[i] + a**2 * c0[i]
    above = (c2[-1] - c2[j]) - 2 * b * (c1[-1] - c1[j]) + b**2 * (c0[-1] - c0[j])
    error = inside * step**2 / 12 + below + above
    error = np.where(j >= i, error, np.inf)
    bi, bj = np.unravel_index(np.argmin(error), error.shape)
    return float(a[bi, 0]), float(b[0, bj])


class PercentileObserver(HistogramObserver):
    """The range between the ``100 - p`` and ``p`` percentiles of the histogram."""

    def _range(self):
        hist = self.hist.numpy()
        cdf = np.cumsum(hist) / max(hist.sum(), 1.0)
        centers = self._centers()
        p = self.spec.percentile / 100
        hi = float(np.interp(p, cdf, centers))
        lo = float(np.interp(1 - p, cdf, centers)) if self.lo_edge < 0 else float(self.min)
        return self._inside_data(lo, hi)


class EntropyObserver(HistogramObserver):
    """The threshold minimising KL(observed || quantized), TensorRT style."""

    def _range(self):
        centers = self._centers()
        signed = self.lo_edge < 0
        magnitude = np.abs(centers) if signed else centers
        top = max(abs(self.lo_edge), abs(self.hi_edge))
        folded, _ = np.histogram(magnitude, bins=self.spec.bins, range=(0.0, top), weights=self.hist.numpy())
        qmin, qmax = self.spec.quant_range
        levels = (qmax - qmin + 1) // (2 if signed else 1)
        threshold = kl_threshold(folded, top, levels)
        lo = -threshold if signed else max(float(self.min), 0.0)
        return self._inside_data(lo, threshold)


def kl_threshold(hist: np.ndarray, top: float, levels: int) -> float:
    """Threshold on a histogram of magnitudes over ``[0, top]`` minimising KL divergence."""
    bins = len(hist)
    best, best_kl = bins, np.inf
    for i in sorted(set(range(levels, bins + 1, max(1, (bins - levels) // 256))) | {bins}):
        kept = hist[:i]
        p = kept.copy()
        p[-1] += hist[i:].sum()  # the reference keeps the clipped mass in its last bin
        nonzero = kept > 0
        q = np.zeros(i)
        for g in np.array_split(np.arange(i), levels):  # the quantized candidate: kept mass only
            support = nonzero[g].sum()
            if support:
                q[g] = np.where(nonzero[g], kept[g].sum() / support, 0.0)
        p_n, q_n = p / p.sum(), q / max(q.sum(), 1e-30)
        mask = p_n > 0
        kl = float(np.sum(p_n[mask] * np.log(p_n[mask] / np.maximum(q_n[mask], 1e-30))))
        if kl < best_kl:
            best, best_kl = i, kl
    return top * best / bins


_KINDS = {
    "minmax": MinMaxObserver,
    "moving_average": MovingAverageObserver,
    "histogram": HistogramObserver,
    "percentile": PercentileObserver,
    "entropy": EntropyObserver,
}


def make_observer(spec: ObserverSpec, keep_batches: bool = False) -> Observer:
    """A fresh observer for ``spec`` (``keep_batches``: ready to merge across processes)."""
    return _KINDS[spec.kind](spec, keep_batches)


class MomentsObserver:
    """Mean, mean absolute deviation and standard deviation, per tensor and per channel.

    Each batch contributes its own statistics (deviations around the batch's
    mean, as the ACIQ reference does offline), averaged over batches weighted by
    their size. Channels are along axis 1 (activations, N x C x ...); per
    channel it also keeps the minimum and maximum seen. With ``keep_batches``
    it keeps each batch's statistics (a few floats per channel) instead of
    their running sum, so that :meth:`reduce` can sum every rank's batches in
    the global batch order, as one process does.
    """

    def __init__(self, keep_batches: bool = False):
        self.keep_batches = keep_batches
        self.count = 0
        self.sums: dict[str, torch.Tensor] = {}
        self.batches: list[tuple[dict[str, torch.Tensor], int]] = []
        self.extremes: dict[str, torch.Tensor] = {}  # per-channel min and max, over all batches

    def update(self, x: torch.Tensor) -> None:
        x = x.detach().float()
        n = x.shape[0] if x.dim() > 1 else 1
        stats = {"mean": x.mean(), "mad": (x - x.mean()).abs().mean(), "std": x.std()}
        if x.dim() >= 2:
            per_channel = _per_channel(x, 1)
            mean_c = per_channel.mean(dim=1)
            stats |= {"mean_c": mean_c, "mad_c": (per_channel - mean_c[:, None]).abs().mean(dim=1),
                      "std_c": per_channel.std(dim=1)}
            lo, hi = torch.aminmax(per_channel, dim=1)
            seen = self.extremes.get("min_c")
            self.extremes = {"min_c": lo if seen is None else torch.minimum(seen, lo),
                             "max_c": hi if seen is None else torch.maximum(self.extremes["max_c"], hi)}
        if self.keep_batches:
            self.batches.append((stats, n))
        else:
            self._add(stats, n)

    def _add(self, stats: dict[str, torch.Tensor], n: int) -> None:
        for key, value in stats.items():
            self.sums[key] = self.sums.get(key, 0) + value * n
        self.count += n

    def reduce(self, world) -> None:
        """Sum every rank's batches in the global batch order."""
        if self.extremes:
            self.extremes = {"min_c": world.all_reduce(self.extremes["min_c"], "min"),
                             "max_c": world.all_reduce(self.extremes["max_c"], "max")}
        if world.distributed:
            self.batches = world.interleave(world.all_gather(self.batches))

    def stats(self) -> Moments:
        if self.batches:
            self.sums, self.count = {}, 0
            for stats, n in self.batches:
                self._add(stats, n)
        mean = {key: value / self.count for key, value in self.sums.items()}
        channels = (ChannelMoments(mean["mean_c"], mean["mad_c"], mean["std_c"], self.extremes["min_c"],
                                   self.extremes["max_c"]) if "mad_c" in mean else None)
        return Moments(mean["mean"], mean["mad"], mean["std"], channels)
