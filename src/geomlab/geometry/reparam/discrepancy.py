"""How far a step taken in rescaled coordinates is from the reference step, in parameter and
function space, and Gate C (every rescaling describes the same model at the start)."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from geomlab.geometry.gates import GateResult
from geomlab.geometry.natural_gradient import categorical_kl, output_kl
from geomlab.geometry.params import Batch, LossKind, flatten, model_outputs, unflatten
from geomlab.models import softmax_regression as sr

__all__ = [
    "StepDiscrepancy", "centre_classes", "centred_logit_change", "gate_c_equivalence",
    "linear_logit_change", "max_abs_difference",
    "round_trip_logit_difference", "softmax_regression_step_discrepancy", "step_discrepancy",
]  # fmt: skip


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


def _discrepancy_from_logits(
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
    """The step discrepancy of bias-free softmax regression (theta = W flattened)."""
    n_features = inputs.shape[1]
    return _discrepancy_from_logits(
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


def step_discrepancy(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    delta: torch.Tensor,
    reference: torch.Tensor,
    batches: Sequence[Batch],
    *,
    loss: LossKind,
    outputs_start: torch.Tensor,
) -> StepDiscrepancy:
    """How far ``delta`` is from ``reference`` (:class:`StepDiscrepancy`) for any model:
    outputs at ``theta + delta`` and ``theta + reference`` through
    ``torch.func.functional_call``; the output change is
    ``f(theta + delta) - f(theta)`` (centred over classes for ``cross_entropy``, where a
    class-uniform shift changes no prediction); the KL is the likelihood's
    (:func:`~geomlab.geometry.natural_gradient.output_kl`)."""
    theta = flatten(parameters.values())
    after = model_outputs(model, unflatten(theta + delta, parameters), batches)
    after_ref = model_outputs(model, unflatten(theta + reference, parameters), batches)
    change, change_ref = after - outputs_start, after_ref - outputs_start
    if LossKind(loss) is LossKind.MSE:  # no class-uniform invariance: compare raw changes
        centred_delta = max_abs_difference(change, change_ref)
    else:
        centred_delta = max_abs_difference(centre_classes(change), centre_classes(change_ref))
    return StepDiscrepancy(
        max_diff=max_abs_difference(delta, reference),
        rel_diff=float((delta - reference).norm() / reference.norm()),
        logit_diff=centred_delta,
        logit_diff_raw=max_abs_difference(change, change_ref),
        kl_between_steps=float(output_kl(after_ref, after, loss=loss)),
        step_norm=float(delta.norm()),
    )
