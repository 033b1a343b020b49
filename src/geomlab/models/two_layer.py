"""Two-layer network f(x) = s · aᵀσ(Wx) with fixed outer weights a and trained inner weights W.

``s`` is the output scale: γ in the ``standard`` parameterization and γ² in the ``notebook``
one (the source notebook multiplies by γ twice). Training is full-batch gradient descent on the
mean squared error, ``W ← W − (lr/γ)∇W``, followed by renormalizing every row of W to unit norm.
The closed-form gradient is the fast path; :func:`inner_weight_gradient_autograd` is the
reference it is tested against.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Literal, get_args

import torch

Activation = Literal["relu", "sigmoid", "tanh"]
Parameterization = Literal["standard", "notebook"]
OuterInit = Literal["rademacher", "gaussian", "notebook_binary"]

ACTIVATIONS: tuple[str, ...] = get_args(Activation)
ROW_NORM_EPS = 1e-8  # keeps the renormalization finite for an (unlikely) all-zero row


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; choose one of {', '.join(choices)}")


def activation_function(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
    """σ for a named activation."""
    _check_choice("activation", name, ACTIVATIONS)
    return {"relu": torch.relu, "sigmoid": torch.sigmoid, "tanh": torch.tanh}[name]


def activation_derivative(name: str, preactivation: torch.Tensor) -> torch.Tensor:
    """σ'(z) elementwise (ReLU: the indicator of z > 0)."""
    _check_choice("activation", name, ACTIVATIONS)
    if name == "relu":
        return (preactivation > 0).to(preactivation.dtype)
    if name == "sigmoid":
        s = torch.sigmoid(preactivation)
        return s * (1 - s)
    t = torch.tanh(preactivation)
    return 1 - t * t


def output_scale(gamma: float, parameterization: str) -> float:
    """The factor in front of aᵀσ(Wx): γ (standard) or γ² (notebook)."""
    _check_choice("parameterization", parameterization, get_args(Parameterization))
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return gamma if parameterization == "standard" else gamma * gamma


def init_inner_weights(
    width: int, dim: int, *, generator: torch.Generator | None = None, dtype=torch.float32
) -> torch.Tensor:
    """W (width×dim) with rows uniform on the unit sphere (normalized Gaussian rows)."""
    if width <= 0 or dim <= 0:
        raise ValueError(f"width and dim must be > 0, got width={width}, dim={dim}")
    W = torch.randn(width, dim, generator=generator, dtype=dtype)
    return W / torch.linalg.vector_norm(W, dim=1, keepdim=True)


def init_outer_weights(
    width: int, *, kind: str, generator: torch.Generator | None = None, dtype=torch.float32
) -> torch.Tensor:
    """Fixed outer weights a (width,).

    ``rademacher``: ±1/√k; ``gaussian``: N(0, 1/k); ``notebook_binary``: the notebook's draw
    ``(randint(0, 2) − 1)/√k`` whose values are {−1/√k, 0}, i.e. about half the neurons dead.
    """
    _check_choice("outer weight init", kind, get_args(OuterInit))
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    scale = width**-0.5
    if kind == "gaussian":
        return torch.randn(width, generator=generator, dtype=dtype) * scale
    bits = torch.randint(0, 2, (width,), generator=generator).to(dtype)
    if kind == "rademacher":
        return (2 * bits - 1) * scale
    return (bits - 1) * scale


def preactivations(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Z = X Wᵀ (N×k)."""
    return X @ W.mT


def forward(
    X: torch.Tensor, W: torch.Tensor, a: torch.Tensor, *, activation: str, scale: float
) -> torch.Tensor:
    """Predictions f(x_i) = scale · aᵀσ(W x_i) for the rows of X, shape (N,)."""
    return scale * (activation_function(activation)(preactivations(X, W)) @ a)


def mean_squared_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """mean_i (f_i − y_i)² for two vectors of the same shape (no broadcasting allowed)."""
    if prediction.shape != target.shape:
        raise ValueError(f"shape mismatch: {tuple(prediction.shape)} vs {tuple(target.shape)}")
    return torch.mean((prediction - target) ** 2)


def inner_weight_gradient(
    X: torch.Tensor,
    y: torch.Tensor,
    W: torch.Tensor,
    a: torch.Tensor,
    *,
    activation: str,
    scale: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """∇_W of mean_i (f(x_i) − y_i)² in closed form, and the predictions it used.

    With e = f − y and Z = X Wᵀ: ∇W = (2·scale/N) · [(σ'(Z) ⊙ e aᵀ)]ᵀ X, one N×k elementwise
    product and one k×N by N×d product.
    """
    Z = preactivations(X, W)
    prediction = scale * (activation_function(activation)(Z) @ a)
    residual = prediction - y
    weights = activation_derivative(activation, Z) * (residual[:, None] * a[None, :])
    gradient = (2.0 * scale / X.shape[0]) * (weights.mT @ X)
    return gradient, prediction


def inner_weight_gradient_autograd(
    X: torch.Tensor,
    y: torch.Tensor,
    W: torch.Tensor,
    a: torch.Tensor,
    *,
    activation: str,
    scale: float,
) -> torch.Tensor:
    """Reference ∇_W of the same loss by autograd."""
    weights = W.detach().clone().requires_grad_(True)
    loss = mean_squared_error(forward(X, weights, a, activation=activation, scale=scale), y)
    (gradient,) = torch.autograd.grad(loss, weights)
    return gradient


def gradient_step(
    W: torch.Tensor, gradient: torch.Tensor, *, lr: float, gamma: float
) -> torch.Tensor:
    """One notebook step: W − (lr/γ)∇W, then every row renormalized to unit norm."""
    stepped = W - (lr / gamma) * gradient
    return stepped / (torch.linalg.vector_norm(stepped, dim=1, keepdim=True) + ROW_NORM_EPS)
