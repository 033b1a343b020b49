"""E1 figure: loss reduction vs measured KL, NG advantage, and measured/target KL."""

from __future__ import annotations

import pandas as pd

from geomlab.plots.style import COLORS, LABELS, PALETTE, paper_style
from geomlab.plots.style import figure as new_figure

MARKERS = {"sgd": "s", "natgrad": "o", "kfac": "^", "ekfac": "v"}
METHOD_ORDER = ("sgd", "natgrad", "kfac", "ekfac")
EXTRA_COLORS = {"kfac": PALETTE[2], "ekfac": PALETTE[3]}
EXTRA_LABELS = {"kfac": "K-FAC", "ekfac": "EK-FAC"}


def pareto_figure(aggregated: pd.DataFrame, advantage: pd.DataFrame):
    """Three stacked panels at single-column width, all against KL on a log axis."""
    with paper_style():
        fig, (ax_loss, ax_adv, ax_ratio) = new_figure(3, 1, height=5.0)
        present = set(aggregated["method"])
        for method in [m for m in METHOD_ORDER if m in present]:
            rows = aggregated[aggregated["method"] == method].sort_values("epsilon")
            color = COLORS.get(method, EXTRA_COLORS.get(method))
            label = LABELS.get(method, EXTRA_LABELS.get(method, method))
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

        ax_adv.errorbar(
            advantage["epsilon"], advantage["advantage_pct"],
            yerr=advantage["advantage_pct_seed_std"].fillna(0),
            marker="o", color=COLORS["accent"],
        )  # fmt: skip
        ax_adv.axhline(0, color=COLORS["grey"], linestyle="--", linewidth=0.8)
        ax_adv.set(xscale="log", xlabel=r"Target per-step KL $\varepsilon$",
                   ylabel="NG advantage (%)")  # fmt: skip

        ax_ratio.axhline(1, color=COLORS["grey"], linestyle="--", linewidth=0.8)
        ax_ratio.set(xscale="log", xlabel=r"Target per-step KL $\varepsilon$",
                     ylabel="Measured / target KL")  # fmt: skip
        for ax in (ax_loss, ax_adv, ax_ratio):
            ax.grid(True, which="major")
    return fig
