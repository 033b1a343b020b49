"""Directional input derivatives of the cross-entropy loss, and λ estimated from them.

For an input x, label y and unit direction u, ``d_n = dⁿ/dtⁿ CE(f(x + t u), y)`` at t = 0.

Two implementations of the same numbers:

* :func:`nested_directional_derivatives` — the reference. Repeated reverse-mode autograd with
  respect to the input (``d_{n+1} = ∇_x d_n · u``), one forward pass per direction. Works for any
  differentiable model; costs one extra backward graph per order.
* :func:`fast_directional_derivatives` — exact for networks that are piecewise linear in their
  input (convolution, linear, ReLU, max-pool, dropout with a mask fixed during the pass, affine
  eval-mode batch norm). Near x the logits move on a line, ``z(x + t u) = z + t v`` with
  ``v = J u``, so the derivatives are those of ``t ↦ CE(z + t v, y)``: ``E_p[v] − v_y`` for
  n = 1 and the n-th cumulant of ``v_C`` with ``C ~ softmax(z)`` for n ≥ 2. One forward-mode
  pass (all directions batched, the primal computed once) gives every order, and reverse mode
  through it gives parameter gradients.

:func:`check_piecewise_linear` decides whether the fast path is exact for a model by tracing the
aten ops of one forward pass and following which tensors depend on the input;
:func:`directional_derivatives` uses the fast path only when that check passes.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

Method = Literal["auto", "fast", "nested"]

DIRECTION_NORM_EPS = 1e-12
LOG_ABS_FLOOR = 1e-12

# --- eligibility -------------------------------------------------------------------------------

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
        "_to_copy",
        "constant_pad_nd",
        "_native_batch_norm_legit_no_training",
    }
)
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
    }
)


@dataclass(frozen=True)
class Eligibility:
    """Whether the fast path is exact for a model, and why not if it is not."""

    eligible: bool
    reason: str
    offending_ops: tuple[str, ...] = ()


class _InputDependenceTracer(TorchDispatchMode):
    """Follows which tensors depend on the input and records ops that are not piecewise linear."""

    def __init__(self, tracked: torch.Tensor) -> None:
        super().__init__()
        # Keep the tensors alive so that ids are not reused during the trace.
        self._alive: list[torch.Tensor] = [tracked]
        self._ids = {id(tracked)}
        self.offending: list[str] = []

    def is_tracked(self, value: object) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self._ids

    def _track(self, outputs: object) -> None:
        for value in tree_flatten(outputs)[0]:
            if isinstance(value, torch.Tensor):
                self._alive.append(value)
                self._ids.add(id(value))

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        outputs = func(*args, **kwargs)
        flat_args = tree_flatten((args, kwargs))[0]
        if not any(self.is_tracked(a) for a in flat_args):
            return outputs
        name = func.overloadpacket.__name__.rstrip("_")
        if name in _VALUE_FREE_OPS:
            return outputs
        if name in _BILINEAR_OPS:
            positions = _BILINEAR_OPS[name]
            tracked_factors = sum(self.is_tracked(args[i]) for i in positions if i < len(args))
            if tracked_factors > 1:
                self.offending.append(f"{name} (product of two input-dependent tensors)")
        elif name == "div":
            if len(args) > 1 and self.is_tracked(args[1]):
                self.offending.append("div (input-dependent denominator)")
        elif name not in _AFFINE_OPS and name not in _PIECEWISE_LINEAR_OPS:
            self.offending.append(name)
        self._track(outputs)
        return outputs


def check_piecewise_linear(model: nn.Module, example_inputs: torch.Tensor) -> Eligibility:
    """Trace one forward pass on ``example_inputs[:1]`` and decide if the logits are piecewise
    linear in the input (so that the fast path is exact).

    The trace runs under ``no_grad`` and a forked RNG, so it does not change the random stream
    (dropout masks) of the caller. The model's current train/eval mode is the one checked.
    """
    probe = example_inputs[:1].detach().clone()
    devices = []
    if probe.device.type == "cuda":  # fork_rng wants CUDA device indices
        index = probe.device.index
        devices = [index if index is not None else torch.cuda.current_device()]
    tracer = _InputDependenceTracer(probe)
    with torch.random.fork_rng(devices=devices), torch.no_grad(), tracer:
        logits = model(probe)
    if not tracer.is_tracked(logits):
        return Eligibility(False, "the logits do not depend on the input tensor")
    if tracer.offending:
        ops = tuple(dict.fromkeys(tracer.offending))
        return Eligibility(False, f"not piecewise linear in the input: {', '.join(ops)}", ops)
    return Eligibility(True, "piecewise linear in the input")


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
) -> torch.Tensor:
    """Reference ``d_n`` for n = 1..max_order by repeated input gradients.

    ``directions`` has shape ``[K, *inputs.shape]``; each direction gets its own forward pass
    (so in train mode each gets its own dropout mask, as in the notebook). Returns
    ``[max_order, K, B]``. With ``create_graph`` the result is differentiable in the parameters.
    """
    _check_shapes(inputs, labels, directions, max_order)
    per_direction = []
    for direction in directions:
        x = inputs.detach().clone().requires_grad_(True)
        with torch.enable_grad():
            scalar = F.cross_entropy(model(x), labels, reduction="sum")
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


def fast_directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(d, logits)``: ``d`` ``[max_order, K, B]`` by the exact fast path, and the logits of the
    same forward pass. Only exact for piecewise-linear models (see :func:`check_piecewise_linear`);
    prefer :func:`directional_derivatives`, which checks."""
    _check_shapes(inputs, labels, directions, max_order)
    logits, tangents = logits_and_tangents(model, inputs, directions)
    return loss_derivatives_along_tangents(logits, tangents, labels, max_order=max_order), logits


