"""The notebook's MNIST CNN: conv32-conv64-maxpool-dropout-fc128-dropout-fc10 (1,199,882 params).

Submodules are declared in the notebook's order with its names, so that ``torch.manual_seed(s)``
followed by construction gives the notebook's initial weights and its state_dicts load here.
ReLU and max-pool are functional calls, as in the notebook; the derivative engine's
eligibility check traces them, so the exact fast path applies. ``logits_and_tangents`` is this
network's hand-written linearization (primal and K tangents in one pass), which the engine
prefers to its generic ``jvp``: forward-mode AD also convolves the primal with all-zero weight
tangents, about a quarter of a regularized step's cost.

``activation="gelu"`` gives a smooth variant: the same layers, names and seeded initial weights,
GELU in place of each ReLU. It is not piecewise linear, so the hand-written linearization does
not apply to it (it refuses); the engine takes its Taylor-mode or nested path instead.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

__all__ = [
    "Activation", "MNISTConvNet", "NUM_PARAMETERS", "build_mnist_cnn", "count_parameters",
]  # fmt: skip

NUM_PARAMETERS = 1_199_882
Activation = Literal["relu", "gelu"]
_ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


class MNISTConvNet(nn.Module):
    """Input ``[B, 1, 28, 28]`` (normalized), output logits ``[B, 10]``."""

    def __init__(
        self, dropout: float = 0.5, num_classes: int = 10, activation: Activation = "relu"
    ) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if activation not in _ACTIVATIONS:
            raise ValueError(f"activation must be 'relu' or 'gelu', got {activation!r}")
        self.activation: Activation = activation
        self.conv1 = nn.Conv2d(1, 32, kernel_size=3)
        self.conv2 = nn.Conv2d(32, 64, kernel_size=3)
        self.dropout1 = nn.Dropout(p=dropout)
        self.dropout2 = nn.Dropout(p=dropout)
        self.fc1 = nn.Linear(64 * 12 * 12, 128)  # 28 -> 26 -> 24 -> pooled 12
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        act = _ACTIVATIONS[self.activation]
        x = act(self.conv1(x))
        x = F.max_pool2d(act(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(act(self.fc1(x)))
        return self.fc2(x)

    def logits_and_tangents(
        self, x: torch.Tensor, directions: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits ``[B, C]`` and their derivatives along each direction, ``J u`` ``[K, B, C]``.

        Same numbers (and same dropout draws) as ``forward`` under ``torch.func.jvp``: tangents go
        through the weights without bias, ReLU's active mask, the max-pool argmax and the same
        dropout mask as the primal. ReLU only: the GELU variant is not linear near x, and this
        raises rather than return a wrong linearization.
        """
        if self.activation != "relu":
            raise ValueError(
                f"logits_and_tangents is the ReLU network's linearization; this network uses "
                f"{self.activation} (not piecewise linear): use the Taylor-mode or nested path"
            )
        num_dirs, batch = directions.shape[0], x.shape[0]
        primal = F.relu(self.conv1(x))
        tangent = F.conv2d(directions.reshape(num_dirs * batch, *x.shape[1:]), self.conv1.weight)
        tangent = _keep_active(tangent, primal, num_dirs)
        primal = F.relu(self.conv2(primal))
        tangent = _keep_active(F.conv2d(tangent, self.conv2.weight), primal, num_dirs)
        primal, argmax = F.max_pool2d(primal, 2, return_indices=True)
        tangent = tangent.flatten(2).gather(2, argmax.flatten(2).repeat(num_dirs, 1, 1))
        mask = self.dropout1(torch.ones_like(primal))  # the draw dropout1(primal) would make
        primal = torch.flatten(primal * mask, 1)
        tangent = (tangent.view(num_dirs, batch, -1) * mask.flatten(1)).flatten(0, 1)
        primal = F.relu(self.fc1(primal))
        tangent = _keep_active(F.linear(tangent, self.fc1.weight), primal, num_dirs)
        mask = self.dropout2(torch.ones_like(primal))
        primal = primal * mask
        tangent = tangent.view(num_dirs, batch, -1) * mask
        return self.fc2(primal), F.linear(tangent, self.fc2.weight)


def _keep_active(tangent: torch.Tensor, primal_after_relu: torch.Tensor, num_dirs: int):
    """ReLU's derivative: pass tangents where the primal is positive (flattened K·B batch)."""
    shape = tangent.shape
    active = primal_after_relu > 0
    return (tangent.view(num_dirs, *primal_after_relu.shape) * active).view(shape)


def build_mnist_cnn(
    *,
    seed: int,
    dropout: float = 0.5,
    device: torch.device | str = "cpu",
    activation: Activation = "relu",
) -> MNISTConvNet:
    """A freshly initialized CNN: seeds the global RNG (as the notebook's ``set_seed`` does, which
    also seeds the dropout masks that follow) and builds on the CPU, so weights are the same on
    every device (and for both activations)."""
    torch.manual_seed(seed)
    return MNISTConvNet(dropout=dropout, activation=activation).to(device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
