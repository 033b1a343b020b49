"""Is a model's logit map piecewise linear in its input? (When it is, the cumulant path is exact.)

:func:`check_piecewise_linear` runs one forward pass under a ``TorchDispatchMode`` and follows
which tensors depend on the input through the aten ops it sees. An op that touches an
input-dependent tensor must be value-free, affine, bilinear with one input-dependent factor, or
piecewise linear; anything else is reported by name.

Writes are followed conservatively. An op that writes input-dependent data into a tensor (for
example ``buf[:, :8] = h[:, :8]``, which is ``copy_`` into a view of ``buf``) marks the written
tensor's whole *storage* as input-dependent, so the base tensor and every other view of it count
as input-dependent afterwards. Over-marking can only refuse a model, never accept a wrong one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

from geomlab.geometry.attention import math_attention

# Ops whose output does not depend on the *values* of their tensor arguments.
_VALUE_FREE_OPS = frozenset(
    {
        "empty_like",
        "zeros_like",
        "ones_like",
        "full_like",
        "rand_like",
        "randn_like",
        "new_empty",
        "new_zeros",
        "new_ones",
        "new_full",
        "bernoulli",
        "sym_size",
        "sym_stride",
        "sym_numel",
        "size",
        "stride",
        "is_same_size",
    }
)
# Piecewise constant in x (zero derivative almost everywhere, as autograd has it): outputs are
# constants for the derivative engine.
PIECEWISE_CONSTANT_OPS = frozenset(
    {"gt", "lt", "ge", "le", "eq", "ne", "sign", "argmax", "argmin", "isnan", "isinf",
     "isfinite", "floor", "ceil", "round", "trunc", "logical_and", "logical_or", "logical_not",
     "bitwise_and", "bitwise_or", "bitwise_not"}
)  # fmt: skip
# Affine in their input-dependent arguments jointly (any number of them may depend on x).
_AFFINE_OPS = frozenset(
    {
        "add",
        "sub",
        "neg",
        "view",
        "_unsafe_view",
        "reshape",
        "t",
        "transpose",
        "permute",
        "expand",
        "clone",
        "contiguous",
        "slice",
        "select",
        "cat",
        "stack",
        "squeeze",
        "unsqueeze",
        "flatten",
        "detach",
        "alias",
        "sum",
        "mean",
        "avg_pool2d",
        "adaptive_avg_pool2d",
        "copy",
        "split",
        "split_with_sizes",
        "unbind",
        "index_select",
        "index",
        "_to_copy",
        "constant_pad_nd",
        "fill",
        "zero",
        # dropout: the input times a mask drawn independently of its values (the CUDA
        # train-mode op; it returns (output, mask))
        "native_dropout",
        "_native_batch_norm_legit_no_training",
        "_batch_norm_no_update",
        # writes at constant indices / under a constant mask, and selection by a constant
        # condition: affine jointly in self and the source (a scatter with a reduction is not)
        "where",
        "masked_fill",
        "masked_scatter",
        "index_put",
        "index_copy",
        "index_add",
        "index_fill",
        "scatter_add",
        # more linear reindexing and pooling (the differential fuzzer's networks use them)
        "as_strided",
        "_reshape_alias",
        "pixel_shuffle",
        "repeat",
        "roll",
        "flip",
        "gather",
        "diagonal",
        "tril",
        "triu",
        "unfold",
        "avg_pool1d",
        "avg_pool3d",
        "_adaptive_avg_pool2d",
        "adaptive_avg_pool1d",
    }
)
# Batch-norm ops whose ``training`` flag is the positional argument at this index: affine
# (running statistics, independent of x) in eval mode; batch statistics in train mode.
_BATCH_NORM_TRAINING_ARG = {
    "native_batch_norm": 5,
    "cudnn_batch_norm": 5,
    "miopen_batch_norm": 5,
    "_native_batch_norm_legit": 5,  # (input, w, b, running_mean, running_var, training, ...)
}
# Linear in each argument separately: exact only if at most one factor depends on x.
_BILINEAR_OPS = {
    "mul": (0, 1),
    "mm": (0, 1),
    "bmm": (0, 1),
    "matmul": (0, 1),
    "addmm": (1, 2),
    "baddbmm": (1, 2),
    "linear": (0, 1),
    "convolution": (0, 1),
    "_convolution": (0, 1),
    "conv2d": (0, 1),
    "conv1d": (0, 1),
}
# Piecewise linear: autograd differentiates them as locally linear maps.
_PIECEWISE_LINEAR_OPS = frozenset(
    {
        "relu",
        "threshold",
        "max_pool1d",
        "max_pool2d",
        "max_pool2d_with_indices",
        "max_pool3d_with_indices",
        "leaky_relu",
        "hardtanh",
        "abs",
        "clamp_min",
        "clamp_max",
        "clamp",
    }
)


@dataclass(frozen=True)
class Eligibility:
    """Whether a fast path is exact for a model, and why not if it is not."""

    eligible: bool
    reason: str
    offending_ops: tuple[str, ...] = ()


def op_name(func) -> str:
    """The aten op's name without overload or in-place underscore: ``aten.add_.Tensor`` → add."""
    return func.overloadpacket.__name__.rstrip("_")


