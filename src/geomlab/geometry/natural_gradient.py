"""Natural-gradient directions, KL-matched step sizes and the KL between two models.

Notation: ``g`` the loss gradient, ``F`` the Fisher, ``v`` a step direction (``g`` for SGD,
``F^+ g`` for the natural gradient). A step ``theta - eta v`` changes the model's predictive
distribution by ``KL ~ eta^2 v^T F v / 2`` to second order, so ``eta = sqrt(2 eps / v^T F v)``
makes that second-order KL exactly ``eps``; the measured KL(p_before || p_after) then tends to
``eps`` as ``eps -> 0`` (relative error O(sqrt(eps)) from the third-order term).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.curvature import (
    FisherOperator,
    NonFiniteOutputError,
    ProgressCallback,
    check_finite,
    check_kfac_eligible,
    softmax_regression_fisher,
)
from geomlab.geometry.params import (
    Batch,
    LossKind,
    as_batches,
    flatten,
    loss_and_gradient,
    loss_value,
    model_outputs,
    trainable_parameters,
    unflatten,
)
from geomlab.models import softmax_regression as sr
from geomlab.models.modes import eval_mode


class KLMeasurement(StrEnum):
    """How E1 measures a step's KL: ``exact`` = KL(p_before || p_after); ``notebook`` = the
    notebook's defective post-step self-KL (kept only to reproduce its numbers)."""

    EXACT = "exact"
    NOTEBOOK = "notebook"


class StepMethod(StrEnum):
    """Step directions: ``sgd`` = the gradient, ``natgrad`` = the natural gradient (by the
    configured solver), ``kfac`` / ``ekfac`` = its (EK-)K-FAC approximation."""

    SGD = "sgd"
    NATGRAD = "natgrad"
    KFAC = "kfac"
    EKFAC = "ekfac"


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
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
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
    if not bool(torch.isfinite(curvature)):
        raise NonFiniteOutputError(
            f"the Fisher curvature d^T F d = {float(curvature)} is not finite: the Fisher or the "
            "direction contains NaN/inf"
        )
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


# --- Natural gradient for any nn.Module ------------------------------------------------------


class Solver(StrEnum):
    """How the natural-gradient direction ``v ~ (F + lambda I)^+ g`` is obtained.

    ``dense``: form F (P x P), one eigendecomposition, pseudo-inverse with relative cutoff
    ``rcond`` (small P). ``cg``: conjugate gradients on Fisher-vector products (any P; exact
    to the tolerance). ``kfac`` / ``ekfac``: curvlinops' (eigenvalue-corrected) Kronecker-
    factored approximation, inverted with exact damping (an approximation of the direction).
    """

    DENSE = "dense"
    CG = "cg"
    KFAC = "kfac"
    EKFAC = "ekfac"


CG_RESIDUAL_SLACK = 10.0
"""A CG solve counts as converged when its true relative residual ``||b - A x|| / ||b||`` is at
most ``CG_RESIDUAL_SLACK * tol``: CG stops on its recurrence residual, which drifts from the
true one by rounding (the same rule as :attr:`CGResult.converged`)."""


@dataclass(frozen=True)
class CGResult:
    """Solution, iterations used and final relative residual ``||b - A x|| / ||b||``."""

    solution: torch.Tensor
    iterations: int
    relative_residual: float
    converged: bool


