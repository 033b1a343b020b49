"""The natural-gradient direction ``v = (F + lambda I)^+ g`` of any model and how it was
obtained."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from geomlab.geometry.attention import math_attention
from geomlab.geometry.curvature import FisherOperator, ProgressCallback, check_kfac_eligible
from geomlab.geometry.natural_gradient.inverses import (
    CGInverse,
    PseudoInverse,
    inverse,
)
from geomlab.geometry.natural_gradient.solve import (
    CG_RESIDUAL_SLACK,
    KFAC_SOLVERS,
    Solver,
    SolveSpec,
)

__all__ = ["NaturalGradient", "natural_gradient"]


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
    ``tolerance`` the CG tolerance asked for (NaN unless ``cg``);
    ``dropped_above_floor``: eigenvalues of ``F + lambda I`` the ``rcond`` cutoff dropped although
    they lie above the round-off floor ``P eps(dtype) max|w|`` (real curvature, e.g. of a
    full-rank Fisher; ``dense`` only, -1 otherwise); ``inverse``: the inverse operator used
    (its eigenvalues, for ``dense``).
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
    inverse: object = None

    def label(self) -> str:
        """How the direction was obtained, e.g. ``"CG, 10 iterations, residual 0.081"``."""
        if self.solver is Solver.CG:
            return f"CG, {self.cg_iterations} iterations, residual {self.relative_residual:.2g}"
        return self.solver.value


def _check_kfac_damping(solve: SolveSpec) -> None:
    if solve.solver in KFAC_SOLVERS and solve.damping <= 0:
        raise ValueError(
            f"solver {solve.solver.value} needs damping > 0 (K-FAC's Kronecker factors are "
            "singular for softmax outputs), got 0"
        )


def natural_gradient(
    fisher: FisherOperator,
    gradient: torch.Tensor,
    *,
    solve: SolveSpec = SolveSpec(),
    progress: ProgressCallback | None = None,
) -> NaturalGradient:
    """The natural-gradient direction ``v = (F + lambda I)^+ g`` of any model.

    Args:
        fisher: the model's :class:`~geomlab.geometry.curvature.FisherOperator`.
        gradient: ``(P,)`` loss gradient ``g``.
        solve: solver, damping, cutoff and CG options (see :class:`SolveSpec`).
        progress: called with ``("CG", iteration, cap, "residual r")`` per CG iteration and
            ``("Fisher columns", done, P, "")`` while ``dense`` forms F.

    Returns:
        :class:`NaturalGradient` (direction and diagnostics).
    """
    _check_kfac_damping(solve)
    if solve.solver in KFAC_SOLVERS:
        check_kfac_eligible(fisher.model, method=solve.solver.value)
    with math_attention():
        return _natural_gradient(fisher, gradient, solve, progress)


def _natural_gradient(fisher, gradient, solve: SolveSpec, progress) -> NaturalGradient:
    start = time.perf_counter()
    null_share, rank, iterations, lost = float("nan"), -1, 0, -1
    extremes = (float("nan"), float("nan"))
    converged, tolerance = True, float("nan")
    kfac = solve.solver in KFAC_SOLVERS
    if kfac and progress is not None:
        progress(f"{solve.solver.value} factors", 0, 1, "computing the Kronecker factors")
    solver = inverse(fisher, solve, progress=progress)
    direction = solver @ gradient
    if isinstance(solver, PseudoInverse):
        null_share = solver.null_space_share(gradient)
        rank, lost = solver.rank, solver.dropped_above_floor
        extremes = (float(solver.eigenvalues.min()), float(solver.eigenvalues.max()))
    elif isinstance(solver, CGInverse):
        iterations, tolerance = solver.iterations, solve.tolerance
    if kfac and progress is not None:
        progress(f"{solve.solver.value} factors", 1, 1, "factors computed and inverted")
    seconds = time.perf_counter() - start
    residual = fisher @ direction + solve.damping * direction - gradient
    g_norm = gradient.norm()
    relative_residual = float(residual.norm() / g_norm)
    if solve.solver is Solver.CG:
        converged = relative_residual <= CG_RESIDUAL_SLACK * solve.tolerance
    return NaturalGradient(
        direction=direction,
        solver=solve.solver,
        damping=solve.damping,
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
        inverse=solver,
    )
