import math

import numpy as np
import pytest

from geomlab import stats


def test_nan_rule_drops_and_counts_non_finite_values():
    kept, dropped = stats.finite_values([1.0, float("nan"), None, float("inf"), 3.0])
    assert kept.tolist() == [1.0, 3.0]
    assert dropped == 3
    assert stats.mean([1.0, float("nan"), 3.0]) == 2.0
    assert math.isnan(stats.mean([float("nan")]))
    assert math.isnan(stats.std([5.0]))
    assert stats.std([1.0, 3.0]) == pytest.approx(math.sqrt(2.0))


def test_bootstrap_ci_needs_two_values_and_brackets_the_mean():
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.0]))
    assert all(math.isnan(v) for v in stats.bootstrap_ci([1.0, float("nan")]))
    values = np.arange(10.0)
    low, high = stats.bootstrap_ci(values, n_resamples=2000, seed=1)
    assert low < values.mean() < high
    # constant values: the interval collapses onto them
    assert stats.bootstrap_ci([2.0, 2.0, 2.0]) == (2.0, 2.0)
    # same seed, same interval
    assert stats.bootstrap_ci(values, seed=3) == stats.bootstrap_ci(values, seed=3)


def test_bootstrap_ci_matches_a_hand_resampling():
    values = np.array([0.5, 1.5, 4.0, -2.0])
    rng = np.random.default_rng(7)
    means = values[rng.integers(0, 4, size=(500, 4))].mean(axis=1)
    expected = tuple(np.quantile(means, [0.025, 0.975]))
    assert stats.bootstrap_ci(values, n_resamples=500, seed=7) == pytest.approx(expected, abs=0)


def test_bootstrap_rejects_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        stats.bootstrap_ci([1.0, 2.0], level=1.5)
    with pytest.raises(ValueError, match="n_resamples"):
        stats.bootstrap_ci([1.0, 2.0], n_resamples=0)


def test_summarize_reports_counts():
    out = stats.summarize([1.0, 2.0, float("nan")], n_resamples=100)
    assert out["n"] == 2 and out["n_dropped"] == 1
    assert out["mean"] == 1.5
    assert out["ci95"][0] <= 1.5 <= out["ci95"][1]


def test_bootstrap_ci_uses_the_decimal_tails_of_the_level():
    """The 2.5 % and 97.5 % quantiles exactly as np.quantile(means, [0.025, 0.975]) gives them
    (sweeps' aggregate.csv and lambda-control's intervals kept their numbers)."""
    rng = np.random.default_rng(1)
    for size in range(3, 23):
        values = rng.standard_normal(size) * 10 ** rng.uniform(-3, 3)
        draws = np.random.default_rng(0).integers(0, size, size=(10_000, size))
        expected = np.quantile(values[draws].mean(axis=1), [0.025, 0.975])
        assert stats.bootstrap_ci(values) == (float(expected[0]), float(expected[1]))