def conjugate_gradient(
    matvec: Callable[[torch.Tensor], torch.Tensor],
    rhs: torch.Tensor,
    *,
    tol: float = 1e-6,
    max_iterations: int | None = None,
    callback: Callable[[int, float], None] | None = None,
) -> CGResult:
    """Solve ``A x = b`` for symmetric PSD ``A`` by conjugate gradients from ``x = 0``.

    Stops when ``||b - A x|| <= tol ||b||`` (the recurrence residual, re-checked once with a
    true product at the end) or after ``max_iterations`` (default ``10 len(b)``: in floating
    point an ill-conditioned system needs more than exact arithmetic's ``len(b)``). For a singular
    ``A`` and ``b`` in its range, the iterates stay in the Krylov space of ``b``, so the limit
    is the minimum-norm solution ``A^+ b``.

    Args:
        matvec: ``x -> A x`` on flat vectors.
        rhs: ``b``, flat.
        tol: relative residual target (> 0).
        max_iterations: cap on iterations (>= 1).
        callback: ``callback(iteration, relative recurrence residual)`` after each iteration.

    Returns:
        :class:`CGResult`.
    """
    if tol <= 0:
        raise ValueError(f"tol must be > 0, got {tol}")
    max_iterations = 10 * rhs.numel() if max_iterations is None else max_iterations
    if max_iterations < 1:
        raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
    b_norm = float(rhs.norm())
    x = torch.zeros_like(rhs)
    if b_norm == 0:
        return CGResult(x, 0, 0.0, True)
    r = rhs.clone()
    p = r.clone()
    rr = r @ r
    iterations = 0
    while iterations < max_iterations and float(rr.sqrt()) > tol * b_norm:
        ap = matvec(p)
        curvature = p @ ap
        if float(curvature) <= 0:  # p in A's null space: b had a component there
            break
        alpha = rr / curvature
        x = x + alpha * p
        r = r - alpha * ap
        rr_next = r @ r
        p = r + (rr_next / rr) * p
        rr = rr_next
        iterations += 1
        if callback is not None:
            callback(iterations, float(rr.sqrt()) / b_norm)
    residual = float((rhs - matvec(x)).norm()) / b_norm
    return CGResult(x, iterations, residual, residual <= tol * CG_RESIDUAL_SLACK)


@dataclass(frozen=True)
class NaturalGradient:
    """A natural-gradient direction and how it was obtained.

    ``relative_residual = ||(F + lambda I) v - g|| / ||g||`` with the exact Fisher (for
    ``kfac``/``ekfac`` this measures how far the approximation is from the exact solve);
    ``null_space_share = ||P_null g||^2 / ||g||^2``, the gradient's share in the span of the
    eigenvectors with ``w <= rcond * max w`` (``dense`` only, NaN otherwise);
    ``cos_g_v`` the cosine between ``g`` and ``v``; ``cg_iterations`` 0 unless ``cg``;
    ``min/max_eigenvalue`` of the undamped F (``dense`` only, for Gate A);
    ``converged``: ``cg`` met ``CG_RESIDUAL_SLACK * tolerance`` (always True for the other
    solvers, whose residual measures an approximation or a cutoff, not an unfinished solve);
    ``tolerance`` the ``cg_tol`` asked for (NaN unless ``cg``);
    ``dropped_above_floor``: eigenvalues of ``F + lambda I`` the ``rcond`` cutoff dropped although
    they lie above the round-off floor ``P eps(dtype) max|w|`` (real curvature, e.g. of a
    full-rank Fisher; ``dense`` only, -1 otherwise).
    """

    direction: torch.Tensor
    solver: Solver
    damping: float
    cg_iterations: int
    relative_residual: float
    null_space_share: float
    cos_g_v: float
    rank: int
    seconds: float
    min_eigenvalue: float = float("nan")
    max_eigenvalue: float = float("nan")
    converged: bool = True
    tolerance: float = float("nan")
    dropped_above_floor: int = -1

    def label(self) -> str:
        """How the direction was obtained, e.g. ``"CG, 10 iterations, residual 0.081"``."""
        if self.solver is Solver.CG:
            return f"CG, {self.cg_iterations} iterations, residual {self.relative_residual:.2g}"
        return self.solver.value


def natural_gradient(
    fisher: FisherOperator,
    gradient: torch.Tensor,
    *,
    solver: Solver,
    damping: float = 0.0,
    rcond: float = 1e-8,
    cg_tol: float = 1e-6,
    cg_max_iterations: int | None = None,
    kfac_exact_damping: bool = False,
    progress: ProgressCallback | None = None,
) -> NaturalGradient:
    """The natural-gradient direction ``v = (F + lambda I)^+ g`` of any model.

    Args:
        fisher: the model's :class:`~geomlab.geometry.curvature.FisherOperator`.
        gradient: ``(P,)`` loss gradient ``g``.
        solver: see :class:`Solver`.
        damping: ``lambda >= 0`` (absolute). ``kfac``/``ekfac`` need ``lambda > 0``: their
            Kronecker factors are singular for softmax outputs.
        rcond: relative eigenvalue cutoff of the ``dense`` pseudo-inverse, applied to the
            eigenvalues of ``F + lambda I``.
        cg_tol, cg_max_iterations: stopping rule of ``cg``.
        kfac_exact_damping: ``kfac`` inverts ``A (x) G + lambda I`` exactly (eigendecompositions
            of every factor) instead of the factored Tikhonov damping
            ``(A + pi sqrt(lambda) I) (x) (G + sqrt(lambda)/pi I)`` (Cholesky; Martens & Grosse's
            pi-heuristic; the default, since a 9217 x 9217 factor of the MNIST CNN takes ~10 s to
            Cholesky-factor but over 5 min to eigendecompose on 2 CPU cores). ``ekfac`` is
            always exact (it lives in the factors' eigenbasis).
        progress: called with ``("CG", iteration, cap, "residual r")`` per CG iteration and
            ``("Fisher columns", done, P, "")`` while ``dense`` forms F.

    Returns:
        :class:`NaturalGradient` (direction and diagnostics).
    """
    solver = Solver(solver)
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    if solver in (Solver.KFAC, Solver.EKFAC):
        if damping <= 0:
            raise ValueError(
                f"solver {solver.value} needs damping > 0 (K-FAC's Kronecker factors are "
                "singular for softmax outputs), got 0"
            )
        check_kfac_eligible(fisher.model, method=solver.value)
    with math_attention():
        return _natural_gradient(fisher, gradient, solver=solver, damping=damping, rcond=rcond,
                                 cg_tol=cg_tol, cg_max_iterations=cg_max_iterations,
                                 kfac_exact_damping=kfac_exact_damping,
                                 progress=progress)  # fmt: skip


