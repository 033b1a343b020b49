"""Validation gates: named checks with a pass/fail verdict and the numbers behind it."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch

from geomlab.geometry import spectral

__all__ = [
    "GateResult", "allclose_gate", "fast_vs_reference", "finite_columns_gate", "finite_gate",
    "loss_growth",
    "loss_growth_gate", "psd_gate", "psd_gate_from_eigenvalues", "psd_tolerance",
    "runaway_runs", "topk_converged_gate", "topk_reference_gate", "topk_tolerance",
]  # fmt: skip


@dataclass
class GateResult:
    """Outcome of one gate. ``details`` holds plain floats/ints/strings (JSON-able)."""

    name: str
    passed: bool
    message: str
    scope: str = ""
    details: dict[str, Any] = field(default_factory=dict)

    def as_row(self) -> dict[str, Any]:
        row = asdict(self)
        details = row.pop("details")
        return {**row, **details}


def psd_tolerance(
    rel_tol: float | None, *, dtype: torch.dtype, size: int, default: float = 1e-7
) -> float:
    """Relative tolerance of a PSD check on a ``size x size`` matrix computed in ``dtype``.

    An explicit ``rel_tol`` is used as given. ``None`` means the default scaled to the dtype:
    ``max(default, size * eps(dtype))``, the order of an eigensolver's backward error, so that
    float32 round-off (eigenvalues of -4e-7 x max at size 160) is not read as indefiniteness,
    while float64 keeps ``default``.
    """
    if rel_tol is not None:
        return rel_tol
    return max(default, size * torch.finfo(dtype).eps)


def psd_gate(
    matrix: torch.Tensor, *, name: str = "fisher_psd", scope: str = "", rel_tol: float = 1e-7
) -> GateResult:
    """Gate A: a symmetric matrix is PSD up to ``rel_tol`` times its largest |eigenvalue|."""
    sym = (matrix + matrix.mT) / 2
    eigenvalues = torch.linalg.eigvalsh(sym)
    return psd_gate_from_eigenvalues(eigenvalues, name=name, scope=scope, rel_tol=rel_tol)


def psd_gate_from_eigenvalues(
    eigenvalues: torch.Tensor, *, name: str = "fisher_psd", scope: str = "", rel_tol: float = 1e-7
) -> GateResult:
    """Gate A from already computed eigenvalues (saves a second decomposition)."""
    min_eig = float(eigenvalues.min())
    max_eig = float(eigenvalues.max())
    scale = max(abs(min_eig), abs(max_eig))
    finite = math.isfinite(min_eig) and math.isfinite(max_eig)
    passed = finite and min_eig >= -rel_tol * scale
    details = {
        "min_eigenvalue": min_eig,
        "max_eigenvalue": max_eig,
        "condition_number": max_eig / min_eig if min_eig > 0 else math.inf,
        "rel_tol": rel_tol,
    }
    verdict = "PASS" if passed else "FAIL"
    message = f"{verdict}: min eigenvalue {min_eig:.3e} vs tolerance {-rel_tol * scale:.3e}"
    return GateResult(name=name, passed=passed, message=message, scope=scope, details=details)


def _as_float_array(value: Any) -> np.ndarray:
    """Any tensor / array / number / (nested) sequence as float64; None becomes NaN."""
    if isinstance(value, torch.Tensor):
        value = value.detach().to("cpu", torch.float64).numpy()
    elif isinstance(value, list | tuple):
        value = [np.nan if v is None else v for v in np.asarray(value, dtype=object).ravel()]
    elif value is None:
        value = np.nan
    try:
        return np.asarray(value, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):  # strings, objects: not numbers, so not finite numbers
        return np.array([np.nan])


def finite_gate(values: Mapping[str, Any], *, name: str = "finite", scope: str = "") -> GateResult:
    """Every named value is finite: tensors, arrays, numbers, sequences (None counts as
    non-finite). The one finiteness check of geomlab: NaN/inf are reported, never plotted or
    averaged; the message names each offending entry and how many values failed."""
    bad: dict[str, int] = {}
    for key, value in values.items():
        array = _as_float_array(value)
        count = int((~np.isfinite(array)).sum())
        if count:
            bad[key] = count
    passed = not bad
    listing = ", ".join(f"{key} ({count})" for key, count in bad.items())
    message = "PASS: all finite" if passed else f"FAIL: non-finite values in {listing}"
    details = {"non_finite": ",".join(bad), "non_finite_count": sum(bad.values())}
    return GateResult(name, passed, message, scope, details)


def finite_columns_gate(
    frame: Any,
    columns: Iterable[str] | None = None,
    *,
    name: str = "finite_results",
    scope: str = "",
) -> GateResult:
    """:func:`finite_gate` over the given (default: all numeric) columns of a DataFrame."""
    if columns is None:
        columns = [c for c in frame.columns if frame[c].dtype.kind in "fiucb"]
    return finite_gate({c: frame[c].to_numpy(dtype=object) for c in columns}, name=name,
                       scope=scope)  # fmt: skip


def fast_vs_reference(fast: torch.Tensor, reference: torch.Tensor) -> float:
    """The one rule a fast path is compared with its reference by: ``max |fast - reference|``
    relative to the reference's largest entry (``max |reference|``, floored at 1e-300), a float
    (NaN/inf when either side is). The Fisher self-check holds it to ``SELF_CHECK_RTOL``."""
    scale = max(float(reference.abs().max()), 1e-300)
    return float((fast - reference).abs().max()) / scale


def allclose_gate(
    a: torch.Tensor,
    b: torch.Tensor,
    *,
    name: str,
    scope: str = "",
    rel_tol: float = 1e-10,
) -> GateResult:
    """Two tensors agree to ``rel_tol`` relative to the larger max-abs value (equivalence gates)."""
    diff = float((a - b).abs().max()) if a.numel() else 0.0
    scale = max(
        float(a.abs().max()) if a.numel() else 0.0,
        float(b.abs().max()) if b.numel() else 0.0,
        1e-300,
    )
    rel = diff / scale
    passed = math.isfinite(rel) and rel <= rel_tol
    verdict = "PASS" if passed else "FAIL"
    message = f"{verdict}: max |a-b| = {diff:.3e} ({rel:.3e} relative, tolerance {rel_tol:.1e})"
    return GateResult(
        name, passed, message, scope, {"max_abs_diff": diff, "rel_diff": rel, "rel_tol": rel_tol}
    )


def topk_tolerance(solver_tol: float, dtype: torch.dtype) -> float:
    """The one tolerance for the fast top-k singular values against the full SVD:
    ``max(10 · solver_tol, 100 · eps(dtype))``.

    The solver stops once the top-k Ritz values change by at most ``solver_tol · σ_1`` between
    iterations. Ritz values of subspace iteration converge linearly, so with rate ρ the error
    left is at most ``change · ρ/(1 − ρ)``, i.e. ≤ 10 · solver_tol for any ρ ≤ 10/11; the floor
    ``100 · eps`` covers rounding in the solve's dtype (1.2e-5 in float32).
    """
    return max(10.0 * solver_tol, 100.0 * torch.finfo(dtype).eps)


def topk_reference_gate(
    matrix: torch.Tensor,
    fast: spectral.SingularTriplets,
    *,
    solver_tol: float,
    name: str = "fast_topk_vs_full_svd",
    scope: str = "",
    min_cos_v1: float = 0.999,
) -> GateResult:
    """The fast top-k triplets of ``matrix`` against a float64 full SVD of it.

    Passes when the singular values agree to :func:`topk_tolerance` (relative to σ_1) and the
    leading right singular vectors satisfy |cos(v_1, v_1_ref)| ≥ ``min_cos_v1``.
    """
    k = fast.S.numel()
    reference = spectral.top_singular_triplets_reference(matrix.double(), k)
    rel_tol = topk_tolerance(solver_tol, fast.S.dtype)
    gate = allclose_gate(fast.S.double(), reference.S, name=name, scope=scope, rel_tol=rel_tol)
    cos_v1 = spectral.abs_cos(fast.V[:, 0].double(), reference.V[:, 0])
    gate.details["cos_v1_vs_reference"] = cos_v1
    if cos_v1 < min_cos_v1:
        gate.passed = False
        gate.message += f"; FAIL: |cos(v1, reference v1)| = {cos_v1:.6f} < {min_cos_v1}"
    return gate


def topk_converged_gate(
    unconverged: int, *, name: str = "topk_converged", scope: str = ""
) -> GateResult:
    """Every fast top-k solve met its tolerance (``unconverged`` = solves that hit max_iter)."""
    passed = unconverged == 0
    message = (
        "PASS: every fast top-k solve met its tolerance"
        if passed
        else f"FAIL: {unconverged} fast top-k solves hit svd_max_iter"
    )
    return GateResult(name, passed, message, scope, {"unconverged": unconverged})


def loss_growth(initial: float, final: float) -> float:
    """final / initial for a loss; ``inf`` when a zero initial loss became positive, ``nan``
    when either value is not finite (a non-finite loss counts as a runaway, never as fine)."""
    if not (math.isfinite(initial) and math.isfinite(final)):
        return math.nan
    if initial > 0:
        return final / initial
    return 1.0 if final <= 0 else math.inf


def runaway_runs(growth: Mapping[str, float], *, max_growth: float) -> list[str]:
    """Runs whose loss grew more than ``max_growth``-fold, or whose growth is not finite."""
    return [run for run, value in growth.items() if not value <= max_growth]


def loss_growth_gate(
    growth: Mapping[str, float],
    *,
    max_growth: float,
    expected: Iterable[str] = (),
    name: str = "train_mse_growth",
    scope: str = "",
) -> GateResult:
    """Runaway check: a run whose loss grew more than ``max_growth``-fold over training (its
    :func:`loss_growth` > ``max_growth``, or not finite) ran away.

    The gate fails when a run outside ``expected`` ran away. ``expected`` names runs known to
    diverge (a preset reproducing a notebook's diverging cells): they are still listed as
    runaways in the details, only they do not fail the gate. Callers keep every runaway run
    out of headline averages.

    Args:
        growth: run name -> final loss / initial loss.
        max_growth: the largest growth factor that still counts as training.
        expected: run names whose runaway is expected.

    Returns:
        A :class:`GateResult` whose details hold ``runaway`` and ``unexpected_runaway``
        (comma-joined run names), ``max_growth`` and the largest growth seen.
    """
    expected = set(expected)
    runaway = runaway_runs(growth, max_growth=max_growth)
    unexpected = [run for run in runaway if run not in expected]
    passed = not unexpected
    finite = [v for v in growth.values() if math.isfinite(v)]
    largest = max(finite, default=math.nan)

    def listing(runs: list[str]) -> str:
        return ", ".join(f"{run} (×{growth[run]:.3g})" for run in runs)

    if passed:
        message = f"PASS: no run's loss grew more than {max_growth:g}-fold"
        if runaway:
            message += f" except expected runaways {listing(runaway)}"
    else:
        message = f"FAIL: loss grew more than {max_growth:g}-fold in {listing(unexpected)}"
    details = {
        "runaway": ",".join(runaway),
        "unexpected_runaway": ",".join(unexpected),
        "max_growth": max_growth,
        "largest_growth": largest,
    }
    return GateResult(name, passed, message, scope, details)
