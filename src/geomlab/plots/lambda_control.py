"""λ-control figures: λ per pair and condition, log|d_n| against n with fits, training curves."""

from __future__ import annotations

import numpy as np
import pandas as pd

from geomlab.plots.style import DOUBLE_COLUMN_IN, PALETTE, SINGLE_COLUMN_IN, paper_style
from geomlab.plots.style import figure as new_figure

MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]


def condition_colors(conditions: list[str]) -> dict[str, str]:
    """Baseline grey-black, others from the palette, stable across figures."""
    colors, palette = {}, iter(PALETTE)
    for condition in conditions:
        colors[condition] = "#444444" if condition == "baseline" else next(palette)
    return colors


def pretty(condition: str) -> str:
    if condition.startswith("selective_"):
        return f"Selective {'/'.join(condition.removeprefix('selective_'))}"
    return condition.capitalize()


def lambda_by_pair(models: pd.DataFrame, conditions: list[str], pairs: list[str]):
    """Mean λ ± std over seeds per pair (groups) and condition (colours); seeds as small dots."""
    colors = condition_colors(conditions)
    width = max(SINGLE_COLUMN_IN, min(DOUBLE_COLUMN_IN, 1.1 + 0.45 * len(pairs) * len(conditions)))
    with paper_style():
        fig, ax = new_figure(width=width, height=2.4)
        spread = 0.8 / max(len(conditions), 1)
        for i, condition in enumerate(conditions):
            rows = models[models["condition"] == condition]
            offset = (i - (len(conditions) - 1) / 2) * spread
            for j, pair in enumerate(pairs):
                values = rows[f"lambda_{pair}"].dropna().to_numpy(dtype=float)
                if values.size == 0:
                    continue
                x = j + offset
                ax.errorbar(
                    x, values.mean(), yerr=values.std() if values.size > 1 else None,
                    marker=MARKERS[i % len(MARKERS)], color=colors[condition], markersize=5,
                    label=pretty(condition) if j == 0 else None, zorder=3,
                )  # fmt: skip
                ax.scatter(
                    np.full(values.size, x + spread * 0.28), values, s=6,
                    color=colors[condition], alpha=0.55, linewidths=0, zorder=2,
                )  # fmt: skip
        if not any(models[f"lambda_{pair}"].notna().any() for pair in pairs):
            ax.text(0.5, 0.5, "λ not estimated: too few boundary points", ha="center",
                    va="center", transform=ax.transAxes, color="#777777")  # fmt: skip
            ax.set_yticks([])
        ax.set_xticks(range(len(pairs)), [pair.replace("v", " vs ") for pair in pairs])
        ax.set_xlim(-0.6, len(pairs) - 0.4)
        ax.set(xlabel="Class pair", ylabel=r"$\lambda$ (slope of mean log$|d_n|$)")
        ax.grid(True, axis="y")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), borderaxespad=0.2)
    return fig


def lambda_fits(fits: pd.DataFrame, conditions: list[str], pairs: list[str]):
    """One panel per pair: mean over seeds of mean log|d_n| against n, with the mean fit line."""
    colors = condition_colors(conditions)
    present = [p for p in pairs if (fits["pair"] == p).any()]
    ncols = max(len(present), 1)
    width = min(DOUBLE_COLUMN_IN, max(SINGLE_COLUMN_IN, 2.2 * ncols))
    with paper_style():
        fig, axes = new_figure(1, ncols, width=width, height=2.3)
        axes = np.atleast_1d(axes)
        for ax, pair in zip(axes, present, strict=False):
            rows = fits[fits["pair"] == pair]
            for i, condition in enumerate(conditions):
                sub = rows[rows["condition"] == condition]
                if sub.empty:
                    continue
                by_order = sub.groupby("order")["mean_log_abs_d"]
                orders = by_order.mean().index.to_numpy(dtype=float)
                ax.errorbar(
                    orders, by_order.mean().to_numpy(), yerr=by_order.std(ddof=0).to_numpy(),
                    linestyle="none", marker=MARKERS[i % len(MARKERS)], color=colors[condition],
                    label=pretty(condition),
                )  # fmt: skip
                fit = sub.drop_duplicates("seed")[["slope", "intercept"]].mean()
                grid = np.linspace(orders.min() - 0.15, orders.max() + 0.15, 20)
                ax.plot(grid, fit["intercept"] + fit["slope"] * grid, color=colors[condition],
                        linewidth=0.9, alpha=0.8)  # fmt: skip
            ax.set_xticks(sorted(rows["order"].unique()))
            ax.set(xlabel=r"Order $n$", title=None)
            ax.text(0.96, 0.96, pair.replace("v", " vs "), transform=ax.transAxes, va="top",
                    ha="right")  # fmt: skip
            ax.grid(True)
        axes[0].set_ylabel(r"mean log$|d_n|$")
        axes[0].legend(loc="lower left")
    return fig


def training_curves(history: pd.DataFrame, conditions: list[str]):
    """Test accuracy, and train/test loss per epoch (mean over seeds, band = min..max)."""
    colors = condition_colors(conditions)
    with paper_style():
        fig, (ax_acc, ax_loss) = new_figure(1, 2, width=DOUBLE_COLUMN_IN, height=2.3)
        for i, condition in enumerate(conditions):
            rows = history[history["condition"] == condition]
            if rows.empty:
                continue
            grouped = rows.groupby("epoch")
            epochs = grouped["test_acc"].mean().index.to_numpy()
            marker = MARKERS[i % len(MARKERS)]
            for ax, column, style, label in (
                (ax_acc, "test_acc", "-", pretty(condition)),
                (ax_loss, "train_loss", "-", f"{pretty(condition)} (train)"),
                (ax_loss, "test_loss", "--", None),
            ):
                mean = grouped[column].mean().to_numpy()
                ax.plot(epochs, mean, linestyle=style, marker=marker, color=colors[condition],
                        label=label)  # fmt: skip
                if rows["seed"].nunique() > 1:
                    ax.fill_between(epochs, grouped[column].min(), grouped[column].max(),
                                    color=colors[condition], alpha=0.12, linewidth=0)  # fmt: skip
        ax_acc.set(xlabel="Epoch", ylabel="Test accuracy")
        ax_loss.set(xlabel="Epoch", ylabel="Loss (solid: train, dashed: test)")
        for ax in (ax_acc, ax_loss):
            ax.grid(True)
            ax.xaxis.get_major_locator().set_params(integer=True)
        ax_acc.legend(loc="lower right")
    return fig
