"""Inverses of the (damped) Fisher as operators that carry their diagnostics.

Every inverse is applied the one way an operator is, ``inverse @ g``:
:class:`PseudoInverse` (dense eigendecomposition, ``rcond`` cutoff, rank), :class:`CGInverse`
(conjugate gradients on ``F @ v``; iterations, residual, converged after each solve) and
:class:`KFACInverse` (curvlinops' K-FAC / EK-FAC). :func:`inverse` builds the one a
:class:`~geomlab.geometry.natural_gradient.solve.SolveSpec` names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from geomlab.geometry.curvature import FisherOperator, ProgressCallback
from geomlab.geometry.natural_gradient.solve import (
    CG_RESIDUAL_SLACK,
    KFAC_SOLVERS,
    Solver,
    SolveSpec,
)

__all__ = ["CGInverse", "KFACInverse", "PseudoInverse", "inverse", "pseudo_inverse"]


@dataclass(frozen=True)
class PseudoInverse:
    """``(A + lambda I)^+`` of a symmetric PSD ``A`` from one eigendecomposition, kept once and
    applied as ``inverse @ v`` many times.

    ``eigenvalues`` are ``A``'s (undamped); eigenvalues ``w + lambda`` at or below
    ``cutoff = rcond * max|w + lambda|`` count as zero (the numerical null space); ``rank`` is
    the number kept.
    """

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    inverse_eigenvalues: torch.Tensor
    rank: int
    cutoff: float
    rcond: float = 0.0
    damping: float = 0.0

    def __matmul__(self, vector: torch.Tensor) -> torch.Tensor:
        """``A^+ v = V diag(1/w kept) V^T v``."""
        coords = self.eigenvectors.T @ vector
        if coords.ndim == 2:
            return self.eigenvectors @ (self.inverse_eigenvalues[:, None] * coords)
        return self.eigenvectors @ (self.inverse_eigenvalues * coords)

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.eigenvectors.shape)

    @property
    def dtype(self) -> torch.dtype:
        return self.eigenvectors.dtype

    def dense(self) -> torch.Tensor:
        """The dense pseudo-inverse ``V diag(1/w kept) V^T``."""
        return (self.eigenvectors * self.inverse_eigenvalues) @ self.eigenvectors.T

    @property
    def dropped_above_floor(self) -> int:
        """Eigenvalues of ``A + lambda I`` the cutoff dropped although they lie above the
        round-off floor ``P eps(dtype) max|w + lambda|`` (real curvature)."""
        shifted = self.eigenvalues + self.damping
        floor = len(shifted) * torch.finfo(shifted.dtype).eps * float(shifted.abs().max())
        return int(((self.inverse_eigenvalues == 0) & (shifted > floor)).sum())

    def null_space_share(self, rhs: torch.Tensor) -> float:
        """``||P_null b||^2 / ||b||^2``: ``b``'s share in the span of the eigenvectors of the
        undamped ``A`` with ``w <= rcond * max|w|``."""
        coords = self.eigenvectors.T @ rhs
        null = self.eigenvalues <= self.rcond * float(self.eigenvalues.abs().max())
        return float(coords[null].pow(2).sum() / coords.pow(2).sum())


def pseudo_inverse(matrix: torch.Tensor, *, rcond: float, damping: float = 0.0) -> PseudoInverse:
    """PSD pseudo-inverse of ``A + lambda I`` by one symmetric eigendecomposition of ``A``.

    ``(A + lambda I)^+ = sum_{s_k > rcond * max|s|} v_k v_k^T / s_k`` with ``s = w + lambda``.

    Args:
        matrix: ``(n, n)`` symmetric PSD (symmetrized as ``(A + A^T)/2`` first).
        rcond: relative eigenvalue cutoff, >= 0.
        damping: ``lambda >= 0``.

    Returns:
        :class:`PseudoInverse` with the eigenpairs, kept rank and absolute cutoff.
    """
    if rcond < 0:
        raise ValueError(f"rcond must be >= 0, got {rcond}")
    if damping < 0:
        raise ValueError(f"damping must be >= 0, got {damping}")
    eigenvalues, eigenvectors = torch.linalg.eigh((matrix + matrix.T) / 2)
    shifted = eigenvalues + damping if damping else eigenvalues
    cutoff = rcond * float(shifted.abs().max())
    keep = shifted > cutoff
    inverse_eigenvalues = torch.where(keep, 1.0 / torch.where(keep, shifted, 1.0), 0.0)
    return PseudoInverse(
        eigenvalues, eigenvectors, inverse_eigenvalues, int(keep.sum()), cutoff, rcond, damping
    )


class CGInverse:
    """``(A + lambda I)^+`` by conjugate gradients from ``x = 0``, for symmetric PSD ``A`` given
    as anything with ``A @ v`` (a :class:`~geomlab.geometry.curvature.FisherOperator`, a tensor).

    ``inverse @ b`` stops when ``||b - A x|| <= tol ||b||`` (the recurrence residual, re-checked
    once with a true product at the end) or after ``max_iterations`` (default ``10 len(b)``: in
    floating point an ill-conditioned system needs more than exact arithmetic's ``len(b)``). For
    a singular ``A`` and ``b`` in its range, the iterates stay in the Krylov space of ``b``, so
    the limit is the minimum-norm solution ``A^+ b``. After each solve, ``iterations``,
    ``relative_residual`` (true, ``||b - A x|| / ||b||``) and ``converged`` (that residual at
    most ``CG_RESIDUAL_SLACK * tol``) describe it.

    Args:
        operator: ``A``.
        damping: ``lambda >= 0``.
        tol: relative residual target (> 0).
        max_iterations: cap on iterations (>= 1).
        callback: ``callback(iteration, relative recurrence residual)`` after each iteration.
    """

    def __init__(
        self,
        operator,
        *,
        damping: float = 0.0,
        tol: float = 1e-6,
        max_iterations: int | None = None,
        callback: Callable[[int, float], None] | None = None,
    ) -> None:
        if tol <= 0:
            raise ValueError(f"tol must be > 0, got {tol}")
        if max_iterations is not None and max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {max_iterations}")
        self.operator, self.damping, self.tol = operator, damping, tol
        self.max_iterations, self.callback = max_iterations, callback
        self.iterations, self.relative_residual, self.converged = 0, float("nan"), False

    def _product(self, vector: torch.Tensor) -> torch.Tensor:
        return self.operator @ vector + self.damping * vector

    def __matmul__(self, rhs: torch.Tensor) -> torch.Tensor:
        max_iterations = 10 * rhs.numel() if self.max_iterations is None else self.max_iterations
        b_norm = float(rhs.norm())
        x = torch.zeros_like(rhs)
        if b_norm == 0:
            self.iterations, self.relative_residual, self.converged = 0, 0.0, True
            return x
        r = rhs.clone()
        p = r.clone()
        rr = r @ r
        iterations = 0
        while iterations < max_iterations and float(rr.sqrt()) > self.tol * b_norm:
            ap = self._product(p)
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
            if self.callback is not None:
                self.callback(iterations, float(rr.sqrt()) / b_norm)
        residual = float((rhs - self._product(x)).norm()) / b_norm
        self.iterations, self.relative_residual = iterations, residual
        self.converged = residual <= self.tol * CG_RESIDUAL_SLACK
        return x


class KFACInverse:
    """``(s K + lambda I)^-1`` for curvlinops' K-FAC / EK-FAC ``K`` of a Fisher with scale ``s``:
    ``(K + (lambda / s) I)^-1 / s``, exact damping for EK-FAC (and K-FAC with
    ``exact_damping``), else the factored pi-heuristic damping."""

    def __init__(
        self,
        fisher: FisherOperator,
        *,
        damping: float,
        eigenvalue_corrected: bool = False,
        exact_damping: bool = False,
    ) -> None:
        from curvlinops import KFACInverseLinearOperator

        base = fisher.kfac_unscaled(eigenvalue_corrected=eigenvalue_corrected)
        self.scale = fisher.scale
        exact = eigenvalue_corrected or exact_damping
        self._inverse = KFACInverseLinearOperator(
            base, damping=damping / self.scale, use_exact_damping=exact,
            use_heuristic_damping=not exact,
        )  # fmt: skip

    def __matmul__(self, vector: torch.Tensor) -> torch.Tensor:
        return (self._inverse @ vector) / self.scale


def inverse(
    fisher: FisherOperator, solve: SolveSpec, *, progress: ProgressCallback | None = None
) -> PseudoInverse | CGInverse | KFACInverse:
    """The inverse operator ``solve`` names for ``fisher`` (damped by ``solve.damping``)."""
    if solve.solver is Solver.DENSE:
        dense = fisher.dense(progress=progress)
        return pseudo_inverse(dense, rcond=solve.rcond, damping=solve.damping)
    if solve.solver is Solver.CG:
        cap = solve.iteration_cap(fisher.dim)

        def report(iteration: int, residual: float) -> None:
            if progress is not None:
                progress("CG", iteration, cap, f"residual {residual:.3g}")

        return CGInverse(fisher, damping=solve.damping, tol=solve.tolerance,
                         max_iterations=solve.max_iterations, callback=report)  # fmt: skip
    assert solve.solver in KFAC_SOLVERS
    return KFACInverse(fisher, damping=solve.damping,
                       eigenvalue_corrected=solve.solver is Solver.EKFAC,
                       exact_damping=solve.kfac_exact_damping)  # fmt: skip
