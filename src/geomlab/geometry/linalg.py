"""Symmetric eigendecompositions used by the geometry layer.

Plain calls into ``torch.linalg`` that change no process-wide state. On a shared CPU, small
eigensolves are fastest single-threaded; the experiment edge arranges that with
:func:`geomlab.threads.limited_threads` (see that module for the measurement).
"""

from __future__ import annotations

import torch


def eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Eigenvalues (ascending) and orthonormal eigenvectors (columns) of a symmetric matrix.

    Args:
        matrix: ``(n, n)`` symmetric (only its lower triangle is read, as in LAPACK).

    Returns:
        ``(eigenvalues (n,), eigenvectors (n, n))`` with ``matrix = V diag(w) V^T``.
    """
    return torch.linalg.eigh(matrix)


def eigvalsh(matrix: torch.Tensor) -> torch.Tensor:
    """Eigenvalues (ascending) of a symmetric matrix (lower triangle read)."""
    return torch.linalg.eigvalsh(matrix)
