"""The loss's series from the outputs' series: cross-entropy (log-sum-exp of a polynomial) and
the per-sample MSE; ``d_n = n! [tⁿ] L(t)``."""

from __future__ import annotations

import math

import torch

from geomlab.geometry.derivatives.losses import parse_loss
from geomlab.geometry.derivatives.taylor.series import (
    Coefficients,
    compose,
    log_taylor,
    padded,
    series_mul,
)
from geomlab.geometry.params import LossKind

__all__ = ["cross_entropy_series", "loss_derivatives_from_series", "mse_series"]


def cross_entropy_series(
    logits: torch.Tensor, coefficients: Coefficients, labels: torch.Tensor, order: int
) -> Coefficients:
    """Coefficients 1..order of ``CE(z(t), y) = LSE(z(t)) − z_y(t)`` per (direction, sample):
    ``LSE(z(t)) = LSE(z₀) + log E_p[exp(δ_C(t))]``, ``δ = Σ_k z_k t^k``, ``p = softmax(z₀)``."""
    probs = torch.softmax(logits, dim=-1)
    exp_delta = compose([1.0 / math.factorial(j) for j in range(1, order + 1)], coefficients, order)
    moments = [(probs * e).sum(dim=-1) for e in exp_delta]  # [K, B] each; m₀ = 1
    one = torch.ones((), dtype=logits.dtype, device=logits.device)
    log_m = compose(log_taylor(one, order), moments, order)
    index = labels.expand(coefficients[0].shape[0], -1).unsqueeze(-1)
    out = []
    for k in range(order):
        label_term = coefficients[k].gather(-1, index).squeeze(-1) if k < len(coefficients) else 0
        out.append(log_m[k] - label_term)
    return out


def mse_series(
    outputs: torch.Tensor, coefficients: Coefficients, targets: torch.Tensor, order: int
) -> Coefficients:
    """Coefficients 1..order of the per-sample mean squared error ``mean_j (z_j(t) − y_j)²``."""
    error0 = outputs - targets
    square = series_mul(error0, coefficients, error0, coefficients, order)
    square = padded(square, order)
    return [s.flatten(2).mean(dim=-1) for s in square]


def loss_derivatives_from_series(
    outputs: torch.Tensor,
    coefficients: Coefficients,
    labels: torch.Tensor,
    *,
    max_order: int,
    loss: LossKind = LossKind.CROSS_ENTROPY,
) -> torch.Tensor:
    """``d_n = n! [tⁿ] L(t)``, n = 1..max_order: ``[max_order, K, B]``."""
    if parse_loss(loss) is LossKind.CROSS_ENTROPY:
        series = cross_entropy_series(outputs, coefficients, labels, max_order)
    else:
        series = mse_series(outputs, coefficients, labels, max_order)
    return torch.stack([math.factorial(n + 1) * s for n, s in enumerate(series)])
