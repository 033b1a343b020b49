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
reference only then. BatchNorm: the penalty's passes never change running statistics and hold
train-mode batch statistics constant along the direction
(:mod:`geomlab.geometry.batch_statistics`).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
    squared error against ``labels`` of the outputs' shape.

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
    if batch_statistics is None and has_training_modules(model):
        batch_statistics = capture_batch_statistics(model, inputs, differentiable=create_graph)
    per_direction = []
    for direction in directions:
        x = inputs.detach().clone().requires_grad_(True)
        with (
            torch.enable_grad(),
            isolated_buffers(model),
            _substituted(batch_statistics),
            PrimitiveLayerNorm(),
        ):
            scalar = _summed_loss(model(x), labels, loss)
            orders = []
            for n in range(1, max_order + 1):
                keep_graph = create_graph or n < max_order
                (grad_x,) = torch.autograd.grad(scalar, x, create_graph=keep_graph)
                d_n = (grad_x * direction).flatten(1).sum(dim=1)
                orders.append(d_n)
                scalar = d_n.sum()
        per_direction.append(torch.stack(orders))
    result = torch.stack(per_direction, dim=1)
    return result if create_graph else result.detach()


def _summed_loss(outputs: torch.Tensor, labels: torch.Tensor, loss: Loss) -> torch.Tensor:
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

    def push_forward(direction: torch.Tensor):
        return torch.func.jvp(model, (inputs,), (direction,))

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
    buffers = isolated_buffers(model) if isolate_buffers else contextlib.nullcontext()
    with buffers, _substituted(batch_statistics):
        outputs, coefficients = taylor_forward(model, inputs, directions, max_order=max_order)
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
            isolated_buffers(model),
        ):
            taylor_forward(model, probe, direction, max_order=2)
    except UnsupportedOperation as error:
        return Eligibility(False, str(error), (error.op,))
    except Exception as error:  # noqa: BLE001 - an untraceable model is ineligible, not fatal
        return Eligibility(False, f"the trace failed: {type(error).__name__}: {error}")
    return Eligibility(True, "every op has a Taylor-mode rule")


