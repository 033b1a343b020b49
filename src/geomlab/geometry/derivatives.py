"""Directional input derivatives of the loss, and λ estimated from them.

For an input x, label y and unit direction u, ``d_n = dⁿ/dtⁿ CE(f(x + t u), y)`` at t = 0.

Three implementations of the same numbers (docs/derivatives.md):

* :func:`nested_directional_derivatives` — the reference. Repeated reverse-mode autograd with
  respect to the input (``d_{n+1} = ∇_x d_n · u``), one forward pass per direction. Works for any
  differentiable model; costs one extra backward graph per order.
* the cumulant path of :func:`fast_directional_derivatives` — exact for networks that are
  piecewise linear in their input (convolution, linear, ReLU, max-pool, dropout with a mask fixed
  during the pass, affine eval-mode batch norm). Near x the logits move on a line,
  ``z(x + t u) = z + t v`` with ``v = J u``, so the derivatives are those of
  ``t ↦ CE(z + t v, y)``: ``E_p[v] − v_y`` for n = 1 and the n-th cumulant of ``v_C`` with
  ``C ~ softmax(z)`` for n ≥ 2. One forward-mode pass (all directions batched, the primal
  computed once) gives every order, and reverse mode through it gives parameter gradients.
* :func:`taylor_directional_derivatives` — Taylor mode (:mod:`geomlab.geometry.taylor`): the
  truncated Taylor polynomials of every activation along all directions in one pass, exact for
  any model made of ops with a rule (smooth activations, normalization layers, products, …).

``method="fast"`` means the cumulant path when :func:`check_piecewise_linear` passes, else
Taylor mode; it raises naming an op without a Taylor rule, and ``"auto"`` falls back to the
reference then. BatchNorm: the penalty's passes never change running statistics and hold
train-mode batch statistics constant along the direction
(:mod:`geomlab.geometry.batch_statistics`).

Issue 17: the loss is an argument (:func:`resolve_loss`: cross-entropy for integer labels, MSE
for float targets); outputs go through :func:`~geomlab.geometry.outputs.as_logits`; every pass
runs under :func:`~geomlab.geometry.attention.math_attention`; and a fast path is self-checked
against the nested reference in float64 the first time a model meets it
(:func:`resolve_path`), the resolution and outcome cached per model (:data:`_PATH_CACHE`, the
module's only global mutable state; :func:`clear_path_cache`). docs/derivatives.md.
"""

from __future__ import annotations

import contextlib
import copy
import math
import warnings
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.batch_statistics import (
    BatchStatistics,
    PrimitiveLayerNorm,
    has_training_modules,
    isolated_buffers,
)
from geomlab.geometry.eligibility import (  # noqa: F401 - re-exported for callers
    Eligibility,
    check_piecewise_linear,
    probe_batch,
    rng_devices,
)
from geomlab.geometry.outputs import ModelOutputError, TensorOutput, as_logits
from geomlab.geometry.refusal import Refused
from geomlab.geometry.taylor import (
    Loss,
    UnsupportedOperation,
    loss_derivatives_from_series,
    taylor_forward,
)

Method = Literal["auto", "fast", "nested"]
FastPath = Literal["linear", "taylor"]

DIRECTION_NORM_EPS = 1e-12
LOG_ABS_FLOOR = 1e-12

# --- directions --------------------------------------------------------------------------------


