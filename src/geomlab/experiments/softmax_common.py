"""Config fields and data loading shared by the softmax-regression experiments (E1, E3)."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field, model_validator

from geomlab.data.synthetic import gaussian_clusters
from geomlab.experiments.base import ExperimentConfig, Seed, SeedList

DTYPES = {"float64": torch.float64, "float32": torch.float32}
PositiveFloat = Annotated[float, Field(gt=0)]


class ClusterSoftmaxConfig(ExperimentConfig):
    """Gaussian-cluster data, bias-free softmax regression, and the model seeds."""

    n_samples: int = Field(5000, ge=2, description="data points (multiple of n_classes)")
    n_features: int = Field(16, ge=1, le=4096, description="input dimension D")
    n_classes: int = Field(10, ge=2, le=1000, description="classes C (<= n_features)")
    noise_std: float = Field(1.0, gt=0, description="std of the isotropic noise around centres")
    center_scale: float = Field(2.5, gt=0, description="norm of every class centre")
    data_seed: Seed = Field(42, description="seed of the data draw")
    n_seeds: int = Field(10, ge=1, le=10_000, description="model seeds 0..n_seeds-1")
    seeds: SeedList | None = Field(
        None, min_length=1, description="explicit model seeds; overrides n_seeds"
    )
    rcond: float = Field(1e-8, ge=0, lt=1, description="relative eigenvalue cutoff of F^+")
    dtype: Literal["float64", "float32"] = "float64"

    @model_validator(mode="after")
    def _classes_fit_features(self):
        if self.n_classes > self.n_features:
            raise ValueError(
                f"n_classes ({self.n_classes}) must be <= n_features ({self.n_features}): "
                "class centres are orthonormal directions"
            )
        if self.n_samples < self.n_classes:
            raise ValueError(
                f"n_samples ({self.n_samples}) must be >= n_classes ({self.n_classes})"
            )
        return self

    def memory_estimates(self) -> dict[str, float]:
        itemsize = 8 if self.dtype == "float64" else 4
        return {"n_samples": self.n_samples * (self.n_features * itemsize + 8)}  # X and labels

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else list(range(self.n_seeds))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]


def load_cluster_data(
    config: ClusterSoftmaxConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw the data on the CPU (bit-reproducible, notebook order), then move it."""
    inputs, labels = gaussian_clusters(
        n_samples=config.n_samples,
        n_features=config.n_features,
        n_classes=config.n_classes,
        noise_std=config.noise_std,
        center_scale=config.center_scale,
        seed=config.data_seed,
        dtype=config.torch_dtype,
    )
    return inputs.to(device), labels.to(device)
