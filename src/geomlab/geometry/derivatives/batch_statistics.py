"""BatchNorm in the derivative penalty: running statistics untouched, batch statistics frozen.

Policy (see docs/derivatives.md). In train mode a BatchNorm layer normalizes each sample with the
mean and variance of the whole batch, so ``d/dt L_i(x + t u)`` would also move the other samples'
normalization and mix their losses into sample i's derivative. The derivative engine instead
holds each layer's batch statistics *constant along the direction*: they are the statistics of
the training batch (the ones the cross-entropy term of the same step uses), functions of the
parameters (so the penalty's parameter gradient flows through them) but not of the
perturbation. Every ``d_n`` is then the derivative of the sample's own loss under the
normalization its training step applies. Eval mode uses the running statistics, as always.

* :class:`BatchStatistics` captures each train-mode ``F.batch_norm`` call's batch mean and
  (biased) variance during a forward pass, and later replays them: the same calls become
  eval-mode normalizations with those statistics (no running-statistic update).
* :func:`geomlab.models.modes.isolated_buffers` (the one buffer guard) gives a pass private
  copies of the model's buffers, so that the penalty's extra passes (and the eligibility and
  Taylor checks, and the Fisher operator's probe) never change running statistics or counters.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

__all__ = [
    "BatchStatistics", "PrimitiveLayerNorm", "batch_moments", "has_training_modules",
    "normalize",
]  # fmt: skip


def batch_moments(inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel (dim 1) mean and biased variance over every other dim, as BatchNorm uses."""
    dims = [0, *range(2, inputs.dim())]
    return inputs.mean(dim=dims), inputs.var(dim=dims, correction=0)


class BatchStatistics(TorchFunctionMode):
    """Capture train-mode batch statistics in one pass, substitute them in later passes.

    ``with stats.capturing(): model(x)`` records, per train-mode ``F.batch_norm`` call in call
    order, the batch mean and biased variance (differentiable in whatever produced the input).
    ``with stats.substituting(): model(x2)`` turns the i-th train-mode call into
    the eval-mode normalization with ``mean_i, var_i`` (see :func:`normalize`).
    """

    def __init__(self) -> None:
        super().__init__()
        self.moments: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._phase: Literal["capture", "substitute"] = "capture"
        self._cursor = 0

    @contextmanager
    def capturing(self) -> Iterator[BatchStatistics]:
        self._phase, self.moments = "capture", []
        with self:
            yield self

    @contextmanager
    def substituting(self) -> Iterator[BatchStatistics]:
        self._phase, self._cursor = "substitute", 0
        with self:
            yield self

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.batch_norm:
            return func(*args, **kwargs)
        bound = _bind_batch_norm(args, kwargs)
        if not bound["training"]:
            return func(*args, **kwargs)
        if self._phase == "capture":
            self.moments.append(batch_moments(bound["input"]))
            return func(*args, **kwargs)
        if self._cursor >= len(self.moments):
            raise ValueError(
                "a train-mode batch_norm call has no captured batch statistics: the pass"
                " calls batch_norm more often than the captured pass did"
            )
        mean, var = self.moments[self._cursor]
        self._cursor += 1
        return normalize(bound["input"], mean, var, bound["weight"], bound["bias"], bound["eps"])


_BATCH_NORM_ARGS = ("input", "running_mean", "running_var", "weight", "bias", "training",
                    "momentum", "eps")  # fmt: skip
_BATCH_NORM_DEFAULTS = {"weight": None, "bias": None, "training": False, "momentum": 0.1,
                        "eps": 1e-5}  # fmt: skip


def normalize(inputs, mean, var, weight, bias, eps: float) -> torch.Tensor:
    """``(x − mean) · rsqrt(var + eps) · weight + bias`` per channel (dim 1), written with
    primitives so that it is differentiable in ``mean`` and ``var`` (aten's batch norm is not
    differentiable in its running statistics)."""
    shape = [1, -1, *([1] * (inputs.dim() - 2))]
    out = (inputs - mean.view(shape)) * torch.rsqrt(var + eps).view(shape)
    if weight is not None:
        out = out * weight.view(shape)
    if bias is not None:
        out = out + bias.view(shape)
    return out


class PrimitiveLayerNorm(TorchFunctionMode):
    """``F.layer_norm`` computed from mean, variance and rsqrt (differentiable to every order).

    torch's fused layer norm hands its double backward saved statistics without autograd
    history, so nested autograd gives wrong derivatives from order 3 on (pytorch/pytorch#175754).
    The nested reference runs under this mode so that its numbers stay right."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func is not F.layer_norm:
            return func(*args, **kwargs)
        names = ("input", "normalized_shape", "weight", "bias", "eps")
        bound = dict(zip(names, args, strict=False))
        bound.update(kwargs)
        x = bound["input"]
        dims = tuple(range(x.dim() - len(bound["normalized_shape"]), x.dim()))
        centered = x - x.mean(dim=dims, keepdim=True)
        variance = (centered * centered).mean(dim=dims, keepdim=True)
        out = centered * torch.rsqrt(variance + bound.get("eps", 1e-5))
        if bound.get("weight") is not None:
            out = out * bound["weight"]
        if bound.get("bias") is not None:
            out = out + bound["bias"]
        return out


def _bind_batch_norm(args, kwargs) -> dict:
    bound = dict(_BATCH_NORM_DEFAULTS)
    bound.update(zip(_BATCH_NORM_ARGS, args, strict=False))
    bound.update(kwargs)
    return bound


def has_training_modules(model: nn.Module) -> bool:
    """Whether any submodule is in train mode (then batch statistics may be in play)."""
    return any(module.training for module in model.modules())
