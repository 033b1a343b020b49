"""Config fields, data loading and model building shared by E1 and E3.

The notebooks' setting is bias-free softmax regression on Gaussian clusters; ``model`` and
``data`` open both experiments to other networks and data sets (issue 11).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Annotated, Literal

import torch
from pydantic import Field, field_validator, model_validator
from torch import nn

from geomlab.data.synthetic import gaussian_clusters
from geomlab.experiments.base import ExperimentConfig, Seed, SeedList
from geomlab.geometry.curvature import ProgressCallback
from geomlab.geometry.params import LossKind
from geomlab.models.loading import ImportPathError, is_import_path, resolve_import_path
from geomlab.models.mlp import Activation

BUILTIN_MODELS = ("softmax-regression", "mlp", "mnist-cnn")
BUILTIN_DATA = ("synthetic", "mnist")

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
        return _check_spec(value, BUILTIN_MODELS)

    @field_validator("data")
    @classmethod
    def _known_data(cls, value: str) -> str:
        return _check_spec(value, BUILTIN_DATA)

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


def _check_spec(value: str, builtin: tuple[str, ...]) -> str:
    if value in builtin:
        return value
    if not is_import_path(value):
        raise ValueError(
            f"must be one of {', '.join(builtin)} or an import path package.module:function, "
            f"got {value!r}"
        )
    try:
        resolve_import_path(value)
    except ImportPathError as error:
        raise ValueError(str(error)) from None
    return value


@dataclass(frozen=True)
class LoadedData:
    """Inputs and targets on the device, the likelihood they imply, and a description."""

    inputs: torch.Tensor
    targets: torch.Tensor
    loss: LossKind
    n_outputs: int
    description: str


def load_data(config: ClusterSoftmaxConfig, device: torch.device) -> LoadedData:
    """The config's data: synthetic clusters, the first ``n_samples`` MNIST training images,
    or a user's ``(inputs, labels)``. Integer labels mean classification (cross-entropy),
    floating ``(N, K)`` targets regression (Gaussian MSE)."""
    if config.data == "synthetic":
        inputs, targets = load_cluster_data(config, device)
        description = f"synthetic clusters {config.n_samples}x{config.n_features}"
    elif config.data == "mnist":
        from geomlab.data.mnist import STANDARD_COUNTS, load_mnist

        if config.n_samples > STANDARD_COUNTS["train"]:
            raise ValueError(
                f"n_samples ({config.n_samples}) exceeds the {STANDARD_COUNTS['train']} MNIST "
                "training images"
            )
        mnist = load_mnist(device=device, train_limit=config.n_samples, test_limit=1,
                           dtype=config.torch_dtype)  # fmt: skip
        inputs, targets = mnist.train_images, mnist.train_labels
        description = f"MNIST first {config.n_samples} training images ({mnist.source})"
    else:
        from geomlab.data.user import load_user_data

        inputs, targets = load_user_data(config.data, n_samples=config.n_samples,
                                         dtype=config.torch_dtype, device=device)  # fmt: skip
        description = f"{config.data}: {tuple(inputs.shape)}"
    if targets.is_floating_point():
        if targets.ndim != 2:
            raise ValueError(f"data {config.data!r}: regression targets must be (N, K), got "
                             f"{tuple(targets.shape)}")  # fmt: skip
        return LoadedData(inputs, targets.to(config.torch_dtype), LossKind.MSE,
                          targets.shape[1], description)  # fmt: skip
    n_outputs = int(targets.max()) + 1
    return LoadedData(inputs, targets.long(), LossKind.CROSS_ENTROPY, n_outputs, description)


def build_model(config: ClusterSoftmaxConfig, seed: int, data: LoadedData) -> nn.Module:
    """The config's model for one seed, in the config's dtype, on the data's device.

    ``softmax-regression``: ``Flatten -> Linear(bias=False)`` with the notebooks' initial
    weights; ``mlp``: :func:`geomlab.models.mlp.build_mlp` after ``torch.manual_seed(seed)``;
    ``mnist-cnn``: the notebook CNN (needs 1x28x28 inputs); an import path: the user's
    factory after ``torch.manual_seed(seed)``.
    """
    from geomlab.models import softmax_regression as sr

    dtype, device = config.torch_dtype, data.inputs.device
    n_features = int(data.inputs[0].numel())
    if config.model == "softmax-regression":
        linear = nn.Linear(n_features, data.n_outputs, bias=False, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(sr.init_weights(data.n_outputs, n_features, seed=seed,
                                                dtype=dtype))  # fmt: skip
        model: nn.Module = nn.Sequential(nn.Flatten(), linear)
    elif config.model == "mlp":
        from geomlab.models.mlp import build_mlp

        torch.manual_seed(seed)
        model = build_mlp(n_features, data.n_outputs, hidden=config.mlp_hidden,
                          activation=config.mlp_activation).to(dtype)  # fmt: skip
    elif config.model == "mnist-cnn":
        from geomlab.models.mnist_cnn import build_mnist_cnn

        if tuple(data.inputs.shape[1:]) != (1, 28, 28) or data.n_outputs > 10:
            raise ValueError(
                f"model 'mnist-cnn' needs (N, 1, 28, 28) inputs and <= 10 classes (data=mnist), "
                f"got inputs {tuple(data.inputs.shape)} and {data.n_outputs} outputs"
            )
        model = build_mnist_cnn(seed=seed).to(dtype)
    else:
        from geomlab.models.loading import build_user_model

        model = build_user_model(config.model, seed=seed, dtype=dtype, device=device)
    return model.to(device)


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
