"""qcompile.timing's statistic: the ratio of 10th-percentile times over pairs, with a bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile import timing
from qcompile.timing import head_to_head_resolved, quantile_ratio


def test_a_constant_ratio_is_found_with_a_narrow_interval():
    rng = np.random.default_rng(0)
    a = rng.uniform(10, 11, 200)
    result = quantile_ratio(a, a * 1.02)
    assert result.ratio == pytest.approx(1.02) and result.low == pytest.approx(1.02) and result.pairs == 200


def test_bimodal_runs_shared_by_both_leave_the_fast_runs_compared():
    """Runs that a busy machine makes twice as slow, at different places in the two series."""
    rng = np.random.default_rng(1)
    a, b = rng.uniform(12.0, 12.2, 100), rng.uniform(12.0, 12.2, 100)
    a[rng.random(100) < 0.4] *= 2
    b[rng.random(100) < 0.4] *= 2
    result = quantile_ratio(a, b)
    assert result.low < 1 < result.high and result.high - result.low < 0.02
    assert str(result) == f"{result.ratio:.3f}x [{result.low:.3f}, {result.high:.3f}]"


def test_unequal_series_are_refused():
    with pytest.raises(ValueError, match="two equal series"):
        quantile_ratio([1.0, 2.0, 3.0], [1.0, 2.0])


def _rounds(monkeypatch, series):
    """``paired_times`` giving the (a, b) series one round at a time, counting the rounds asked for."""
    asked = []

    def paired_times(a, b, pairs, settle_ms):
        asked.append(pairs)
        return series[len(asked) - 1]

    monkeypatch.setattr(timing, "paired_times", paired_times)
    return asked


def test_rounds_are_added_while_the_interval_holds_one(monkeypatch):
    """A 1% difference hidden by noise in one round of 20 pairs, shown by the rounds after it."""
    rng = np.random.default_rng(2)
    noisy = [(rng.uniform(10, 10.6, 20), rng.uniform(10, 10.6, 20))]
    steady = [(np.full(20, 10.0), np.full(20, 10.1)) for _ in range(5)]
    asked = _rounds(monkeypatch, noisy + steady)
    first = quantile_ratio(*noisy[0])
    assert first.low < 1 < first.high
    result = head_to_head_resolved(lambda: None, lambda: None, pairs=20, max_pairs=100, warmup=0)
    assert result.low > 1 and result.pairs == 20 * len(asked) and 2 <= len(asked) < 5


def test_rounds_stop_at_the_most_pairs_allowed(monkeypatch):
    rng = np.random.default_rng(3)
    same = [(rng.uniform(10, 11, 20), rng.uniform(10, 11, 20)) for _ in range(10)]
    asked = _rounds(monkeypatch, same)
    result = head_to_head_resolved(lambda: None, lambda: None, pairs=20, max_pairs=70, warmup=0)
    assert asked == [20, 20, 20] and result.pairs == 60 and result.low < 1 < result.high


def test_a_clear_difference_takes_one_round(monkeypatch):
    asked = _rounds(monkeypatch, [(np.full(20, 10.0), np.full(20, 12.0))])
    result = head_to_head_resolved(lambda: None, lambda: None, pairs=20, max_pairs=200, warmup=0)
    assert asked == [20] and result.ratio == pytest.approx(1.2)


def test_resolved_timing_refuses_rounds_larger_than_the_limit():
    with pytest.raises(ValueError, match="pairs <= max_pairs"):
        head_to_head_resolved(lambda: None, lambda: None, pairs=50, max_pairs=40)
