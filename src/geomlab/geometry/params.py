"""Parameters, batches, outputs and the loss: the plumbing every geometry pass shares.

``LossKind`` names the likelihood (cross-entropy for integer labels, Gaussian MSE for float
targets); parameters are the model's ``requires_grad`` ones in ``named_parameters`` order, and
flat vectors follow that order everywhere in geomlab. Model outputs go through
:func:`geomlab.geometry.outputs.as_logits` under :func:`geomlab.geometry.attention.math_attention`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from geomlab.geometry.attention import math_attention
from geomlab.geometry.outputs import as_logits

__all__ = [
    "Batch", "LossKind", "as_batches", "flatten", "loss_and_gradient", "loss_value",
    "model_outputs", "trainable_parameters", "unflatten",
]  # fmt: skip


class LossKind(StrEnum):
    """The likelihood whose Fisher is taken.

    ``cross_entropy``: a classifier's logits ``f``, ``p = softmax(f)``; loss ``-log p_y``;
    output Hessian ``H = diag(p) - p p^T``; KL between two models = categorical KL.
    ``mse``: a regressor's outputs ``f`` as the mean of ``N(f, I)``; loss ``||f - y||^2 / 2``;
    ``H = I``; KL between two models = ``||f_1 - f_2||^2 / 2``. (``nn.MSELoss`` is this loss
    times ``2 / K``: the same directions, a rescaled Fisher.)

    For both the generalized Gauss-Newton ``(1/N) sum_i J_i^T H_i J_i`` *is* the Fisher.
    """

    CROSS_ENTROPY = "cross_entropy"
    MSE = "mse"


Batch = tuple[torch.Tensor, torch.Tensor]


def as_batches(data: Batch | Sequence[Batch], *, batch_size: int | None = None) -> list[Batch]:
    """``(inputs, targets)`` tensors cut into batches of ``batch_size`` (all in one batch when
    ``None``), or a sequence of ``(inputs, targets)`` batches passed through as a list."""
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        inputs, targets = data
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs ({inputs.shape[0]} samples) and targets ({targets.shape[0]}) differ"
            )
        size = inputs.shape[0] if batch_size is None else batch_size
        if size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        return list(zip(inputs.split(size), targets.split(size), strict=True))
    batches = list(data)
    if not batches:
        raise ValueError("no data: need at least one (inputs, targets) batch")
    return batches


def trainable_parameters(model: nn.Module) -> dict[str, torch.Tensor]:
    """The parameters the Fisher is taken over: every one with ``requires_grad``, in
    ``named_parameters`` order (the order of flattened vectors everywhere in geomlab)."""
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    if not params:
        raise ValueError("the model has no parameters with requires_grad=True")
    return params


def flatten(tensors: Iterable[torch.Tensor]) -> torch.Tensor:
    """Concatenate tensors into one flat vector."""
    return torch.cat([t.reshape(-1) for t in tensors])


def unflatten(vector: torch.Tensor, like: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Split a flat vector into tensors shaped like ``like`` (same names, same order)."""
    sizes = [t.numel() for t in like.values()]
    if vector.numel() != sum(sizes):
        raise ValueError(f"vector has {vector.numel()} entries, the parameters {sum(sizes)}")
    parts = vector.split(sizes)
    return {name: part.view_as(t) for (name, t), part in zip(like.items(), parts, strict=True)}


def model_outputs(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    batches: Sequence[Batch],
) -> torch.Tensor:
    """The model's outputs on every batch with the given parameters, ``(N, K)``, via
    ``torch.func.functional_call`` (the model's own parameters are left untouched)."""
    with torch.no_grad(), math_attention():
        return torch.cat(
            [as_logits(functional_call(model, dict(parameters), (x,))) for x, _ in batches]
        )


def loss_value(outputs: torch.Tensor, targets: torch.Tensor, *, loss: LossKind) -> torch.Tensor:
    """Mean negative log-likelihood: cross-entropy, or ``||f - y||^2 / 2`` (unit variance)."""
    if LossKind(loss) is LossKind.CROSS_ENTROPY:
        return F.cross_entropy(outputs, targets)
    return 0.5 * (outputs - targets).pow(2).sum(-1).mean()


def loss_and_gradient(
    model: nn.Module, data: Batch | Sequence[Batch], *, loss: LossKind
) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean loss over all data and its flat gradient over :func:`trainable_parameters`
    (batches weighted by their sizes)."""
    batches = as_batches(data)
    params = trainable_parameters(model)
    n_total = sum(int(x.shape[0]) for x, _ in batches)
    total_loss = torch.zeros((), dtype=next(iter(params.values())).dtype)
    gradient = None
    for inputs, targets in batches:
        with math_attention():
            outputs = as_logits(model(inputs))
        value = loss_value(outputs, targets, loss=loss) * (inputs.shape[0] / n_total)
        grads = torch.autograd.grad(value, list(params.values()))
        flat = flatten(grads)
        gradient = flat if gradient is None else gradient + flat
        total_loss = total_loss + value.detach().cpu()
    return total_loss, gradient
