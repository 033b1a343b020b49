"""The invariance protocol, one loop for any model: take a step of every method in the
original coordinates (the reference) and in each rescaled coordinate system, map it back, and
measure how far it moved in parameter and function space; Gate A (the Fisher is PSD in every
coordinate system, where it is formed) and Gate C (every rescaling is the same model at the
start) alongside.

What differs between models is an :class:`InvarianceCase`: its Fisher, scaling families, outputs
and discrepancy. :func:`softmax_regression_case` is the notebook's exact computation (analytic
Fisher, the linear logit change); :func:`model_case` any ``nn.Module`` (curvlinops Fisher,
per-parameter scalings, outputs through ``functional_call``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn

from geomlab.geometry.curvature import (
    FisherOperator,
    ProgressCallback,
    check_finite,
    softmax_regression_fisher,
)
from geomlab.geometry.gates import GateResult, psd_gate, psd_tolerance
from geomlab.geometry.natural_gradient import SolveSpec, StepMethod
from geomlab.geometry.params import (
    Batch,
    LossKind,
    flatten,
    loss_and_gradient,
    model_outputs,
    trainable_parameters,
    unflatten,
)
from geomlab.geometry.reparam.discrepancy import (
    StepDiscrepancy,
    gate_c_equivalence,
    round_trip_logit_difference,
    softmax_regression_step_discrepancy,
    step_discrepancy,
)
from geomlab.geometry.reparam.scaling import (
    Scaling,
    log_uniform_parameter_scales,
    log_uniform_pattern,
    log_uniform_scaling,
    parameter_scale_vector,
    transform_fisher,
    two_block_parameter_scales,
    two_block_scaling,
)
from geomlab.geometry.reparam.steps import SolveCutoff, rescaled_step
from geomlab.models import softmax_regression as sr

__all__ = [
    "INVARIANCE_METHODS", "InvarianceCase", "InvarianceResult", "invariance",
    "model_case", "softmax_regression_case",
]  # fmt: skip

INVARIANCE_METHODS = (StepMethod.SGD, StepMethod.NATGRAD)


@dataclass(frozen=True)
class InvarianceCase:
    """One model at its weights, as the protocol needs it.

    ``fisher``: anything with ``F @ v`` (a dense tensor or a ``FisherOperator``);
    ``fisher_matrix``: the dense Fisher when it is formed (Gate A and dense solves), else None;
    ``outputs(theta)``: the model's outputs at flat parameters ``theta``;
    ``scale(scaling, kappa)``: the ``(P,)`` scale vector of a family;
    ``discrepancy(delta, reference)``: :class:`StepDiscrepancy` of two steps.
    """

    theta: torch.Tensor
    gradient: torch.Tensor
    fisher: Any
    fisher_matrix: torch.Tensor | None
    outputs_start: torch.Tensor
    outputs: Callable[[torch.Tensor], torch.Tensor]
    scale: Callable[[Scaling, float], torch.Tensor]
    discrepancy: Callable[[torch.Tensor, torch.Tensor], StepDiscrepancy]


@dataclass
class InvarianceResult:
    """Rows (one per scaling, kappa != 1, method: discrepancy and cutoff), gates, and the NG
    solves' cutoffs (reference first)."""

    rows: list[dict[str, Any]] = field(default_factory=list)
    gates: list[GateResult] = field(default_factory=list)
    cutoffs: list[SolveCutoff] = field(default_factory=list)


def softmax_regression_case(
    weight: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor, *, pattern_seed: int
) -> InvarianceCase:
    """Bias-free softmax regression at ``weight`` (C, D): the analytic Fisher, the notebook's
    scalings (:func:`two_block_scaling`; :func:`log_uniform_pattern` seeded ``pattern_seed``)."""
    n_classes, n_features = weight.shape
    _, gradient, probs = sr.loss_and_gradient(weight, inputs, labels)
    fisher = softmax_regression_fisher(probs, inputs)
    theta = weight.reshape(-1)

    def scale(scaling: Scaling, kappa: float) -> torch.Tensor:
        if scaling == Scaling.TWO_BLOCK:
            return two_block_scaling(kappa, n_classes, n_features, dtype=weight.dtype,
                                     device=weight.device)  # fmt: skip
        pattern = log_uniform_pattern(n_classes * n_features, seed=pattern_seed)
        return log_uniform_scaling(kappa, pattern).to(weight.device, weight.dtype)

    def discrepancy(delta: torch.Tensor, reference: torch.Tensor) -> StepDiscrepancy:
        return softmax_regression_step_discrepancy(
            delta, reference, theta=theta, inputs=inputs, n_classes=n_classes,
            logits_start=logits_start,
        )  # fmt: skip

    logits_start = sr.logits(weight, inputs)
    return InvarianceCase(
        theta=theta, gradient=gradient, fisher=fisher, fisher_matrix=fisher,
        outputs_start=logits_start,
        outputs=lambda t: sr.logits(t.reshape(n_classes, n_features), inputs),
        scale=scale, discrepancy=discrepancy,
    )  # fmt: skip


