"""The Fisher of any ``nn.Module`` from ``torch.func``, independent of curvlinops: the dense
``J^T H J`` (the reference tests compare with, and the fast way to form a small dense Fisher)
and Fisher-vector products by ``jvp``/``vjp`` (the self-check's reference).

``F = (1/N) sum_i J_i^T H_i J_i`` with ``J_i = d f(x_i) / d theta`` (``K x P``) and the output
Hessian ``H_i`` of :class:`~geomlab.geometry.params.LossKind` (``diag(p) - p p^T`` for
cross-entropy, ``I`` for MSE). This equals curvlinops' GGN after :func:`ggn_scale`.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from geomlab.geometry.attention import math_attention
from geomlab.geometry.curvature.errors import ProgressCallback, UnsupportedShapeError
from geomlab.geometry.outputs import as_logits
from geomlab.geometry.params import (
    Batch,
    LossKind,
    as_batches,
    flatten,
    trainable_parameters,
    unflatten,
)

__all__ = [
    "check_targets", "dense_fisher_reference", "fisher_product_reference", "ggn_scale",
    "jacobian_fisher", "output_hessian_loss",
]  # fmt: skip

COLUMN_BLOCK = 256
"""Columns of the dense Fisher formed (and reported to ``progress``) at a time."""


def output_hessian_loss(loss: LossKind) -> nn.Module:
    """The curvlinops loss whose GGN, after :func:`ggn_scale`, is the Fisher."""
    if loss is LossKind.CROSS_ENTROPY:
        return nn.CrossEntropyLoss(reduction="mean")
    return nn.MSELoss(reduction="sum")  # Hessian 2 I per sample, scaled by 1 / (2 N) below


def ggn_scale(loss: LossKind, num_data: int) -> float:
    """The factor that turns curvlinops' GGN of :func:`output_hessian_loss` into the Fisher."""
    return 1.0 if loss is LossKind.CROSS_ENTROPY else 1.0 / (2 * num_data)


def check_targets(outputs: torch.Tensor, targets: torch.Tensor, loss: LossKind) -> None:
    """Raise :class:`UnsupportedShapeError` when outputs/targets do not fit ``loss``."""
    if outputs.ndim != 2:
        raise UnsupportedShapeError(
            f"the model's outputs must be (batch, outputs), got {tuple(outputs.shape)}"
        )
    if loss is LossKind.CROSS_ENTROPY and (targets.ndim != 1 or targets.is_floating_point()):
        raise UnsupportedShapeError(
            f"cross_entropy needs integer class labels of shape (batch,), got "
            f"{targets.dtype} {tuple(targets.shape)}"
        )
    if loss is LossKind.MSE and targets.shape != outputs.shape:
        raise UnsupportedShapeError(
            f"mse needs targets shaped like the outputs {tuple(outputs.shape)}, got "
            f"{tuple(targets.shape)}"
        )


def dense_fisher_reference(
    model: nn.Module, data: Batch | Sequence[Batch], *, loss: LossKind
) -> torch.Tensor:
    """Reference: the dense Fisher ``F = (1/N) sum_i J_i^T H_i J_i`` in float64 via torch.func.

    ``J_i`` from ``torch.func.jacrev`` of ``torch.func.functional_call`` on a float64 copy of
    the model, in its current train/eval mode (:func:`jacobian_fisher`). Memory ``N K P``:
    for tests and small models.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to ``(batch, K)`` outputs.
        data: ``(inputs, targets)`` or a sequence of such batches.
        loss: which likelihood.

    Returns:
        ``(P, P)`` float64 Fisher over :func:`~geomlab.geometry.params.trainable_parameters`.
    """
    reference = copy.deepcopy(model).to(torch.float64)
    batches = [
        (x.to(torch.float64) if x.is_floating_point() else x, y) for x, y in as_batches(data)
    ]
    return jacobian_fisher(reference, batches, loss=loss)


