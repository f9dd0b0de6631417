"""qcompile.timing's statistic: the ratio of 10th-percentile times over pairs, with a bootstrap interval."""

from __future__ import annotations

import numpy as np
import pytest

from qcompile.timing import quantile_ratio


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
