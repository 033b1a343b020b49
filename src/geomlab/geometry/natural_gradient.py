"""Natural-gradient directions, KL-matched step sizes and the KL between two models.

Notation: ``g`` the loss gradient, ``F`` the Fisher, ``v`` a step direction (``g`` for SGD,
``F^+ g`` for the natural gradient). A step ``theta - eta v`` changes the model's predictive
distribution by ``KL ~ eta^2 v^T F v / 2`` to second order, so ``eta = sqrt(2 eps / v^T F v)``
makes that second-order KL exactly ``eps``; the measured KL(p_before || p_after) then tends to
``eps`` as ``eps -> 0`` (relative error O(sqrt(eps)) from the third-order term).
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F

from geomlab.geometry import linalg
from geomlab.geometry.curvature import softmax_regression_fisher
from geomlab.models import softmax_regression as sr


class KLMeasurement(StrEnum):
    """How E1 measures a step's KL: ``exact`` = KL(p_before || p_after); ``notebook`` = the
    notebook's defective post-step self-KL (kept only to reproduce its numbers)."""

    EXACT = "exact"
    NOTEBOOK = "notebook"


class StepMethod(StrEnum):
    """Step directions: ``sgd`` = the gradient, ``natgrad`` = the natural gradient."""

    SGD = "sgd"
    NATGRAD = "natgrad"


@dataclass(frozen=True)
class SymmetricPseudoInverse:
    """Eigen-decomposition of a PSD matrix kept once and applied as ``A^+ v`` many times."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    inverse_eigenvalues: torch.Tensor
    rank: int
    cutoff: float

    def apply(self, vector: torch.Tensor) -> torch.Tensor:
        """``A^+ v = V diag(1/w kept) V^T v``."""
        coords = self.eigenvectors.T @ vector
        return self.eigenvectors @ (self.inverse_eigenvalues * coords)

    def matrix(self) -> torch.Tensor:
        """The dense pseudo-inverse ``V diag(1/w kept) V^T``."""
        return (self.eigenvectors * self.inverse_eigenvalues) @ self.eigenvectors.T


def symmetric_pseudo_inverse(matrix: torch.Tensor, *, rcond: float) -> SymmetricPseudoInverse:
    """PSD pseudo-inverse by one symmetric eigendecomposition.

    ``A^+ = sum_{w_k > rcond * max|w|} v_k v_k^T / w_k``: eigenvalues at or below the relative
    cutoff count as zero (their directions are the numerical null space).

    Args:
        matrix: ``(n, n)`` symmetric PSD (symmetrized as ``(A + A^T)/2`` first).
        rcond: relative eigenvalue cutoff, >= 0.

    Returns:
        :class:`SymmetricPseudoInverse` with the eigenpairs, kept rank and absolute cutoff.
    """
    if rcond < 0:
        raise ValueError(f"rcond must be >= 0, got {rcond}")
    eigenvalues, eigenvectors = linalg.eigh((matrix + matrix.T) / 2)
    cutoff = rcond * float(eigenvalues.abs().max())
    keep = eigenvalues > cutoff
    inverse = torch.where(keep, 1.0 / torch.where(keep, eigenvalues, 1.0), 0.0)
    return SymmetricPseudoInverse(eigenvalues, eigenvectors, inverse, int(keep.sum()), cutoff)


def kl_matched_step_size(
    direction: torch.Tensor, fisher: torch.Tensor, epsilon: float | torch.Tensor
) -> torch.Tensor:
    """Step size(s) whose second-order KL equals ``epsilon``: ``eta = sqrt(2 eps / v^T F v)``.

    Args:
        direction: ``(P,)`` step direction ``v``.
        fisher: ``(P, P)`` Fisher ``F``.
        epsilon: target KL(s), scalar or ``(E,)``.

    Returns:
        ``eta`` with the shape of ``epsilon``.

    Raises:
        ValueError: when ``v^T F v <= 0`` (a null-space direction moves no prediction).
    """
    curvature = direction @ (fisher @ direction)
    if float(curvature) <= 0:
        raise ValueError(f"direction has non-positive Fisher curvature d^T F d = {curvature}")
    return torch.sqrt(
        2 * torch.as_tensor(epsilon, dtype=fisher.dtype, device=fisher.device) / curvature
    )


def second_order_kl(direction: torch.Tensor, fisher: torch.Tensor, eta: torch.Tensor):
    """Quadratic model of the KL for a step ``-eta * v``: ``eta^2 v^T F v / 2``."""
    return eta**2 * (direction @ (fisher @ direction)) / 2


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


@dataclass(frozen=True)
class MatchedSteps:
    """One direction taken at every target KL: step sizes, losses and measured KLs, ``(E,)``."""

    method: StepMethod
    direction: torch.Tensor
    eta: torch.Tensor
    loss_after: torch.Tensor
    kl_step: torch.Tensor


@dataclass(frozen=True)
class KLMatchedStepPair:
    """E1's SGD and natural-gradient steps from one weight, at the same target KLs."""

    epsilons: torch.Tensor
    loss_before: torch.Tensor
    gradient: torch.Tensor
    pseudo_inverse: SymmetricPseudoInverse
    cos_g_v: float
    steps: tuple[MatchedSteps, ...]

    def records(self) -> list[dict[str, Any]]:
        """One dict per (method, epsilon): the E1 raw-table columns (seed excluded)."""
        rows: list[dict[str, Any]] = []
        loss_before, gradient = self.loss_before, self.gradient
        for step in self.steps:
            for i, eps in enumerate(self.epsilons.tolist()):
                rows.append(
                    {
                        "epsilon": eps,
                        "method": step.method.value,
                        "loss_before": float(loss_before),
                        "loss_after": float(step.loss_after[i]),
                        "delta_loss": float(loss_before - step.loss_after[i]),
                        "kl_step": float(step.kl_step[i]),
                        "kl_target": eps,
                        "kl_ratio": float(step.kl_step[i]) / eps,
                        "eta": float(step.eta[i]),
                        "grad_norm": float(gradient.norm()),
                        "direction_norm": float(step.direction.norm()),
                        "cos_g_v": self.cos_g_v
                        if step.method is StepMethod.NATGRAD
                        else float("nan"),
                    }
                )
        return rows


