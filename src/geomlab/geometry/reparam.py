"""Coordinate rescalings theta = S * phi and how one optimizer step transforms under them.

In coordinates phi with theta = diag(S) phi, the gradient is S * g and the Fisher is
diag(S) F diag(S). A step taken in phi and mapped back is S * delta_phi. SGD's step becomes
-eta S^2 g (coordinate dependent); the natural-gradient step S (S F S)^+ S g equals F^+ g up
to a component in the Fisher null space, which does not change the model's predictions.
"""

from __future__ import annotations

import math
from typing import Literal

import torch

from geomlab.geometry.fisher import symmetric_pseudo_inverse

Method = Literal["sgd", "natgrad"]


def two_block_scaling(
    kappa: float, n_classes: int, n_features: int, *, dtype=torch.float64, device=None
) -> torch.Tensor:
    """The E3 notebook's family: features [0, D/2) scaled by sqrt(kappa), the rest by
    1/sqrt(kappa), the same for every class (parameter index c * D + d)."""
    per_feature = torch.full((n_features,), 1 / math.sqrt(kappa), dtype=dtype, device=device)
    per_feature[: n_features // 2] = math.sqrt(kappa)
    return per_feature.repeat(n_classes)


def log_uniform_pattern(size: int, *, seed: int) -> torch.Tensor:
    """A seeded pattern in [-1/2, 1/2] whose extremes are exactly -1/2 and 1/2."""
    generator = torch.Generator().manual_seed(seed)
    u = torch.rand(size, dtype=torch.float64, generator=generator)
    return (u - u.min()) / (u.max() - u.min()) - 0.5


def log_uniform_scaling(kappa: float, pattern: torch.Tensor) -> torch.Tensor:
    """Per-coordinate scales exp(pattern * log kappa): log-uniform, max/min exactly kappa."""
    return torch.exp(pattern * math.log(kappa))


def transform_gradient(gradient: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return scale * gradient


def transform_fisher(fisher: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """diag(S) F diag(S) by broadcasting (no dense diagonal matrices), kept exactly symmetric."""
    transformed = scale[:, None] * fisher * scale[None, :]
    return (transformed + transformed.T) / 2


def transform_fisher_reference(fisher: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference: the literal matrix product diag(S) @ F @ diag(S)."""
    diag = torch.diag(scale)
    return diag @ fisher @ diag


def rescaled_step(
    gradient: torch.Tensor,
    fisher: torch.Tensor,
    scale: torch.Tensor,
    *,
    method: Method,
    eta: float,
    rcond: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step of size ``eta`` taken in phi coordinates, returned in theta coordinates.

    Returns ``(delta_theta, F_phi)``.
    """
    grad_phi = transform_gradient(gradient, scale)
    fisher_phi = transform_fisher(fisher, scale)
    if method == "sgd":
        delta_phi = -eta * grad_phi
    elif method == "natgrad":
        delta_phi = -eta * symmetric_pseudo_inverse(fisher_phi, rcond=rcond).apply(grad_phi)
    else:
        raise ValueError(f"method must be 'sgd' or 'natgrad', got {method!r}")
    return scale * delta_phi, fisher_phi


def max_abs_difference(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max())


def centred_logit_change(
    delta_theta: torch.Tensor, inputs: torch.Tensor, n_classes: int
) -> torch.Tensor:
    """How a step changes each sample's logits, minus the class mean: the part of the logit
    change that softmax can see (a class-uniform shift changes no prediction)."""
    change = inputs @ delta_theta.reshape(n_classes, -1).T
    return change - change.mean(dim=1, keepdim=True)
