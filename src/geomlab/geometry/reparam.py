"""Coordinate rescalings theta = S * phi and how one optimizer step transforms under them.

In coordinates phi with theta = diag(S) phi, the gradient is S * g and the Fisher is
diag(S) F diag(S). A step taken in phi and mapped back is S * delta_phi. SGD's step becomes
-eta S^2 g (coordinate dependent); the natural-gradient step S (S F S)^+ S g equals F^+ g up
to a component in the Fisher null space, which does not change the model's predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from geomlab.geometry.gates import GateResult
from geomlab.geometry.natural_gradient import StepMethod, categorical_kl, symmetric_pseudo_inverse
from geomlab.models import softmax_regression as sr

Method = StepMethod


def two_block_scaling(
    kappa: float, n_classes: int, n_features: int, *, dtype=torch.float64, device=None
) -> torch.Tensor:
    """The E3 notebook's family: features [0, D/2) scaled by sqrt(kappa), the rest by
    1/sqrt(kappa), the same for every class (parameter index c * D + d)."""
    per_feature = torch.full((n_features,), 1 / math.sqrt(kappa), dtype=dtype, device=device)
    per_feature[: n_features // 2] = math.sqrt(kappa)
    return per_feature.repeat(n_classes)


def log_uniform_pattern(size: int, *, seed: int) -> torch.Tensor:
    """A seeded pattern in [-1/2, 1/2] whose extremes are exactly -1/2 and 1/2."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(size, dtype=torch.float64, generator=generator)
    return (u - u.min()) / (u.max() - u.min()) - 0.5


def log_uniform_scaling(kappa: float, pattern: torch.Tensor) -> torch.Tensor:
    """Per-coordinate scales exp(pattern * log kappa): log-uniform, max/min exactly kappa."""
    return torch.exp(pattern * math.log(kappa))


