"""Taylor mode: truncated Taylor polynomials of every activation along K input directions.

Along ``x(t) = x + t u`` every activation is a power series ``h(t) = h₀ + Σ_{k=1..n} h_k t^k``;
the loss's ``d_n = n! [tⁿ] L(t)``. One pass pushes the coefficients ``h_1..h_n`` of all K
directions (stacked on a leading axis, ``[K, *h₀.shape]`` per order) through a network, exact to
rounding, in the spirit of JAX's ``jet``:

* :mod:`.series` — the algebra: Cauchy products, Faà di Bruno composition, the Taylor tables of
  elementwise functions;
* :mod:`.recorder` — the tape: a ``TorchDispatchMode`` records the input-dependent aten ops of
  the model's ordinary forward pass, :func:`replay` applies the rules;
* :mod:`.rules_linear`, :mod:`.rules_nonlinear` — one rule per aten op (:data:`RULES`): linear
  ops act coefficient-wise, products are Cauchy products, elementwise ops compose, ReLU-like
  ops keep their active mask, LayerNorm/BatchNorm through their primitives (train-mode
  BatchNorm with the batch statistics held constant along the direction);
* :mod:`.loss` — the loss's series from the outputs' (log-sum-exp of a polynomial for
  cross-entropy, a Cauchy square for MSE).

Each tensor's coefficients keep their true degree in t (a linear layer after the input has
degree 1), so piecewise-linear parts of a network cost one coefficient set per direction.
"""

from __future__ import annotations

from geomlab.geometry.derivatives.taylor import rules_linear, rules_nonlinear  # noqa: F401 - fill RULES
from geomlab.geometry.derivatives.taylor.loss import (
    cross_entropy_series,
    loss_derivatives_from_series,
    mse_series,
)
from geomlab.geometry.derivatives.taylor.recorder import (
    RULES,
    TaylorRecorder,
    UnsupportedOperation,
    replay,
    taylor_forward,
)
from geomlab.geometry.derivatives.taylor.series import Coefficients, compose, series_mul

__all__ = [
    "RULES", "Coefficients", "TaylorRecorder", "UnsupportedOperation", "compose",
    "cross_entropy_series", "loss_derivatives_from_series", "mse_series", "replay",
    "series_mul", "taylor_forward",
]  # fmt: skip
