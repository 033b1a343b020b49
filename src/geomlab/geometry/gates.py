"""Validation gates: named checks with a pass/fail verdict and the numbers behind it."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from geomlab.geometry import linalg


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


def psd_gate(
    matrix: torch.Tensor, *, name: str = "fisher_psd", scope: str = "", rel_tol: float = 1e-7
) -> GateResult:
    """Gate A: a symmetric matrix is PSD up to ``rel_tol`` times its largest |eigenvalue|."""
    sym = (matrix + matrix.mT) / 2
    eigenvalues = linalg.eigvalsh(sym)
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


def finite_gate(values: dict[str, Any], *, name: str = "finite", scope: str = "") -> GateResult:
    """All given tensors/numbers are finite (NaN/inf are reported, never plotted)."""
    bad = []
    for key, value in values.items():
        t = value.detach() if isinstance(value, torch.Tensor) else torch.tensor(value)
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            bad.append(key)
    passed = not bad
    message = "PASS: all finite" if passed else f"FAIL: non-finite values in {', '.join(bad)}"
    return GateResult(name, passed, message, scope, {"non_finite": ",".join(bad)})


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
