"""Dispatch: which path a request means for a model (:func:`resolve_path`, the one place that
decides it), and :func:`directional_derivatives`, which runs it.

``method="fast"`` means the cumulant path when the model is piecewise linear in its input, else
Taylor mode; it raises naming an op without a Taylor rule, and ``"auto"`` falls back to the
reference then. A fast path is self-checked against the nested reference in float64 the first
time a model meets it (:mod:`geomlab.geometry.derivatives.self_check`).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import nn

from geomlab.geometry.derivatives.directions import check_shapes
from geomlab.geometry.derivatives.eligibility import Eligibility
from geomlab.geometry.derivatives.fast import choose_fast_path, fast_directional_derivatives
from geomlab.geometry.derivatives.losses import resolve_loss
from geomlab.geometry.derivatives.nested import nested_directional_derivatives
from geomlab.geometry.derivatives.options import Method, Path, parse_method, parse_request
from geomlab.geometry.derivatives.self_check import SelfCheckUnavailable, model_entry, run_check
from geomlab.geometry.params import LossKind

__all__ = [
    "DirectionalDerivatives", "derivatives_by_path", "directional_derivatives", "resolve_path",
]  # fmt: skip


def resolve_path(
    model: nn.Module,
    example_inputs: torch.Tensor,
    method: Method | Path | str,
    *,
    max_order: int | None = None,
    labels: torch.Tensor | None = None,
    loss: LossKind | str | None = None,
    self_check: bool = True,
) -> Path:
    """The :class:`Path` ``method`` means for this model in its current modes: ``linear``
    (cumulants) or ``taylor`` for ``fast``/``auto`` when exact, ``nested`` otherwise; ``fast`` on
    a model with an op without a rule is an error naming the op. ``method`` may also name a fast
    path (``linear``/``taylor``) to have it checked. ``resolve_path(...).method`` is the
    :class:`Method` (``fast``/``nested``) it runs as.

    Self-check before use (``self_check``, with ``max_order`` given): the first time a model
    meets a fast path at an order, the path is compared with the nested reference in float64 on
    ``SELF_CHECK_SAMPLES`` samples of ``example_inputs`` (see ``self_check_errors``). A
    mismatch raises :class:`SelfCheckError` naming the model class, order and relative error
    (:class:`SelfCheckUnavailable` when the model cannot be deep-copied to float64); under
    ``"auto"`` it warns once and resolves to ``"nested"`` instead. The resolution and the
    outcome are cached per model and structure (``self_check._PATH_CACHE``), so later calls
    cost a signature and a dictionary look-up."""
    request = parse_request(method)
    if request is Method.NESTED:
        return Path.NESTED
    entry = model_entry(model, example_inputs)
    if isinstance(request, Path):
        path = request
    else:
        if entry.choice is None:
            entry.choice = choose_fast_path(model, example_inputs)
        if isinstance(entry.choice, Eligibility):
            if request is Method.FAST:
                raise ValueError(
                    f"the fast derivative path is not exact here: {entry.choice.reason}"
                )
            return Path.NESTED
        path = entry.choice
    if not self_check or max_order is None:
        return path
    loss = resolve_loss(loss, labels) if labels is not None else LossKind(loss or "cross_entropy")
    try:
        failure = run_check(entry, model, example_inputs, labels, path, max_order, loss)
    except SelfCheckUnavailable as error:
        if request is not Method.AUTO:
            raise
        failure = error  # not cached: the model may become copyable
    if failure is None:
        return path
    if request is not Method.AUTO:
        raise failure
    if not entry.warned:
        entry.warned = True
        warnings.warn(f"{failure} Falling back to the nested reference.", RuntimeWarning,
                      stacklevel=3)  # fmt: skip
    return Path.NESTED


@dataclass
class DirectionalDerivatives:
    """``values`` ``[max_order, K, B]``; ``logits`` of the pass (fast path only); the method
    and, for the fast one, which path (``"linear"`` cumulants or ``"taylor"``)."""

    values: torch.Tensor
    method: Method
    logits: torch.Tensor | None = None
    path: Path | None = None


def directional_derivatives(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    method: Method | str = Method.AUTO,
    create_graph: bool = False,
    loss: LossKind | str | None = None,
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
    method = parse_method(method)
    check_shapes(inputs, labels, directions, max_order)
    loss = resolve_loss(loss, labels)
    path = resolve_path(
        model, inputs, method, max_order=max_order, labels=labels, loss=loss,
        self_check=self_check,
    )  # fmt: skip
    if path is not Path.NESTED:
        with torch.set_grad_enabled(create_graph and torch.is_grad_enabled()):
            values, logits = fast_directional_derivatives(
                model, inputs, labels, directions, max_order=max_order, path=path, loss=loss
            )
        return DirectionalDerivatives(values, Method.FAST, logits, path)
    values = nested_directional_derivatives(
        model, inputs, labels, directions, max_order=max_order, create_graph=create_graph,
        loss=loss,
    )  # fmt: skip
    return DirectionalDerivatives(values, Method.NESTED)


def derivatives_by_path(
    path: Path,
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    directions: torch.Tensor,
    *,
    max_order: int,
    loss: LossKind = LossKind.CROSS_ENTROPY,
) -> torch.Tensor:
    """``d`` ``[max_order, K, B]`` (no graph) by a path chosen with :func:`resolve_path`."""
    if Path(path) is Path.NESTED:
        return nested_directional_derivatives(
            model, inputs, labels, directions, max_order=max_order, loss=loss
        )
    with torch.no_grad():
        values, _ = fast_directional_derivatives(
            model, inputs, labels, directions, max_order=max_order, path=path, loss=loss
        )
    return values
