"""Coordinate rescalings theta = S * phi and how one optimizer step transforms under them.

In coordinates phi with theta = diag(S) phi, the gradient is S * g and the Fisher is
diag(S) F diag(S). A step taken in phi and mapped back is S * delta_phi. SGD's step becomes
-eta S^2 g (coordinate dependent); the natural-gradient step S (S F S)^+ S g equals F^+ g up
to a component in the Fisher null space, which does not change the model's predictions.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from geomlab.geometry.curvature import FisherOperator, ProgressCallback
from geomlab.geometry.gates import GateResult
from geomlab.geometry.natural_gradient import (
    CGInverse,
    PseudoInverse,
    Solver,
    StepMethod,
    categorical_kl,
    output_kl,
    pseudo_inverse,
)
from geomlab.geometry.params import Batch, LossKind, flatten, model_outputs, unflatten
from geomlab.models import softmax_regression as sr


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


@dataclass(frozen=True)
class SolveCutoff:
    """What a pseudo-inverse's relative cutoff did to one NG solve.

    ``rank``: eigenvalues kept (``w > cutoff``); ``cutoff = rcond * max|w|``;
    ``dropped``: eigenvalues at or below it; ``round_off_floor = P * eps(dtype) * max|w|``, the
    eigensolver's backward error (eigenvalues below it are indistinguishable from 0);
    ``dropped_above_floor``: dropped eigenvalues above that floor, i.e. real curvature the
    cutoff discarded; ``dropped_share = ||P_dropped b||^2 / ||b||^2`` for the right-hand side
    ``b`` (the gradient in these coordinates). NaN / -1 where no eigendecomposition was made.
    """

    rank: int = -1
    cutoff: float = float("nan")
    dropped: int = -1
    dropped_above_floor: int = -1
    dropped_share: float = float("nan")
    round_off_floor: float = float("nan")


def solve_cutoff(pinv: PseudoInverse, rhs: torch.Tensor) -> SolveCutoff:
    """:class:`SolveCutoff` of ``pinv`` applied to ``rhs``."""
    w = pinv.eigenvalues
    kept = pinv.inverse_eigenvalues != 0
    floor = len(w) * torch.finfo(w.dtype).eps * float(w.abs().max())
    coords = pinv.eigenvectors.T @ rhs
    total = float(coords.pow(2).sum())
    share = float(coords[~kept].pow(2).sum()) / total if total > 0 else 0.0
    return SolveCutoff(
        rank=pinv.rank,
        cutoff=pinv.cutoff,
        dropped=int((~kept).sum()),
        dropped_above_floor=int((~kept & (w > floor)).sum()),
        dropped_share=share,
        round_off_floor=floor,
    )


def rescaled_step(
    gradient: torch.Tensor,
    fisher: torch.Tensor,
    scale: torch.Tensor,
    *,
    method: StepMethod,
    eta: float,
    rcond: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of size ``eta`` taken in phi coordinates, returned in theta coordinates.

    Returns ``(delta_theta, F_phi)``.
    """
    delta, fisher_phi, _ = rescaled_step_with_cutoff(
        gradient, fisher, scale, method=method, eta=eta, rcond=rcond
    )
    return delta, fisher_phi


def rescaled_step_with_cutoff(
    gradient: torch.Tensor,
    fisher: torch.Tensor,
    scale: torch.Tensor,
    *,
    method: StepMethod,
    eta: float,
    rcond: float,
) -> tuple[torch.Tensor, torch.Tensor, SolveCutoff]:
    """:func:`rescaled_step` plus the :class:`SolveCutoff` of its pseudo-inverse (empty for
    SGD). Returns ``(delta_theta, F_phi, cutoff)``."""
    if method not in (StepMethod.SGD, StepMethod.NATGRAD):
        raise ValueError(f"method must be 'sgd' or 'natgrad', got {method!r}")
    method = StepMethod(method)
    grad_phi = transform_gradient(gradient, scale)
    fisher_phi = transform_fisher(fisher, scale)
    if method is StepMethod.SGD:
        return scale * (-eta * grad_phi), fisher_phi, SolveCutoff()
    pinv = pseudo_inverse(fisher_phi, rcond=rcond)
    delta_phi = -eta * (pinv @ grad_phi)
    return scale * delta_phi, fisher_phi, solve_cutoff(pinv, grad_phi)


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


