"""E3 figure: step discrepancy vs kappa in parameter space (top) and function space (bottom)."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geomlab.plots.style import COLORS, LABELS, paper_style
from geomlab.plots.style import figure as new_figure

__all__ = [
    "FAMILY_LABELS", "FLOOR", "LINESTYLES", "MARKERS", "invariance_figure",
]  # fmt: skip

LINESTYLES = {"two_block": "-", "log_uniform": "--"}
FAMILY_LABELS = {"two_block": "two-block", "log_uniform": "log-uniform"}
MARKERS = {"sgd": "s", "natgrad": "o"}
FLOOR = 1e-20  # exact zeros (possible at round-off) still need a place on a log axis


def invariance_figure(results: pd.DataFrame):
    panels = [
        ("max_diff", r"$\max|\Delta\theta(\kappa) - \Delta\theta(1)|$"),
        ("logit_diff", r"$\max|\Delta\tilde z(\kappa) - \Delta\tilde z(1)|$"),
    ]
    with paper_style():
        fig, axes = new_figure(2, 1, height=4.4)
        for ax, (column, ylabel) in zip(axes, panels, strict=True):
            for (scaling, method), rows in results.groupby(["scaling", "method"], sort=False):
                stats = rows.groupby("kappa")[column].agg(["mean", "min", "max"]).clip(lower=FLOOR)
                kappa = stats.index.to_numpy()
                ax.plot(kappa, stats["mean"], color=COLORS[method], marker=MARKERS[method],
                        linestyle=LINESTYLES[scaling],
                        label=f"{LABELS[method]}, {FAMILY_LABELS[scaling]}")  # fmt: skip
                ax.fill_between(kappa, stats["min"], stats["max"], color=COLORS[method],
                                alpha=0.15, linewidth=0)  # fmt: skip
            roundoff = np.finfo(np.float64).eps * _typical_scale(results, column)
            ax.axhline(roundoff, color=COLORS["grey"], linestyle=":", linewidth=0.8)
            ax.annotate("float64 round-off", (0.02, roundoff), xycoords=("axes fraction", "data"),
                        textcoords="offset points", xytext=(0, 2), fontsize=6,
                        color=COLORS["grey"])  # fmt: skip
            ax.set(xscale="log", yscale="log", xlabel=r"Condition number $\kappa$", ylabel=ylabel)
            ax.grid(True, which="major")
        axes[0].legend(loc="center right", fontsize=6)
    return fig


def _typical_scale(results: pd.DataFrame, column: str) -> float:
    """Size of the compared quantity, so the round-off line sits where float64 noise would."""
    if column == "max_diff":
        return float(results["step_norm"].median())
    return float(results["step_norm"].median()) * 10
