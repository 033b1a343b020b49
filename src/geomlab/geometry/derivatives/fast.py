"""The fast engines behind one call: the cumulant path or Taylor mode, and the check of which
one is exact for a model (:func:`choose_fast_path`)."""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.derivatives.batch_statistics import BatchStatistics
from geomlab.geometry.derivatives.cumulant import (
    logits_and_tangents,
    loss_derivatives_along_tangents,
)
from geomlab.geometry.derivatives.directions import check_shapes
from geomlab.geometry.derivatives.eligibility import (
    Eligibility,
    check_piecewise_linear,
    probe_batch,
    rng_devices,
)
from geomlab.geometry.derivatives.losses import check_targets, resolve_loss
from geomlab.geometry.derivatives.nested import substituted
from geomlab.geometry.derivatives.options import Path
from geomlab.geometry.derivatives.taylor import (
    UnsupportedOperation,
    loss_derivatives_from_series,
    taylor_forward,
)
from geomlab.geometry.outputs import ModelOutputError, TensorOutput
from geomlab.geometry.params import LossKind
from geomlab.models.modes import isolated_buffers

__all__ = [
    "check_taylor", "choose_fast_path", "fast_directional_derivatives",
    "taylor_directional_derivatives",
]  # fmt: skip


def taylor_directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    loss: LossKind = LossKind.CROSS_ENTROPY,
    batch_statistics: BatchStatistics | None = None,
    isolate_buffers: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, outputs)`` by Taylor mode (:mod:`geomlab.geometry.derivatives.taylor`): one forward
    pass carries the truncated Taylor polynomials of every activation along all K directions;
    exact for any model made of ops with a rule, differentiable in the parameters. Raises
    :class:`~geomlab.geometry.derivatives.taylor.UnsupportedOperation` naming an op without a
    rule.

    When the outputs come out linear in t (piecewise-linear nets) the cross-entropy
    derivatives are the cumulants of :func:`loss_derivatives_along_tangents`.
    ``batch_statistics``: train-mode BatchNorm statistics to hold fixed (else those of this
    batch, constant along the direction); ``isolate_buffers=False`` lets the pass update
    running statistics (only for a pass that is also the training step's forward).
    """
    check_shapes(inputs, labels, directions, max_order)
    loss = resolve_loss(loss, labels)
    buffers = isolated_buffers(model) if isolate_buffers else contextlib.nullcontext()
    with math_attention(), buffers, substituted(batch_statistics):
        outputs, coefficients = taylor_forward(
            TensorOutput(model), inputs, directions, max_order=max_order
        )
    check_targets(outputs, labels, loss)
    if loss is LossKind.CROSS_ENTROPY and len(coefficients) == 1:
        values = loss_derivatives_along_tangents(
            outputs, coefficients[0], labels, max_order=max_order
        )
    else:
        values = loss_derivatives_from_series(
            outputs, coefficients, labels, max_order=max_order, loss=loss
        )
    return values, outputs


def check_taylor(model: nn.Module, example_inputs: torch.Tensor) -> Eligibility:
    """Whether Taylor mode has a rule for every op of the model's forward pass (in its current
    mode): one pass on two samples under ``no_grad``, a forked RNG and private buffers. A pass
    that raises otherwise makes the model ineligible (the reason says why)."""
    probe = probe_batch(example_inputs)
    direction = torch.ones_like(probe).unsqueeze(0)
    try:
        with (
            torch.random.fork_rng(devices=rng_devices(probe)),
            torch.no_grad(),
            math_attention(),
            isolated_buffers(model),
        ):
            taylor_forward(TensorOutput(model), probe, direction, max_order=2)
    except UnsupportedOperation as error:
        return Eligibility(False, str(error), (error.op,))
    except ModelOutputError:
        raise  # not a question of rules: no path can use this output
    except Exception as error:  # noqa: BLE001 - an untraceable model is ineligible, not fatal
        return Eligibility(False, f"the trace failed: {type(error).__name__}: {error}")
    return Eligibility(True, "every op has a Taylor-mode rule")


def choose_fast_path(model: nn.Module, example_inputs: torch.Tensor) -> Path | Eligibility:
    """``Path.LINEAR`` (cumulant path) when the model is piecewise linear in its input, else
    ``Path.TAYLOR`` when every op has a rule, else the Taylor :class:`Eligibility` saying why
    not."""
    with math_attention():
        linear = check_piecewise_linear(TensorOutput(model), example_inputs).eligible
    if linear:
        return Path.LINEAR
    verdict = check_taylor(model, example_inputs)
    return Path.TAYLOR if verdict.eligible else verdict


def fast_directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    path: Path | None = None,
    batch_statistics: BatchStatistics | None = None,
    isolate_buffers: bool = True,
    loss: LossKind = LossKind.CROSS_ENTROPY,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, logits)``: ``d`` ``[max_order, K, B]`` by the exact fast path, and the logits of the
    same forward pass. ``path`` None picks it: the cumulant path (one JVP) when the model is
    piecewise linear in its input (:func:`check_piecewise_linear`), else Taylor mode, which
    raises naming an op without a rule. No self-check here: prefer
    :func:`directional_derivatives`, which checks the path once per model and falls back to the
    reference. ``loss`` as in :func:`nested_directional_derivatives`."""
    check_shapes(inputs, labels, directions, max_order)
    loss = resolve_loss(loss, labels)
    if path is None:
        with math_attention():
            linear = check_piecewise_linear(TensorOutput(model), inputs).eligible
        path = Path.LINEAR if linear else Path.TAYLOR
    if path not in (Path.LINEAR, Path.TAYLOR):
        raise ValueError(f"path must be 'linear' or 'taylor', got {path!r}")
    if Path(path) is Path.TAYLOR:
        return taylor_directional_derivatives(
            model, inputs, labels, directions, max_order=max_order, loss=loss,
            batch_statistics=batch_statistics, isolate_buffers=isolate_buffers,
        )  # fmt: skip
    with math_attention():
        logits, tangents = logits_and_tangents(model, inputs, directions)
    check_targets(logits, labels, loss)
    if loss is LossKind.MSE:
        values = loss_derivatives_from_series(
            logits, [tangents], labels, max_order=max_order, loss=loss
        )
        return values, logits
    return loss_derivatives_along_tangents(logits, tangents, labels, max_order=max_order), logits
