"""A multilayer perceptron with biases (flattens its input), for E1/E3 on a real network."""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from torch import nn

__all__ = [
    "Activation", "build_mlp",
]  # fmt: skip


class Activation(StrEnum):
    """Hidden-layer nonlinearity."""

    TANH = "tanh"
    RELU = "relu"
    GELU = "gelu"


_ACTIVATIONS: dict[Activation, type[nn.Module]] = {
    Activation.TANH: nn.Tanh,
    Activation.RELU: nn.ReLU,
    Activation.GELU: nn.GELU,
}


def build_mlp(
    in_features: int,
    n_outputs: int,
    *,
    hidden: Sequence[int] = (32,),
    activation: Activation = Activation.TANH,
) -> nn.Sequential:
    """``Flatten -> [Linear -> activation] * len(hidden) -> Linear``, every layer with a bias.

    Args:
        in_features: number of input features after flattening (e.g. 784 for MNIST).
        n_outputs: classes (logits) or regression outputs.
        hidden: widths of the hidden layers (may be empty: then an affine softmax model).
        activation: the hidden nonlinearity.

    Returns:
        The model, initialized by PyTorch's defaults from the global RNG (seed it first).
    """
    if in_features < 1 or n_outputs < 1 or any(h < 1 for h in hidden):
        raise ValueError(
            f"layer sizes must be >= 1, got {in_features}, {list(hidden)}, {n_outputs}"
        )
    layers: list[nn.Module] = [nn.Flatten()]
    width = in_features
    for size in hidden:
        layers += [nn.Linear(width, size), _ACTIVATIONS[Activation(activation)]()]
        width = size
    layers.append(nn.Linear(width, n_outputs))
    return nn.Sequential(*layers)
