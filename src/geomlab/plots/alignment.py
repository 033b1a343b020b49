"""Figures of the alignment experiment: one panel per compared pair of runs (a notebook cell).

Every figure is a grid over comparisons; within a panel the two runs keep their colours
(ReLU / NTK blue, Sigmoid / MF orange) and line styles encode the quantity. A run that ran
away (its train MSE grew past the experiment's limit; ``runaway`` maps it to the growth
factor) is drawn, but its panel says so in red: it is never shown as if it trained.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

import pandas as pd
from matplotlib.lines import Line2D
from matplotlib.ticker import FuncFormatter, MaxNLocator, NullFormatter

from geomlab.plots.style import DOUBLE_COLUMN_IN, PALETTE, paper_style
from geomlab.plots.style import figure as new_figure

RUN_COLORS = (PALETTE[0], PALETTE[1])
RUN_LABELS = {"relu": "ReLU", "sigmoid": "Sigmoid", "tanh": "tanh", "ntk": "NTK (γ = 1)",
              "mf": "MF (γ = 1/√k)"}  # fmt: skip
PRETTY_SCALE = {"1": "1", "1/sqrt(k)": "1/√k", "1/k": "1/k"}


def _run_label(run: str) -> str:
    short = run.split("/")[-1].split("-")[-1]
    return RUN_LABELS.get(short, short)


def _panel_note(rows: pd.DataFrame) -> str:
    first = rows.iloc[0]
    note = f"σ* = {first['teacher']}, η = {first['lr']:.3g}"
    if rows["gamma_scale"].nunique() == 1:
        note += f", γ = {PRETTY_SCALE.get(first['gamma_scale'], first['gamma_scale'])}"
    return note


RUNAWAY_COLOR = "#C00000"


def _note(ax, rows: pd.DataFrame, runaway: Mapping[str, float] | None = None) -> None:
    """Which cell a panel shows, as a small key above its top-left corner. A panel with a run
    that ran away gets red spines and, above the key, a red line naming the run and its train
    MSE growth factor."""
    ax.text(0.0, 1.03, _panel_note(rows), transform=ax.transAxes, ha="left", va="bottom",
            fontsize=6.5, color="#333333")  # fmt: skip
    flagged = [run for run in rows["run"].unique() if runaway and run in runaway]
    if flagged:
        text = "ran away: " + ", ".join(
            f"{_run_label(run)} (train MSE ×{runaway[run]:.3g})" for run in flagged
        )
        ax.annotate(text, xy=(0.0, 1.0), xycoords="axes fraction", xytext=(0, 11),
                    textcoords="offset points", ha="left", va="bottom", fontsize=6.5,
                    color=RUNAWAY_COLOR)  # fmt: skip
        for spine in ax.spines.values():
            spine.set_color(RUNAWAY_COLOR)


def _grid(metrics: pd.DataFrame, height_per_row: float = 1.55):
    groups = list(metrics.groupby(["family", "setting"], sort=False))
    ncols = min(3, len(groups))
    nrows = math.ceil(len(groups) / ncols)
    fig, axes = new_figure(
        nrows, ncols, width=DOUBLE_COLUMN_IN, height=0.5 + height_per_row * nrows
    )
    flat = axes.ravel().tolist() if hasattr(axes, "ravel") else [axes]
    for ax in flat[len(groups) :]:
        ax.set_visible(False)
    return fig, groups, flat


def _finish(fig, groups, flat, *, ylabel: str, style_handles: list[Line2D]) -> None:
    ncols = min(3, len(groups))
    for index, ((_, _), _rows) in enumerate(groups):
        ax = flat[index]
        if index % ncols == 0:
            ax.set_ylabel(ylabel)
        if index >= len(groups) - ncols:
            ax.set_xlabel("Epoch")
        ax.grid(True, which="major")
    # A colour means "first / second run of the pair" in every panel; name both pairs' runs.
    names: list[list[str]] = [[], []]
    for (_, _), rows in groups:
        for position, run in enumerate(rows["run"].unique()):
            label = _run_label(run)
            if label not in names[position]:
                names[position].append(label)
    run_handles = [
        Line2D([], [], color=RUN_COLORS[position], label=" / ".join(labels))
        for position, labels in enumerate(names)
        if labels
    ]
    _tidy_log_axes(flat)
    fig.legend(
        handles=run_handles + style_handles,
        loc="outside upper center",
        ncols=len(run_handles) + len(style_handles),
    )


def _per_run(groups, flat, draw: Callable, runaway: Mapping[str, float] | None) -> None:
    for index, ((_, _), rows) in enumerate(groups):
        ax = flat[index]
        for position, (_, run_rows) in enumerate(rows.groupby("run", sort=False)):
            draw(ax, run_rows.sort_values("epoch"), RUN_COLORS[position])
        _note(ax, rows, runaway)


def _log_y(ax) -> None:
    ax.set_yscale("log")


_PLAIN = FuncFormatter(lambda value, _: f"{value:g}")


def _tidy_log_axes(axes) -> None:
    """Plain numbers (0.6, 2, 100) on log y axes. An axis spanning less than ~a decade would
    show a single labelled power of ten, so it gets about four evenly chosen ticks instead."""
    for ax in axes:
        if ax.get_yscale() != "log" or not ax.get_visible():
            continue
        low, high = ax.get_ylim()
        decades = math.log10(high / low) if low > 0 else math.inf
        if decades < 1.2:
            ax.yaxis.set_major_locator(MaxNLocator(nbins=4))
        ax.yaxis.set_major_formatter(_PLAIN)
        ax.yaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(low, high)


def _symlog_epochs(ax) -> None:
    ax.set_xscale("symlog", linthresh=1)
    ax.set_xlim(left=0)


def loss_figure(
    metrics: pd.DataFrame, angles: pd.DataFrame, *, runaway: Mapping[str, float] | None = None
):
    """Train (solid) and test (dashed) MSE over epochs."""
    with paper_style():
        fig, groups, flat = _grid(metrics)

        def draw(ax, rows, color):
            ax.plot(rows["epoch"], rows["train_mse"], color=color)
            ax.plot(rows["epoch"], rows["test_mse"], color=color, linestyle="--")
            _log_y(ax)
            _symlog_epochs(ax)  # 1000-epoch runs change most in their first tens of epochs

        _per_run(groups, flat, draw, runaway)
        _finish(fig, groups, flat, ylabel="MSE", style_handles=_styles(["Train", "Test"]))
    return fig


def cosine_figure(
    metrics: pd.DataFrame, angles: pd.DataFrame, *, runaway: Mapping[str, float] | None = None
):
    """|cos| of the gradient's leading right singular vector with q and with X_Bᵀ(y − f)."""
    with paper_style():
        fig, groups, flat = _grid(metrics)

        def draw(ax, rows, color):
            ax.plot(rows["epoch"], rows["cos_v1_spike"], color=color)
            ax.plot(rows["epoch"], rows["cos_v1_residue"], color=color, linestyle="--")
            ax.set_ylim(0, 1.05)
            _symlog_epochs(ax)

        _per_run(groups, flat, draw, runaway)
        handles = _styles([r"$|\cos(v_1, q)|$", r"$|\cos(v_1, X_B^\top r)|$"])
        _finish(fig, groups, flat, ylabel=r"$|\cos|$", style_handles=handles)
    return fig


