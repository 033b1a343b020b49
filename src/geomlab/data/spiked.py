"""Spiked Gaussian data and single-index teachers (vectorized, seeded).

X = X_B + ζ z qᵀ with bulk rows X_B ~ N(0, diag(j^−α)), j = 1..d, z ~ N(0, 1), a unit spike
direction q and ζ = N^ν. The population covariance is diag(j^−α) + ζ² qqᵀ; for α = 0 it has
the planted eigenvalue ζ² + 1 along q. Targets come from a teacher y = σ*(βᵀx) + τ·ξ.
Random numbers are drawn in the notebook's order: bulk (N×d), then z (N×1), then label noise.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from geomlab.models import two_layer
from geomlab.models.two_layer import Activation, activation_function


@dataclass(frozen=True)
class SpikedSample:
    """One spiked data set: ``x = bulk + spike`` with ``spike = ζ z qᵀ``."""

    x: torch.Tensor
    bulk: torch.Tensor
    z: torch.Tensor
    zeta: float


def spike_strength(n: int, nu: float) -> float:
    """ζ = N^ν, the spike's scale for N samples and exponent ν ≥ 0."""
    if nu < 0:
        raise ValueError(f"nu must be >= 0, got {nu}")
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    return float(n) ** nu


def random_unit_vector(
    dim: int, *, generator: torch.Generator | None = None, dtype=torch.float32
) -> torch.Tensor:
    """A direction uniform on the sphere in R^dim (normalized Gaussian)."""
    if dim <= 0:
        raise ValueError(f"dim must be > 0, got {dim}")
    v = torch.randn(dim, generator=generator, dtype=dtype)
    return v / torch.linalg.vector_norm(v)


def bulk_std(dim: int, alpha: float, *, dtype=torch.float32) -> torch.Tensor:
    """Per-coordinate standard deviations j^(−α/2), j = 1..dim (variances j^−α)."""
    if alpha < 0:
        raise ValueError(f"alpha must be >= 0, got {alpha}")
    return torch.arange(1, dim + 1, dtype=torch.float64).pow(-alpha / 2).to(dtype)


def sample_spiked_gaussian(
    n: int,
    *,
    q: torch.Tensor,
    zeta: float,
    alpha: float = 0.0,
    generator: torch.Generator | None = None,
) -> SpikedSample:
    """N rows x_i = b_i + ζ z_i q with b_i ~ N(0, diag(j^−α)), z_i ~ N(0, 1)."""
    if n <= 0:
        raise ValueError(f"n must be > 0, got {n}")
    if zeta < 0:
        raise ValueError(f"zeta must be >= 0, got {zeta}")
    dim = q.shape[0]
    bulk = torch.randn(n, dim, generator=generator, dtype=q.dtype) * bulk_std(
        dim, alpha, dtype=q.dtype
    )
    z = torch.randn(n, generator=generator, dtype=q.dtype)
    return SpikedSample(x=bulk + zeta * z[:, None] * q[None, :], bulk=bulk, z=z, zeta=zeta)


def single_index_targets(
    x: torch.Tensor,
    beta: torch.Tensor,
    *,
    activation: Activation | str,
    noise_std: float = 1.0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """y_i = σ*(βᵀx_i) + noise_std·ξ_i for all rows at once, shape (N,)."""
    if noise_std < 0:
        raise ValueError(f"noise_std must be >= 0, got {noise_std}")
    clean = activation_function(activation)(x @ beta)
    noise = torch.randn(x.shape[0], generator=generator, dtype=x.dtype)
    return clean + noise_std * noise


@dataclass(frozen=True)
class SpikedTeacherData:
    """Train and test sets of spiked data with single-index teacher targets (one teacher β)."""

    x: torch.Tensor
    bulk: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    beta: torch.Tensor
    zeta: float


def draw_teacher_data(
    q: torch.Tensor,
    *,
    teacher: Activation | str,
    n_train: int,
    n_test: int,
    nu: float,
    alpha: float = 0.0,
    label_noise: float = 1.0,
    generator: torch.Generator | None = None,
) -> SpikedTeacherData:
    """Teacher β, then train data and labels, then test data and labels (the notebook's order),
    all with spike ``q`` and ζ = n_train^ν, in ``q``'s dtype on the CPU generator's device."""
    beta = random_unit_vector(q.shape[0], generator=generator, dtype=q.dtype)
    zeta = spike_strength(n_train, nu)
    train = sample_spiked_gaussian(n_train, q=q, zeta=zeta, alpha=alpha, generator=generator)
    y = single_index_targets(
        train.x, beta, activation=teacher, noise_std=label_noise, generator=generator
    )
    test = sample_spiked_gaussian(n_test, q=q, zeta=zeta, alpha=alpha, generator=generator)
    y_test = single_index_targets(
        test.x, beta, activation=teacher, noise_std=label_noise, generator=generator
    )
    return SpikedTeacherData(
        x=train.x, bulk=train.bulk, y=y, x_test=test.x, y_test=y_test, beta=beta, zeta=zeta
    )


def draw_shared_init(
    *,
    d: int,
    k: int,
    outer_init: two_layer.OuterInit,
    generator: torch.Generator,
    dtype: torch.dtype,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spike q (d,), inner weights W0 (k×d) and outer weights a (k,), in the notebook's order:
    what the runs compared with each other share (their data then comes from
    :func:`draw_teacher_data` with this q, on the same generator)."""
    q = random_unit_vector(d, generator=generator, dtype=dtype)
    W0 = two_layer.init_inner_weights(k, d, generator=generator, dtype=dtype)
    a = two_layer.init_outer_weights(k, kind=outer_init, generator=generator, dtype=dtype)
    return q, W0, a
