import math
import re

import pytest
import torch

from geomlab.models.two_layer import (
    activation_derivative,
    forward,
    gamma_value,
    gradient_step,
    init_inner_weights,
    init_outer_weights,
    inner_weight_gradient,
    inner_weight_gradient_autograd,
    lr_value,
    mean_squared_error,
    output_scale,
)


def two_layer_problem(seed, n=7, d=5, k=6):
    """``(X, y, W, a)`` for the two-layer model's functional API (plain tensors: no nn.Module,
    so not a zoo case): n samples of d features, k hidden units, float64."""
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
    X, y, W, a = two_layer_problem(seed)
    scale = output_scale(0.37, parameterization)
    fast, prediction = inner_weight_gradient(X, y, W, a, activation=activation, scale=scale)
    reference = inner_weight_gradient_autograd(X, y, W, a, activation=activation, scale=scale)
    torch.testing.assert_close(fast, reference, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(prediction, forward(X, W, a, activation=activation, scale=scale))


def test_notebook_forward_is_gamma_squared_formula():
    X, _, W, a = two_layer_problem(2)
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
    X, y, W, a = two_layer_problem(3)
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


def test_options_are_string_enums_with_the_config_text():
    from geomlab.models.two_layer import (
        Activation,
        GammaScale,
        LrScale,
        OuterInit,
        Parameterization,
    )

    assert [m.value for m in GammaScale] == ["1", "1/sqrt(k)", "1/k"]
    assert [m.value for m in LrScale] == ["1", "sqrt(k)"]
    assert GammaScale("1/sqrt(k)") is GammaScale.INV_SQRT_K and str(GammaScale.INV_K) == "1/k"
    assert Activation("relu") == "relu" and f"{Parameterization.NOTEBOOK}" == "notebook"
    assert OuterInit.NOTEBOOK_BINARY == "notebook_binary"


def test_gamma_and_lr_rules():
    from geomlab.models.two_layer import GammaScale, LrScale

    assert GammaScale.ONE.gamma(1250) == 1.0
    assert GammaScale.INV_SQRT_K.gamma(1250) == pytest.approx(1 / math.sqrt(1250))
    assert GammaScale.INV_K.gamma(1250) == pytest.approx(1 / 1250)
    assert LrScale.SQRT_K.lr(2.0, 1250) == pytest.approx(2 * math.sqrt(1250))
    assert LrScale.ONE.lr(2.0, 1250) == 2.0
    assert gamma_value("1/k", 4) == 0.25 and lr_value(0.5, "sqrt(k)", 16) == 2.0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: lr_value(1.0, "k", 4),
         "unknown lr scale 'k'; choose one of 1, sqrt(k)"),
        (lambda: gamma_value("1/sqrtk", 4),
         "unknown gamma scale '1/sqrtk'"),
        (lambda: init_outer_weights(4, kind="binary"), "unknown outer init 'binary'"),
        (lambda: forward(torch.zeros(1, 2), torch.zeros(3, 2), torch.zeros(3),
                         activation="swish", scale=1.0), "unknown activation 'swish'"),
    ],
)  # fmt: skip
def test_unknown_options_raise_naming_the_choices(call, message):
    # lr_value used to return the bare coefficient for any unknown rule.
    with pytest.raises(ValueError, match=re.escape(message)):
        call()


def test_default_outer_init_follows_the_parameterization():
    from geomlab.models.two_layer import OuterInit, default_outer_init

    assert default_outer_init("notebook") is OuterInit.NOTEBOOK_BINARY
    assert default_outer_init("standard") is OuterInit.RADEMACHER