def written_arguments(func, args, kwargs) -> list[torch.Tensor]:
    """The tensors an op writes into (in-place ops, ``out=`` arguments), from its schema."""
    written = []
    for position, argument in enumerate(func._schema.arguments):
        alias = argument.alias_info
        if alias is None or not alias.is_write:
            continue
        value = args[position] if position < len(args) else kwargs.get(argument.name)
        for tensor in tree_flatten(value)[0]:
            if isinstance(tensor, torch.Tensor):
                written.append(tensor)
    return written


def storage_key(tensor: torch.Tensor) -> int:
    """An id for a tensor's storage (0 for storage-less tensors, which are never shared)."""
    try:
        return tensor.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):
        return 0


class _InputDependenceTracer(TorchDispatchMode):
    """Follows which tensors depend on the input and records ops that are not piecewise linear."""

    def __init__(self, tracked: torch.Tensor) -> None:
        super().__init__()
        # Keep the tensors alive so that ids and storages are not reused during the trace.
        self._alive: list[torch.Tensor] = []
        self._ids: set[int] = set()
        self._storages: set[int] = set()
        self.offending: list[str] = []
        self._track(tracked)

    def is_tracked(self, value: object) -> bool:
        if not isinstance(value, torch.Tensor):
            return False
        if id(value) in self._ids:
            return True
        key = storage_key(value)
        return key != 0 and key in self._storages

    def _track(self, outputs: object) -> None:
        for value in tree_flatten(outputs)[0]:
            if isinstance(value, torch.Tensor):
                self._alive.append(value)
                self._ids.add(id(value))
                key = storage_key(value)
                if key != 0:
                    self._storages.add(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat_args = tree_flatten((args, kwargs))[0]
        # decide before the call: an in-place op makes its own argument tracked afterwards
        depends = any(self.is_tracked(a) for a in flat_args)
        outputs = func(*args, **kwargs)
        if not depends:
            return outputs
        name = op_name(func)
        if name in _VALUE_FREE_OPS or name in PIECEWISE_CONSTANT_OPS:
            return outputs
        if name in _BILINEAR_OPS:
            positions = _BILINEAR_OPS[name]
            tracked_factors = sum(self.is_tracked(args[i]) for i in positions if i < len(args))
            if tracked_factors > 1:
                self.offending.append(f"{name} (product of two input-dependent tensors)")
        elif name == "div":
            if len(args) > 1 and self.is_tracked(args[1]):
                self.offending.append("div (input-dependent denominator)")
        elif name == "native_dropout":
            train = args[2] if len(args) > 2 else kwargs.get("train")
            if train is False:  # functorch: vmap(jvp) returns a batched primal through it
                self.offending.append("native_dropout (train=False: the vmapped JVP fails)")
        elif name == "scatter":
            if len(args) > 4 or "reduce" in kwargs:
                self.offending.append("scatter (with a reduction)")
        elif name in _BATCH_NORM_TRAINING_ARG:
            index = _BATCH_NORM_TRAINING_ARG[name]
            training = args[index] if index < len(args) else kwargs.get("training", False)
            if training:
                self.offending.append(f"{name} (train-mode batch statistics)")
        elif name not in _AFFINE_OPS and name not in _PIECEWISE_LINEAR_OPS:
            self.offending.append(name)
        # writes: the written tensors (and, through their storage, their bases and views)
        # depend on the input from now on
        self._track(written_arguments(func, args, kwargs))
        self._track(outputs)
        return outputs


def probe_batch(example_inputs: torch.Tensor, size: int = 2) -> torch.Tensor:
    """``size`` samples for a trace: the first ones, repeated when fewer are given (a one-sample
    batch would make train-mode BatchNorm raise)."""
    probe = example_inputs[:size].detach().clone()
    if probe.shape[0] < size:
        repeats = -(-size // max(probe.shape[0], 1))
        probe = probe.repeat(repeats, *([1] * (probe.dim() - 1)))[:size]
    return probe


def rng_devices(tensor: torch.Tensor) -> list[int]:
    """The CUDA device indices ``torch.random.fork_rng`` must fork for ``tensor``."""
    if tensor.device.type != "cuda":
        return []
    index = tensor.device.index
    return [index if index is not None else torch.cuda.current_device()]


def check_piecewise_linear(model: nn.Module, example_inputs: torch.Tensor) -> Eligibility:
    """Trace one forward pass on two samples of ``example_inputs`` and decide if the logits are
    piecewise linear in the input (so that the cumulant path is exact).

    The trace runs under ``no_grad`` and a forked RNG, so it does not change the random stream
    (dropout masks) of the caller; buffers the pass writes (BatchNorm running statistics) are
    restored. The model's current train/eval mode is the one checked. A trace that raises makes
    the model ineligible (the reason says why) rather than raising.
    """
    probe = probe_batch(example_inputs)
    tracer = _InputDependenceTracer(probe)
    try:
        with (
            math_attention(),  # the ops geometry's passes see (not torch's fused attention)
            torch.random.fork_rng(devices=rng_devices(probe)),
            torch.no_grad(),
            preserved_buffers(model),
            tracer,
        ):
            logits = model(probe)
    except Exception as error:  # noqa: BLE001 - an untraceable model is ineligible, not fatal
        return Eligibility(False, f"the trace failed: {type(error).__name__}: {error}")
    if not tracer.is_tracked(logits):
        return Eligibility(False, "the logits do not depend on the input tensor")
    if tracer.offending:
        ops = tuple(dict.fromkeys(tracer.offending))
        return Eligibility(False, f"not piecewise linear in the input: {', '.join(ops)}", ops)
    return Eligibility(True, "piecewise linear in the input")


class preserved_buffers:  # noqa: N801 - used as a context manager, reads like one
    """Context manager: the model's buffers (BatchNorm running statistics, counters) hold the
    same values afterwards. Copies are restored in place under ``no_grad``; use it only around
    passes whose graph does not save those buffers for a later backward."""

    def __init__(self, model: nn.Module) -> None:
        self._model = model
        self._saved: list[tuple[torch.Tensor, torch.Tensor]] = []

    def __enter__(self) -> preserved_buffers:
        self._saved = [(b, b.detach().clone()) for b in self._model.buffers()]
        return self

    def __exit__(self, *exc) -> None:
        with torch.no_grad():
            for buffer, copy in self._saved:
                if not torch.equal(buffer, copy):
                    buffer.copy_(copy)
        self._saved = []
