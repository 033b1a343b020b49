"""E1 figure: loss reduction vs measured KL, NG advantage, and measured/target KL."""

from __future__ import annotations

import pandas as pd

from geomlab.plots.style import COLORS, LABELS, PALETTE, paper_style
from geomlab.plots.style import figure as new_figure

__all__ = [
    "EXTRA_COLORS", "EXTRA_LABELS", "MARKERS", "METHOD_ORDER", "pareto_figure",
]  # fmt: skip

MARKERS = {"sgd": "s", "natgrad": "o", "kfac": "^", "ekfac": "v"}
METHOD_ORDER = ("sgd", "natgrad", "kfac", "ekfac")
EXTRA_COLORS = {"kfac": PALETTE[4], "ekfac": PALETTE[3]}  # not the advantage panel's accent
EXTRA_LABELS = {"kfac": "K-FAC", "ekfac": "EK-FAC"}


def pareto_figure(
    aggregated: pd.DataFrame,
    advantage: pd.DataFrame | dict[str, pd.DataFrame],
    *,
    labels: dict[str, str] | None = None,
):
    """Three stacked panels at single-column width, all against KL on a log axis. ``advantage``
    is natural gradient's table (the notebook's panel) or one table per non-SGD method.
    ``labels`` overrides a method's legend label (e.g. ``"NG (CG, 10 iterations, residual
    0.3)"`` for an inexact solve)."""
    labels = labels or {}
    with paper_style():
        fig, (ax_loss, ax_adv, ax_ratio) = new_figure(3, 1, height=5.0)
        present = set(aggregated["method"])
        for method in [m for m in METHOD_ORDER if m in present]:
            rows = aggregated[aggregated["method"] == method].sort_values("epsilon")
            color = COLORS.get(method, EXTRA_COLORS.get(method))
            label = labels.get(method, LABELS.get(method, EXTRA_LABELS.get(method, method)))
            ax_loss.errorbar(
                rows["kl_step_mean"], rows["delta_loss_mean"],
                xerr=rows["kl_step_std"].fillna(0), yerr=rows["delta_loss_std"].fillna(0),
                marker=MARKERS[method], color=color, label=label,
            )  # fmt: skip
            ax_ratio.errorbar(
                rows["epsilon"], rows["kl_ratio_mean"], yerr=rows["kl_ratio_std"].fillna(0),
                marker=MARKERS[method], color=color, label=label,
            )  # fmt: skip
        ax_loss.set(
            xscale="log", yscale="log", xlabel="Measured per-step KL", ylabel="Loss reduction"
        )
        ax_loss.legend(loc="upper left")

        # One curve per method against SGD; with natural gradient alone, the notebook's panel.
        advantages = advantage if isinstance(advantage, dict) else {"natgrad": advantage}
        advantages = {m: a for m, a in advantages.items() if len(a)}
        alone = list(advantages) == ["natgrad"]
        for method, table in advantages.items():
            color = COLORS["accent"] if alone else COLORS.get(method, EXTRA_COLORS.get(method))
            ax_adv.errorbar(
                table["epsilon"], table["advantage_pct"],
                yerr=table["advantage_pct_seed_std"].fillna(0), marker=MARKERS.get(method, "o"),
                color=color,
                label=labels.get(method, LABELS.get(method, EXTRA_LABELS.get(method, method))),
            )  # fmt: skip
        if (not alone or labels) and advantages:
            ax_adv.legend(loc="best")
        ax_adv.axhline(0, color=COLORS["grey"], linestyle="--", linewidth=0.8)
        ax_adv.set(xscale="log", xlabel=r"Target per-step KL $\varepsilon$",
                   ylabel="NG advantage (%)" if alone else "Advantage over SGD (%)")  # fmt: skip

        ax_ratio.axhline(1, color=COLORS["grey"], linestyle="--", linewidth=0.8)
        ax_ratio.set(xscale="log", xlabel=r"Target per-step KL $\varepsilon$",
                     ylabel="Measured / target KL")  # fmt: skip
        for ax in (ax_loss, ax_adv, ax_ratio):
            ax.grid(True, which="major")
    return fig
