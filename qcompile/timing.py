"""Head-to-head timing of two callables: calls in adjacent pairs, the ratio of their fast runs, an interval.

Medians taken over separate runs of each callable compare two moments of a
shared machine as well as two programs. Here the two run in adjacent pairs
(``a`` then ``b``, then ``b`` then ``a``, turning each pair), so both calls of
a pair see the same machine, and the result is ``b``'s time over ``a``'s at
the 10th percentile of each one's times, with a bootstrap 95% interval
(resampling pairs). The 10th percentile, not the median, because on two
threads this machine's run times are bimodal: two onnxruntime sessions of
one ResNet-18 export at batch 1 took 12 ms on some runs and 23 ms on others
(a core taken by a neighbour), in proportions that move from run to run. On
that identical work, the median ratio's interval was 0.67-1.52, the 10th
percentile's 0.985-1.006. An interval that holds 1 says this measurement
cannot tell the two apart; one wholly above 1 says ``a`` is faster.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

QUANTILE = 10  # percentile of each callable's times that the ratio compares


@dataclass(frozen=True)
class PairedRatio:
    """``b``'s time over ``a``'s at the QUANTILE-th percentile, with its bootstrap 95% interval."""

    ratio: float
    low: float
    high: float
    pairs: int

    def __str__(self) -> str:
        return f"{self.ratio:.3f}x [{self.low:.3f}, {self.high:.3f}]"


def quantile_ratio(a_times, b_times, resamples: int = 2000, seed: int = 0) -> PairedRatio:
    """``b``'s QUANTILE-th percentile time over ``a``'s, and a percentile-bootstrap 95% interval over pairs."""
    a_times, b_times = np.asarray(a_times, np.float64), np.asarray(b_times, np.float64)
    if a_times.shape != b_times.shape or a_times.ndim != 1 or len(a_times) < 2:
        raise ValueError(f"need two equal series of at least 2 paired times, got {a_times.shape}, {b_times.shape}")
    pairs = len(a_times)
    picks = np.random.default_rng(seed).integers(0, pairs, size=(resamples, pairs))
    ratios = np.percentile(b_times[picks], QUANTILE, axis=1) / np.percentile(a_times[picks], QUANTILE, axis=1)
    low, high = np.percentile(ratios, [2.5, 97.5])
    ratio = np.percentile(b_times, QUANTILE) / np.percentile(a_times, QUANTILE)
    return PairedRatio(float(ratio), float(low), float(high), pairs)


def head_to_head(a: Callable[[], object], b: Callable[[], object], pairs: int, warmup: int = 3,
                 settle_ms: float = 30.0) -> PairedRatio:
    """Time ``a`` and ``b`` in ``pairs`` adjacent pairs, the order turning each pair; ``b``'s time over ``a``'s.

    Each timed call comes after untimed calls of the same callable, at least
    one and at least ``settle_ms`` of them: an onnxruntime session's worker
    threads spin for a while after each run, and the untimed calls take the
    other session's spinning. Without them, the 10th-percentile ratio of the
    identical sessions above had an interval of 0.96-1.01.
    """
    return head_to_head_resolved(a, b, pairs, pairs, warmup, settle_ms)  # one round


def head_to_head_resolved(a: Callable[[], object], b: Callable[[], object], pairs: int, max_pairs: int,
                          warmup: int = 3, settle_ms: float = 30.0) -> PairedRatio:
    """:func:`head_to_head`, adding ``pairs`` more pairs at a time until the interval leaves 1 or ``max_pairs``.

    A difference of 1% needs more pairs to resolve than one of 5%, and
    which it is is not known in advance. Looking at the interval after each
    round makes an interval that leaves 1 by chance somewhat likelier than
    the 2.5% a side of one look: up to four looks (60 to 240 pairs) in
    ``--onnx-narrow-convs measure``, whose worst case is a bit-identical
    rewrite kept at no gain.
    """
    if pairs < 2 or max_pairs < pairs:
        raise ValueError(f"need 2 <= pairs <= max_pairs, got {pairs}, {max_pairs}")
    for _ in range(warmup):
        a()
        b()
    a_times, b_times = paired_times(a, b, pairs, settle_ms)
    result = quantile_ratio(a_times, b_times)
    while (result.low <= 1 <= result.high) and len(a_times) + pairs <= max_pairs:
        more_a, more_b = paired_times(a, b, pairs, settle_ms)
        a_times, b_times = np.concatenate([a_times, more_a]), np.concatenate([b_times, more_b])
        result = quantile_ratio(a_times, b_times)
    return result


def paired_times(a: Callable[[], object], b: Callable[[], object], pairs: int,
                  settle_ms: float) -> tuple[np.ndarray, np.ndarray]:
    """Seconds of ``pairs`` timed calls of each, in adjacent pairs, the order turning each pair."""

    def timed(fn) -> float:
        start = time.perf_counter()
        fn()
        while time.perf_counter() - start < settle_ms / 1000:
            fn()
        start = time.perf_counter()
        fn()
        return time.perf_counter() - start

    a_times, b_times = np.empty(pairs), np.empty(pairs)
    for i in range(pairs):
        if i % 2 == 0:
            a_times[i] = timed(a)
            b_times[i] = timed(b)
        else:
            b_times[i] = timed(b)
            a_times[i] = timed(a)
    return a_times, b_times
