"""Config fields, data loading and model building shared by E1 and E3.

The notebooks' setting is bias-free softmax regression on Gaussian clusters; ``model`` and
``data`` open both experiments to other networks and data sets (issue 11).
"""

from __future__ import annotations

import time
from typing import Annotated, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from geomlab.data.registry import BUILTIN_DATA, LoadedData, load_data
from geomlab.experiments.base import ExperimentConfig, Seed, SeedList
from geomlab.geometry.curvature import ProgressCallback
from geomlab.models.mlp import Activation
from geomlab.models.registry import BUILTIN_MODELS, build_model, check_spec

__all__ = [
    "ClusterSoftmaxConfig", "DTYPES", "PROGRESS_INTERVAL_S", "PositiveFloat", "load_cluster_data",
    "progress_logger",
]  # fmt: skip

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
    model: str = Field(
        "softmax-regression",
        description="softmax-regression | mlp | mnist-cnn | package.module:function (a factory "
        "called after torch.manual_seed(seed))",
    )
    data: str = Field(
        "synthetic",
        description="synthetic | mnist | package.module:function returning (inputs, labels); "
        "integer labels: cross-entropy, float targets: Gaussian MSE",
    )
    mlp_hidden: list[Annotated[int, Field(ge=1, le=100_000)]] = Field(
        default_factory=lambda: [32], description="hidden widths of model=mlp"
    )
    mlp_activation: Activation = Field(Activation.TANH, description="nonlinearity of model=mlp")
    batch_size: int = Field(
        1000, ge=1, le=1_000_000, description="samples per batch for Fisher products (memory)"
    )
    fisher_self_check: bool = Field(
        True,
        description="before trusting curvlinops' Fisher products for a model (not the "
        "softmax-regression fast path), compare F v on 4 samples in float64 with a torch.func "
        "reference, once per model; false skips it",
    )

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_spec(value, BUILTIN_MODELS)

    @field_validator("data")
    @classmethod
    def _known_data(cls, value: str) -> str:
        return check_spec(value, BUILTIN_DATA)

    @model_validator(mode="after")
    def _classes_fit_features(self):
        if self.data != "synthetic":
            return self  # feature and class counts come from the data
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

    def load_data(self, device: torch.device, *, spec: str | None = None) -> LoadedData:
        """The configured data (or ``spec``'s) by :func:`geomlab.data.registry.load_data`."""
        return load_data(
            self.data if spec is None else spec, n_samples=self.n_samples,
            dtype=self.torch_dtype, device=device, n_features=self.n_features,
            n_classes=self.n_classes, noise_std=self.noise_std,
            center_scale=self.center_scale, seed=self.data_seed,
        )  # fmt: skip

    def build_model(self, seed: int, data: LoadedData) -> nn.Module:
        """The configured model for one seed by :func:`geomlab.models.registry.build_model`."""
        return build_model(
            self.model, seed=seed, inputs=data.inputs, n_outputs=data.n_outputs,
            dtype=self.torch_dtype, mlp_hidden=self.mlp_hidden,
            mlp_activation=self.mlp_activation,
        )  # fmt: skip

    @property
    def seed_list(self) -> list[int]:
        return list(self.seeds) if self.seeds is not None else list(range(self.n_seeds))

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def notebook_setting(self) -> bool:
        """Softmax regression on the synthetic clusters: the analytic fast path applies."""
        return self.model == "softmax-regression" and self.data == "synthetic"


def load_cluster_data(
    config: ClusterSoftmaxConfig, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    """The notebooks' synthetic clusters (drawn on the CPU, bit-reproducible, then moved)."""
    data = config.load_data(device, spec="synthetic")
    return data.inputs, data.targets


PROGRESS_INTERVAL_S = 5.0


def progress_logger(
    log, prefix: str, *, interval_s: float = PROGRESS_INTERVAL_S
) -> ProgressCallback:
    """A geometry progress callback that logs ``prefix stage done/total, note`` through the run's
    logger (console and run.log): the first event of each stage, its last (done == total), and
    at most one line per ``interval_s`` seconds in between."""
    last: dict[str, float] = {}

    def report(stage: str, done: int, total: int | None, note: str) -> None:
        now = time.monotonic()
        final = total is not None and done >= total
        if stage not in last or final or now - last[stage] >= interval_s:
            suffix = f", {note}" if note else ""
            log.info("%s %s: %d/%s%s", prefix, stage, done, total if total else "?", suffix)
            last[stage] = now

    return report
