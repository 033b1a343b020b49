"""The class-selective derivative penalty: the notebook's training loss (mean cross-entropy
plus ``scale × mean |d_n|`` over the samples of chosen classes), on the derivative stack."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geomlab.geometry.derivatives import (
    BatchStatistics,
    Method,
    Path,
    fast_directional_derivatives,
    nested_directional_derivatives,
    resolve_path,
    sample_unit_directions,
)
from geomlab.geometry.outputs import as_logits
from geomlab.geometry.params import LossKind
from geomlab.models.modes import train_mode

__all__ = [
    "PenalizedLoss", "class_selective_loss", "derivative_penalty", "has_batch_norm_in_training",
]  # fmt: skip


@dataclass
class PenalizedLoss:
    """``total = cross_entropy + penalty``; ``penalty`` is already scaled (0 when inactive)."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    penalty: torch.Tensor
    num_penalized: int


def class_selective_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    target_classes: Sequence[int] | None,
    scale: float,
    max_order: int,
    num_directions: int,
    method: Method | Path | str,
    generator: torch.Generator | None = None,
    self_check: bool = True,
) -> PenalizedLoss:
    """The notebook's training loss: mean cross-entropy on the batch plus
    ``scale × mean |d_n|`` over orders 1..max_order, ``num_directions`` random unit directions
    and the samples whose (possibly noisy) label is in ``target_classes``.

    ``target_classes=None`` penalizes every sample (global), an empty set none (baseline). The
    penalty is computed in train mode (the notebook forces it; every submodule's own mode is
    restored afterwards). With the fast path and every
    sample penalized, one forward pass serves both terms (shared dropout mask); otherwise the
    cross-entropy has its own forward pass.

    ``method``: ``"fast"`` picks the cumulant or Taylor path, ``"linear"`` / ``"taylor"`` (a
    :class:`~geomlab.geometry.derivatives.Path` from :func:`resolve_path`) name it, ``"nested"`` is
    the reference (``"auto"`` is refused: a training loss does not switch paths silently). A fast
    path is resolved and self-checked against the nested reference once per model (train mode,
    orders 1..max_order; :func:`resolve_path`, cached), so later steps pay a look-up. A mismatch
    raises :class:`SelfCheckError`; ``self_check=False`` skips the check. BatchNorm: the penalty's
    passes never update running statistics, and train-mode batch statistics are those of the step's
    forward, held constant along the directions (docs/derivatives.md).
    """
    zero = inputs.new_zeros(())
    if (target_classes is not None and len(target_classes) == 0) or scale == 0:
        ce = F.cross_entropy(as_logits(model(inputs)), labels)
        return PenalizedLoss(ce, ce, zero, 0)
    if target_classes is None:
        selected = None
    else:
        targets = torch.as_tensor(list(target_classes), device=labels.device)
        mask = torch.isin(labels, targets)
        selected = None if bool(mask.all()) else torch.nonzero(mask).flatten()
    if selected is not None and selected.numel() == 0:
        ce = F.cross_entropy(as_logits(model(inputs)), labels)
        return PenalizedLoss(ce, ce, zero, 0)
    if method not in (Method.FAST, Method.NESTED, Path.LINEAR, Path.TAYLOR):
        raise ValueError(f"method must be fast, nested, linear or taylor, got {method!r}")
    with train_mode(model):
        x = inputs if selected is None else inputs[selected]
        y = labels if selected is None else labels[selected]
        directions = sample_unit_directions(num_directions, x, generator=generator)
        path = resolve_path(
            model, x, method, max_order=max_order, labels=y, loss=LossKind.CROSS_ENTROPY,
            self_check=self_check,
        )  # fmt: skip
        if path is not Path.NESTED and selected is None:
            # one forward pass is both the step's forward (its buffer updates are the step's
            # own) and the penalty's
            values, ce_logits = fast_directional_derivatives(
                model, x, y, directions, max_order=max_order, path=path, isolate_buffers=False
            )
        elif has_batch_norm_in_training(model):
            # the step's forward first: its batch statistics are those the penalty holds fixed
            statistics = BatchStatistics()
            with statistics.capturing():
                ce_logits = as_logits(model(inputs))
            values = _penalty_derivatives(model, x, y, directions, path, statistics, max_order)
        else:  # penalty passes first, then the step's forward (the notebook's dropout order)
            values = _penalty_derivatives(
                model, x, y, directions, path, BatchStatistics(), max_order
            )
            ce_logits = as_logits(model(inputs))
    ce = F.cross_entropy(ce_logits, labels)
    penalty = scale * derivative_penalty(values)
    return PenalizedLoss(ce + penalty, ce, penalty, int(x.shape[0]))


def _penalty_derivatives(model, x, y, directions, path: Path, statistics, max_order: int):
    if path is not Path.NESTED:
        values, _ = fast_directional_derivatives(
            model, x, y, directions, max_order=max_order, path=path, batch_statistics=statistics
        )
        return values
    return nested_directional_derivatives(
        model, x, y, directions, max_order=max_order, create_graph=True,
        batch_statistics=statistics,
    )  # fmt: skip


def has_batch_norm_in_training(model: nn.Module) -> bool:
    """Whether a BatchNorm module of ``model`` is in train mode (uses batch statistics)."""
    return any(
        isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
        for module in model.modules()
    )


def derivative_penalty(derivatives: torch.Tensor) -> torch.Tensor:
    """The notebook's unscaled penalty: mean over (order, direction) of the per-sample mean of
    ``|d_n|``. All terms have the same batch, so this is the plain mean of ``|d|``."""
    return derivatives.abs().mean()
