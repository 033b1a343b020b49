"""Which loss a derivative is of (:class:`~geomlab.geometry.params.LossKind`), checked
against the labels, and the summed per-sample loss the nested reference differentiates."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from geomlab.geometry.params import LossKind

__all__ = ["check_targets", "parse_loss", "resolve_loss", "summed_loss"]


def parse_loss(loss: LossKind | str) -> LossKind:
    """``loss`` as a :class:`~geomlab.geometry.params.LossKind`; anything else is a
    ``ValueError`` saying what was given."""
    try:
        return LossKind(loss)
    except ValueError:
        raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}") from None


def resolve_loss(loss: LossKind | str | None, labels: torch.Tensor) -> LossKind:
    """The loss for ``labels``: ``None`` infers it (integer labels → ``"cross_entropy"``, float
    targets → ``"mse"``); an explicit ``loss`` is validated against the labels. Anything else
    is a ``ValueError`` that says what was given."""
    floating = labels.dtype.is_floating_point
    integer = not floating and not labels.dtype.is_complex and labels.dtype != torch.bool
    if loss is None:
        if integer:
            loss = LossKind.CROSS_ENTROPY
        elif floating:
            loss = LossKind.MSE
        else:
            raise ValueError(
                f"cannot infer the loss from labels of dtype {labels.dtype}: give integer class"
                " labels (cross-entropy) or float targets of the outputs' shape (MSE)"
            )
    loss = parse_loss(loss)
    if loss is LossKind.CROSS_ENTROPY and not integer:
        raise ValueError(
            f"loss='cross_entropy' needs integer class labels [B], got dtype {labels.dtype}"
            " (float targets are not soft labels here: use loss='mse' for regression targets)"
        )
    if loss is LossKind.CROSS_ENTROPY and labels.dim() != 1:
        raise ValueError(
            f"loss='cross_entropy' needs class labels of shape [B], got {tuple(labels.shape)}"
        )
    if loss is LossKind.MSE and not floating:
        raise ValueError(
            f"loss='mse' needs float targets of the outputs' shape, got dtype {labels.dtype}"
        )
    return loss


def check_targets(outputs: torch.Tensor, labels: torch.Tensor, loss: LossKind) -> None:
    """MSE targets must have the outputs' shape exactly (no silent broadcasting)."""
    if parse_loss(loss) is LossKind.MSE and labels.shape != outputs.shape:
        raise ValueError(
            f"loss='mse' needs targets of the outputs' shape {tuple(outputs.shape)},"
            f" got {tuple(labels.shape)}"
        )


def summed_loss(outputs: torch.Tensor, labels: torch.Tensor, loss: LossKind) -> torch.Tensor:
    """The per-sample loss summed over the batch (what the nested reference differentiates)."""
    check_targets(outputs, labels, loss)
    if parse_loss(loss) is LossKind.CROSS_ENTROPY:
        return F.cross_entropy(outputs, labels, reduction="sum")
    return F.mse_loss(outputs, labels, reduction="none").flatten(1).mean(dim=1).sum()
