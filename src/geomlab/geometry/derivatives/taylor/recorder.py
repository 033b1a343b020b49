"""The Taylor tape: record a forward pass's input-dependent aten ops, then replay the rules.

The model's ordinary forward pass runs under a ``TorchDispatchMode`` (:class:`TaylorRecorder`)
that records every aten op touching an input-dependent tensor (and raises
:class:`UnsupportedOperation`, naming the op, for one without a rule in :data:`RULES`). The
coefficients are then computed from that tape (:func:`replay`) with ordinary torch ops *above*
autograd, reading the primal values the forward produced, so reverse mode through the result
gives the parameter gradient of a penalty.

Writes are refused conservatively: an op writing into a view (``buf[:, :8] = h``), reading a
tensor that shares memory with an input-dependent in-place write, or reading a tensor changed in
place since its value was recorded raises :class:`UnsupportedOperation` — never a wrong number.
Which ops are value-free, linear or safe in place comes from the one op taxonomy,
:mod:`geomlab.geometry.derivatives.ops`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.derivatives.ops import (
    BATCH_NORM_OPS,
    INPLACE_SAFE_OPS,
    PIECEWISE_CONSTANT_OPS,
    PRIMAL_FREE_OPS,
    READS_OUTPUT_OPS,
    TAYLOR_BILINEAR_OPS,
    VALUE_FREE_OPS,
    op_name,
    storage_key,
    tensor_leaves,
    written_arguments,
)
from geomlab.geometry.derivatives.taylor.series import Coefficients, expand_to
from geomlab.geometry.derivatives.tracing import InputTracer
from geomlab.geometry.outputs import as_logits
from geomlab.geometry.refusal import Refused

__all__ = [
    "POISON", "RULES", "Context", "Entry", "Poison", "TaylorRecorder", "UnsupportedOperation",
    "replay", "rule", "taylor_forward",
]  # fmt: skip


class UnsupportedOperation(Refused, ValueError):
    """An op the Taylor pass has no rule for (or a write it cannot follow exactly)."""

    def __init__(self, op: str, detail: str = "") -> None:
        self.op = op
        super().__init__(f"no Taylor-mode rule for {op}{f' ({detail})' if detail else ''}")


class Poison:
    """Marks an input-dependent tensor whose series is not computed (e.g. a batch-norm op's
    saved statistics); reading it in a later op is refused."""


POISON = Poison()


@dataclass
class Entry:
    func: Callable
    name: str
    args: tuple
    kwargs: dict
    out: object
    versions: list[tuple[torch.Tensor, int]]


class TaylorRecorder(InputTracer):
    """Records the aten ops of a forward pass that touch a tensor depending on ``inputs``
    (tracked by identity; aliasing writes are refused, see the module docstring).

    Raises :class:`UnsupportedOperation` during the pass for an op without a rule."""

    def __init__(self, inputs: torch.Tensor) -> None:
        super().__init__(inputs, follow_storage=False)
        self.tape: list[Entry] = []
        self._versions: dict[int, int] = {id(inputs): inputs._version}
        self._written_storages: set[int] = set()
        # tensors written in place by the last op: autograd bumps their version counter only
        # after the op returns, so their versions are read at the next op (or at the end)
        self._refresh: list[tuple[Entry, torch.Tensor]] = []
        self._fresh: list[tuple[Entry | None, torch.Tensor]] = []

    def settle(self) -> None:
        """Record the versions of tensors the last op wrote in place (call after the pass)."""
        for entry, tensor in self._refresh:
            if entry.name not in PRIMAL_FREE_OPS and entry.name not in TAYLOR_BILINEAR_OPS:
                entry.versions.append((tensor, tensor._version))
            if id(tensor) in self._tracked:
                self._versions[id(tensor)] = tensor._version
        self._refresh = []
        for entry, tensor in self._fresh:
            if entry is not None:
                entry.versions.append((tensor, tensor._version))
            self._versions[id(tensor)] = tensor._version
        self._fresh = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.settle()
        leaves = tensor_leaves((args, kwargs))
        tracked = [t for t in leaves if id(t) in self._tracked]
        name = op_name(func)
        for tensor in tracked:  # a view of a tensor changed in place since: stale series
            if tensor._version != self._versions[id(tensor)]:
                raise UnsupportedOperation(name, "reads a tensor changed in place through an alias")
        if self._written_storages:
            for tensor in leaves:
                written_before = storage_key(tensor) in self._written_storages
                if written_before and id(tensor) not in self._tracked:
                    raise UnsupportedOperation(
                        name, "reads memory written in place with input-dependent values"
                    )
        if not tracked:
            return func(*args, **kwargs)
        if name in VALUE_FREE_OPS or (
            name in PIECEWISE_CONSTANT_OPS and not written_arguments(func, args, kwargs)
        ):
            return func(*args, **kwargs)
        if name not in RULES:
            raise UnsupportedOperation(name)
        written = written_arguments(func, args, kwargs)
        if written:
            self._check_write(name, func, args, written)
        written_ids = {id(t) for t in written}
        # the values a rule reads must not change before the replay: constants always, and
        # input-dependent arguments unless the rule is linear in them
        primal_free = name in PRIMAL_FREE_OPS or (
            name in TAYLOR_BILINEAR_OPS
            and len(tracked) == 1
            and not (name == "div" and len(args) > 1 and self.is_tracked(args[1]))
        )
        versions = [
            (t, t._version)
            for t in leaves
            if id(t) not in written_ids and not (primal_free and id(t) in self._tracked)
        ]
        out = func(*args, **kwargs)
        for tensor in written:
            key = storage_key(tensor)
            if key != 0 and tensor is not out:
                self._written_storages.add(key)  # e.g. running statistics: never read back
        outputs = [t for t in tensor_leaves(out) if id(t) not in written_ids]
        entry = Entry(func, name, args, kwargs, out, versions)
        self.tape.append(entry)
        self._refresh += [(entry, t) for t in written]
        # a view's output shares its base's version counter only once autograd's view layer
        # (above this mode) has wrapped it: its version is read at the next op, too
        self._fresh += [(entry if name in READS_OUTPUT_OPS else None, t) for t in outputs]
        self.track(out)
        for tensor in tensor_leaves(out):
            self._versions[id(tensor)] = tensor._version
        return out

    def _check_write(self, name: str, func, args, written: list[torch.Tensor]) -> None:
        """In-place ops are followed only where exact: into a tensor that is not a view, by an
        op whose rule does not need the overwritten value (batch norm may write its running
        statistics, which are then never read as input-dependent)."""
        for tensor in written:
            if tensor._base is not None:
                raise UnsupportedOperation(name, "writes into a view of another tensor")
        if name in BATCH_NORM_OPS:
            return
        if name not in INPLACE_SAFE_OPS or len(written) != 1 or written[0] is not args[0]:
            raise UnsupportedOperation(name, "in place")
        if name == "leaky_relu" and not (len(args) > 1 and args[1] > 0) and len(args) > 1:
            raise UnsupportedOperation(name, "in place with a non-positive slope")
        if name in ("mul", "div") and (
            not self.is_tracked(args[0]) or self.is_tracked(args[1] if len(args) > 1 else None)
        ):
            raise UnsupportedOperation(name, "in place with an input-dependent factor")


@dataclass
class Context:
    """What a rule sees: the op's primal args/outputs and the coefficients of tracked args."""

    entry: Entry
    order: int
    table: dict[int, Coefficients | Poison | None] = field(repr=False)

    @property
    def args(self) -> tuple:
        return self.entry.args

    @property
    def out(self):
        return self.entry.out

    def arg(self, index: int, name: str | None = None, default=None):
        if index < len(self.entry.args):
            return self.entry.args[index]
        return self.entry.kwargs.get(name, default) if name else default

    def series(self, value) -> Coefficients | None:
        if not isinstance(value, torch.Tensor):
            return None
        coefficients = self.table.get(id(value))
        if isinstance(coefficients, Poison):
            raise UnsupportedOperation(self.entry.name, "reads a tensor whose series is unknown")
        return coefficients


