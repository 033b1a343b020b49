"""Symmetric eigendecompositions that stay fast when the CPU is shared.

LAPACK's threaded eigensolvers gain nothing on small matrices, and on a busy machine their
OpenMP barriers can make a 160 x 160 ``eigh`` a hundred times slower (measured here: 5 ms
single-threaded vs 0.65 s with 2 threads under load). Small CPU problems run single-threaded.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch

SINGLE_THREAD_MAX_SIZE = 512


@contextmanager
def _threads_for(matrix: torch.Tensor):
    if matrix.device.type != "cpu" or matrix.shape[-1] > SINGLE_THREAD_MAX_SIZE:
        yield
        return
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    with _threads_for(matrix):
        return torch.linalg.eigh(matrix)


def eigvalsh(matrix: torch.Tensor) -> torch.Tensor:
    with _threads_for(matrix):
        return torch.linalg.eigvalsh(matrix)
