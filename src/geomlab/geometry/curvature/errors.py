"""The refusals every curvature path raises, the finiteness check, and the progress callback."""

from __future__ import annotations

from collections.abc import Callable

import torch

from geomlab.geometry.refusal import Refused

__all__ = [
    "FisherSelfCheckError", "NonFiniteOutputError", "ProgressCallback", "UnsupportedShapeError",
    "check_finite",
]  # fmt: skip

ProgressCallback = Callable[[str, int, "int | None", str], None]
"""``progress(stage, done, total, note)``: called by long geometry passes after each step
(CG iterations, blocks of dense Fisher columns). Geometry does no I/O; the experiment decides
what to show (see ``geomlab.experiments.softmax_common.progress_logger``)."""


class UnsupportedShapeError(Refused, ValueError):
    """A fast path was given tensors outside the model family it is exact for."""


class NonFiniteOutputError(Refused, ValueError):
    """The model's outputs (or loss, or gradient) are NaN/inf before any step was taken."""


class FisherSelfCheckError(Refused, RuntimeError):
    """curvlinops' Fisher-vector products disagree with the independent float64 reference."""


def check_finite(tensor: torch.Tensor, *, what: str) -> None:
    """Raise :class:`NonFiniteOutputError` naming ``what`` and how many entries are NaN/inf."""
    bad = ~torch.isfinite(tensor)
    count = int(bad.sum())
    if count:
        n_nan = int(torch.isnan(tensor).sum())
        raise NonFiniteOutputError(
            f"{what} are not finite: {count} of {tensor.numel()} entries ({n_nan} NaN, "
            f"{count - n_nan} inf); no Fisher, step or KL of such a model means anything "
            "(check the model's weights and inputs)"
        )