def jacobian_fisher(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    *,
    loss: LossKind,
    progress: ProgressCallback | None = None,
) -> torch.Tensor:
    """The dense Fisher ``(1/N) sum_i J_i^T H_i J_i`` of ``model`` as it is (its dtype, its
    train/eval mode, its device), from one ``torch.func`` Jacobian per batch.

    The Jacobians ``J`` and ``H J`` of all batches are kept (memory ``2 N K P``) and ``F`` is
    formed in blocks of :data:`COLUMN_BLOCK` columns, ``progress("Fisher columns", done, P,
    "")`` after each block.

    Returns:
        ``(P, P)`` exactly symmetric Fisher over the trainable parameters.
    """
    loss = LossKind(loss)
    with math_attention():
        params = {n: p.detach() for n, p in trainable_parameters(model).items()}
        factors, n_total = [], 0
        for inputs, targets in as_batches(data):
            f, jac = _jacobian(model, params, inputs, targets, loss)
            J = torch.cat([j.reshape(f.shape[0], f.shape[1], -1) for j in jac], dim=2)  # (B,K,P)
            if loss is LossKind.CROSS_ENTROPY:
                p = torch.softmax(f, dim=1)
                H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
                HJ = torch.bmm(H, J)  # (B, K, P); never a (B, K, P, P) intermediate
            else:
                HJ = J
            factors.append((J.reshape(-1, J.shape[2]), HJ.reshape(-1, J.shape[2])))
            n_total += f.shape[0]
    dim = factors[0][0].shape[1]
    columns, done = [], 0
    for start in range(0, dim, COLUMN_BLOCK):
        block = slice(start, min(start + COLUMN_BLOCK, dim))
        total = sum(J.T @ HJ[:, block] for J, HJ in factors)
        columns.append(total / n_total)
        done = block.stop
        if progress is not None:
            progress("Fisher columns", done, dim, "")
    dense = torch.cat(columns, dim=1)
    return (dense + dense.T) / 2


def _jacobian(
    model: nn.Module,
    params: dict[str, torch.Tensor],
    inputs: torch.Tensor,
    targets: torch.Tensor,
    loss: LossKind,
) -> tuple[torch.Tensor, tuple[torch.Tensor, ...]]:
    """The outputs ``f`` (B, K), checked against ``targets``, and each parameter's Jacobian
    (B, K, *shape).

    With every module in eval mode the samples are independent, so the Jacobian is taken per
    sample (``vmap`` of ``jacrev``: B K single-sample backward passes); a model with a module in
    train mode (batch statistics couple the samples), or one ``vmap`` cannot trace, takes the
    Jacobian of the whole batch's outputs (B K full-batch backward passes, exact for any model).
    """
    names = list(params)
    argnums = tuple(range(len(names)))

    def outputs(*values, x=inputs):
        return as_logits(functional_call(model, dict(zip(names, values, strict=True)), (x,)))

    f = outputs(*params.values())
    check_targets(f, targets, loss)
    if not any(m.training for m in model.modules()):

        def single(x_i):
            return jacrev(lambda *values: outputs(*values, x=x_i[None])[0], argnums=argnums)(
                *params.values()
            )

        try:
            return f, vmap(single)(inputs)
        except Exception:  # an op vmap cannot batch: the whole-batch Jacobian below is exact
            pass
    return f, jacrev(outputs, argnums=argnums)(*params.values())


def fisher_product_reference(
    model: nn.Module, inputs: torch.Tensor, vectors: torch.Tensor, *, loss: LossKind
) -> torch.Tensor:
    """Reference for ``F V`` on one batch, independent of curvlinops: per column
    ``(1/N) J^T H (J v)`` with ``J v`` from ``torch.func.jvp``, the output Hessian ``H`` of
    :class:`LossKind` applied in closed form, and ``J^T`` from ``torch.func.vjp``.

    Args:
        model: the network (its own dtype; call on a float64 copy for a reference).
        inputs: one batch of inputs.
        vectors: ``(P,)`` or ``(P, k)`` in :func:`trainable_parameters` order.
        loss: which likelihood.

    Returns:
        ``F V`` with the shape of ``vectors``.
    """
    loss = LossKind(loss)
    params = {n: p.detach() for n, p in trainable_parameters(model).items()}
    names = list(params)

    def outputs(*values):
        return as_logits(functional_call(model, dict(zip(names, values, strict=True)), (inputs,)))

    primals = tuple(params.values())
    columns = vectors[:, None] if vectors.ndim == 1 else vectors
    results = []
    with math_attention():
        f, vjp_fn = torch.func.vjp(outputs, *primals)
        for column in columns.T:
            tangents = tuple(unflatten(column, params).values())
            _, jv = torch.func.jvp(outputs, primals, tangents)
            if loss is LossKind.CROSS_ENTROPY:
                p = torch.softmax(f, dim=1)
                hjv = p * (jv - (p * jv).sum(1, keepdim=True))
            else:
                hjv = jv
            results.append(flatten(vjp_fn(hjv / f.shape[0])))
    product = torch.stack(results, dim=1)
    return product[:, 0] if vectors.ndim == 1 else product
