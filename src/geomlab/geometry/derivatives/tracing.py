"""The dispatch-mode tracer both of the derivative stack's passes build on.

:class:`InputTracer` is a ``TorchDispatchMode`` that follows which tensors depend on an input
tensor through the aten ops of a forward pass. The piecewise-linearity check
(:mod:`geomlab.geometry.derivatives.eligibility`) follows dependence through storage as well
(``follow_storage``: a write into a view marks the base and every other view, over-marking
that can only refuse a model); the Taylor recorder
(:mod:`geomlab.geometry.derivatives.taylor.recorder`) follows identities and refuses aliasing
writes instead. What each does with an op is its own ``__torch_dispatch__``; which ops are
what comes from :mod:`geomlab.geometry.derivatives.ops`.
"""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from geomlab.geometry.derivatives.ops import storage_key, tensor_leaves

__all__ = ["InputTracer"]


class InputTracer(TorchDispatchMode):
    """Tracks the tensors that depend on ``inputs``: by identity, and with ``follow_storage``
    every tensor sharing storage with a tracked one. Tracked tensors are kept alive for the
    tracer's lifetime, so their ids and storages are not reused during the pass."""

    def __init__(self, inputs: torch.Tensor, *, follow_storage: bool) -> None:
        super().__init__()
        self._tracked: dict[int, torch.Tensor] = {}
        self._storages: set[int] = set()
        self._follow_storage = follow_storage
        self.track(inputs)

    def track(self, value: object) -> None:
        """Mark every tensor in ``value`` (a tensor or a nested structure) as input-dependent."""
        for tensor in tensor_leaves(value):
            self._tracked[id(tensor)] = tensor
            if self._follow_storage:
                key = storage_key(tensor)
                if key != 0:
                    self._storages.add(key)

    def is_tracked(self, value: object) -> bool:
        """Whether ``value`` is a tensor that depends on the input."""
        if not isinstance(value, torch.Tensor):
            return False
        if id(value) in self._tracked:
            return True
        if not self._follow_storage:
            return False
        key = storage_key(value)
        return key != 0 and key in self._storages
