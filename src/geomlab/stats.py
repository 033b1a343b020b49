"""Summary statistics over seeds: mean/std and percentile-bootstrap CIs, with one NaN rule.

The NaN rule, everywhere in geomlab: non-finite values (NaN, ±inf, None) are dropped before any
statistic and counted in ``n_dropped``; a mean needs one finite value, a standard deviation and a
confidence interval need two (otherwise NaN). A gate reports the non-finite values; statistics
never average them in.
"""

from __future__ import annotations

from collections.abc import Iterable
from decimal import Decimal
from typing import Any

import numpy as np

BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0


def finite_values(values: Iterable[Any]) -> tuple[np.ndarray, int]:
    """The finite values as float64 and how many were dropped (NaN, ±inf, None)."""
    raw = np.asarray([np.nan if v is None else v for v in values], dtype=float).reshape(-1)
    keep = np.isfinite(raw)
    return raw[keep], int((~keep).sum())


def mean(values: Iterable[Any]) -> float:
    """Mean of the finite values; NaN when there are none."""
    kept, _ = finite_values(values)
    return float(kept.mean()) if kept.size else float("nan")


def std(values: Iterable[Any], *, ddof: int = 1) -> float:
    """Standard deviation of the finite values; NaN with fewer than ``ddof + 1`` of them."""
    kept, _ = finite_values(values)
    return float(kept.std(ddof=ddof)) if kept.size > ddof else float("nan")


def bootstrap_ci(
    values: Iterable[Any],
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile-bootstrap interval of the mean of the finite values.

    Resamples the values with replacement ``n_resamples`` times (NumPy's default generator
    seeded with ``seed``) and returns the ``(1 - level)/2`` and ``(1 + level)/2`` quantiles
    of the resampled means (linear interpolation). NaN with fewer than two finite values.
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    kept, _ = finite_values(values)
    if kept.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = kept[rng.integers(0, kept.size, size=(n_resamples, kept.size))].mean(axis=1)
    # The tails as the decimal level reads: (1 - 0.95) / 2 in binary is 0.025000000000000022,
    # not 0.025, and moves the interpolated quantile in the last bits.
    tail = (1 - Decimal(repr(level))) / 2
    low, high = np.quantile(means, [float(tail), float(1 - tail)])
    return float(low), float(high)


def summarize(
    values: Iterable[Any],
    *,
    n_resamples: int = BOOTSTRAP_RESAMPLES,
    seed: int = BOOTSTRAP_SEED,
    ddof: int = 1,
) -> dict[str, Any]:
    """``{mean, std, ci95: [low, high], n, n_dropped}`` of the finite values (JSON-able; NaN
    where undefined, which the JSON writer stores as null)."""
    kept, dropped = finite_values(values)
    low, high = bootstrap_ci(kept, n_resamples=n_resamples, seed=seed)
    return {
        "mean": float(kept.mean()) if kept.size else float("nan"),
        "std": float(kept.std(ddof=ddof)) if kept.size > ddof else float("nan"),
        "ci95": [low, high],
        "n": int(kept.size),
        "n_dropped": dropped,
    }
