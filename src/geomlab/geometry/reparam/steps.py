"""One optimizer step taken in rescaled coordinates and mapped back, and what the NG solve's
pseudo-inverse cutoff did to it."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geomlab.geometry.curvature import FisherOperator, ProgressCallback
from geomlab.geometry.natural_gradient import (
    CGInverse,
    PseudoInverse,
    Solver,
    SolveSpec,
    StepMethod,
    pseudo_inverse,
)
from geomlab.geometry.reparam.scaling import transform_fisher, transform_gradient

__all__ = ["SolveCutoff", "rescaled_step", "solve_cutoff"]


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


class _Rescaled:
    """``u -> S F (S u)``: the Fisher in phi coordinates, as an operator."""

    def __init__(self, fisher: FisherOperator, scale: torch.Tensor) -> None:
        self.fisher, self.scale = fisher, scale

    def __matmul__(self, vector: torch.Tensor) -> torch.Tensor:
        return self.scale * (self.fisher @ (self.scale * vector))


def rescaled_step(
    fisher: FisherOperator | torch.Tensor,
    gradient: torch.Tensor,
    scale: torch.Tensor,
    *,
    method: StepMethod,
    eta: float,
    solve: SolveSpec = SolveSpec(),
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
        fisher: the Fisher in theta: a ``FisherOperator`` or a dense ``(P, P)`` tensor.
        gradient: ``(P,)``; scale: ``(P,)`` > 0.
        method: ``sgd`` or ``natgrad``; eta: step size in phi.
        solve: ``dense`` or ``cg`` (K-FAC in phi would be a different approximation), damping,
            rcond, CG tolerance and cap (:class:`~geomlab.geometry.natural_gradient.SolveSpec`).
        fisher_matrix: the dense Fisher if already formed (``dense`` reuses it; a dense
            ``fisher`` is its own).

    Returns:
        ``((P,) step in theta, SolveCutoff)``.
    """
    if method not in (StepMethod.SGD, StepMethod.NATGRAD):
        raise ValueError(f"method must be 'sgd' or 'natgrad', got {method!r}")
    method, solver = StepMethod(method), solve.solver
    grad_phi = transform_gradient(gradient, scale)
    if method is StepMethod.SGD:
        return scale * (-eta * grad_phi), SolveCutoff()
    if solver is Solver.DENSE:
        if fisher_matrix is None:
            fisher_matrix = fisher if isinstance(fisher, torch.Tensor) else fisher.dense()
        fisher_phi = transform_fisher(fisher_matrix, scale)
        if solve.damping:
            eye = torch.eye(len(scale), dtype=scale.dtype, device=scale.device)
            fisher_phi = fisher_phi + solve.damping * eye
        pinv = pseudo_inverse(fisher_phi, rcond=solve.rcond)
        return scale * (-eta * (pinv @ grad_phi)), solve_cutoff(pinv, grad_phi)
    if solver is Solver.CG:
        cap = solve.iteration_cap(grad_phi.numel())

        def report(iteration: int, residual: float) -> None:
            if progress is not None:
                progress("CG", iteration, cap, f"residual {residual:.3g}")

        solver_phi = CGInverse(_Rescaled(fisher, scale), damping=solve.damping,
                               tol=solve.tolerance, max_iterations=solve.max_iterations,
                               callback=report)  # fmt: skip
        return scale * (-eta * (solver_phi @ grad_phi)), SolveCutoff()
    raise ValueError(f"rescaled steps support solver dense or cg, got {solver.value!r}")