# --- Any nn.Module: per-parameter scalings, NG steps in rescaled coordinates ----------------


def parameter_scale_vector(
    parameters: Mapping[str, torch.Tensor], scales: Mapping[str, torch.Tensor | float]
) -> torch.Tensor:
    """Flatten per-parameter scalings ``{name: tensor or float}`` (broadcast to the parameter's
    shape; names not given keep scale 1) into one ``(P,)`` vector in parameter order.

    Raises:
        KeyError: for a name that is not a parameter; ValueError for non-positive scales.
    """
    unknown = set(scales) - set(parameters)
    if unknown:
        raise KeyError(f"scales for unknown parameters: {', '.join(sorted(unknown))}")
    parts = []
    for name, p in parameters.items():
        value = scales.get(name, 1.0)
        scale = torch.as_tensor(value, dtype=p.dtype, device=p.device).expand(p.shape)
        parts.append(scale.reshape(-1))
    vector = torch.cat(parts)
    if not bool((vector > 0).all()) or not bool(torch.isfinite(vector).all()):
        raise ValueError("scales must be finite and > 0")
    return vector


def two_block_parameter_scales(
    parameters: Mapping[str, torch.Tensor], kappa: float
) -> dict[str, torch.Tensor]:
    """The notebook's two-block family for any model: along each parameter's last axis the
    first half of the entries is scaled by sqrt(kappa), the rest by 1/sqrt(kappa) (the same for
    every other index). For softmax regression's ``W`` (C x D) this is exactly
    :func:`two_block_scaling`: features [0, D/2) up, the rest down, equal for every class."""
    scales = {}
    for name, p in parameters.items():
        last = p.shape[-1] if p.ndim else 1
        per_entry = torch.full((last,), 1 / math.sqrt(kappa), dtype=p.dtype, device=p.device)
        per_entry[: last // 2] = math.sqrt(kappa)
        scales[name] = per_entry.expand(p.shape) if p.ndim else per_entry[0]
    return scales


def log_uniform_parameter_scales(
    parameters: Mapping[str, torch.Tensor], kappa: float, *, seed: int
) -> dict[str, torch.Tensor]:
    """Every entry of every parameter its own scale exp(u log kappa), u from
    :func:`log_uniform_pattern` over all P entries (so max/min over the model is kappa)."""
    total = sum(p.numel() for p in parameters.values())
    flat = log_uniform_scaling(kappa, log_uniform_pattern(total, seed=seed))
    sizes = [p.numel() for p in parameters.values()]
    return {
        name: part.to(p.dtype).to(p.device).view_as(p)
        for (name, p), part in zip(parameters.items(), flat.split(sizes), strict=True)
    }


class _Rescaled:
    """``u -> S F (S u)``: the Fisher in phi coordinates, as an operator."""

    def __init__(self, fisher: FisherOperator, scale: torch.Tensor) -> None:
        self.fisher, self.scale = fisher, scale

    def __matmul__(self, vector: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.fisher @ (self.scale * vector))


def rescaled_model_step(
    fisher: FisherOperator,
    gradient: torch.Tensor,
    scale: torch.Tensor,
    *,
    method: StepMethod,
    eta: float,
    solver: Solver = Solver.DENSE,
    damping: float = 0.0,
    rcond: float = 1e-8,
    cg_tol: float = 1e-10,
    cg_max_iterations: int | None = None,
    fisher_matrix: torch.Tensor | None = None,
) -> torch.Tensor:
    """One step of size ``eta`` taken in coordinates ``phi`` (theta = S * phi), mapped back;
    :func:`rescaled_model_step_with_cutoff` without the cutoff diagnostics."""
    return rescaled_model_step_with_cutoff(
        fisher, gradient, scale, method=method, eta=eta, solver=solver, damping=damping,
        rcond=rcond, cg_tol=cg_tol, cg_max_iterations=cg_max_iterations,
        fisher_matrix=fisher_matrix,
    )[0]  # fmt: skip


def rescaled_model_step_with_cutoff(
    fisher: FisherOperator,
    gradient: torch.Tensor,
    scale: torch.Tensor,
    *,
    method: StepMethod,
    eta: float,
    solver: Solver = Solver.DENSE,
    damping: float = 0.0,
    rcond: float = 1e-8,
    cg_tol: float = 1e-10,
    cg_max_iterations: int | None = None,
    fisher_matrix: torch.Tensor | None = None,
    progress: ProgressCallback | None = None,
) -> tuple[torch.Tensor, SolveCutoff]:
    """One step of size ``eta`` taken in coordinates ``phi`` (theta = S * phi), mapped back,
    and the :class:`SolveCutoff` of its dense pseudo-inverse (empty for SGD and CG);
    ``progress("CG", iteration, cap, "residual r")`` per CG iteration.

    ``delta_theta = -eta S^2 g`` (SGD) or ``-eta S (S F S + lambda I)^+ (S g)`` (NG), with
    the rescaled Fisher applied as ``u -> S * F(S * u)`` (``cg``) or formed (``dense``,
    pseudo-inverse cutoff ``rcond``). For ``lambda = 0``, invertible F and an exact solve this
    is ``-eta F^-1 g`` for every S; see docs/experiments/e3.md for when it is not.

    Args:
        fisher: the model's Fisher in theta; gradient: ``(P,)``; scale: ``(P,)`` > 0.
        method: ``sgd`` or ``natgrad``; eta: step size in phi.
        solver: ``dense`` or ``cg`` (K-FAC in phi would be a different approximation).
        damping, rcond, cg_tol, cg_max_iterations: as in
            :func:`~geomlab.geometry.natural_gradient.natural_gradient`.
        fisher_matrix: ``fisher.dense()`` if already formed (``dense`` reuses it).

    Returns:
        ``((P,) step in theta, SolveCutoff)``.
    """
    method, solver = StepMethod(method), Solver(solver)
    if method not in (StepMethod.SGD, StepMethod.NATGRAD):
        raise ValueError(f"method must be 'sgd' or 'natgrad', got {method.value!r}")
    grad_phi = scale * gradient
    if method is StepMethod.SGD:
        return scale * (-eta * grad_phi), SolveCutoff()
    if solver is Solver.DENSE:
        dense = fisher.dense() if fisher_matrix is None else fisher_matrix
        fisher_phi = transform_fisher(dense, scale)
        eye = torch.eye(len(scale), dtype=scale.dtype, device=scale.device)
        pinv = pseudo_inverse(fisher_phi + damping * eye, rcond=rcond)
        return scale * (-eta * (pinv @ grad_phi)), solve_cutoff(pinv, grad_phi)
    if solver is Solver.CG:
        cap = 10 * grad_phi.numel() if cg_max_iterations is None else cg_max_iterations

        def report(iteration: int, residual: float) -> None:
            if progress is not None:
                progress("CG", iteration, cap, f"residual {residual:.3g}")

        solver_phi = CGInverse(_Rescaled(fisher, scale), damping=damping, tol=cg_tol,
                               max_iterations=cg_max_iterations, callback=report)  # fmt: skip
        return scale * (-eta * (solver_phi @ grad_phi)), SolveCutoff()
    raise ValueError(f"rescaled steps support solver dense or cg, got {solver.value!r}")


def model_step_discrepancy(
    model: nn.Module,
    parameters: Mapping[str, torch.Tensor],
    delta: torch.Tensor,
    reference: torch.Tensor,
    batches: Sequence[Batch],
    *,
    loss: LossKind,
    outputs_start: torch.Tensor,
) -> StepDiscrepancy:
    """:func:`step_discrepancy` for any model: outputs at ``theta + delta`` and
    ``theta + reference`` through ``torch.func.functional_call``; the output change is
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