def _natural_gradient(
    fisher, gradient, *, solver, damping, rcond, cg_tol, cg_max_iterations, kfac_exact_damping,
    progress,
) -> NaturalGradient:  # fmt: skip
    start = time.perf_counter()
    null_share, rank, iterations, lost = float("nan"), -1, 0, -1
    extremes = (float("nan"), float("nan"))
    converged, tolerance = True, float("nan")
    if solver is Solver.DENSE:
        dense = fisher.dense(progress=progress)
        eigenvalues, eigenvectors = torch.linalg.eigh(dense)
        shifted = eigenvalues + damping
        keep = shifted > rcond * float(shifted.abs().max())
        coords = eigenvectors.T @ gradient
        direction = eigenvectors @ torch.where(keep, coords / torch.where(keep, shifted, 1), 0)
        null = eigenvalues <= rcond * float(eigenvalues.abs().max())
        null_share = float(coords[null].pow(2).sum() / coords.pow(2).sum())
        rank = int(keep.sum())
        floor = len(shifted) * torch.finfo(shifted.dtype).eps * float(shifted.abs().max())
        lost = int((~keep & (shifted > floor)).sum())
        extremes = (float(eigenvalues.min()), float(eigenvalues.max()))
    elif solver is Solver.CG:
        cap = 10 * gradient.numel() if cg_max_iterations is None else cg_max_iterations

        def report(iteration: int, residual: float) -> None:
            if progress is not None:
                progress("CG", iteration, cap, f"residual {residual:.3g}")

        result = conjugate_gradient(
            lambda v: fisher @ v + damping * v,
            gradient,
            tol=cg_tol,
            max_iterations=cg_max_iterations,
            callback=report,
        )
        direction, iterations = result.solution, result.iterations
        tolerance = cg_tol
    else:
        if damping <= 0:
            raise ValueError(
                f"solver {solver.value} needs damping > 0 (K-FAC's Kronecker factors are "
                "singular for softmax outputs), got 0"
            )
        from curvlinops import KFACInverseLinearOperator

        eigenvalue_corrected = solver is Solver.EKFAC
        if progress is not None:
            progress(f"{solver.value} factors", 0, 1, "computing the Kronecker factors")
        base = fisher.kfac_unscaled(eigenvalue_corrected=eigenvalue_corrected)
        # (s K + lambda I)^-1 = (K + (lambda / s) I)^-1 / s for the Fisher's scale s.
        scale = fisher.scale
        exact = eigenvalue_corrected or kfac_exact_damping
        inverse = KFACInverseLinearOperator(
            base, damping=damping / scale, use_exact_damping=exact, use_heuristic_damping=not exact
        )
        direction = (inverse @ gradient) / scale
        if progress is not None:
            progress(f"{solver.value} factors", 1, 1, "factors computed and inverted")
    seconds = time.perf_counter() - start
    residual = fisher @ direction + damping * direction - gradient
    g_norm = gradient.norm()
    relative_residual = float(residual.norm() / g_norm)
    if solver is Solver.CG:
        converged = relative_residual <= CG_RESIDUAL_SLACK * cg_tol
    return NaturalGradient(
        direction=direction,
        solver=solver,
        damping=damping,
        cg_iterations=iterations,
        relative_residual=relative_residual,
        null_space_share=null_share,
        cos_g_v=float(gradient @ direction / (g_norm * direction.norm())),
        rank=rank,
        seconds=seconds,
        min_eigenvalue=extremes[0],
        max_eigenvalue=extremes[1],
        converged=converged,
        tolerance=tolerance,
        dropped_above_floor=lost,
    )


