"""Directional input derivatives of the loss: ``d_n = dⁿ/dtⁿ L(f(x + t u), y)`` at t = 0.

Three implementations of the same numbers (docs/derivatives.md), one concept a module:

* :mod:`.nested` — the reference, :func:`nested_directional_derivatives`: repeated reverse-mode
  autograd with respect to the input, one forward pass per direction; any differentiable model.
* :mod:`.cumulant` — exact for networks piecewise linear in their input: one JVP, then the
  cumulants of the logits' tangent under the softmax.
* :mod:`.taylor` — Taylor mode: the truncated Taylor polynomials of every activation along all
  directions in one pass (series algebra, recorder, rules, loss series).

Around them: :mod:`.options` (the typed ``Method``/``Path``; the loss is
:class:`~geomlab.geometry.params.LossKind`), :mod:`.losses` (the loss checked against the
labels), :mod:`.directions`, :mod:`.ops` and :mod:`.tracing` (the one aten op taxonomy and the
one dispatch-mode tracer that :mod:`.eligibility` and the Taylor recorder share),
:mod:`.batch_statistics` (BatchNorm policy; the one buffer guard is
``geomlab.models.modes.isolated_buffers``),
:mod:`.fast` (cumulant or Taylor for one call), :mod:`.self_check` (a fast path against the
reference in float64, once per model, cached) and :mod:`.dispatch` (:func:`resolve_path`, the
one place a request becomes a path, and :func:`directional_derivatives`). The penalty and λ
built on them live in :mod:`geomlab.geometry.penalty` and :mod:`geomlab.geometry.lambda_fit`.
"""

from __future__ import annotations

from geomlab.geometry.derivatives.batch_statistics import (
    BatchStatistics,
    PrimitiveLayerNorm,
    has_training_modules,
)
from geomlab.geometry.derivatives.cumulant import (
    jvp_logits_and_tangents,
    logits_and_tangents,
    loss_derivatives_along_tangents,
    provided_linearization,
)
from geomlab.geometry.derivatives.directions import sample_unit_directions
from geomlab.geometry.derivatives.dispatch import (
    DirectionalDerivatives,
    derivatives_by_path,
    directional_derivatives,
    resolve_path,
)
from geomlab.geometry.derivatives.eligibility import Eligibility, check_piecewise_linear
from geomlab.geometry.derivatives.fast import (
    check_taylor,
    choose_fast_path,
    fast_directional_derivatives,
    taylor_directional_derivatives,
)
from geomlab.geometry.derivatives.losses import check_targets, resolve_loss
from geomlab.geometry.derivatives.nested import (
    capture_batch_statistics,
    nested_directional_derivatives,
)
from geomlab.geometry.derivatives.options import LossKind, Method, Path
from geomlab.geometry.derivatives.self_check import (
    SelfCheckError,
    SelfCheckUnavailable,
    clear_path_cache,
    self_check_errors,
)
from geomlab.geometry.derivatives.taylor import UnsupportedOperation

__all__ = [
    "BatchStatistics", "DirectionalDerivatives", "Eligibility", "LossKind", "Method", "Path",
    "PrimitiveLayerNorm", "SelfCheckError", "SelfCheckUnavailable", "UnsupportedOperation",
    "capture_batch_statistics", "check_piecewise_linear", "check_targets", "check_taylor",
    "choose_fast_path", "clear_path_cache", "derivatives_by_path", "directional_derivatives",
    "fast_directional_derivatives", "has_training_modules",
    "jvp_logits_and_tangents", "logits_and_tangents", "loss_derivatives_along_tangents",
    "nested_directional_derivatives", "provided_linearization", "resolve_loss",
    "resolve_path", "sample_unit_directions", "self_check_errors",
    "taylor_directional_derivatives",
]  # fmt: skip
