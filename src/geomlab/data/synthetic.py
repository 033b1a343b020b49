"""Synthetic Gaussian-cluster classification data."""

from __future__ import annotations

import torch


def gaussian_clusters(
    *,
    n_samples: int,
    n_features: int,
    n_classes: int,
    noise_std: float = 1.0,
    center_scale: float = 2.5,
    seed: int = 42,
    dtype: torch.dtype = torch.float64,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Balanced classes around orthonormal centres, shuffled; drawn on the CPU.

    Centres are the first ``n_classes`` columns of Q from a QR of a Gaussian matrix, times
    ``center_scale``; each class gets ``n_samples // n_classes`` points with isotropic noise.
    Random numbers are drawn in a fixed order from a generator seeded with ``seed`` (the E1/E3
    notebooks' order), so the data is reproducible bit for bit on the CPU.
    """
    if n_classes > n_features:
        raise ValueError(
            f"n_classes ({n_classes}) must be <= n_features ({n_features}) for orthonormal centres"
        )
    generator = torch.Generator().manual_seed(seed)
    gaussian = torch.randn(n_classes, n_features, dtype=torch.float64, generator=generator)
    q, _ = torch.linalg.qr(gaussian.T)
    centers = q[:, :n_classes].T * center_scale
    per_class = n_samples // n_classes
    if per_class < 1:
        raise ValueError(f"n_samples ({n_samples}) must be >= n_classes ({n_classes})")
    # One draw per class, in class order: the same stream as the notebooks' loop.
    noise = [
        torch.randn(per_class, n_features, dtype=torch.float64, generator=generator)
        for _ in range(n_classes)
    ]
    inputs = torch.cat([centers[c] + noise[c] * noise_std for c in range(n_classes)])
    labels = torch.arange(n_classes).repeat_interleave(per_class)
    order = torch.randperm(inputs.shape[0], generator=generator)
    return inputs[order].to(dtype), labels[order]
