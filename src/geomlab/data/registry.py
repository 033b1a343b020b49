"""Every data set an experiment can name, loaded one way: ``load_data(spec, ...)``.

A spec is a built-in name (:data:`BUILTIN_DATA`) or ``package.module:function`` returning
``(inputs, labels)``; integer labels mean classification (cross-entropy), floating ``(N, K)``
targets regression (Gaussian MSE). The spec check is
:func:`geomlab.models.registry.check_spec`, shared with model specs.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from geomlab.data.synthetic import gaussian_clusters

__all__ = ["BUILTIN_DATA", "LoadedData", "load_data"]

BUILTIN_DATA = ("synthetic", "mnist")


@dataclass(frozen=True)
class LoadedData:
    """Inputs and targets on the device, the likelihood they imply, and a description."""

    inputs: torch.Tensor
    targets: torch.Tensor
    loss: Literal["cross_entropy", "mse"]  # the values of geomlab.geometry.params.LossKind
    n_outputs: int
    description: str


def load_data(
    spec: str,
    *,
    n_samples: int,
    dtype: torch.dtype = torch.float64,
    device: torch.device | str = "cpu",
    n_features: int = 16,
    n_classes: int = 10,
    noise_std: float = 1.0,
    center_scale: float = 2.5,
    seed: int = 42,
) -> LoadedData:
    """The data ``spec`` names: synthetic clusters (drawn on the CPU in the notebooks' order,
    then moved; ``n_features``, ``n_classes``, ``noise_std``, ``center_scale``, ``seed``), the
    first ``n_samples`` MNIST training images, or a user's ``(inputs, labels)``."""
    if spec == "synthetic":
        inputs, targets = gaussian_clusters(
            n_samples=n_samples, n_features=n_features, n_classes=n_classes,
            noise_std=noise_std, center_scale=center_scale, seed=seed, dtype=dtype,
        )  # fmt: skip
        inputs, targets = inputs.to(device), targets.to(device)
        description = f"synthetic clusters {n_samples}x{n_features}"
    elif spec == "mnist":
        from geomlab.data.mnist import STANDARD_COUNTS, load_mnist

        if n_samples > STANDARD_COUNTS["train"]:
            raise ValueError(
                f"n_samples ({n_samples}) exceeds the {STANDARD_COUNTS['train']} MNIST "
                "training images"
            )
        mnist = load_mnist(device=device, train_limit=n_samples, test_limit=1, dtype=dtype)
        inputs, targets = mnist.train_images, mnist.train_labels
        description = f"MNIST first {n_samples} training images ({mnist.source})"
    else:
        from geomlab.data.user import load_user_data

        inputs, targets = load_user_data(spec, n_samples=n_samples, dtype=dtype, device=device)
        description = f"{spec}: {tuple(inputs.shape)}"
    if targets.is_floating_point():
        if targets.ndim != 2:
            raise ValueError(f"data {spec!r}: regression targets must be (N, K), got "
                             f"{tuple(targets.shape)}")  # fmt: skip
        return LoadedData(inputs, targets.to(dtype), "mse", targets.shape[1], description)
    n_outputs = int(targets.max()) + 1
    return LoadedData(inputs, targets.long(), "cross_entropy", n_outputs, description)
