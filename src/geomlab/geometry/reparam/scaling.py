"""Coordinate rescalings ``theta = S * phi``: the scaling families (one :class:`Scaling` Enum)
for softmax regression's ``W`` and per parameter of any model, and the gradient and Fisher in
``phi`` coordinates (``S * g`` and ``diag(S) F diag(S)``)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from enum import StrEnum

import torch

__all__ = [
    "Scaling", "log_uniform_parameter_scales", "log_uniform_pattern", "log_uniform_scaling",
    "parameter_scale_vector", "transform_fisher", "transform_fisher_reference",
    "transform_gradient", "two_block_parameter_scales", "two_block_scaling",
]  # fmt: skip


class Scaling(StrEnum):
    """The families of rescalings E3 compares: ``two_block`` (the notebook's: half the entries
    along the last axis up by sqrt(kappa), the rest down) and ``log_uniform`` (every entry its own
    log-uniform scale; max/min exactly kappa)."""

    TWO_BLOCK = "two_block"
    LOG_UNIFORM = "log_uniform"


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
    """The gradient in phi coordinates (theta = S * phi): ``S * g``."""
    return scale * gradient


def transform_fisher(fisher: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """diag(S) F diag(S) by broadcasting (no dense diagonal matrices), kept exactly symmetric."""
    transformed = scale[:, None] * fisher * scale[None, :]
    return (transformed + transformed.T) / 2


def transform_fisher_reference(fisher: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """Reference: the literal matrix product diag(S) @ F @ diag(S)."""
    diag = torch.diag(scale)
    return diag @ fisher @ diag


def parameter_scale_vector(
    parameters: Mapping[str, torch.Tensor], scales: Mapping[str, torch.Tensor | float]
) -> torch.Tensor:
    """Flatten per-parameter scalings ``{name: tensor or float}`` (broadcast to the parameter's
    shape; names not given keep scale 1) into one ``(P,)`` vector in parameter order.

    Raises:
        KeyError: for a name that is not a parameter; ValueError for non-positive scales.
    """
    unknown = set(scales) - set(parameters)
    if unknown:
        raise KeyError(f"scales for unknown parameters: {', '.join(sorted(unknown))}")
    parts = []
    for name, p in parameters.items():
        value = scales.get(name, 1.0)
        scale = torch.as_tensor(value, dtype=p.dtype, device=p.device).expand(p.shape)
        parts.append(scale.reshape(-1))
    vector = torch.cat(parts)
    if not bool((vector > 0).all()) or not bool(torch.isfinite(vector).all()):
        raise ValueError("scales must be finite and > 0")
    return vector


def two_block_parameter_scales(
    parameters: Mapping[str, torch.Tensor], kappa: float
) -> dict[str, torch.Tensor]:
    """The notebook's two-block family for any model: along each parameter's last axis the
    first half of the entries is scaled by sqrt(kappa), the rest by 1/sqrt(kappa) (the same for
    every other index). For softmax regression's ``W`` (C x D) this is exactly
    :func:`two_block_scaling`: features [0, D/2) up, the rest down, equal for every class."""
    scales = {}
    for name, p in parameters.items():
        last = p.shape[-1] if p.ndim else 1
        per_entry = torch.full((last,), 1 / math.sqrt(kappa), dtype=p.dtype, device=p.device)
        per_entry[: last // 2] = math.sqrt(kappa)
        scales[name] = per_entry.expand(p.shape) if p.ndim else per_entry[0]
    return scales


def log_uniform_parameter_scales(
    parameters: Mapping[str, torch.Tensor], kappa: float, *, seed: int
) -> dict[str, torch.Tensor]:
    """Every entry of every parameter its own scale exp(u log kappa), u from
    :func:`log_uniform_pattern` over all P entries (so max/min over the model is kappa)."""
    total = sum(p.numel() for p in parameters.values())
    flat = log_uniform_scaling(kappa, log_uniform_pattern(total, seed=seed))
    sizes = [p.numel() for p in parameters.values()]
    return {
        name: part.to(p.dtype).to(p.device).view_as(p)
        for (name, p), part in zip(parameters.items(), flat.split(sizes), strict=True)
    }