def energy_figure(
    metrics: pd.DataFrame, angles: pd.DataFrame, *, runaway: Mapping[str, float] | None = None
):
    """Fraction of ‖W‖_F in span(Xᵀy, q)."""
    with paper_style():
        fig, groups, flat = _grid(metrics)

        def draw(ax, rows, color):
            ax.plot(rows["epoch"], rows["energy_fraction"], color=color)
            ax.set_ylim(0, 1.05)
            _symlog_epochs(ax)

        _per_run(groups, flat, draw, runaway)
        _finish(fig, groups, flat, ylabel=r"$\|P_S W\|_F / \|W\|_F$", style_handles=[])
    return fig


def spectrum_figure(
    metrics: pd.DataFrame, angles: pd.DataFrame, *, runaway: Mapping[str, float] | None = None
):
    """The gradient's top three singular values over epochs (log scale)."""
    with paper_style():
        fig, groups, flat = _grid(metrics)

        def draw(ax, rows, color):
            for column, style in zip(("grad_sv_1", "grad_sv_2", "grad_sv_3"), STYLES, strict=True):
                ax.plot(rows["epoch"], rows[column], color=color, linestyle=style)
            ax.set_yscale("log")
            _symlog_epochs(ax)

        _per_run(groups, flat, draw, runaway)
        handles = _styles([r"$\sigma_1$", r"$\sigma_2$", r"$\sigma_3$"])
        _finish(fig, groups, flat, ylabel=r"Singular value of $\nabla_W L$", style_handles=handles)
    return fig