# --- dispatcher --------------------------------------------------------------------------------


@dataclass
class DirectionalDerivatives:
    """``values`` ``[max_order, K, B]``; ``logits`` of the pass (fast path only); the method."""

    values: torch.Tensor
    method: Literal["fast", "nested"]
    logits: torch.Tensor | None = None


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
    """Directional loss derivatives by the fast path when it is exact, else the reference.

    ``method="fast"`` on a model that is not piecewise linear raises ``ValueError`` rather than
    returning wrong numbers; ``"auto"`` falls back to the nested reference.
    """
    if method not in ("auto", "fast", "nested"):
        raise ValueError(f"method must be 'auto', 'fast' or 'nested', got {method!r}")
    use_fast = False
    if method != "nested":
        eligibility = check_piecewise_linear(model, inputs)
        if method == "fast" and not eligibility.eligible:
            raise ValueError(f"the fast derivative path is not exact here: {eligibility.reason}")
        use_fast = eligibility.eligible
    if use_fast:
        if create_graph:
            values, logits = fast_directional_derivatives(
                model, inputs, labels, directions, max_order=max_order
            )
        else:
            with torch.no_grad():
                values, logits = fast_directional_derivatives(
                    model, inputs, labels, directions, max_order=max_order
                )
        return DirectionalDerivatives(values, "fast", logits)
    values = nested_directional_derivatives(
        model, inputs, labels, directions, max_order=max_order, create_graph=create_graph
    )
    return DirectionalDerivatives(values, "nested")


def resolve_method(model: nn.Module, example_inputs: torch.Tensor, method: Method) -> str:
    """``"fast"`` or ``"nested"`` for this model (in its current mode); ``"fast"`` on a model
    that is not piecewise linear is an error. Check once, then call the paths directly."""
    if method == "nested":
        return "nested"
    eligibility = check_piecewise_linear(model, example_inputs)
    if eligibility.eligible:
        return "fast"
    if method == "fast":
        raise ValueError(f"the fast derivative path is not exact here: {eligibility.reason}")
    return "nested"


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
    method: Literal["fast", "nested"],
    generator: torch.Generator | None = None,
) -> PenalizedLoss:
    """The notebook's training loss: mean cross-entropy on the batch plus
    ``scale × mean |d_n|`` over orders 1..max_order, ``num_directions`` random unit directions
    and the samples whose (possibly noisy) label is in ``target_classes``.

    ``target_classes=None`` penalizes every sample (global), an empty set none (baseline). The
    penalty is computed in train mode (the notebook forces it). With the fast path and every
    sample penalized, one forward pass serves both terms (shared dropout mask); otherwise the
    cross-entropy has its own forward pass.
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
        if method == "fast":
            values, logits = fast_directional_derivatives(
                model, x, y, directions, max_order=max_order
            )
            ce_logits = logits if selected is None else model(inputs)
        else:
            values = nested_directional_derivatives(
                model, x, y, directions, max_order=max_order, create_graph=True
            )
            ce_logits = model(inputs)
    finally:
        model.train(was_training)
    ce = F.cross_entropy(ce_logits, labels)
    penalty = scale * derivative_penalty(values)
    return PenalizedLoss(ce + penalty, ce, penalty, int(x.shape[0]))


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
        used = method
        for batch in chosen.split(batch_size):
            x, y = inputs[batch], labels[batch]
            directions = sample_unit_directions(num_directions, x, generator=generator)
            result = directional_derivatives(
                model, x, y, directions, max_order=max_order, method=method
            )
            used = result.method
            chunks.append(result.values.reshape(max_order, -1))
        fit = fit_lambda(mean_log_abs(torch.cat(chunks, dim=1)))
        return LambdaMeasurement(tuple(classes), num_points, fit, used)
    finally:
        model.train(was_training)


def _check_shapes(
    inputs: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor, max_order: int
) -> None:
    if max_order < 1:
        raise ValueError(f"max_order must be ≥ 1, got {max_order}")
    if labels.shape != inputs.shape[:1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != batch {tuple(inputs.shape[:1])}")
    if directions.dim() != inputs.dim() + 1 or directions.shape[1:] != inputs.shape:
        dims = ", ".join(map(str, inputs.shape))
        raise ValueError(
            f"directions must have shape [K, *inputs.shape] = [K, {dims}],"
            f" got {tuple(directions.shape)}"
        )