def fisher_curvature(fisher: FisherOperator, direction: torch.Tensor) -> torch.Tensor:
    """``v^T F v`` with the exact, undamped Fisher (one Fisher-vector product)."""
    return direction @ (fisher @ direction)


def step_size_for_kl(curvature: torch.Tensor, epsilon: float | torch.Tensor) -> torch.Tensor:
    """``eta = sqrt(2 eps / v^T F v)`` from a precomputed curvature ``v^T F v > 0``."""
    if not torch.isfinite(curvature).all():
        raise NonFiniteOutputError(
            f"the Fisher curvature v^T F v = {float(curvature)} is not finite: the model's "
            "outputs, its gradient or the step direction contain NaN/inf"
        )
    if not float(curvature) > 0:
        raise ValueError(f"direction has non-positive Fisher curvature v^T F v = {curvature}")
    return torch.sqrt(2 * torch.as_tensor(epsilon, dtype=curvature.dtype) / curvature.cpu())


def output_kl(before: torch.Tensor, after: torch.Tensor, *, loss: LossKind) -> torch.Tensor:
    """Mean over samples of KL(p_before || p_after) between two models' output distributions:
    categorical (``cross_entropy``) or ``||f_b - f_a||^2 / 2`` (``mse``, unit variance)."""
    if LossKind(loss) is LossKind.CROSS_ENTROPY:
        return categorical_kl(before, after)
    return 0.5 * (before - after).pow(2).sum(-1).mean(-1)


DIAGNOSTIC_COLUMNS = [
    "solver", "damping", "cg_iterations", "relative_residual", "null_space_share",
    "direction_seconds", "cg_tol", "solve_converged", "dropped_above_floor",
]  # fmt: skip


@dataclass(frozen=True)
class ModelStepPair:
    """Steps of several methods from one model, each at every target KL (any model)."""

    epsilons: torch.Tensor
    loss_before: float
    gradient: torch.Tensor
    steps: tuple[MatchedSteps, ...]
    solves: dict[StepMethod, NaturalGradient | None]

    def records(self) -> list[dict[str, Any]]:
        """One dict per (method, epsilon): E1's raw-table columns plus
        :data:`DIAGNOSTIC_COLUMNS` (NaN / empty for SGD)."""
        rows: list[dict[str, Any]] = []
        grad_norm = float(self.gradient.norm())
        for step in self.steps:
            solve = self.solves[step.method]
            for i, eps in enumerate(self.epsilons.tolist()):
                loss_after = float(step.loss_after[i])
                kl = float(step.kl_step[i])
                rows.append({
                    "epsilon": eps, "method": step.method.value,
                    "loss_before": self.loss_before, "loss_after": loss_after,
                    "delta_loss": self.loss_before - loss_after,
                    "kl_step": kl, "kl_target": eps, "kl_ratio": kl / eps,
                    "eta": float(step.eta[i]), "grad_norm": grad_norm,
                    "direction_norm": float(step.direction.norm()),
                    "cos_g_v": solve.cos_g_v if solve else float("nan"),
                    "solver": solve.solver.value if solve else "",
                    "damping": solve.damping if solve else float("nan"),
                    "cg_iterations": solve.cg_iterations if solve else 0,
                    "relative_residual": solve.relative_residual if solve else float("nan"),
                    "null_space_share": solve.null_space_share if solve else float("nan"),
                    "direction_seconds": solve.seconds if solve else 0.0,
                    "cg_tol": solve.tolerance if solve else float("nan"),
                    "solve_converged": solve.converged if solve else True,
                    "dropped_above_floor": solve.dropped_above_floor if solve else -1,
                })  # fmt: skip
        return rows


