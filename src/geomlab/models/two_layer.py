"""Two-layer network f(x) = s · aᵀσ(Wx) with fixed outer weights a and trained inner weights W.

``s`` is the output scale: γ in the ``standard`` parameterization and γ² in the ``notebook``
one (the source notebook multiplies by γ twice). Training is full-batch gradient descent on the
mean squared error, ``W ← W − (lr/γ)∇W``, followed by renormalizing every row of W to unit norm.
The closed-form gradient is the fast path; :func:`inner_weight_gradient_autograd` is the
reference it is tested against.

Options are string enums (:class:`Activation`, :class:`Parameterization`, :class:`OuterInit`,
:class:`GammaScale`, :class:`LrScale`) whose values are the strings users write in configs, so
configs, manifests and CSVs keep that text. Functions take the enum; a plain string is accepted
only if it is one of the values (an unknown one raises ``ValueError`` naming the choices).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from enum import StrEnum

import torch

__all__ = [
    "ACTIVATIONS", "Activation", "Choice", "GammaScale", "LrScale", "OuterInit",
    "Parameterization", "ROW_NORM_EPS", "activation_derivative", "activation_function",
    "default_outer_init", "forward", "gamma_value", "gradient_step", "init_inner_weights",
    "init_outer_weights", "inner_weight_gradient", "inner_weight_gradient_autograd", "lr_value",
    "mean_squared_error", "output_scale", "preactivations",
]  # fmt: skip

ROW_NORM_EPS = 1e-8  # keeps the renormalization finite for an (unlikely) all-zero row


class Choice(StrEnum):
    """A string enum whose unknown values raise ``ValueError("unknown <option> 'x'; choose
    one of ...")`` (the option named from the class name, e.g. ``OuterInit`` -> outer init)."""

    @classmethod
    def _missing_(cls, value: object) -> None:
        option = re.sub(r"(?<!^)(?=[A-Z])", " ", cls.__name__).lower()
        choices = ", ".join(member.value for member in cls)
        raise ValueError(f"unknown {option} {value!r}; choose one of {choices}")


class Activation(Choice):
    """σ of the student (and of a single-index teacher)."""

    RELU = "relu"
    SIGMOID = "sigmoid"
    TANH = "tanh"


class Parameterization(Choice):
    """``standard``: output γ·aᵀσ(Wx); ``notebook``: the source notebook's γ² scale."""

    STANDARD = "standard"
    NOTEBOOK = "notebook"


class OuterInit(Choice):
    """Draw of the fixed outer weights a (see :func:`init_outer_weights`)."""

    RADEMACHER = "rademacher"
    GAUSSIAN = "gaussian"
    NOTEBOOK_BINARY = "notebook_binary"


class GammaScale(Choice):
    """The output scale γ as a power of the width k: 1 (NTK), 1/√k (mean field), 1/k."""

    ONE = "1"
    INV_SQRT_K = "1/sqrt(k)"
    INV_K = "1/k"

    def gamma(self, width: int) -> float:
        """γ for a network of ``width`` hidden units."""
        if self is GammaScale.ONE:
            return 1.0
        if self is GammaScale.INV_SQRT_K:
            return width**-0.5
        return 1.0 / width


class LrScale(Choice):
    """The learning rate as coefficient × (1 or √k)."""

    ONE = "1"
    SQRT_K = "sqrt(k)"

    def lr(self, coefficient: float, width: int) -> float:
        """coefficient · √k (``sqrt(k)``) or the coefficient itself (``1``)."""
        return coefficient * (math.sqrt(width) if self is LrScale.SQRT_K else 1.0)


ACTIVATIONS: tuple[str, ...] = tuple(member.value for member in Activation)

_ACTIVATION_FUNCTIONS: dict[Activation, Callable[[torch.Tensor], torch.Tensor]] = {
    Activation.RELU: torch.relu,
    Activation.SIGMOID: torch.sigmoid,
    Activation.TANH: torch.tanh,
}


def gamma_value(scale: GammaScale | str, width: int) -> float:
    """γ for a γ rule and a width (unknown rules raise)."""
    return GammaScale(scale).gamma(width)


def lr_value(lr: float, scale: LrScale | str, width: int) -> float:
    """The learning rate for a coefficient, an lr rule and a width (unknown rules raise)."""
    return LrScale(scale).lr(lr, width)


def default_outer_init(parameterization: Parameterization | str) -> OuterInit:
    """The outer-weight draw that goes with a parameterization: the notebook's {−1/√k, 0}
    draw in ``notebook`` mode, ±1/√k (Rademacher) in ``standard`` mode."""
    if Parameterization(parameterization) is Parameterization.NOTEBOOK:
        return OuterInit.NOTEBOOK_BINARY
    return OuterInit.RADEMACHER


def activation_function(name: Activation | str) -> Callable[[torch.Tensor], torch.Tensor]:
    """σ for an activation."""
    return _ACTIVATION_FUNCTIONS[Activation(name)]


def activation_derivative(name: Activation | str, preactivation: torch.Tensor) -> torch.Tensor:
    """σ'(z) elementwise (ReLU: the indicator of z > 0)."""
    activation = Activation(name)
    if activation is Activation.RELU:
        return (preactivation > 0).to(preactivation.dtype)
    if activation is Activation.SIGMOID:
        s = torch.sigmoid(preactivation)
        return s * (1 - s)
    t = torch.tanh(preactivation)
    return 1 - t * t


def output_scale(gamma: float, parameterization: Parameterization | str) -> float:
    """The factor in front of aᵀσ(Wx): γ (standard) or γ² (notebook)."""
    standard = Parameterization(parameterization) is Parameterization.STANDARD
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    return gamma if standard else gamma * gamma


def init_inner_weights(
    width: int, dim: int, *, generator: torch.Generator | None = None, dtype=torch.float32
) -> torch.Tensor:
    """W (width×dim) with rows uniform on the unit sphere (normalized Gaussian rows)."""
    if width <= 0 or dim <= 0:
        raise ValueError(f"width and dim must be > 0, got width={width}, dim={dim}")
    W = torch.randn(width, dim, generator=generator, dtype=dtype)
    return W / torch.linalg.vector_norm(W, dim=1, keepdim=True)


def init_outer_weights(
    width: int,
    *,
    kind: OuterInit | str,
    generator: torch.Generator | None = None,
    dtype=torch.float32,
) -> torch.Tensor:
    """Fixed outer weights a (width,).

    ``rademacher``: ±1/√k; ``gaussian``: N(0, 1/k); ``notebook_binary``: the notebook's draw
    ``(randint(0, 2) − 1)/√k`` whose values are {−1/√k, 0}, i.e. about half the neurons dead.
    """
    kind = OuterInit(kind)
    if width <= 0:
        raise ValueError(f"width must be > 0, got {width}")
    scale = width**-0.5
    if kind is OuterInit.GAUSSIAN:
        return torch.randn(width, generator=generator, dtype=dtype) * scale
    bits = torch.randint(0, 2, (width,), generator=generator).to(dtype)
    if kind is OuterInit.RADEMACHER:
        return (2 * bits - 1) * scale
    return (bits - 1) * scale


def preactivations(X: torch.Tensor, W: torch.Tensor) -> torch.Tensor:
    """Z = X Wᵀ (N×k)."""
    return X @ W.mT


def forward(
    X: torch.Tensor, W: torch.Tensor, a: torch.Tensor, *, activation: Activation | str, scale: float
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
    activation: Activation | str,
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
    activation: Activation | str,
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
