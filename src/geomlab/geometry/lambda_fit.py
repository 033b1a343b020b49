"""λ: the slope of mean log|d_n| against the order n at points near a decision boundary.

Boundary points by top probability and a class rule (:class:`Boundary`), random unit directions,
derivatives by the path :func:`~geomlab.geometry.derivatives.resolve_path` picks (checked once),
and a least-squares line (:func:`fit_lambda`)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

import numpy as np
import torch
from torch import nn

from geomlab.geometry.derivatives import (
    Method,
    derivatives_by_path,
    resolve_path,
    sample_unit_directions,
)
from geomlab.geometry.derivatives.options import parse_method
from geomlab.geometry.outputs import as_logits
from geomlab.geometry.params import LossKind
from geomlab.models.modes import eval_mode

__all__ = [
    "LOG_ABS_FLOOR", "Boundary", "LambdaFit", "LambdaMeasurement", "boundary_point_indices",
    "fit_lambda", "mean_log_abs", "measure_lambda", "predict_probabilities",
]  # fmt: skip

LOG_ABS_FLOOR = 1e-12


class Boundary(StrEnum):
    """Which points count as near the boundary of a class pair (:func:`boundary_point_indices`)."""

    NOTEBOOK = "notebook"
    PAIRWISE = "pairwise"


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
    boundary: Boundary | str = Boundary.NOTEBOOK,
) -> torch.Tensor:
    """Indices of points near the decision boundary of ``classes``: their top softmax
    probability lies in ``prob_range`` (inclusive) and

    * ``boundary="notebook"``: their true label is in ``classes`` (the notebook's rule);
    * ``boundary="pairwise"``: ``classes`` (a pair) are their two most probable classes, in
      either order, whatever the label (so every point sits between exactly these two).

    A seeded random subset of ``max_points`` if more; returned sorted (ascending)."""
    low, high = prob_range
    top = probs.max(dim=1).values
    in_classes = _boundary_rule(probs, labels, classes, _parse_boundary(boundary))
    candidates = torch.nonzero(in_classes & (top >= low) & (top <= high)).flatten()
    if candidates.numel() > max_points:
        device = generator.device if generator is not None else candidates.device
        order = torch.randperm(candidates.numel(), generator=generator, device=device)
        candidates = candidates[order[:max_points].to(candidates.device)]
    return candidates.sort().values


def _parse_boundary(boundary: Boundary | str) -> Boundary:
    try:
        return Boundary(boundary)
    except ValueError:
        raise ValueError(f"boundary must be 'notebook' or 'pairwise', got {boundary!r}") from None


def _boundary_rule(
    probs: torch.Tensor, labels: torch.Tensor, classes: Sequence[int], boundary: Boundary
) -> torch.Tensor:
    """Boolean mask of :func:`boundary_point_indices`'s class condition."""
    wanted = torch.as_tensor(list(classes), device=labels.device)
    if boundary is Boundary.NOTEBOOK:
        return torch.isin(labels, wanted)
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
    method: Method

    @property
    def slope(self) -> float:
        return self.fit.slope if self.fit is not None else float("nan")


@torch.no_grad()
def predict_probabilities(model: nn.Module, inputs: torch.Tensor, *, batch_size: int = 1024):
    """Softmax probabilities in eval mode, batched (every submodule's mode restored)."""
    with eval_mode(model):
        parts = [
            torch.softmax(as_logits(model(chunk)), dim=1) for chunk in inputs.split(batch_size)
        ]
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
    method: Method | str = Method.AUTO,
    generator: torch.Generator | None = None,
    probs: torch.Tensor | None = None,
    boundary: Boundary | str = Boundary.NOTEBOOK,
    self_check: bool = True,
) -> LambdaMeasurement:
    """λ at the decision boundary of ``classes`` (eval mode), as in the notebook: boundary points
    by top probability (and ``boundary``'s rule, see :func:`boundary_point_indices`),
    ``num_directions`` random unit directions per point and batch, the mean of log|d_n| per
    order over all (point, direction), and the least-squares slope in n.

    ``generator`` drives both the subsampling and the directions; ``probs`` may be passed when
    already computed for the same model and inputs. ``self_check``: see :func:`resolve_path`.
    Every submodule's train/eval mode is restored afterwards. ``method`` of the result: the
    requested one when too few points were found, else ``fast`` or ``nested`` as run.
    """
    method = parse_method(method)
    with eval_mode(model):
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
            loss=LossKind.CROSS_ENTROPY, self_check=self_check,
        )  # fmt: skip
        for batch in chosen.split(batch_size):
            x, y = inputs[batch], labels[batch]
            directions = sample_unit_directions(num_directions, x, generator=generator)
            values = derivatives_by_path(path, model, x, y, directions, max_order=max_order)
            chunks.append(values.reshape(max_order, -1))
        fit = fit_lambda(mean_log_abs(torch.cat(chunks, dim=1)))
        return LambdaMeasurement(tuple(classes), num_points, fit, path.method)
