"""How a natural-gradient direction is solved: the methods, the solvers and one frozen
:class:`SolveSpec` carried from an experiment's Config down to the inverse operators."""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import StrEnum

__all__ = ["CG_RESIDUAL_SLACK", "SolveSpec", "Solver", "StepMethod"]

CG_RESIDUAL_SLACK = 10.0
"""A CG solve counts as converged when its true relative residual ``||b - A x|| / ||b||`` is at
most ``CG_RESIDUAL_SLACK * tolerance``: CG stops on its recurrence residual, which drifts from
the true one by rounding."""


class StepMethod(StrEnum):
    """Step directions: ``sgd`` = the gradient, ``natgrad`` = the natural gradient (by the
    configured solver), ``kfac`` / ``ekfac`` = its (EK-)K-FAC approximation."""

    SGD = "sgd"
    NATGRAD = "natgrad"
    KFAC = "kfac"
    EKFAC = "ekfac"


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


KFAC_SOLVERS = (Solver.KFAC, Solver.EKFAC)


@dataclass(frozen=True)
class SolveSpec:
    """One natural-gradient solve, every option in one place.

    Attributes:
        solver: see :class:`Solver` (the ``natgrad`` method's solver).
        damping: ``lambda >= 0`` (absolute) of the ``natgrad`` solve, ``(F + lambda I)^+ g``.
            A ``kfac``/``ekfac`` solver needs ``lambda > 0``: their Kronecker factors are
            singular for softmax outputs.
        rcond: relative eigenvalue cutoff of the ``dense`` pseudo-inverse, applied to the
            eigenvalues of ``F + lambda I``.
        tolerance: ``cg``'s relative residual target (> 0).
        max_iterations: ``cg``'s iteration cap (``None``: ``10 P``).
        kfac_damping: the damping of the ``kfac`` / ``ekfac`` *methods* (> 0): each method names
            its own damping (:meth:`for_method`), none is ignored.
        kfac_exact_damping: ``kfac`` inverts ``A (x) G + lambda I`` exactly (eigendecompositions
            of every factor) instead of the factored Tikhonov damping
            ``(A + pi sqrt(lambda) I) (x) (G + sqrt(lambda)/pi I)`` (Cholesky; Martens & Grosse's
            pi-heuristic; the default, since a 9217 x 9217 factor of the MNIST CNN takes ~10 s to
            Cholesky-factor but over 5 min to eigendecompose on 2 CPU cores). ``ekfac`` is
            always exact (it lives in the factors' eigenbasis).
    """

    solver: Solver = Solver.DENSE
    damping: float = 0.0
    rcond: float = 1e-8
    tolerance: float = 1e-6
    max_iterations: int | None = None
    kfac_damping: float = 1e-3
    kfac_exact_damping: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "solver", Solver(self.solver))
        if self.damping < 0:
            raise ValueError(f"damping must be >= 0, got {self.damping}")
        if self.rcond < 0:
            raise ValueError(f"rcond must be >= 0, got {self.rcond}")
        if self.tolerance <= 0:
            raise ValueError(f"tol must be > 0, got {self.tolerance}")
        if self.max_iterations is not None and self.max_iterations < 1:
            raise ValueError(f"max_iterations must be >= 1, got {self.max_iterations}")
        if self.kfac_damping <= 0:
            raise ValueError(f"kfac_damping must be > 0, got {self.kfac_damping}")

    def for_method(self, method: StepMethod) -> SolveSpec:
        """The spec that solves ``method``'s direction: ``natgrad`` this one; ``kfac`` /
        ``ekfac`` their own solver with :attr:`kfac_damping`."""
        method = StepMethod(method)
        if method in (StepMethod.KFAC, StepMethod.EKFAC):
            return replace(self, solver=Solver(method.value), damping=self.kfac_damping)
        if method is StepMethod.NATGRAD:
            return self
        raise ValueError(f"method {method.value!r} has no solve")

    def iteration_cap(self, size: int) -> int:
        """``cg``'s cap for a system of ``size`` unknowns."""
        return 10 * size if self.max_iterations is None else self.max_iterations
