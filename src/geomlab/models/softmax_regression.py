"""Bias-free softmax (multinomial logistic) regression as pure functions of the weight matrix."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = [
    "init_weights", "logits", "loss", "loss_and_gradient",
]  # fmt: skip


def init_weights(
    n_classes: int, n_features: int, *, seed: int, dtype: torch.dtype = torch.float64
) -> torch.Tensor:
    """``nn.Linear``'s default initialisation, drawn from a generator seeded with ``seed``.

    Matches ``torch.manual_seed(seed); nn.Linear(D, C, bias=False)`` (float64) on the CPU.
    """
    generator = torch.Generator().manual_seed(seed)
    weight = torch.empty(n_classes, n_features, dtype=dtype)
    torch.nn.init.kaiming_uniform_(weight, a=math.sqrt(5), generator=generator)
    return weight


def logits(weight: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """``z = W x`` for the rows of ``inputs``; batched over leading dims of ``weight``."""
    return inputs @ weight.mT


def loss(weight: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(logits(weight, inputs), labels)


def loss_and_gradient(
    weight: torch.Tensor, inputs: torch.Tensor, labels: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Mean cross-entropy, its gradient (flattened like ``weight``) and the softmax probs.

    Closed form: ``grad W = (P - Y)^T X / N``.
    """
    z = logits(weight, inputs)
    probs = torch.softmax(z, dim=1)
    value = F.cross_entropy(z, labels)
    residual = probs.clone()
    residual[torch.arange(len(labels), device=labels.device), labels] -= 1
    gradient = (residual.T @ inputs / inputs.shape[0]).reshape(-1)
    return value, gradient, probs
