"""The notebook's MNIST CNN: conv32-conv64-maxpool-dropout-fc128-dropout-fc10 (1,199,882 params).

Submodules are declared in the notebook's order with its names, so that ``torch.manual_seed(s)``
followed by construction gives the notebook's initial weights and its state_dicts load here.
ReLU and max-pool are functional calls, as in the notebook; the derivative engine's
eligibility check traces them, so the exact fast path applies.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

NUM_PARAMETERS = 1_199_882


class MNISTConvNet(nn.Module):
    """Input ``[B, 1, 28, 28]`` (normalized), output logits ``[B, 10]``."""

    def __init__(self, dropout: float = 0.5, num_classes: int = 10) -> None:
        super().__init__()
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        self.conv1 = nn.Conv2d(1, 32, 3, 1)
        self.conv2 = nn.Conv2d(32, 64, 3, 1)
        self.dropout1 = nn.Dropout(dropout)
        self.dropout2 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(64 * 12 * 12, 128)  # 28 -> 26 -> 24 -> pooled 12
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = torch.flatten(self.dropout1(x), 1)
        x = self.dropout2(F.relu(self.fc1(x)))
        return self.fc2(x)


def build_mnist_cnn(
    *, seed: int, dropout: float = 0.5, device: torch.device | str = "cpu"
) -> MNISTConvNet:
    """A freshly initialized CNN: seeds the global RNG (as the notebook's ``set_seed`` does, which
    also seeds the dropout masks that follow) and builds on the CPU, so weights are the same on
    every device."""
    torch.manual_seed(seed)
    return MNISTConvNet(dropout=dropout).to(device)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