def choose_fast_path(model: nn.Module, example_inputs: torch.Tensor) -> FastPath | Eligibility:
    """``"linear"`` (cumulant path) when the model is piecewise linear in its input, else
    ``"taylor"`` when every op has a rule, else the Taylor :class:`Eligibility` saying why not."""
    if check_piecewise_linear(model, example_inputs).eligible:
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
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, logits)``: ``d`` ``[max_order, K, B]`` by the exact fast path, and the logits of the
    same forward pass. ``path`` None picks it: the cumulant path (one JVP) when the model is
    piecewise linear in its input (:func:`check_piecewise_linear`), else Taylor mode, which
    raises naming an op without a rule. Prefer :func:`directional_derivatives`, which falls back
    to the reference."""
    _check_shapes(inputs, labels, directions, max_order)
    if path is None:
        path = "linear" if check_piecewise_linear(model, inputs).eligible else "taylor"
    if path == "taylor":
        return taylor_directional_derivatives(
            model, inputs, labels, directions, max_order=max_order,
            batch_statistics=batch_statistics, isolate_buffers=isolate_buffers,
        )  # fmt: skip
    logits, tangents = logits_and_tangents(model, inputs, directions)
    return loss_derivatives_along_tangents(logits, tangents, labels, max_order=max_order), logits


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
) -> DirectionalDerivatives:
    """Directional loss derivatives by the exact fast path (cumulant or Taylor mode) when the
    model allows it, else the nested reference.

    ``method="fast"`` raises ``ValueError`` naming the op when an op has no Taylor-mode rule;
    ``"auto"`` falls back to the nested reference only then.
    """
    if method not in ("auto", "fast", "nested"):
        raise ValueError(f"method must be 'auto', 'fast' or 'nested', got {method!r}")
    path: FastPath | None = None
    if method != "nested":
        choice = choose_fast_path(model, inputs)
        if isinstance(choice, Eligibility):
            if method == "fast":
                raise ValueError(f"the fast derivative path is not exact here: {choice.reason}")
        else:
            path = choice
    if path is not None:
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            values, logits = fast_directional_derivatives(
                model, inputs, labels, directions, max_order=max_order, path=path
            )
        return DirectionalDerivatives(values, "fast", logits, path)
    values = nested_directional_derivatives(
        model, inputs, labels, directions, max_order=max_order, create_graph=create_graph
    )
    return DirectionalDerivatives(values, "nested")


def resolve_path(
    model: nn.Module, example_inputs: torch.Tensor, method: Method
) -> Literal["linear", "taylor", "nested"]:
    """The path ``method`` means for this model (in its current mode): ``"linear"`` (cumulants)
    or ``"taylor"`` for ``fast``/``auto`` when exact, ``"nested"`` otherwise; ``"fast"`` on a
    model with an op without a rule is an error naming the op."""
    if method not in ("auto", "fast", "nested"):
        raise ValueError(f"method must be 'auto', 'fast' or 'nested', got {method!r}")
    if method == "nested":
        return "nested"
    choice = choose_fast_path(model, example_inputs)
    if not isinstance(choice, Eligibility):
        return choice
    if method == "fast":
        raise ValueError(f"the fast derivative path is not exact here: {choice.reason}")
    return "nested"


def resolve_method(model: nn.Module, example_inputs: torch.Tensor, method: Method) -> str:
    """``"fast"`` or ``"nested"`` for this model (in its current mode): fast when it is
    piecewise linear or every op has a Taylor-mode rule; ``"fast"`` on a model with an op
    without a rule is an error naming the op. Check once, then call the paths directly."""
    return "nested" if resolve_path(model, example_inputs, method) == "nested" else "fast"


def derivatives_by_path(
    path: Literal["linear", "taylor", "nested"],
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
) -> torch.Tensor:
    """``d`` ``[max_order, K, B]`` (no graph) by a path chosen with :func:`resolve_path`."""
    if path == "nested":
        return nested_directional_derivatives(
            model, inputs, labels, directions, max_order=max_order
        )
    with torch.no_grad():
        values, _ = fast_directional_derivatives(
            model, inputs, labels, directions, max_order=max_order, path=path
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
) -> PenalizedLoss:
    """The notebook's training loss: mean cross-entropy on the batch plus
    ``scale × mean |d_n|`` over orders 1..max_order, ``num_directions`` random unit directions
    and the samples whose (possibly noisy) label is in ``target_classes``.

    ``target_classes=None`` penalizes every sample (global), an empty set none (baseline). The
    penalty is computed in train mode (the notebook forces it). With the fast path and every
    sample penalized, one forward pass serves both terms (shared dropout mask); otherwise the
    cross-entropy has its own forward pass.

    ``method``: ``"fast"`` picks the cumulant or Taylor path per call (a two-sample trace);
    ``"linear"`` / ``"taylor"`` (from :func:`resolve_path`) skip that check. BatchNorm: the
    penalty's passes never update running statistics, and train-mode batch statistics are
    those of the step's forward, held constant along the directions (docs/derivatives.md).
    """
    zero = inputs.new_zeros(())
    if (target_classes is not None and len(target_classes) == 0) or scale == 0:
        ce = F.cross_entropy(model(inputs), labels)
        return PenalizedLoss(ce, ce, zero, 0)
    if target_classes is None:
        selected = None
    else:
        targets = torch.as_tensor(list(target_classes), device=labels.device)
        mask = torch.isin(labels, targets)
        selected = None if bool(mask.all()) else torch.nonzero(mask).flatten()
    if selected is not None and selected.numel() == 0:
        ce = F.cross_entropy(model(inputs), labels)
        return PenalizedLoss(ce, ce, zero, 0)
    was_training = model.training
    model.train()
    try:
        x = inputs if selected is None else inputs[selected]
        y = labels if selected is None else labels[selected]
        directions = sample_unit_directions(num_directions, x, generator=generator)
        fast_kwargs = dict(max_order=max_order)
        if method == "fast":
            fast_kwargs["path"] = (
                "linear" if check_piecewise_linear(model, x).eligible else "taylor"
            )
        elif method in ("linear", "taylor"):
            fast_kwargs["path"], method = method, "fast"
        elif method != "nested":
            raise ValueError(f"method must be fast, nested, linear or taylor, got {method!r}")
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
                ce_logits = model(inputs)
            values = _penalty_derivatives(model, x, y, directions, method, statistics, fast_kwargs)
        else:  # penalty passes first, then the step's forward (the notebook's dropout order)
            values = _penalty_derivatives(
                model, x, y, directions, method, BatchStatistics(), fast_kwargs
            )
            ce_logits = model(inputs)
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
        parts = [torch.softmax(model(chunk), dim=1) for chunk in inputs.split(batch_size)]
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
) -> LambdaMeasurement:
    """λ at the decision boundary of ``classes`` (eval mode), as in the notebook: boundary points
    by top probability (and ``boundary``'s rule, see :func:`boundary_point_indices`),
    ``num_directions`` random unit directions per point and batch, the mean of log|d_n| per
    order over all (point, direction), and the least-squares slope in n.

    ``generator`` drives both the subsampling and the directions; ``probs`` may be passed when
    already computed for the same model and inputs.
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
        path = resolve_path(model, inputs[chosen], method)  # checked once, not per batch
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
