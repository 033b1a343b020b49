"""Is a model's logit map piecewise linear in its input? (When it is, the cumulant path is exact.)

:func:`check_piecewise_linear` runs one forward pass under a ``TorchDispatchMode`` and follows
which tensors depend on the input through the aten ops it sees. An op that touches an
input-dependent tensor must be value-free, affine, bilinear with one input-dependent factor, or
piecewise linear; anything else is reported by name.

Writes are followed conservatively. An op that writes input-dependent data into a tensor (for
example ``buf[:, :8] = h[:, :8]``, which is ``copy_`` into a view of ``buf``) marks the written
tensor's whole *storage* as input-dependent, so the base tensor and every other view of it count
as input-dependent afterwards. Over-marking can only refuse a model, never accept a wrong one.

The tracer is :class:`~geomlab.geometry.derivatives.tracing.InputTracer` (shared with the Taylor
recorder) and the op classes are :mod:`geomlab.geometry.derivatives.ops` (shared too).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.derivatives.ops import (
    AFFINE_OPS,
    BATCH_NORM_TRAINING_ARG,
    BILINEAR_FACTORS,
    PIECEWISE_CONSTANT_OPS,
    PIECEWISE_LINEAR_OPS,
    RANDOM_OPS,
    VALUE_FREE_OPS,
    op_name,
    tensor_leaves,
    written_arguments,
)
from geomlab.geometry.derivatives.tracing import InputTracer
from geomlab.models.modes import isolated_buffers

__all__ = ["Eligibility", "check_piecewise_linear", "probe_batch", "rng_devices"]


@dataclass(frozen=True)
class Eligibility:
    """Whether a fast path is exact for a model, and why not if it is not."""

    eligible: bool
    reason: str
    offending_ops: tuple[str, ...] = ()


class _InputDependenceTracer(InputTracer):
    """Follows which tensors depend on the input (through storage: see the module docstring)
    and records ops that are not piecewise linear."""

    def __init__(self, tracked: torch.Tensor) -> None:
        super().__init__(tracked, follow_storage=True)
        self.offending: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat_args = tensor_leaves((args, kwargs))
        # decide before the call: an in-place op makes its own argument tracked afterwards
        depends = any(self.is_tracked(a) for a in flat_args)
        outputs = func(*args, **kwargs)
        if not depends:
            return outputs
        name = op_name(func)
        if name in VALUE_FREE_OPS or name in RANDOM_OPS or name in PIECEWISE_CONSTANT_OPS:
            return outputs
        if name in BILINEAR_FACTORS:
            positions = BILINEAR_FACTORS[name]
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
        elif name in BATCH_NORM_TRAINING_ARG:
            index = BATCH_NORM_TRAINING_ARG[name]
            training = args[index] if index < len(args) else kwargs.get("training", False)
            if training:
                self.offending.append(f"{name} (train-mode batch statistics)")
        elif name not in AFFINE_OPS and name not in PIECEWISE_LINEAR_OPS:
            self.offending.append(name)
        # writes: the written tensors (and, through their storage, their bases and views)
        # depend on the input from now on
        self.track(written_arguments(func, args, kwargs))
        self.track(outputs)
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
    private copies, discarded afterwards (``isolated_buffers``, the derivative stack's one
    buffer guard). The model's current train/eval mode is the one checked. A trace that raises
    makes the model ineligible (the reason says why) rather than raising.
    """
    probe = probe_batch(example_inputs)
    tracer = _InputDependenceTracer(probe)
    try:
        with (
            math_attention(),  # the ops geometry's passes see (not torch's fused attention)
            torch.random.fork_rng(devices=rng_devices(probe)),
            torch.no_grad(),
            isolated_buffers(model),
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
