"""Shared publication style: single-column width, serif-free 8 pt text, no titles."""

from __future__ import annotations

from contextlib import contextmanager

import matplotlib

matplotlib.use("Agg")  # figures are files; never need a display

import matplotlib.pyplot as plt  # noqa: E402

SINGLE_COLUMN_IN = 3.4
DOUBLE_COLUMN_IN = 7.0

# Colour-blind safe (Okabe-Ito); methods keep their colour in every figure.
COLORS = {
    "sgd": "#0072B2",
    "natgrad": "#D55E00",
    "accent": "#009E73",
    "grey": "#777777",
}
PALETTE = ["#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#F0E442", "#000000"]
LABELS = {"sgd": "SGD", "natgrad": "Natural gradient"}

RC = {
    "font.size": 8,
    "axes.labelsize": 8,
    "axes.titlesize": 8,
    "legend.fontsize": 7,
    "xtick.labelsize": 7,
    "ytick.labelsize": 7,
    "axes.linewidth": 0.6,
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.prop_cycle": matplotlib.cycler(color=PALETTE),
    "grid.linewidth": 0.4,
    "grid.alpha": 0.35,
    "lines.linewidth": 1.3,
    "lines.markersize": 3.5,
    "errorbar.capsize": 2,
    "legend.frameon": False,
    "savefig.bbox": "tight",
    "savefig.pad_inches": 0.02,
    "pdf.fonttype": 42,  # editable text in the PDF
    "figure.dpi": 100,
}


@contextmanager
def paper_style():
    with plt.rc_context(RC):
        yield


def figure(nrows: int = 1, ncols: int = 1, *, width: float = SINGLE_COLUMN_IN, height: float):
    """A figure in the paper style (the style is baked into the created artists)."""
    with paper_style():
        fig, axes = plt.subplots(nrows, ncols, figsize=(width, height), layout="constrained")
    return fig, axes