def model_kl_matched_steps(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    epsilons: torch.Tensor,
    *,
    loss: LossKind,
    methods: Sequence[StepMethod] = (StepMethod.SGD, StepMethod.NATGRAD),
    solver: Solver = Solver.DENSE,
    damping: float = 0.0,
    kfac_damping: float = 1e-3,
    rcond: float = 1e-8,
    cg_tol: float = 1e-6,
    cg_max_iterations: int | None = None,
    batch_size: int | None = None,
    self_check: bool = True,
    progress: ProgressCallback | None = None,
) -> ModelStepPair:
    """E1's KL-matched steps for any ``nn.Module`` (classifier or regressor), in eval mode.

    For each method a direction ``v`` (``sgd``: ``g``; ``natgrad``: :func:`natural_gradient`
    with ``solver``, ``damping``, ``rcond``; ``kfac``/``ekfac``: with ``kfac_damping``), then
    for each ``eps``: ``eta = sqrt(2 eps / v^T F v)`` with the exact *undamped* Fisher (so the
    second-order KL is ``eps`` whatever the solver), ``theta' = theta - eta v``, the loss at
    ``theta'`` and the measured KL(p_theta || p_theta') averaged over the data (outputs through
    ``torch.func.functional_call``; the model's own parameters are never changed).

    Args:
        model: the network; data: ``(inputs, targets)`` or batches; epsilons: ``(E,)`` > 0.
        loss: the likelihood (:class:`~geomlab.geometry.curvature.LossKind`).
        methods: which directions; solver, damping, kfac_damping, rcond, cg_tol,
            cg_max_iterations: see :func:`natural_gradient`.
        batch_size: batches for Fisher products and forward passes (memory).
        self_check: check curvlinops' Fisher products against the torch.func reference once
            for this model (:func:`~geomlab.geometry.curvature.fisher_self_check`).
        progress: see :func:`natural_gradient`.

    Every pass runs inside :func:`~geomlab.geometry.attention.math_attention`; the model may
    return a tensor or a Hugging Face-style output with ``.logits``.

    Returns:
        :class:`ModelStepPair` (``.records()`` gives the table rows).

    Raises:
        UnsupportedShapeError: before any work, when a ``kfac``/``ekfac`` method (or solver) meets
            parameters outside ``nn.Linear``/``nn.Conv2d`` (freeze them to proceed).
        NonFiniteOutputError: the model's outputs, loss or gradient at its weights are NaN/inf.
    """
    loss = LossKind(loss)
    methods = [StepMethod(m) for m in methods]
    solver = Solver(solver)
    kfac_methods = [m.value for m in methods if m in (StepMethod.KFAC, StepMethod.EKFAC)]
    if StepMethod.NATGRAD in methods and solver in (Solver.KFAC, Solver.EKFAC):
        kfac_methods.append(solver.value)
    for name in kfac_methods[:1]:
        check_kfac_eligible(model, method=name)
    batches = as_batches(data, batch_size=batch_size)
    targets = torch.cat([y for _, y in batches])
    with eval_mode(model), math_attention():
        params = {n: p.detach() for n, p in trainable_parameters(model).items()}
        outputs_before = model_outputs(model, params, batches)
        check_finite(outputs_before, what=f"the outputs of model {type(model).__name__}")
        fisher = FisherOperator(model, batches, loss=loss, self_check=self_check)
        theta = flatten(params.values())
        loss_before, gradient = loss_and_gradient(model, batches, loss=loss)
        check_finite(gradient, what=f"the loss gradient of model {type(model).__name__}")
        steps, solves = [], {}
        for method in methods:
            solve = None
            if method is StepMethod.SGD:
                direction = gradient
            elif method is StepMethod.NATGRAD:
                solve = natural_gradient(fisher, gradient, solver=solver, damping=damping,
                                         rcond=rcond, cg_tol=cg_tol,
                                         cg_max_iterations=cg_max_iterations,
                                         progress=progress)  # fmt: skip
            else:
                solve = natural_gradient(fisher, gradient, solver=Solver(method.value),
                                         damping=kfac_damping, progress=progress)  # fmt: skip
            if solve is not None:
                direction = solve.direction
            eta = step_size_for_kl(fisher_curvature(fisher, direction), epsilons.cpu())
            losses, kls = [], []
            for value in eta.tolist():
                after = unflatten(theta - value * direction, params)
                outputs_after = model_outputs(model, after, batches)
                losses.append(float(loss_value(outputs_after, targets, loss=loss)))
                kls.append(float(output_kl(outputs_before, outputs_after, loss=loss)))
            losses_t = torch.tensor(losses, dtype=torch.float64)
            kls_t = torch.tensor(kls, dtype=torch.float64)
            steps.append(MatchedSteps(method, direction, eta, losses_t, kls_t))
            solves[method] = solve
    return ModelStepPair(epsilons.cpu(), float(loss_before), gradient, tuple(steps), solves)
