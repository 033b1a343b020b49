import math

import pytest
import torch

from geomlab.models.two_layer import (
    activation_derivative,
    forward,
    gradient_step,
    init_inner_weights,
    init_outer_weights,
    inner_weight_gradient,
    inner_weight_gradient_autograd,
    mean_squared_error,
    output_scale,
)


def _case(seed, n=7, d=5, k=6):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, generator=g, dtype=torch.float64)
    W = init_inner_weights(k, d, generator=g, dtype=torch.float64)
    a = init_outer_weights(k, kind="gaussian", generator=g, dtype=torch.float64)
    return X, y, W, a


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh"])
@pytest.mark.parametrize("parameterization", ["standard", "notebook"])
@pytest.mark.parametrize("seed", [0, 1])
def test_closed_form_gradient_matches_autograd(activation, parameterization, seed):
    X, y, W, a = _case(seed)
    scale = output_scale(0.37, parameterization)
    fast, prediction = inner_weight_gradient(X, y, W, a, activation=activation, scale=scale)
    reference = inner_weight_gradient_autograd(X, y, W, a, activation=activation, scale=scale)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(prediction, forward(X, W, a, activation=activation, scale=scale))


def test_notebook_forward_is_gamma_squared_formula():
    X, _, W, a = _case(2)
    gamma = 0.2
    by_hand = gamma * (gamma * (a @ torch.sigmoid(W @ X.T)))
    notebook = forward(X, W, a, activation="sigmoid", scale=output_scale(gamma, "notebook"))
    standard = forward(X, W, a, activation="sigmoid", scale=output_scale(gamma, "standard"))
    torch.testing.assert_close(notebook, by_hand, rtol=1e-14, atol=0)
    torch.testing.assert_close(standard, gamma * (a @ torch.sigmoid(W @ X.T)), rtol=1e-14, atol=0)


def test_outer_weight_draws():
    g = torch.Generator().manual_seed(0)
    k = 400
    rad = init_outer_weights(k, kind="rademacher", generator=g, dtype=torch.float64)
    assert set(torch.unique(rad * math.sqrt(k)).round().tolist()) == {-1.0, 1.0}
    binary = init_outer_weights(k, kind="notebook_binary", generator=g, dtype=torch.float64)
    assert set(torch.unique(binary * math.sqrt(k)).round().tolist()) == {-1.0, 0.0}
    gauss = init_outer_weights(k, kind="gaussian", generator=g, dtype=torch.float64)
    assert float(gauss.pow(2).sum()) == pytest.approx(1.0, abs=0.25)


def test_gradient_step_renormalizes_rows():
    X, y, W, a = _case(3)
    grad, _ = inner_weight_gradient(X, y, W, a, activation="relu", scale=1.0)
    new = gradient_step(W, grad, lr=0.5, gamma=0.25)
    stepped = W - 2.0 * grad
    torch.testing.assert_close(new, stepped / stepped.norm(dim=1, keepdim=True), rtol=1e-7, atol=0)
    torch.testing.assert_close(new.norm(dim=1), torch.ones(W.shape[0], dtype=W.dtype))


def test_relu_derivative_and_errors():
    z = torch.tensor([-1.0, 0.0, 2.0])
    assert activation_derivative("relu", z).tolist() == [0.0, 0.0, 1.0]
    with pytest.raises(ValueError, match="unknown activation 'gelu'"):
        activation_derivative("gelu", z)
    with pytest.raises(ValueError, match="unknown parameterization"):
        output_scale(1.0, "ntk")
    with pytest.raises(ValueError, match="gamma must be > 0"):
        output_scale(0.0, "standard")
    with pytest.raises(ValueError, match="width and dim must be > 0"):
        init_inner_weights(0, 3)
    with pytest.raises(ValueError, match="shape mismatch"):
        mean_squared_error(torch.zeros(3, 1), torch.zeros(3))