def sample_unit_directions(
    num_directions: int, like: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian directions normalized per sample: shape ``[num_directions, *like.shape]``.

    Each ``[k, i]`` slice has unit Euclidean norm (the norm gets a 1e-12 guard, as in the
    notebook). Draws from ``generator`` (on ``like.device``) so runs are reproducible.
    """
    shape = (num_directions, *like.shape)
    raw = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    flat = raw.reshape(num_directions, like.shape[0], -1)
    flat = flat / (flat.norm(dim=-1, keepdim=True) + DIRECTION_NORM_EPS)
    return flat.reshape(shape)


# --- reference: nested autograd ----------------------------------------------------------------


def nested_directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    create_graph: bool = False,
    batch_statistics: BatchStatistics | None = None,
    loss: Loss = "cross_entropy",
) -> torch.Tensor:
    """Reference ``d_n`` for n = 1..max_order by repeated input gradients.

    ``loss``: cross-entropy on integer ``labels`` ``[B]``, or ``"mse"``, the per-sample mean
    squared error against float ``labels`` of the outputs' shape (see :func:`resolve_loss`;
    float labels with cross-entropy are an error, not a soft-label cross-entropy). An output
    that is not a tensor goes through :func:`~geomlab.geometry.outputs.as_logits`; attention
    runs in its math form (:func:`~geomlab.geometry.attention.math_attention`).

    ``directions`` has shape ``[K, *inputs.shape]``; each direction gets its own forward pass
    (so in train mode each gets its own dropout mask, as in the notebook). Returns
    ``[max_order, K, B]``. With ``create_graph`` the result is differentiable in the parameters.

    LayerNorm runs from its primitives (torch's fused op is wrong from order 3 on under nested
    autograd). BatchNorm (see :mod:`geomlab.geometry.batch_statistics`): the passes never change the
    model's buffers, and train-mode batch statistics are held constant along the direction:
    those captured in ``batch_statistics`` (e.g. from the training step's own forward pass) or,
    if None and some submodule is in train mode, from one extra pass on ``inputs`` (under a
    forked RNG, so the caller's random stream is unchanged).
    """
    _check_shapes(inputs, labels, directions, max_order)
    loss = resolve_loss(loss, labels)
    if batch_statistics is None and has_training_modules(model):
        batch_statistics = capture_batch_statistics(model, inputs, differentiable=create_graph)
    per_direction = []
    for direction in directions:
        x = inputs.detach().clone().requires_grad_(True)
        with (
            torch.enable_grad(),
            math_attention(),
            isolated_buffers(model),
            _substituted(batch_statistics),
            PrimitiveLayerNorm(),
        ):
            scalar = _summed_loss(as_logits(model(x)), labels, loss)
            orders = []
            for n in range(1, max_order + 1):
                keep_graph = create_graph or n < max_order
                if scalar.requires_grad:
                    (grad_x,) = torch.autograd.grad(
                        scalar, x, create_graph=keep_graph, allow_unused=True
                    )
                else:  # d_{n-1} is constant in x (e.g. MSE of a linear output): d_n = 0
                    grad_x = None
                if grad_x is None:
                    grad_x = torch.zeros_like(x)
                d_n = (grad_x * direction).flatten(1).sum(dim=1)
                orders.append(d_n)
                scalar = d_n.sum()
        per_direction.append(torch.stack(orders))
    result = torch.stack(per_direction, dim=1)
    return result if create_graph else result.detach()


LOSSES = ("cross_entropy", "mse")


def resolve_loss(loss: Loss | None, labels: torch.Tensor) -> Loss:
    """The loss for ``labels``: ``None`` infers it (integer labels → ``"cross_entropy"``, float
    targets → ``"mse"``); an explicit ``loss`` is validated against the labels. Anything else
    is a ``ValueError`` that says what was given."""
    floating = labels.dtype.is_floating_point
    integer = not floating and not labels.dtype.is_complex and labels.dtype != torch.bool
    if loss is None:
        if integer:
            loss = "cross_entropy"
        elif floating:
            loss = "mse"
        else:
            raise ValueError(
                f"cannot infer the loss from labels of dtype {labels.dtype}: give integer class"
                " labels (cross-entropy) or float targets of the outputs' shape (MSE)"
            )
    if loss not in LOSSES:
        raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
    if loss == "cross_entropy" and not integer:
        raise ValueError(
            f"loss='cross_entropy' needs integer class labels [B], got dtype {labels.dtype}"
            " (float targets are not soft labels here: use loss='mse' for regression targets)"
        )
    if loss == "cross_entropy" and labels.dim() != 1:
        raise ValueError(
            f"loss='cross_entropy' needs class labels of shape [B], got {tuple(labels.shape)}"
        )
    if loss == "mse" and not floating:
        raise ValueError(
            f"loss='mse' needs float targets of the outputs' shape, got dtype {labels.dtype}"
        )
    return loss


def check_targets(outputs: torch.Tensor, labels: torch.Tensor, loss: Loss) -> None:
    """MSE targets must have the outputs' shape exactly (no silent broadcasting)."""
    if loss == "mse" and labels.shape != outputs.shape:
        raise ValueError(
            f"loss='mse' needs targets of the outputs' shape {tuple(outputs.shape)},"
            f" got {tuple(labels.shape)}"
        )


def _summed_loss(outputs: torch.Tensor, labels: torch.Tensor, loss: Loss) -> torch.Tensor:
    check_targets(outputs, labels, loss)
    if loss == "cross_entropy":
        return F.cross_entropy(outputs, labels, reduction="sum")
    if loss == "mse":
        return F.mse_loss(outputs, labels, reduction="none").flatten(1).mean(dim=1).sum()
    raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")


def capture_batch_statistics(
    model: nn.Module, inputs: torch.Tensor, *, differentiable: bool
) -> BatchStatistics:
    """Train-mode batch statistics of one pass on ``inputs`` (forked RNG, buffers untouched);
    ``differentiable``: keep their graph to the parameters."""
    statistics = BatchStatistics()
    with (
        torch.random.fork_rng(devices=rng_devices(inputs)),
        torch.set_grad_enabled(differentiable),
        math_attention(),
        isolated_buffers(model),
        statistics.capturing(),
    ):
        model(inputs.detach())
    return statistics


def _substituted(batch_statistics: BatchStatistics | None):
    if batch_statistics is None or not batch_statistics.moments:
        return contextlib.nullcontext()
    return batch_statistics.substituting()


# --- fast path: one JVP, cumulants ------------------------------------------------------------


def logits_and_tangents(
    model: nn.Module, inputs: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``z`` ``[B, C]`` and their directional derivatives ``v = J u`` ``[K, B, C]``.

    Uses the model's own linearization when it provides one (see :func:`provided_linearization`),
    else :func:`jvp_logits_and_tangents`. Differentiable in the model's parameters.
    """
    provided = provided_linearization(model)
    if provided is not None:
        return provided(inputs, directions)
    return jvp_logits_and_tangents(model, inputs, directions)


def jvp_logits_and_tangents(
    model: nn.Module, inputs: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generic path: one forward-mode pass with the K tangents batched by ``vmap``; the primal
    (and any dropout mask, drawn once with ``randomness="same"``) is shared by all directions."""

    tensor_model = TensorOutput(model)

    def push_forward(direction: torch.Tensor):
        return torch.func.jvp(tensor_model, (inputs,), (direction,))

    logits, tangents = torch.func.vmap(push_forward, randomness="same", out_dims=(None, 0))(
        directions
    )
    return logits, tangents


def provided_linearization(model: nn.Module):
    """The model's ``logits_and_tangents(inputs, directions)`` method, trusted only when the class
    that defines ``forward`` also defines it (a subclass that changes ``forward`` falls back to
    the generic JVP rather than using a stale linearization)."""
    method = getattr(model, "logits_and_tangents", None)
    if not callable(method):
        return None
    owner = next(cls for cls in type(model).__mro__ if "forward" in vars(cls))
    return method if "logits_and_tangents" in vars(owner) else None


def loss_derivatives_along_tangents(
    logits: torch.Tensor, tangents: torch.Tensor, labels: torch.Tensor, *, max_order: int
) -> torch.Tensor:
    """t-derivatives at 0 of ``CE(z + t v, y)``, orders 1..max_order: ``[max_order, K, B]``.

    Order 1 is ``E_p[v] − v_y``; order n ≥ 2 is the n-th cumulant of ``v_C``, ``C ~ softmax(z)``
    (the derivatives of the log-partition function), computed from central moments.
    """
    probs = torch.softmax(logits, dim=-1)  # [B, C], broadcast over K
    mean = (probs * tangents).sum(dim=-1)  # [K, B]
    label_tangent = tangents.gather(-1, labels.expand(tangents.shape[0], -1).unsqueeze(-1))
    orders = [mean - label_tangent.squeeze(-1)]
    if max_order >= 2:
        centered = tangents - mean.unsqueeze(-1)
        # central moments mu[j] = E_p[(v - E v)^j]; mu[0] = 1, mu[1] = 0
        moments = [torch.ones_like(mean), torch.zeros_like(mean)]
        power = centered
        for _ in range(2, max_order + 1):
            power = power * centered
            moments.append((probs * power).sum(dim=-1))
        # moment-cumulant recursion for a centered variable (kappa_1 = 0)
        cumulants = [None, torch.zeros_like(mean)]
        for n in range(2, max_order + 1):
            kappa = moments[n]
            for m in range(2, n - 1):
                kappa = kappa - math.comb(n - 1, m - 1) * cumulants[m] * moments[n - m]
            cumulants.append(kappa)
            orders.append(kappa)
    return torch.stack(orders)


def taylor_directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    loss: Loss = "cross_entropy",
    batch_statistics: BatchStatistics | None = None,
    isolate_buffers: bool = True,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, outputs)`` by Taylor mode (:mod:`geomlab.geometry.taylor`): one forward pass
    carries the truncated Taylor polynomials of every activation along all K directions; exact
    for any model made of ops with a rule, differentiable in the parameters. Raises
    :class:`~geomlab.geometry.taylor.UnsupportedOperation` naming an op without a rule.

    When the outputs come out linear in t (piecewise-linear nets) the cross-entropy
    derivatives are the cumulants of :func:`loss_derivatives_along_tangents`.
    ``batch_statistics``: train-mode BatchNorm statistics to hold fixed (else those of this
    batch, constant along the direction); ``isolate_buffers=False`` lets the pass update
    running statistics (only for a pass that is also the training step's forward).
    """
    _check_shapes(inputs, labels, directions, max_order)
    loss = resolve_loss(loss, labels)
    buffers = isolated_buffers(model) if isolate_buffers else contextlib.nullcontext()
    with math_attention(), buffers, _substituted(batch_statistics):
        outputs, coefficients = taylor_forward(
            TensorOutput(model), inputs, directions, max_order=max_order
        )
    check_targets(outputs, labels, loss)
    if loss == "cross_entropy" and len(coefficients) == 1:
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


def choose_fast_path(model: nn.Module, example_inputs: torch.Tensor) -> FastPath | Eligibility:
    """``"linear"`` (cumulant path) when the model is piecewise linear in its input, else
    ``"taylor"`` when every op has a rule, else the Taylor :class:`Eligibility` saying why not."""
    with math_attention():
        linear = check_piecewise_linear(TensorOutput(model), example_inputs).eligible
    if linear:
        return "linear"
    verdict = check_taylor(model, example_inputs)
    return "taylor" if verdict.eligible else verdict


def fast_directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    path: FastPath | None = None,
    batch_statistics: BatchStatistics | None = None,
    isolate_buffers: bool = True,
    loss: Loss = "cross_entropy",
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, logits)``: ``d`` ``[max_order, K, B]`` by the exact fast path, and the logits of the
    same forward pass. ``path`` None picks it: the cumulant path (one JVP) when the model is
    piecewise linear in its input (:func:`check_piecewise_linear`), else Taylor mode, which
    raises naming an op without a rule. No self-check here: prefer
    :func:`directional_derivatives`, which checks the path once per model and falls back to the
    reference. ``loss`` as in :func:`nested_directional_derivatives`."""
    _check_shapes(inputs, labels, directions, max_order)
    loss = resolve_loss(loss, labels)
    if path is None:
        with math_attention():
            linear = check_piecewise_linear(TensorOutput(model), inputs).eligible
        path = "linear" if linear else "taylor"
    if path == "taylor":
        return taylor_directional_derivatives(
            model, inputs, labels, directions, max_order=max_order, loss=loss,
            batch_statistics=batch_statistics, isolate_buffers=isolate_buffers,
        )  # fmt: skip
    if path != "linear":
        raise ValueError(f"path must be 'linear' or 'taylor', got {path!r}")
    with math_attention():
        logits, tangents = logits_and_tangents(model, inputs, directions)
    check_targets(logits, labels, loss)
    if loss == "mse":
        values = loss_derivatives_from_series(
            logits, [tangents], labels, max_order=max_order, loss=loss
        )
        return values, logits
    return loss_derivatives_along_tangents(logits, tangents, labels, max_order=max_order), logits


# --- self-check before use, once per model -----------------------------------------------------

ResolvedPath = Literal["linear", "taylor", "nested"]

SELF_CHECK_SAMPLES = 2
SELF_CHECK_SEED = 20_240_517
SELF_CHECK_RTOL = 1e-6
"""Largest accepted relative error of a fast path against the nested reference (float64)."""
SELF_CHECK_FLOOR = 1e-8
"""An order's error is relative to max(its own largest |d_n|, this × the largest |d| of any
order), so an order whose true value is zero (MSE of a linear output, n ≥ 3) is judged against
rounding, not against itself."""


class SelfCheckError(Refused, ValueError):
    """A fast path disagreed with the nested reference on the model (float64, a few samples)."""

    def __init__(self, model_class: str, path: str, order: int, error: float, loss: str) -> None:
        self.model_class, self.path, self.order, self.relative_error = (
            model_class, path, order, error,
        )  # fmt: skip
        super().__init__(
            f"self-check failed: the {path} derivative path disagrees with the nested reference"
            f" on {model_class} at order {order} (relative error {error:.3g} > "
            f"{SELF_CHECK_RTOL:g}, float64, {loss}). Its numbers would be wrong: use"
            " method='nested' (or 'auto', which falls back to it), and please report the model."
        )


class SelfCheckUnavailable(Refused, ValueError):
    """The self-check could not run: the model cannot be deep-copied to float64."""


@dataclass
class _Check:
    """What the self-check established for one (path, loss): orders 1..``passed`` agree;
    ``failure`` (if any) is the first order that does not, and every request reaching it fails."""

    passed: int = 0
    failure: SelfCheckError | None = None


@dataclass
class _ModelEntry:
    """Per model structure: the fast path's resolution and the self-checks run on it."""

    choice: FastPath | Eligibility | None = None
    checks: dict[tuple[str, str], _Check] = field(default_factory=dict)
    warned: bool = False


_PATH_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _ModelEntry]] = (
    weakref.WeakKeyDictionary()
)
"""The only process-global mutable state of this module: per model (weakly referenced, so it
goes with the model), per structure signature (:func:`_structure_key`), the resolved fast path
and the self-check outcomes. :func:`clear_path_cache` empties it."""


def clear_path_cache(model: nn.Module | None = None) -> None:
    """Forget resolved paths and self-check outcomes: of ``model``, or of every model (None).
    Needed only after changing a model in a way its signature does not see (a module's
    ``forward`` replaced in place, a flag read by ``forward``)."""
    if model is None:
        _PATH_CACHE.clear()
    else:
        _PATH_CACHE.pop(model, None)


def _structure_key(model: nn.Module, inputs: torch.Tensor) -> tuple:
    """What the resolution and the check depend on: module types and train/eval flags, the
    parameters' identity, shape, dtype and device, and the inputs' per-sample shape, dtype and
    device. Parameter values are not in it (training changes them; the paths' exactness does
    not depend on them)."""
    return (
        tuple((type(m), m.training) for m in model.modules()),
        tuple((id(p), p.shape, p.dtype, p.device) for p in model.parameters()),
        inputs.shape[1:],
        inputs.dtype,
        inputs.device,
    )


def _model_entry(model: nn.Module, inputs: torch.Tensor) -> _ModelEntry:
    per_model = _PATH_CACHE.get(model)
    if per_model is None:
        per_model = _PATH_CACHE[model] = {}
    key = _structure_key(model, inputs)
    entry = per_model.get(key)
    if entry is None:
        entry = per_model[key] = _ModelEntry()
    return entry


def self_check_errors(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | None,
    path: FastPath,
    *,
    max_order: int,
    loss: Loss | None = None,
    num_samples: int = SELF_CHECK_SAMPLES,
) -> torch.Tensor:
    """Relative error per order (``[max_order]``, float64) of ``path`` against the nested
    reference on a float64 deep copy of ``model`` (same train/eval modes), on the first
    ``num_samples`` inputs and one seeded direction. Both passes draw the same dropout masks;
    the caller's random stream, the model's modes and buffers are untouched. ``labels`` None:
    the class after the model's argmax (cross-entropy) or zeros (MSE).

    Each order's error is ``max |fast − nested|`` over ``max(max |nested_n|, SELF_CHECK_FLOOR ×
    max |nested|)``."""
    probe = probe_batch(inputs, num_samples)
    if not probe.dtype.is_floating_point:
        raise ValueError(f"input derivatives need float inputs, got dtype {probe.dtype}")
    try:
        reference = copy.deepcopy(model).to(torch.float64)
    except Exception as error:  # noqa: BLE001 - reported as what it means for the caller
        raise SelfCheckUnavailable(
            f"the self-check needs a float64 deep copy of {type(model).__name__}, which failed"
            f" ({type(error).__name__}: {error}); pass self_check=False to skip the check, or"
            " use method='nested'"
        ) from error
    x = probe.to(torch.float64)
    generator = torch.Generator(device=x.device).manual_seed(SELF_CHECK_SEED)
    direction = sample_unit_directions(1, x, generator=generator)
    with torch.random.fork_rng(devices=rng_devices(x)):
        torch.manual_seed(SELF_CHECK_SEED)
        if labels is None:
            with torch.no_grad(), math_attention(), isolated_buffers(reference):
                outputs = as_logits(reference(x))
            torch.manual_seed(SELF_CHECK_SEED)
            loss = loss or "cross_entropy"
            y = (
                (outputs.argmax(dim=1) + 1) % outputs.shape[1]
                if loss == "cross_entropy"
                else torch.zeros_like(outputs)
            )
        else:
            y = probe_batch(labels, num_samples)
            y = y.to(torch.float64) if y.dtype.is_floating_point else y
        with torch.no_grad():
            fast, _ = fast_directional_derivatives(
                reference, x, y, direction, max_order=max_order, path=path, loss=loss
            )
        torch.manual_seed(SELF_CHECK_SEED)
        nested = nested_directional_derivatives(
            reference, x, y, direction, max_order=max_order, loss=loss
        )
    largest = nested.abs().flatten(1).amax(dim=1)
    scale = largest.clamp_min(SELF_CHECK_FLOOR * float(largest.max())).clamp_min(1e-300)
    return (fast - nested).abs().flatten(1).amax(dim=1) / scale


def _run_check(
    entry: _ModelEntry, model, inputs, labels, path: FastPath, max_order: int, loss: Loss
) -> SelfCheckError | None:
    check = entry.checks.setdefault((path, loss), _Check())
    if check.failure is not None and max_order >= check.failure.order:
        return check.failure
    if max_order <= check.passed:
        return None
    errors = self_check_errors(model, inputs, labels, path, max_order=max_order, loss=loss)
    bad = [n for n in range(max_order) if not float(errors[n]) <= SELF_CHECK_RTOL]  # NaN is bad
    if not bad:
        check.passed = max_order
        return None
    order = bad[0] + 1
    check.passed = order - 1
    check.failure = SelfCheckError(type(model).__name__, path, order, float(errors[bad[0]]),
                                   loss)  # fmt: skip
    return check.failure


def resolve_path(
    model: nn.Module,
    example_inputs: torch.Tensor,
    method: Method | FastPath,
    *,
    max_order: int | None = None,
    labels: torch.Tensor | None = None,
    loss: Loss | None = None,
    self_check: bool = True,
) -> ResolvedPath:
    """The path ``method`` means for this model in its current modes: ``"linear"`` (cumulants)
    or ``"taylor"`` for ``fast``/``auto`` when exact, ``"nested"`` otherwise; ``"fast"`` on a
    model with an op without a rule is an error naming the op. ``method`` may also name a fast
    path (``"linear"``/``"taylor"``) to have it checked.

    Self-check before use (``self_check``, with ``max_order`` given): the first time a model
    meets a fast path at an order, the path is compared with the nested reference in float64 on
    :data:`SELF_CHECK_SAMPLES` samples of ``example_inputs`` (see :func:`self_check_errors`). A
    mismatch raises :class:`SelfCheckError` naming the model class, order and relative error
    (:class:`SelfCheckUnavailable` when the model cannot be deep-copied to float64); under
    ``"auto"`` it warns once and resolves to ``"nested"`` instead. The resolution and the
    outcome are cached per model and structure (:data:`_PATH_CACHE`), so later calls cost a
    signature and a dictionary look-up."""
    if method not in ("auto", "fast", "nested", "linear", "taylor"):
        raise ValueError(f"method must be 'auto', 'fast' or 'nested', got {method!r}")
    if method == "nested":
        return "nested"
    entry = _model_entry(model, example_inputs)
    if method in ("linear", "taylor"):
        path: FastPath = method
    else:
        if entry.choice is None:
            entry.choice = choose_fast_path(model, example_inputs)
        if isinstance(entry.choice, Eligibility):
            if method == "fast":
                raise ValueError(
                    f"the fast derivative path is not exact here: {entry.choice.reason}"
                )
            return "nested"
        path = entry.choice
    if not self_check or max_order is None:
        return path
    loss = resolve_loss(loss, labels) if labels is not None else (loss or "cross_entropy")
    try:
        failure = _run_check(entry, model, example_inputs, labels, path, max_order, loss)
    except SelfCheckUnavailable as error:
        if method != "auto":
            raise
        failure = error  # not cached: the model may become copyable
    if failure is None:
        return path
    if method != "auto":
        raise failure
    if not entry.warned:
        entry.warned = True
        warnings.warn(f"{failure} Falling back to the nested reference.", RuntimeWarning,
                      stacklevel=3)  # fmt: skip
    return "nested"


def resolve_method(model: nn.Module, example_inputs: torch.Tensor, method: Method) -> str:
    """``"fast"`` or ``"nested"`` for this model (in its current mode): fast when it is
    piecewise linear or every op has a Taylor-mode rule; ``"fast"`` on a model with an op
    without a rule is an error naming the op. Check once, then call the paths directly."""
    return "nested" if resolve_path(model, example_inputs, method) == "nested" else "fast"


# --- dispatcher --------------------------------------------------------------------------------


@dataclass
class DirectionalDerivatives:
    """``values`` ``[max_order, K, B]``; ``logits`` of the pass (fast path only); the method
    and, for the fast one, which path (``"linear"`` cumulants or ``"taylor"``)."""

    values: torch.Tensor
    method: Literal["fast", "nested"]
    logits: torch.Tensor | None = None
    path: FastPath | None = None


def directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    method: Method = "auto",
    create_graph: bool = False,
    loss: Loss | None = None,
    self_check: bool = True,
) -> DirectionalDerivatives:
    """Directional loss derivatives by the exact fast path (cumulant or Taylor mode) when the
    model allows it, else the nested reference.

    ``loss``: None infers it from ``labels`` (integer class labels → cross-entropy, float
    targets of the outputs' shape → per-sample MSE); see :func:`resolve_loss`. Every method
    uses it. ``method="fast"`` raises ``ValueError`` naming the op when an op has no Taylor-mode
    rule; ``"auto"`` falls back to the nested reference then. ``self_check`` (default on): the
    first call on a model checks the fast path against the reference in float64
    (:func:`resolve_path`); a mismatch raises :class:`SelfCheckError` (``"fast"``) or falls back
    to nested with a warning (``"auto"``). Later calls reuse the cached outcome.
    """
    if method not in ("auto", "fast", "nested"):
        raise ValueError(f"method must be 'auto', 'fast' or 'nested', got {method!r}")
    _check_shapes(inputs, labels, directions, max_order)
    loss = resolve_loss(loss, labels)
    path = resolve_path(
        model, inputs, method, max_order=max_order, labels=labels, loss=loss,
        self_check=self_check,
    )  # fmt: skip
    if path != "nested":
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            values, logits = fast_directional_derivatives(
                model, inputs, labels, directions, max_order=max_order, path=path, loss=loss
            )
        return DirectionalDerivatives(values, "fast", logits, path)
    values = nested_directional_derivatives(
        model, inputs, labels, directions, max_order=max_order, create_graph=create_graph,
        loss=loss,
    )  # fmt: skip
    return DirectionalDerivatives(values, "nested")


