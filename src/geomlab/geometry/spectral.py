"""Spectral tools: top-k singular triplets, principal angles, subspace energy, effective rank.

The fast path :func:`top_singular_triplets` is randomized subspace iteration with a
Rayleigh-Ritz step and a convergence check; :func:`top_singular_triplets_reference` is the full
SVD it is tested against. Everything here is a pure function on tensors and device-agnostic.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

__all__ = [
    "SingularTriplets", "abs_cos", "column_space_angle_bound_deg", "energy_fraction_in_span",
    "entropy_effective_rank", "gradient_alignment_metrics", "orthonormal_basis",
    "principal_angle_summary_deg", "principal_angles", "residue_direction", "singular_value_gap",
    "spectral_norm_reference", "stable_rank", "subspace_alignment_cosines",
    "top_singular_triplets", "top_singular_triplets_reference",
]  # fmt: skip


@dataclass(frozen=True)
class SingularTriplets:
    """Leading singular triplets ``A ≈ U diag(S) Vᵀ`` (columns of U and V are orthonormal).

    ``iterations`` and ``converged`` describe the iterative solver (0 / True for the full SVD);
    ``max_residual`` is ``max_i ‖Aᵀu_i − σ_i v_i‖ / σ_1``, an a-posteriori accuracy check (the
    Ritz triplets satisfy A v_i = σ_i u_i exactly, so this is their whole residual, and each σ_i
    is within ``max_residual·σ_1`` of a true singular value). ``right_basis`` is the solver's
    whole right block (more than k columns), the best warm start for a nearby matrix.
    """

    U: torch.Tensor
    S: torch.Tensor
    V: torch.Tensor
    iterations: int
    converged: bool
    max_residual: float
    right_basis: torch.Tensor | None = None


def _relative_residual(A: torch.Tensor, U: torch.Tensor, S: torch.Tensor, V: torch.Tensor) -> float:
    if S.numel() == 0 or float(S[0]) == 0.0:
        return 0.0
    residual = A.mT @ U - V * S
    return float(torch.linalg.vector_norm(residual, dim=0).max() / S[0])


def top_singular_triplets_reference(A: torch.Tensor, k: int) -> SingularTriplets:
    """Top-``k`` singular triplets from a full (thin) SVD: the dense reference."""
    _check_rank_request(A, k)
    U, S, Vh = torch.linalg.svd(A, full_matrices=False)
    U, S, V = U[:, :k], S[:k], Vh[:k].mT
    return SingularTriplets(U, S, V, 0, True, _relative_residual(A, U, S, V))


def _check_rank_request(A: torch.Tensor, k: int) -> None:
    if A.ndim != 2:
        raise ValueError(f"expected a matrix, got a tensor of shape {tuple(A.shape)}")
    if not 1 <= k <= min(A.shape):
        raise ValueError(f"k must be in [1, {min(A.shape)}] for a {tuple(A.shape)} matrix, got {k}")


def top_singular_triplets(
    A: torch.Tensor,
    k: int,
    *,
    oversample: int = 10,
    max_iter: int = 100,
    tol: float = 1e-7,
    generator: torch.Generator | None = None,
    init: torch.Tensor | None = None,
) -> SingularTriplets:
    """Top-``k`` singular triplets of ``A`` (m×n) by randomized subspace iteration.

    A block of ``k + oversample`` vectors is iterated through ``AᵀA`` with re-orthonormalization
    each half step; after every iteration a Rayleigh-Ritz step (SVD of the small projected
    matrix) gives Ritz values, and iteration stops once the top-``k`` values change by less
    than ``tol`` (relative to σ_1) between iterations. ``init`` (n×j, e.g. last epoch's
    ``right_basis``) warm-starts the block; the remaining columns are Gaussian. Each iteration
    costs two products with ``A`` and ``Aᵀ`` against the thin block (memory-bound passes over
    A), plus one final pass for the residual, versus O(m n min(m, n)) for a full SVD.
    """
    _check_rank_request(A, k)
    m, n = A.shape
    block = min(k + oversample, m, n)
    start = torch.empty(n, block, dtype=A.dtype, device=A.device)
    used = 0
    if init is not None:
        used = min(init.shape[1], block)
        start[:, :used] = init[:, :used].to(A.dtype)
    if used < block:
        noise = torch.randn(n, block - used, generator=generator, dtype=A.dtype)
        start[:, used:] = noise.to(A.device)
    basis_right, _ = torch.linalg.qr(start)
    previous = None
    converged = False
    iterations = 0
    while True:
        iterations += 1
        # A Q_r = Q_l R, so R = Q_lᵀ A Q_r is the Rayleigh-Ritz matrix at no extra product.
        basis_left, ritz = torch.linalg.qr(A @ basis_right)
        small_u, values, small_vh = torch.linalg.svd(ritz)
        if previous is not None:
            change = (values[:k] - previous).abs().max() / values[0].clamp_min(1e-300)
            if float(change) <= tol:
                converged = True
                break
        if iterations >= max_iter:
            break
        previous = values[:k]
        basis_right, _ = torch.linalg.qr(A.mT @ basis_left)
    U = basis_left @ small_u[:, :k]
    V = basis_right @ small_vh[:k].mT
    S = values[:k]
    residual = _relative_residual(A, U, S, V)
    return SingularTriplets(U, S, V, iterations, converged, residual, basis_right)


def spectral_norm_reference(A: torch.Tensor) -> float:
    """‖A‖₂ from the full spectrum (the reference for the iterative estimate)."""
    return float(torch.linalg.matrix_norm(A, ord=2))


def orthonormal_basis(A: torch.Tensor, *, rtol: float = 1e-10) -> torch.Tensor:
    """Orthonormal basis of the column space of ``A``, dropping numerically null directions."""
    if A.shape[1] == 0:
        return A
    U, S, _ = torch.linalg.svd(A, full_matrices=False)
    if S.numel() == 0 or float(S[0]) == 0.0:
        return U[:, :0]
    threshold = rtol * S[0]
    rank = int(S.gt(threshold).sum())
    return U[:, :rank]


def principal_angles(A: torch.Tensor, B: torch.Tensor, *, rtol: float = 1e-10) -> torch.Tensor:
    """Principal angles (radians, ascending) between the column spaces of ``A`` and ``B``.

    The cosines are the singular values of ``Q_Aᵀ Q_B`` for orthonormal bases Q; there are
    ``min(rank A, rank B)`` angles. Note the bound this implies: two r-dimensional subspaces of
    R^m with 2r > m share at least 2r − m dimensions, so that many angles are zero regardless of
    the matrices (see :func:`column_space_angle_bound_deg`).
    """
    if A.shape[0] != B.shape[0]:
        raise ValueError(f"A and B need the same number of rows, got {A.shape[0]} and {B.shape[0]}")
    basis_a = orthonormal_basis(A, rtol=rtol)
    basis_b = orthonormal_basis(B, rtol=rtol)
    if basis_a.shape[1] == 0 or basis_b.shape[1] == 0:
        return torch.empty(0, dtype=A.dtype, device=A.device)
    cosines = torch.linalg.svdvals(basis_a.mT @ basis_b).clamp(0.0, 1.0)
    return torch.sort(torch.arccos(cosines)).values


def column_space_angle_bound_deg(rows: int, rank: int) -> float:
    """Largest possible mean principal angle (degrees) between two rank-``rank`` column spaces
    in R^``rows``: at least ``2·rank − rows`` angles are zero, the others are at most 90°."""
    forced_zero = max(0, 2 * rank - rows)
    return 90.0 * (rank - forced_zero) / rank


def abs_cos(u: torch.Tensor, v: torch.Tensor) -> float:
    """|cos| of the angle between two vectors (0 if either is zero); inputs are not modified."""
    norms = torch.linalg.vector_norm(u) * torch.linalg.vector_norm(v)
    if float(norms) == 0.0:
        return 0.0
    return float((u.reshape(-1) @ v.reshape(-1)).abs() / norms)


def energy_fraction_in_span(W: torch.Tensor, vectors: torch.Tensor) -> float:
    """‖W P_S‖_F / ‖W‖_F for S = span of the columns of ``vectors`` (d×j), W of shape k×d.

    This is the fraction of the rows' Frobenius mass that lies in S.
    """
    norm = torch.linalg.matrix_norm(W)
    if float(norm) == 0.0:
        return 0.0
    basis = orthonormal_basis(vectors)
    return float(torch.linalg.matrix_norm(W @ basis) / norm)


def subspace_alignment_cosines(basis: torch.Tensor, vectors: torch.Tensor) -> torch.Tensor:
    """Cosines of the principal angles (descending) between span(basis) and span(vectors)."""
    return torch.cos(principal_angles(basis, vectors))


def stable_rank(frobenius_norm: float, spectral_norm: float) -> float:
    """‖A‖_F² / ‖A‖₂²: a continuous rank that needs only σ_1 and the Frobenius norm."""
    if spectral_norm == 0.0:
        return 0.0
    return (frobenius_norm / spectral_norm) ** 2


def entropy_effective_rank(singular_values: torch.Tensor) -> float:
    """exp of the Shannon entropy of σ_i / Σσ (Roy & Vetterli 2007); needs the full spectrum."""
    total = singular_values.sum()
    if float(total) == 0.0:
        return 0.0
    p = singular_values / total
    p = p[p > 0]
    return math.exp(float(-(p * p.log()).sum()))


def principal_angle_summary_deg(A: torch.Tensor, B: torch.Tensor) -> dict[str, float | int]:
    """Mean / max / min principal angle (degrees) between the column spaces of ``A`` and
    ``B`` (e.g. two runs' top-r right singular subspaces), and ``rank`` = columns of ``A``.

    Returns:
        ``{"rank", "mean_angle_deg", "max_angle_deg", "min_angle_deg"}``.
    """
    degrees = torch.rad2deg(principal_angles(A, B))
    return {
        "rank": int(A.shape[1]),
        "mean_angle_deg": float(degrees.mean()),
        "max_angle_deg": float(degrees.max()),
        "min_angle_deg": float(degrees.min()),
    }


def singular_value_gap(larger: float, smaller: float) -> float:
    """σ_i / σ_(i+1), the gap ratio between consecutive singular values.

    One rule for a vanishing denominator: ``inf`` when σ_(i+1) = 0 < σ_i (an exact rank
    deficiency: the gap is unbounded), ``nan`` when both are 0 (no gap is defined). Both are
    non-finite, so a finite gate reports them instead of letting them into an average.
    """
    if smaller > 0.0:
        return larger / smaller
    return math.inf if larger > 0.0 else math.nan


def residue_direction(
    bulk: torch.Tensor, y: torch.Tensor, prediction: torch.Tensor
) -> torch.Tensor:
    """The residue direction X_Bᵀ(y − f) ∈ R^d: the bulk data (N×d) weighted by the residuals.

    Args:
        bulk: X_B, the data without its spike component, N×d.
        y: targets, shape (N,).
        prediction: f(x_i) at the weights of interest, shape (N,).
    """
    return bulk.mT @ (y - prediction)


def gradient_alignment_metrics(
    gradient: torch.Tensor,
    top: SingularTriplets,
    *,
    residue: torch.Tensor,
    spike: torch.Tensor,
    gaps: int = 2,
) -> dict[str, float]:
    """Spectrum and alignment of a weight gradient G (k×d) with two directions in R^d.

    With ``top`` = the leading triplets (σ_i, u_i, v_i) of G (at least two), computed in
    float64:

    - ``grad_fro_norm`` = ‖G‖_F; ``grad_sv_i`` = σ_i for every triplet in ``top``;
    - ``sv_ratio_{i}{i+1}`` = σ_i/σ_(i+1) for i = 1..``gaps`` (:func:`singular_value_gap`;
      NaN where σ_(i+1) is not among the triplets);
    - ``stable_rank`` = ‖G‖_F²/σ_1²;
    - ``cos_v{1,2}_{residue,spike}`` = |cos(v_j, residue)|, |cos(v_j, spike)|;
    - ``top2_cos_{1,2}`` = cosines of the principal angles between span(v_1, v_2) and
      span(residue, spike), descending (0 where that span has rank < 2);
    - ``svd_iterations``, ``svd_converged`` of the solver that produced ``top``.

    Args:
        gradient: G, k×d.
        top: leading singular triplets of G (``top_singular_triplets`` or its reference).
        residue: the residue direction X_Bᵀ(y − f) (:func:`residue_direction`), shape (d,).
        spike: the spike direction q, shape (d,).
        gaps: how many consecutive gap ratios to report.

    Returns:
        A dict of floats keyed by the names above (the CSV columns of alignment and
        gradient-rank).
    """
    if top.S.numel() < 2:
        raise ValueError(f"need at least 2 singular triplets, got {top.S.numel()}")
    residue = residue.double()
    spike = spike.double()
    V = top.V.double()
    sigma = top.S.double().tolist()
    fro = float(torch.linalg.matrix_norm(gradient.double()))
    top2 = subspace_alignment_cosines(V[:, :2], torch.stack([residue, spike], dim=1))
    top2 = torch.cat([top2, top2.new_zeros(2 - top2.numel())])
    ratios = {
        f"sv_ratio_{i}{i + 1}": singular_value_gap(sigma[i - 1], sigma[i])
        if i < len(sigma)
        else math.nan
        for i in range(1, gaps + 1)
    }
    return {
        "grad_fro_norm": fro,
        **{f"grad_sv_{i + 1}": s for i, s in enumerate(sigma)},
        **ratios,
        "stable_rank": stable_rank(fro, sigma[0]),
        "cos_v1_spike": abs_cos(V[:, 0], spike),
        "cos_v1_residue": abs_cos(V[:, 0], residue),
        "cos_v2_spike": abs_cos(V[:, 1], spike),
        "cos_v2_residue": abs_cos(V[:, 1], residue),
        "top2_cos_1": float(top2[0]),
        "top2_cos_2": float(top2[1]),
        "svd_iterations": float(top.iterations),
        "svd_converged": float(top.converged),
    }