def model_case(
    model: nn.Module,
    batches: Sequence[Batch],
    *,
    loss: LossKind,
    pattern_seed: int,
    dense: bool,
    self_check: bool = True,
    progress: ProgressCallback | None = None,
) -> InvarianceCase:
    """Any ``nn.Module`` as it is (call inside ``eval_mode`` and ``math_attention``): the
    curvlinops Fisher (formed densely when ``dense``), per-parameter scalings
    (:func:`two_block_parameter_scales`, :func:`log_uniform_parameter_scales`)."""
    params = {n: p.detach() for n, p in trainable_parameters(model).items()}
    outputs_start = model_outputs(model, params, batches)
    check_finite(outputs_start, what=f"the outputs of model {type(model).__name__}")
    fisher = FisherOperator(model, batches, loss=loss, self_check=self_check)
    theta = flatten(params.values())
    _, gradient = loss_and_gradient(model, batches, loss=loss)
    check_finite(gradient, what=f"the loss gradient of model {type(model).__name__}")
    matrix = fisher.dense(progress=progress) if dense else None

    def scale(scaling: Scaling, kappa: float) -> torch.Tensor:
        if scaling == Scaling.TWO_BLOCK:
            scales = two_block_parameter_scales(params, kappa)
        else:
            scales = log_uniform_parameter_scales(params, kappa, seed=pattern_seed)
        return parameter_scale_vector(params, scales)

    def discrepancy(delta: torch.Tensor, reference: torch.Tensor) -> StepDiscrepancy:
        return step_discrepancy(model, params, delta, reference, batches, loss=loss,
                                      outputs_start=outputs_start)  # fmt: skip

    return InvarianceCase(
        theta=theta, gradient=gradient, fisher=fisher, fisher_matrix=matrix,
        outputs_start=outputs_start,
        outputs=lambda t: model_outputs(model, unflatten(t, params), batches),
        scale=scale, discrepancy=discrepancy,
    )  # fmt: skip


def invariance(
    case: InvarianceCase,
    *,
    scalings: Sequence[Scaling],
    kappas: Sequence[float],
    eta: float,
    solve: SolveSpec,
    gate_rel_tol: float | None,
    gate_c_tol: float,
    scope: str = "",
    progress: ProgressCallback | None = None,
) -> InvarianceResult:
    """The protocol (module docstring) on one case: for each scaling and kappa, Gate C's round
    trip, Gate A on ``diag(S) F diag(S)`` (when F is formed) and, for kappa != 1, each method's
    rescaled step against the reference step (kappa = 1).

    Args:
        case: the model (:func:`softmax_regression_case`, :func:`model_case`).
        scalings, kappas: the families and condition numbers.
        eta: step size in phi coordinates.
        solve: NG solve (``dense`` or ``cg``; damping, rcond, CG tolerance and cap).
        gate_rel_tol: Gate A tolerance (None: ``max(1e-8, P eps(dtype))``).
        gate_c_tol: Gate C tolerance on the round-trip output difference.
        scope: prefix of every gate's scope (e.g. ``"seed=0"``).
    """
    theta, fisher, matrix = case.theta, case.fisher, case.fisher_matrix
    result = InvarianceResult()
    rel_tol = psd_tolerance(gate_rel_tol, dtype=theta.dtype, size=len(theta), default=1e-8)
    if matrix is not None:
        result.gates.append(psd_gate(matrix, name="gate_a_fisher_psd", scope=f"{scope} F_theta",
                                     rel_tol=rel_tol))  # fmt: skip

    def step(scale: torch.Tensor, method: StepMethod) -> tuple[torch.Tensor, SolveCutoff]:
        delta, cutoff = rescaled_step(fisher, case.gradient, scale, method=method, eta=eta,
                                      solve=solve, fisher_matrix=matrix,
                                      progress=progress)  # fmt: skip
        if method is StepMethod.NATGRAD and cutoff.rank >= 0:
            result.cutoffs.append(cutoff)
        return delta, cutoff

    reference = {m: step(torch.ones_like(theta), m)[0] for m in INVARIANCE_METHODS}
    for scaling in scalings:
        scaling = Scaling(scaling)
        gate_c_worst = 0.0
        for kappa in kappas:
            scale = case.scale(scaling, kappa)
            round_trip = round_trip_logit_difference(theta, scale, case.outputs,
                                                     case.outputs_start)  # fmt: skip
            gate_c_worst = max(gate_c_worst, round_trip)
            if matrix is not None:
                where = f"{scope} {scaling} kappa={kappa:g}"
                result.gates.append(psd_gate(transform_fisher(matrix, scale),
                                             name="gate_a_fisher_psd", rel_tol=rel_tol,
                                             scope=where))  # fmt: skip
            if kappa == 1.0:
                continue
            for method in INVARIANCE_METHODS:
                delta, cutoff = step(scale, method)
                discrepancy = case.discrepancy(delta, reference[method])
                result.rows.append({"scaling": scaling.value, "kappa": kappa,
                                    "method": method.value, **asdict(discrepancy),
                                    "cutoff": cutoff})  # fmt: skip
        result.gates.append(gate_c_equivalence(gate_c_worst, tol=gate_c_tol,
                                               scope=f"{scope} {scaling}"))  # fmt: skip
    return result