def transform_gradient(gradient: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """The gradient in phi coordinates (theta = S * phi): ``S * g``."""
    return scale * gradient


def transform_fisher(fisher: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """diag(S) F diag(S) by broadcasting (no dense diagonal matrices), kept exactly symmetric."""
    transformed = scale[:, None] * fisher * scale[None, :]
    return (transformed + transformed.T) / 2


def transform_fisher_reference(fisher: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference: the literal matrix product diag(S) @ F @ diag(S)."""
    diag = torch.diag(scale)
    return diag @ fisher @ diag


def rescaled_step(
    gradient: torch.Tensor,
    fisher: torch.Tensor,
    scale: torch.Tensor,
    *,
    method: Method,
    eta: float,
    rcond: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of size ``eta`` taken in phi coordinates, returned in theta coordinates.

    Returns ``(delta_theta, F_phi)``.
    """
    if method not in (StepMethod.SGD, StepMethod.NATGRAD):
        raise ValueError(f"method must be 'sgd' or 'natgrad', got {method!r}")
    method = StepMethod(method)
    grad_phi = transform_gradient(gradient, scale)
    fisher_phi = transform_fisher(fisher, scale)
    if method is StepMethod.SGD:
        delta_phi = -eta * grad_phi
    else:
        delta_phi = -eta * symmetric_pseudo_inverse(fisher_phi, rcond=rcond).apply(grad_phi)
    return scale * delta_phi, fisher_phi


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    """``max |a - b|`` as a float."""
    return float((a - b).abs().max())


def linear_logit_change(
    delta_theta: torch.Tensor, inputs: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """How a step changes the logits of softmax regression: ``X delta_W^T``, ``(N, C)``."""
    return inputs @ delta_theta.reshape(n_classes, -1).T


def centre_classes(logit_change: torch.Tensor) -> torch.Tensor:
    """A logit change minus its class mean: the part softmax can see (a class-uniform shift
    changes no prediction)."""
    return logit_change - logit_change.mean(dim=1, keepdim=True)


def centred_logit_change(
    delta_theta: torch.Tensor, inputs: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """How a step changes each sample's logits of softmax regression, minus the class mean."""
    return centre_classes(linear_logit_change(delta_theta, inputs, n_classes))


@dataclass(frozen=True)
class StepDiscrepancy:
    """How far a step ``delta`` taken in rescaled coordinates is from the reference step.

    Parameter space: ``max_diff = max|delta - ref|``, ``rel_diff = ||delta - ref|| / ||ref||``.
    Function space: ``logit_diff = max|centre(dz) - centre(dz_ref)|`` (dz = the step's logit
    change; centring removes class-uniform shifts), ``logit_diff_raw`` the same uncentred,
    ``kl_between_steps = mean KL(p(theta + ref) || p(theta + delta))``.
    ``step_norm = ||delta||``.
    """

    max_diff: float
    rel_diff: float
    logit_diff: float
    logit_diff_raw: float
    kl_between_steps: float
    step_norm: float


def step_discrepancy(
    delta: torch.Tensor,
    reference: torch.Tensor,
    *,
    logits_start: torch.Tensor,
    logits_after: torch.Tensor,
    logits_after_reference: torch.Tensor,
    logit_change: torch.Tensor,
    logit_change_reference: torch.Tensor,
) -> StepDiscrepancy:
    """Parameter- and function-space discrepancy of a step against the reference step.

    Args:
        delta, reference: ``(P,)`` the two steps in theta coordinates.
        logits_start: ``(N, C)`` logits at theta.
        logits_after, logits_after_reference: logits at ``theta + delta`` / ``theta + ref``.
        logit_change, logit_change_reference: each step's change of the logits (for a model
            linear in its parameters, ``J delta`` exactly; otherwise ``after - start``).

    Returns:
        :class:`StepDiscrepancy` (formulas there).
    """
    raw = (logits_after - logits_start) - (logits_after_reference - logits_start)
    return StepDiscrepancy(
        max_diff=max_abs_difference(delta, reference),
        rel_diff=float((delta - reference).norm() / reference.norm()),
        logit_diff=max_abs_difference(
            centre_classes(logit_change), centre_classes(logit_change_reference)
        ),
        logit_diff_raw=float(raw.abs().max()),
        kl_between_steps=float(categorical_kl(logits_after_reference, logits_after)),
        step_norm=float(delta.norm()),
    )


def softmax_regression_step_discrepancy(
    delta: torch.Tensor,
    reference: torch.Tensor,
    *,
    theta: torch.Tensor,
    inputs: torch.Tensor,
    n_classes: int,
    logits_start: torch.Tensor,
) -> StepDiscrepancy:
    """:func:`step_discrepancy` for bias-free softmax regression (theta = W flattened)."""
    n_features = inputs.shape[1]
    return step_discrepancy(
        delta,
        reference,
        logits_start=logits_start,
        logits_after=sr.logits((theta + delta).reshape(n_classes, n_features), inputs),
        logits_after_reference=sr.logits(
            (theta + reference).reshape(n_classes, n_features), inputs
        ),
        logit_change=linear_logit_change(delta, inputs, n_classes),
        logit_change_reference=linear_logit_change(reference, inputs, n_classes),
    )


def round_trip_logit_difference(
    theta: torch.Tensor,
    scale: torch.Tensor,
    logits_fn: Callable[[torch.Tensor], torch.Tensor],
    logits_start: torch.Tensor,
) -> float:
    """Gate C's number: the model written in ``phi = theta / S`` and mapped back,
    ``max |f(S * (theta / S)) - f(theta)|`` over samples and classes."""
    phi = theta / scale
    return float((logits_fn(scale * phi) - logits_start).abs().max())


def gate_c_equivalence(worst: float, *, tol: float, scope: str = "") -> GateResult:
    """Gate C: every rescaling describes the same model at the start (max round-trip logit
    difference ``worst`` <= ``tol``)."""
    passed = worst <= tol
    return GateResult(
        name="gate_c_equivalence",
        passed=passed,
        scope=scope,
        message=f"{'PASS' if passed else 'FAIL'}: max |logit difference| at start "
        f"{worst:.2e} (tolerance {tol:.0e})",
        details={"max_logit_diff": worst},
    )