def derivatives_by_path(
    path: ResolvedPath,
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    loss: Loss = "cross_entropy",
) -> torch.Tensor:
    """``d`` ``[max_order, K, B]`` (no graph) by a path chosen with :func:`resolve_path`."""
    if path == "nested":
        return nested_directional_derivatives(
            model, inputs, labels, directions, max_order=max_order, loss=loss
        )
    with torch.no_grad():
        values, _ = fast_directional_derivatives(
            model, inputs, labels, directions, max_order=max_order, path=path, loss=loss
        )
    return values


@dataclass
class PenalizedLoss:
    """``total = cross_entropy + penalty``; ``penalty`` is already scaled (0 when inactive)."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    penalty: torch.Tensor
    num_penalized: int


def class_selective_loss(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    *,
    target_classes: Sequence[int] | None,
    scale: float,
    max_order: int,
    num_directions: int,
    method: Literal["fast", "nested", "linear", "taylor"],
    generator: torch.Generator | None = None,
    self_check: bool = True,
) -> PenalizedLoss:
    """The notebook's training loss: mean cross-entropy on the batch plus
    ``scale × mean |d_n|`` over orders 1..max_order, ``num_directions`` random unit directions
    and the samples whose (possibly noisy) label is in ``target_classes``.

    ``target_classes=None`` penalizes every sample (global), an empty set none (baseline). The
    penalty is computed in train mode (the notebook forces it). With the fast path and every
    sample penalized, one forward pass serves both terms (shared dropout mask); otherwise the
    cross-entropy has its own forward pass.

    ``method``: ``"fast"`` picks the cumulant or Taylor path, ``"linear"`` / ``"taylor"`` (from
    :func:`resolve_path`) name it; either way the path is resolved and self-checked against the
    nested reference once per model (train mode, orders 1..max_order; :func:`resolve_path`,
    cached), so later steps pay a look-up. A mismatch raises :class:`SelfCheckError`;
    ``self_check=False`` skips the check. BatchNorm: the
    penalty's passes never update running statistics, and train-mode batch statistics are
    those of the step's forward, held constant along the directions (docs/derivatives.md).
    """
    zero = inputs.new_zeros(())
    if (target_classes is not None and len(target_classes) == 0) or scale == 0:
        ce = F.cross_entropy(as_logits(model(inputs)), labels)
        return PenalizedLoss(ce, ce, zero, 0)
    if target_classes is None:
        selected = None
    else:
        targets = torch.as_tensor(list(target_classes), device=labels.device)
        mask = torch.isin(labels, targets)
        selected = None if bool(mask.all()) else torch.nonzero(mask).flatten()
    if selected is not None and selected.numel() == 0:
        ce = F.cross_entropy(as_logits(model(inputs)), labels)
        return PenalizedLoss(ce, ce, zero, 0)
    was_training = model.training
    model.train()
    try:
        x = inputs if selected is None else inputs[selected]
        y = labels if selected is None else labels[selected]
        directions = sample_unit_directions(num_directions, x, generator=generator)
        fast_kwargs = dict(max_order=max_order)
        if method not in ("fast", "nested", "linear", "taylor"):
            raise ValueError(f"method must be fast, nested, linear or taylor, got {method!r}")
        if method != "nested":
            fast_kwargs["path"] = resolve_path(
                model, x, method, max_order=max_order, labels=y, loss="cross_entropy",
                self_check=self_check,
            )  # fmt: skip
            method = "fast"
        if method == "fast" and selected is None:
            # one forward pass is both the step's forward (its buffer updates are the step's
            # own) and the penalty's
            values, ce_logits = fast_directional_derivatives(
                model, x, y, directions, isolate_buffers=False, **fast_kwargs
            )
        elif has_batch_norm_in_training(model):
            # the step's forward first: its batch statistics are those the penalty holds fixed
            statistics = BatchStatistics()
            with statistics.capturing():
                ce_logits = as_logits(model(inputs))
            values = _penalty_derivatives(model, x, y, directions, method, statistics, fast_kwargs)
        else:  # penalty passes first, then the step's forward (the notebook's dropout order)
            values = _penalty_derivatives(
                model, x, y, directions, method, BatchStatistics(), fast_kwargs
            )
            ce_logits = as_logits(model(inputs))
    finally:
        model.train(was_training)
    ce = F.cross_entropy(ce_logits, labels)
    penalty = scale * derivative_penalty(values)
    return PenalizedLoss(ce + penalty, ce, penalty, int(x.shape[0]))


def _penalty_derivatives(model, x, y, directions, method, statistics, fast_kwargs):
    if method == "fast":
        values, _ = fast_directional_derivatives(
            model, x, y, directions, batch_statistics=statistics, **fast_kwargs
        )
        return values
    return nested_directional_derivatives(
        model, x, y, directions, max_order=fast_kwargs["max_order"], create_graph=True,
        batch_statistics=statistics,
    )  # fmt: skip


def has_batch_norm_in_training(model: nn.Module) -> bool:
    """Whether a BatchNorm module of ``model`` is in train mode (uses batch statistics)."""
    return any(
        isinstance(module, nn.modules.batchnorm._BatchNorm) and module.training
        for module in model.modules()
    )


def derivative_penalty(derivatives: torch.Tensor) -> torch.Tensor:
    """The notebook's unscaled penalty: mean over (order, direction) of the per-sample mean of
    ``|d_n|``. All terms have the same batch, so this is the plain mean of ``|d|``."""
    return derivatives.abs().mean()


# --- λ --------------------------------------------------------------------------------------


def mean_log_abs(derivatives: torch.Tensor, *, floor: float = LOG_ABS_FLOOR) -> torch.Tensor:
    """Per order, the mean over all (direction, point) of ``log max(|d_n|, floor)``: ``[N]``."""
    logs = torch.log(derivatives.abs().clamp_min(floor))
    return logs.reshape(logs.shape[0], -1).mean(dim=1)


@dataclass(frozen=True)
class LambdaFit:
    """Least-squares line ``mean log|d_n| ≈ intercept + slope · n``; λ is the slope."""

    slope: float
    intercept: float
    orders: tuple[int, ...]
    mean_log_abs: tuple[float, ...]


def fit_lambda(mean_log_abs_by_order: Sequence[float] | torch.Tensor) -> LambdaFit:
    """Fit the slope of mean log|d_n| against n = 1..N (N ≥ 2)."""
    values = np.asarray(
        mean_log_abs_by_order.detach().cpu().double()
        if isinstance(mean_log_abs_by_order, torch.Tensor)
        else mean_log_abs_by_order,
        dtype=float,
    )
    if values.ndim != 1 or values.size < 2:
        raise ValueError(f"need at least two orders to fit λ, got shape {values.shape}")
    orders = np.arange(1, values.size + 1, dtype=float)
    design = np.column_stack([np.ones_like(orders), orders])
    (intercept, slope), *_ = np.linalg.lstsq(design, values, rcond=None)
    return LambdaFit(
        slope=float(slope),
        intercept=float(intercept),
        orders=tuple(int(n) for n in orders),
        mean_log_abs=tuple(float(v) for v in values),
    )


def boundary_point_indices(
    probs: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    *,
    prob_range: tuple[float, float],
    max_points: int,
    generator: torch.Generator | None = None,
    boundary: Literal["notebook", "pairwise"] = "notebook",
) -> torch.Tensor:
    """Indices of points near the decision boundary of ``classes``: their top softmax
    probability lies in ``prob_range`` (inclusive) and

    * ``boundary="notebook"``: their true label is in ``classes`` (the notebook's rule);
    * ``boundary="pairwise"``: ``classes`` (a pair) are their two most probable classes, in
      either order, whatever the label (so every point sits between exactly these two).

    A seeded random subset of ``max_points`` if more; returned sorted (ascending)."""
    low, high = prob_range
    top = probs.max(dim=1).values
    in_classes = _boundary_rule(probs, labels, classes, boundary)
    candidates = torch.nonzero(in_classes & (top >= low) & (top <= high)).flatten()
    if candidates.numel() > max_points:
        device = generator.device if generator is not None else candidates.device
        order = torch.randperm(candidates.numel(), generator=generator, device=device)
        candidates = candidates[order[:max_points].to(candidates.device)]
    return candidates.sort().values


def _boundary_rule(
    probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], boundary: str
) -> torch.Tensor:
    """Boolean mask of :func:`boundary_point_indices`'s class condition."""
    wanted = torch.as_tensor(list(classes), device=labels.device)
    if boundary == "notebook":
        return torch.isin(labels, wanted)
    if boundary != "pairwise":
        raise ValueError(f"boundary must be 'notebook' or 'pairwise', got {boundary!r}")
    if wanted.numel() != 2 or bool(wanted[0] == wanted[1]):
        raise ValueError(f"boundary='pairwise' needs two different classes, got {list(classes)}")
    first, second = probs.topk(2, dim=1).indices.to(labels.device).unbind(dim=1)
    a, b = wanted
    return ((first == a) & (second == b)) | ((first == b) & (second == a))


@dataclass(frozen=True)
class LambdaMeasurement:
    """λ for one class pair. ``fit`` is None when fewer than ``min_points`` were found."""

    classes: tuple[int, ...]
    num_points: int
    fit: LambdaFit | None
    method: str

    @property
    def slope(self) -> float:
        return self.fit.slope if self.fit is not None else float("nan")


@torch.no_grad()
def predict_probabilities(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 1024):
    """Softmax probabilities in eval mode, batched."""
    was_training = model.training
    model.eval()
    try:
        parts = [
            torch.softmax(as_logits(model(chunk)), dim=1) for chunk in inputs.split(batch_size)
        ]
    finally:
        model.train(was_training)
    return torch.cat(parts)


def measure_lambda(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    classes: Sequence[int],
    *,
    max_order: int = 4,
    num_directions: int = 4,
    prob_range: tuple[float, float] = (0.2, 0.8),
    max_points: int = 200,
    min_points: int = 10,
    batch_size: int = 64,
    method: Method = "auto",
    generator: torch.Generator | None = None,
    probs: torch.Tensor | None = None,
    boundary: Literal["notebook", "pairwise"] = "notebook",
    self_check: bool = True,
) -> LambdaMeasurement:
    """λ at the decision boundary of ``classes`` (eval mode), as in the notebook: boundary points
    by top probability (and ``boundary``'s rule, see :func:`boundary_point_indices`),
    ``num_directions`` random unit directions per point and batch, the mean of log|d_n| per
    order over all (point, direction), and the least-squares slope in n.

    ``generator`` drives both the subsampling and the directions; ``probs`` may be passed when
    already computed for the same model and inputs. ``self_check``: see :func:`resolve_path`.
    """
    was_training = model.training
    model.eval()
    try:
        if probs is None:
            probs = predict_probabilities(model, inputs)
        chosen = boundary_point_indices(
            probs,
            labels,
            classes,
            prob_range=prob_range,
            max_points=max_points,
            generator=generator,
            boundary=boundary,
        )
        num_points = int(chosen.numel())
        if num_points < min_points:
            return LambdaMeasurement(tuple(classes), num_points, None, method)
        chunks = []
        path = resolve_path(  # resolved and self-checked once per model, not per batch
            model, inputs[chosen], method, max_order=max_order, labels=labels[chosen],
            loss="cross_entropy", self_check=self_check,
        )  # fmt: skip
        for batch in chosen.split(batch_size):
            x, y = inputs[batch], labels[batch]
            directions = sample_unit_directions(num_directions, x, generator=generator)
            values = derivatives_by_path(path, model, x, y, directions, max_order=max_order)
            chunks.append(values.reshape(max_order, -1))
        fit = fit_lambda(mean_log_abs(torch.cat(chunks, dim=1)))
        used = "nested" if path == "nested" else "fast"
        return LambdaMeasurement(tuple(classes), num_points, fit, used)
    finally:
        model.train(was_training)


def _check_shapes(
    inputs: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor, max_order: int
) -> None:
    if max_order < 1:
        raise ValueError(f"max_order must be ≥ 1, got {max_order}")
    if labels.shape[:1] != inputs.shape[:1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != batch {tuple(inputs.shape[:1])}")
    if directions.dim() != inputs.dim() + 1 or directions.shape[1:] != inputs.shape:
        dims = ", ".join(map(str, inputs.shape))
        raise ValueError(
            f"directions must have shape [K, *inputs.shape] = [K, {dims}],"
            f" got {tuple(directions.shape)}"
        )