def replay(recorder: TaylorRecorder, inputs: torch.Tensor, directions: torch.Tensor, order: int):
    """Coefficients of every tracked tensor, by the rules, from the recorded tape: a dict
    ``id(tensor) → [h_1..h_d]`` (``None`` for tensors constant in t)."""
    table: dict[int, Coefficients | Poison | None] = {id(inputs): [directions]}
    for entry in recorder.tape:
        for tensor, version in entry.versions:
            if tensor._version != version:
                raise UnsupportedOperation(
                    entry.name, "an argument was changed in place after the op read it"
                )
        result = RULES[entry.name](Context(entry, order, table))
        outputs = tensor_leaves(entry.out)
        if isinstance(entry.out, torch.Tensor):
            result = [result]
        for tensor, coefficients in zip(outputs, result, strict=False):
            if coefficients is not None and not isinstance(coefficients, Poison):
                coefficients = [c for c in coefficients]
                if not coefficients:
                    coefficients = None
            table[id(tensor)] = coefficients
    return table


RULES: dict[str, Callable[[Context], object]] = {}
"""One rule per aten op name (:func:`rule`); the rule modules of this package fill it."""


def rule(*names: str):
    def register(fn):
        for name in names:
            RULES[name] = fn
        return fn

    return register


def taylor_forward(
    model: nn.Module, inputs: torch.Tensor, directions: torch.Tensor, *, max_order: int
) -> tuple[torch.Tensor, Coefficients]:
    """The model's outputs and their Taylor coefficients 1..d along each direction
    (``[K, *outputs.shape]`` per order; ``d`` ≤ ``max_order`` is the output's degree in t)."""
    x = inputs.detach() if not inputs.requires_grad else inputs
    recorder = TaylorRecorder(x)
    # attention's fused kernels (MHA fast path, flash SDPA) have no rule; their math forms do
    with math_attention(), recorder:
        outputs = model(x)
    recorder.settle()
    outputs = as_logits(outputs)  # a tensor, or an HF-style output's .logits; else refused
    table = replay(recorder, x, directions, max_order)
    coefficients = table.get(id(outputs))
    if isinstance(coefficients, Poison):
        raise UnsupportedOperation("model output", "its series is unknown")
    if not coefficients:
        coefficients = [torch.zeros(directions.shape[0], *outputs.shape, dtype=outputs.dtype,
                                    device=outputs.device)]  # fmt: skip
    return outputs, [expand_to(c, outputs) for c in coefficients]
