"""The KL between two models and the step size that makes its second-order model a target.

A step ``theta - eta v`` changes the model's predictive distribution by
``KL ~ eta^2 v^T F v / 2`` to second order, so ``eta = sqrt(2 eps / v^T F v)`` makes that
second-order KL exactly ``eps``; the measured KL(p_before || p_after) then tends to ``eps`` as
``eps -> 0`` (relative error O(sqrt(eps)) from the third-order term).
"""

from __future__ import annotations

from enum import StrEnum

import torch

from geomlab.geometry.curvature import NonFiniteOutputError
from geomlab.geometry.params import LossKind

__all__ = [
    "KLMeasurement", "categorical_kl", "fisher_curvature", "notebook_self_kl", "output_kl",
    "second_order_kl", "step_size_for_kl",
]  # fmt: skip


class KLMeasurement(StrEnum):
    """How E1 measures a step's KL: ``exact`` = KL(p_before || p_after); ``notebook`` = the
    notebook's defective post-step self-KL (kept only to reproduce its numbers)."""

    EXACT = "exact"
    NOTEBOOK = "notebook"


def fisher_curvature(fisher, direction: torch.Tensor) -> torch.Tensor:
    """``v^T F v`` with the exact, undamped Fisher: any operator with ``F @ v`` (a
    :class:`~geomlab.geometry.curvature.FisherOperator`, a dense tensor)."""
    return direction @ (fisher @ direction)


def step_size_for_kl(curvature: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """Step size(s) whose second-order KL equals ``epsilon``: ``eta = sqrt(2 eps / v^T F v)``
    from the curvature ``v^T F v`` (:func:`fisher_curvature`).

    Returns:
        ``eta`` with the shape of ``epsilon``, on the curvature's device and dtype.

    Raises:
        NonFiniteOutputError: the curvature is NaN/inf.
        ValueError: when ``v^T F v <= 0`` (a null-space direction moves no prediction).
    """
    if not torch.isfinite(curvature).all():
        raise NonFiniteOutputError(
            f"the Fisher curvature v^T F v = {float(curvature)} is not finite: the model's "
            "outputs, its gradient, the Fisher or the step direction contain NaN/inf"
        )
    if not float(curvature) > 0:
        raise ValueError(f"direction has non-positive Fisher curvature v^T F v = {curvature}")
    target = torch.as_tensor(epsilon, dtype=curvature.dtype, device=curvature.device)
    return torch.sqrt(2 * target / curvature)


def second_order_kl(direction: torch.Tensor, fisher, eta: torch.Tensor):
    """Quadratic model of the KL for a step ``-eta * v``: ``eta^2 v^T F v / 2``."""
    return eta**2 * fisher_curvature(fisher, direction) / 2


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Mean over samples of KL(softmax(p) || softmax(q)), computed with log-softmax.

    ``KL = mean_i sum_c p_ic (log p_ic - log q_ic)``; the last dim is the classes, the one before
    it the samples (leading dims are batch dims of the result). No ``1e-10`` guards needed.
    """
    log_p = torch.log_softmax(logits_p, dim=-1)
    log_q = torch.log_softmax(logits_q, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)


def notebook_self_kl(logits_after: torch.Tensor) -> torch.Tensor:
    """The E1 notebook's 'measured KL': both distributions taken *after* the step (its defect),
    ``-mean_i sum_c p_ic log(p_ic / (p_ic + 1e-10) + 1e-10)``, ~1e-9 whatever the step. Kept
    only to reproduce the notebook's numbers."""
    probs = torch.softmax(logits_after, dim=-1)
    return -(probs * torch.log(probs / (probs + 1e-10) + 1e-10)).sum(-1).mean(-1)


def output_kl(before: torch.Tensor, after: torch.Tensor, *, loss: LossKind) -> torch.Tensor:
    """Mean over samples of KL(p_before || p_after) between two models' output distributions:
    categorical (``cross_entropy``) or ``||f_b - f_a||^2 / 2`` (``mse``, unit variance)."""
    if LossKind(loss) is LossKind.CROSS_ENTROPY:
        return categorical_kl(before, after)
    return 0.5 * (before - after).pow(2).sum(-1).mean(-1)