def kl_matched_steps(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epsilons: torch.Tensor,
    *,
    rcond: float,
    kl_measurement: KLMeasurement = KLMeasurement.EXACT,
) -> KLMatchedStepPair:
    """SGD and NG steps of bias-free softmax regression at every target KL (E1's step pair).

    From ``W``: ``g = grad L(W)``, ``F`` = the exact softmax-regression Fisher, ``v = F^+ g``
    (one eigendecomposition, shared by all targets). For ``d`` in ``(g, v)`` and each ``eps``:
    ``eta = sqrt(2 eps / d^T F d)``, ``W' = W - eta d``, the loss at ``W'`` and the measured
    KL(p(W) || p(W')) (or the notebook's self-KL, see :class:`KLMeasurement`).

    Args:
        weight: ``(C, D)`` weights.
        inputs: ``(N, D)``; labels: ``(N,)`` class indices.
        epsilons: ``(E,)`` target KLs > 0.
        rcond: relative eigenvalue cutoff of ``F^+``.
        kl_measurement: which KL to record.

    Returns:
        :class:`KLMatchedStepPair` (``.records()`` gives E1's raw-table rows; the Fisher's
        eigenvalues, for Gate A, are ``.pseudo_inverse.eigenvalues``).
    """
    kl_measurement = KLMeasurement(kl_measurement)
    n_classes, n_features = weight.shape
    loss_before, gradient, probs = sr.loss_and_gradient(weight, inputs, labels)
    fisher = softmax_regression_fisher(probs, inputs)
    pinv = symmetric_pseudo_inverse(fisher, rcond=rcond)
    natural = pinv.apply(gradient)
    cos_g_v = float(gradient @ natural / (gradient.norm() * natural.norm()))
    logits_before = sr.logits(weight, inputs)

    steps = []
    for method, direction in ((StepMethod.SGD, gradient), (StepMethod.NATGRAD, natural)):
        eta = kl_matched_step_size(direction, fisher, epsilons)  # (E,)
        weights_after = weight - eta[:, None, None] * direction.reshape(n_classes, n_features)
        logits_after = sr.logits(weights_after, inputs)  # (E, N, C)
        losses_after = torch.stack([F.cross_entropy(z, labels) for z in logits_after])
        if kl_measurement is KLMeasurement.EXACT:
            kl_step = categorical_kl(logits_before, logits_after)
        else:
            kl_step = notebook_self_kl(logits_after)
        steps.append(MatchedSteps(method, direction, eta, losses_after, kl_step))
    return KLMatchedStepPair(epsilons, loss_before, gradient, pinv, cos_g_v, tuple(steps))
