"""Thread limits for the experiment edge (never called inside ``geomlab.geometry``).

``torch.set_num_threads`` is process-wide state. The science layer never touches it; an
experiment that runs many small dense problems (eigensolves of a 160 x 160 Fisher, say) wraps
its loop in :func:`limited_threads`, which restores the previous setting on exit and on error.

Why small CPU problems run single-threaded: LAPACK's threaded eigensolvers gain nothing on small
matrices, and on a busy machine their OpenMP barriers can make a 160 x 160 ``eigh`` a hundred
times slower (measured here: 5 ms single-threaded vs 0.65 s with 2 threads under load).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

SINGLE_THREAD_MAX_SIZE = 512


@contextmanager
def limited_threads(n_threads: int | None) -> Iterator[None]:
    """Run the block with ``torch.set_num_threads(n_threads)``; restore the previous count after.

    Args:
        n_threads: intra-op threads inside the block (>= 1), or ``None`` to change nothing.
    """
    if n_threads is None:
        yield
        return
    if n_threads < 1:
        raise ValueError(f"n_threads must be >= 1, got {n_threads}")
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def threads_for_dense_size(size: int, device: torch.device | str) -> int | None:
    """The edge policy: ``1`` for dense problems of side ``size <= SINGLE_THREAD_MAX_SIZE`` on
    the CPU, ``None`` (leave as is) otherwise. Pass the result to :func:`limited_threads`."""
    return 1 if torch.device(device).type == "cpu" and size <= SINGLE_THREAD_MAX_SIZE else None