def angle_figure(
    metrics: pd.DataFrame, angles: pd.DataFrame, *, runaway: Mapping[str, float] | None = None
):
    """Mean principal angle between the two runs' top-r right singular subspaces of W_t
    (solid) and of W_t − W_0 (dashed)."""
    with paper_style():
        fig, groups, flat = _grid(metrics)
        for index, ((family, setting), rows) in enumerate(groups):
            ax = flat[index]
            mine = angles[(angles["family"] == family) & (angles["setting"] == setting)]
            for subspace, style, marker in (("weights", "-", "o"), ("update", "--", "s")):
                part = mine[mine["subspace"] == subspace].sort_values("epoch")
                ax.plot(part["epoch"], part["mean_angle_deg"], color=PALETTE[2],
                        linestyle=style, marker=marker, markersize=2.5)  # fmt: skip
            ax.set_ylim(0, 92)
            ax.set_yticks([0, 30, 60, 90])
            _symlog_epochs(ax)
            _note(ax, rows, runaway)
        rank = int(angles["rank"].iloc[0]) if len(angles) else 0
        for ax in flat[: len(groups)]:
            ax.grid(True, which="major")
        ncols = min(3, len(groups))
        for index in range(len(groups)):
            if index % ncols == 0:
                flat[index].set_ylabel("Mean principal angle (°)")
            if index >= len(groups) - ncols:
                flat[index].set_xlabel("Epoch")
        handles = [
            Line2D([], [], color=PALETTE[2], marker="o", markersize=2.5,
                   label=f"Top-{rank} subspace of $W_t$"),
            Line2D([], [], color=PALETTE[2], marker="s", markersize=2.5, linestyle="--",
                   label=f"Top-{rank} subspace of $W_t - W_0$"),
        ]  # fmt: skip
        fig.legend(handles=handles, loc="outside upper center", ncols=2)
    return fig


STYLES = ("-", "--", ":")


def _styles(labels: list[str]) -> list[Line2D]:
    return [
        Line2D([], [], color="#444444", linestyle=style, label=label)
        for label, style in zip(labels, STYLES, strict=False)
    ]


FIGURES: dict[str, Callable] = {
    "alignment_loss": loss_figure,
    "alignment_cosines": cosine_figure,
    "alignment_energy": energy_figure,
    "alignment_spectrum": spectrum_figure,
    "alignment_angles": angle_figure,
}


def _band(ax, frame: pd.DataFrame, column: str, **style) -> None:
    mean = frame[f"{column}_mean"]
    std = frame[f"{column}_std"].fillna(0)
    ax.plot(frame["nu"], mean, marker="o", markersize=2.5, **style)
    ax.fill_between(frame["nu"], mean - std, mean + std, color=style["color"], alpha=0.18,
                    linewidth=0)  # fmt: skip


def _regime_guides(ax) -> None:
    for boundary in (0.25, 0.5):
        ax.axvline(boundary, color="#777777", linestyle=":", linewidth=0.8)


def gradient_rank_figure(by_nu: pd.DataFrame, *, threshold: float):
    """Top: singular-value gaps σ1/σ2, σ2/σ3, σ3/σ4 vs ν. Bottom: |cos| of v1, v2 with the
    residue direction and the spike. Dotted lines mark ν = 1/4 and ν = 1/2; bands are ±1 std
    over seeds."""
    frame = by_nu.sort_values("nu")
    with paper_style():
        fig, (ax_gap, ax_cos) = new_figure(2, 1, height=4.6)
        _band(ax_gap, frame, "sv_ratio_12", color=PALETTE[0], label=r"$\sigma_1/\sigma_2$")
        _band(ax_gap, frame, "sv_ratio_23", color=PALETTE[1], label=r"$\sigma_2/\sigma_3$")
        _band(ax_gap, frame, "sv_ratio_34", color=PALETTE[2], label=r"$\sigma_3/\sigma_4$")
        ax_gap.axhline(threshold, color="#777777", linestyle="--", linewidth=0.8)
        _log_y(ax_gap)
        low, high = ax_gap.get_ylim()
        ax_gap.set_yticks([v for v in (1, 2, 5, 10, 20, 50, 100, 200, 500) if low <= v <= high])
        ax_gap.yaxis.set_major_formatter(_PLAIN)
        ax_gap.yaxis.set_minor_formatter(NullFormatter())
        ax_gap.set_ylim(low, high)
        ax_gap.set_ylabel("Singular-value gap")
        ax_gap.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=3)
        _regime_guides(ax_gap)

        curves = (
            ("cos_v1_residue", PALETTE[0], "-", r"$v_1$, residue"),
            ("cos_v1_spike", PALETTE[0], "--", r"$v_1$, spike $q$"),
            ("cos_v2_residue", PALETTE[1], "-", r"$v_2$, residue"),
            ("cos_v2_spike", PALETTE[1], "--", r"$v_2$, spike $q$"),
        )
        for column, color, style, label in curves:
            ax_cos.plot(frame["nu"], frame[f"{column}_mean"], color=color, linestyle=style,
                        marker="o", markersize=2.5, label=label)  # fmt: skip
        ax_cos.plot(frame["nu"], frame["top2_cos_2_mean"], color="#444444", linestyle=":",
                    marker="s", markersize=2.5,
                    label=r"span$(v_1, v_2)$ vs span(residue, $q$)")  # fmt: skip
        ax_cos.set_ylim(0, 1.05)
        ax_cos.set_ylabel(r"$|\cos|$")
        ax_cos.set_xlabel(r"Spike exponent $\nu$  ($\zeta = N^{\nu}$)")
        ax_cos.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncols=2, fontsize=6)
        _regime_guides(ax_cos)
        for ax in (ax_gap, ax_cos):
            ax.grid(True, which="major")
    return fig
