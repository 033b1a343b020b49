"""The reference: directional input derivatives by repeated reverse-mode autograd.

``d_{n+1} = ∇_x d_n · u``, one forward pass per direction; any differentiable model, one extra
backward graph per order. LayerNorm runs from its primitives and train-mode batch statistics are
held constant along the direction (:mod:`geomlab.geometry.derivatives.batch_statistics`).
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.derivatives.batch_statistics import (
    BatchStatistics,
    PrimitiveLayerNorm,
    has_training_modules,
)
from geomlab.geometry.derivatives.directions import check_shapes
from geomlab.geometry.derivatives.eligibility import rng_devices
from geomlab.geometry.derivatives.losses import resolve_loss, summed_loss
from geomlab.geometry.outputs import as_logits
from geomlab.geometry.params import LossKind
from geomlab.models.modes import isolated_buffers

__all__ = ["capture_batch_statistics", "nested_directional_derivatives", "substituted"]


def nested_directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    create_graph: bool = False,
    batch_statistics: BatchStatistics | None = None,
    loss: LossKind = LossKind.CROSS_ENTROPY,
) -> torch.Tensor:
    """Reference ``d_n`` for n = 1..max_order by repeated input gradients.

    ``loss``: cross-entropy on integer ``labels`` ``[B]``, or ``"mse"``, the per-sample mean
    squared error against float ``labels`` of the outputs' shape (see :func:`resolve_loss`;
    float labels with cross-entropy are an error, not a soft-label cross-entropy). An output
    that is not a tensor goes through :func:`~geomlab.geometry.outputs.as_logits`; attention
    runs in its math form (:func:`~geomlab.geometry.attention.math_attention`).

    ``directions`` has shape ``[K, *inputs.shape]``; each direction gets its own forward pass
    (so in train mode each gets its own dropout mask, as in the notebook). Returns
    ``[max_order, K, B]``. With ``create_graph`` the result is differentiable in the parameters.

    LayerNorm runs from its primitives (torch's fused op is wrong from order 3 on under nested
    autograd). BatchNorm (see :mod:`geomlab.geometry.derivatives.batch_statistics`): the passes
    never change the model's buffers, and train-mode batch statistics are held constant along the
    direction: those captured in ``batch_statistics`` (e.g. from the training step's own forward
    pass) or, if None and some submodule is in train mode, from one extra pass on ``inputs`` (under
    a forked RNG, so the caller's random stream is unchanged).
    """
    check_shapes(inputs, labels, directions, max_order)
    loss = resolve_loss(loss, labels)
    if batch_statistics is None and has_training_modules(model):
        batch_statistics = capture_batch_statistics(model, inputs, differentiable=create_graph)
    per_direction = []
    for direction in directions:
        x = inputs.detach().clone().requires_grad_(True)
        with (
            torch.enable_grad(),
            math_attention(),
            isolated_buffers(model),
            substituted(batch_statistics),
            PrimitiveLayerNorm(),
        ):
            scalar = summed_loss(as_logits(model(x)), labels, loss)
            orders = []
            for n in range(1, max_order + 1):
                keep_graph = create_graph or n < max_order
                if scalar.requires_grad:
                    (grad_x,) = torch.autograd.grad(
                        scalar, x, create_graph=keep_graph, allow_unused=True
                    )
                else:  # d_{n-1} is constant in x (e.g. MSE of a linear output): d_n = 0
                    grad_x = None
                if grad_x is None:
                    grad_x = torch.zeros_like(x)
                d_n = (grad_x * direction).flatten(1).sum(dim=1)
                orders.append(d_n)
                scalar = d_n.sum()
        per_direction.append(torch.stack(orders))
    result = torch.stack(per_direction, dim=1)
    return result if create_graph else result.detach()


def capture_batch_statistics(
    model: nn.Module, inputs: torch.Tensor, *, differentiable: bool
) -> BatchStatistics:
    """Train-mode batch statistics of one pass on ``inputs`` (forked RNG, buffers untouched);
    ``differentiable``: keep their graph to the parameters."""
    statistics = BatchStatistics()
    with (
        torch.random.fork_rng(devices=rng_devices(inputs)),
        torch.set_grad_enabled(differentiable),
        math_attention(),
        isolated_buffers(model),
        statistics.capturing(),
    ):
        model(inputs.detach())
    return statistics


def substituted(batch_statistics: BatchStatistics | None):
    if batch_statistics is None or not batch_statistics.moments:
        return contextlib.nullcontext()
    return batch_statistics.substituting()
