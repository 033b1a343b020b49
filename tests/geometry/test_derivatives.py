"""The fast derivative path against the nested-autograd reference (float64), plus λ helpers."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomlab.geometry.derivatives import (
    boundary_point_indices,
    check_piecewise_linear,
    derivative_penalty,
    directional_derivatives,
    fast_directional_derivatives,
    fit_lambda,
    loss_derivatives_along_tangents,
    mean_log_abs,
    measure_lambda,
    nested_directional_derivatives,
    sample_unit_directions,
)

MAX_ORDER = 4
REL_TOL = 1e-10


class TinyFunctionalCNN(nn.Module):
    """The notebook's CNN shape in miniature, with functional ReLU/max-pool like the notebook."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(4 * 3 * 3, 8)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.fc1(torch.flatten(self.drop1(x), 1))
        return self.fc2(self.drop2(F.relu(x)))


def tiny_mlp(activation: type[nn.Module] = nn.ReLU, dropout: float = 0.3) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(10, 7),
        activation(),
        nn.Dropout(dropout),
        nn.Linear(7, 6),
        activation(),
        nn.Linear(6, 4),
    )


class SquaringNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(10, 3)

    def forward(self, x):
        h = x.flatten(1)
        return self.linear(h * h)


def make_case(kind: str, seed: int = 0, batch: int = 5, num_directions: int = 3):
    torch.manual_seed(seed)
    if kind == "cnn":
        model = TinyFunctionalCNN().double()
        inputs = torch.randn(batch, 1, 10, 10, dtype=torch.float64)
        num_classes = 5
    else:
        model = tiny_mlp().double()
        inputs = torch.randn(batch, 1, 10, dtype=torch.float64)
        num_classes = 4
    # scale logits up so derivatives of every order are well away from zero
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(2.0)
    labels = torch.randint(0, num_classes, (batch,))
    generator = torch.Generator().manual_seed(seed + 100)
    directions = sample_unit_directions(num_directions, inputs, generator=generator)
    return model, inputs, labels, directions


def relative_error(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach(), b.detach()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_fast_matches_nested_in_eval_mode(kind):
    model, inputs, labels, directions = make_case(kind)
    model.eval()
    reference = nested_directional_derivatives(
        model, inputs, labels, directions, max_order=MAX_ORDER
    )
    fast, logits = fast_directional_derivatives(
        model, inputs, labels, directions, max_order=MAX_ORDER
    )
    assert reference.shape == fast.shape == (MAX_ORDER, 3, 5)
    for n in range(MAX_ORDER):
        assert relative_error(fast[n], reference[n]) <= REL_TOL, f"order {n + 1}"
    assert torch.allclose(logits, model(inputs), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_fast_matches_nested_in_train_mode_with_the_same_dropout_mask(kind):
    model, inputs, labels, directions = make_case(kind, seed=1)
    model.train()
    torch.manual_seed(7)
    fast, _ = fast_directional_derivatives(model, inputs, labels, directions, max_order=MAX_ORDER)
    # the fast path draws one mask for all directions; replay it for each reference pass
    for k in range(directions.shape[0]):
        torch.manual_seed(7)
        reference = nested_directional_derivatives(
            model, inputs, labels, directions[k : k + 1], max_order=MAX_ORDER
        )
        for n in range(MAX_ORDER):
            assert relative_error(fast[n, k], reference[n, 0]) <= REL_TOL, f"k={k} n={n + 1}"
    # dropout really acted: eval-mode derivatives differ
    model.eval()
    eval_values, _ = fast_directional_derivatives(
        model, inputs, labels, directions, max_order=MAX_ORDER
    )
    assert relative_error(eval_values, fast) > 1e-3


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
@pytest.mark.parametrize("train", [False, True])
def test_penalty_parameter_gradients_match(kind, train):
    model, inputs, labels, directions = make_case(kind, seed=2, num_directions=1)
    model.train(train)
    params = list(model.parameters())

    torch.manual_seed(11)
    fast, _ = fast_directional_derivatives(model, inputs, labels, directions, max_order=3)
    fast_grads = torch.autograd.grad(derivative_penalty(fast), params)

    torch.manual_seed(11)
    reference = nested_directional_derivatives(
        model, inputs, labels, directions, max_order=3, create_graph=True
    )
    reference_grads = torch.autograd.grad(derivative_penalty(reference), params)

    for fast_grad, reference_grad in zip(fast_grads, reference_grads, strict=True):
        assert relative_error(fast_grad, reference_grad) <= REL_TOL


def test_cumulants_hand_derived_two_classes():
    # z = 0: p = (1/2, 1/2); v = (a, -a), so v_C = ±a with equal probability
    a = 0.7
    logits = torch.zeros(1, 2, dtype=torch.float64)
    tangents = torch.tensor([[[a, -a]]], dtype=torch.float64)
    labels = torch.tensor([0])
    d = loss_derivatives_along_tangents(logits, tangents, labels, max_order=4)[:, 0, 0]
    expected = torch.tensor([-a, a**2, 0.0, -2 * a**4], dtype=torch.float64)
    assert torch.allclose(d, expected, atol=1e-15)


def test_cumulants_match_autograd_in_t_up_to_order_six():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, dtype=torch.float64, generator=g)
    tangents = torch.randn(2, 4, 6, dtype=torch.float64, generator=g)
    labels = torch.randint(0, 6, (4,), generator=g)
    fast = loss_derivatives_along_tangents(logits, tangents, labels, max_order=6)
    t = torch.zeros(2, 4, 1, dtype=torch.float64, requires_grad=True)
    value = F.cross_entropy(
        (logits + t * tangents).reshape(-1, 6), labels.repeat(2), reduction="none"
    ).reshape(2, 4)
    for n in range(6):
        (value,) = torch.autograd.grad(value.sum(), t, create_graph=True)
        value = value.squeeze(-1)
        assert relative_error(fast[n], value) <= 1e-11, f"order {n + 1}"


def test_eligibility_detects_functional_relu_cnn_and_rejects_tanh():
    cnn, inputs, _, _ = make_case("cnn")
    for train in (True, False):
        cnn.train(train)
        assert check_piecewise_linear(cnn, inputs).eligible
    tanh_net = tiny_mlp(nn.Tanh).double()
    verdict = check_piecewise_linear(tanh_net, torch.randn(2, 1, 10, dtype=torch.float64))
    assert not verdict.eligible
    assert "tanh" in verdict.offending_ops
    squaring = check_piecewise_linear(SquaringNet().double(), torch.randn(2, 10).double())
    assert not squaring.eligible
    assert "product of two input-dependent" in squaring.reason


def test_eligibility_check_leaves_the_random_stream_alone():
    model, inputs, _, _ = make_case("cnn")
    model.train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_piecewise_linear(model, inputs)
    assert torch.equal(torch.rand(3), expected)


def test_tanh_uses_taylor_mode_and_the_cumulant_formula_would_be_wrong():
    # issue 12: a smooth network now takes the exact Taylor path instead of falling back
    torch.manual_seed(0)
    model = tiny_mlp(nn.Tanh, dropout=0.0).double().eval()
    inputs = torch.randn(4, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (4,))
    directions = sample_unit_directions(2, inputs, generator=torch.Generator().manual_seed(0))
    result = directional_derivatives(model, inputs, labels, directions, max_order=3)
    assert (result.method, result.path) == ("fast", "taylor")
    reference = nested_directional_derivatives(model, inputs, labels, directions, max_order=3)
    assert relative_error(result.values, reference) <= REL_TOL
    # the cumulant formula really would be wrong here (tanh has curvature)
    wrong, _ = fast_directional_derivatives(
        model, inputs, labels, directions, max_order=3, path="linear"
    )
    assert relative_error(wrong[1:], reference[1:]) > 1e-3


def test_auto_falls_back_to_nested_only_for_an_op_without_a_rule_and_fast_refuses():
    class CumsumNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(10, 4)

        def forward(self, x):
            return self.fc(torch.tanh(x.flatten(1)).cumsum(dim=1))

    torch.manual_seed(0)
    model = CumsumNet().double().eval()
    inputs = torch.randn(4, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (4,))
    directions = sample_unit_directions(2, inputs, generator=torch.Generator().manual_seed(0))
    result = directional_derivatives(model, inputs, labels, directions, max_order=3)
    assert result.method == "nested"
    reference = nested_directional_derivatives(model, inputs, labels, directions, max_order=3)
    assert torch.equal(result.values, reference)
    with pytest.raises(ValueError, match="cumsum"):
        directional_derivatives(model, inputs, labels, directions, max_order=3, method="fast")


def test_auto_uses_fast_for_relu_cnn_and_agrees():
    model, inputs, labels, directions = make_case("cnn", seed=4)
    model.eval()
    result = directional_derivatives(model, inputs, labels, directions, max_order=MAX_ORDER)
    assert result.method == "fast"
    reference = directional_derivatives(
        model, inputs, labels, directions, max_order=MAX_ORDER, method="nested"
    )
    assert relative_error(result.values, reference.values) <= REL_TOL


def test_unit_directions_are_unit_and_seeded():
    like = torch.zeros(6, 1, 4, 4, dtype=torch.float64)
    first = sample_unit_directions(3, like, generator=torch.Generator().manual_seed(9))
    second = sample_unit_directions(3, like, generator=torch.Generator().manual_seed(9))
    assert first.shape == (3, 6, 1, 4, 4)
    assert torch.equal(first, second)
    norms = first.reshape(3, 6, -1).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-12)


def test_shape_errors_are_explicit():
    model, inputs, labels, directions = make_case("mlp")
    with pytest.raises(ValueError, match="directions must have shape"):
        nested_directional_derivatives(model, inputs, labels, directions[0], max_order=2)
    with pytest.raises(ValueError, match="max_order"):
        fast_directional_derivatives(model, inputs, labels, directions, max_order=0)
    with pytest.raises(ValueError, match="method"):
        directional_derivatives(model, inputs, labels, directions, max_order=2, method="magic")


def test_fit_lambda_recovers_an_exact_line_and_mean_log_abs():
    fit = fit_lambda([0.5 + 1.3 * n for n in range(1, 5)])
    assert math.isclose(fit.slope, 1.3, rel_tol=1e-12)
    assert math.isclose(fit.intercept, 0.5, rel_tol=1e-12)
    assert fit.orders == (1, 2, 3, 4)
    with pytest.raises(ValueError, match="two orders"):
        fit_lambda([1.0])
    d = torch.tensor([[[1.0, -math.e]], [[0.0, 2.0]]], dtype=torch.float64)
    logs = mean_log_abs(d)
    assert torch.allclose(logs, torch.tensor([0.5, (math.log(1e-12) + math.log(2.0)) / 2]).double())


def test_boundary_points_follow_label_range_and_cap():
    probs = torch.tensor(
        [[0.9, 0.1], [0.5, 0.5], [0.2, 0.8], [0.6, 0.4], [0.55, 0.45], [0.81, 0.19]],
        dtype=torch.float64,
    )
    labels = torch.tensor([4, 9, 4, 3, 9, 4])
    picked = boundary_point_indices(probs, labels, (4, 9), prob_range=(0.2, 0.8), max_points=10)
    assert picked.tolist() == [1, 2, 4]  # 0 and 5 too confident, 3 has another label
    capped = boundary_point_indices(
        probs,
        labels,
        (4, 9),
        prob_range=(0.2, 0.8),
        max_points=2,
        generator=torch.Generator().manual_seed(0),
    )
    assert len(capped) == 2 and set(capped.tolist()) <= {1, 2, 4}


def test_measure_lambda_fast_equals_nested_and_reports_too_few_points():
    torch.manual_seed(0)
    model = TinyFunctionalCNN().double()
    inputs = torch.randn(40, 1, 10, 10, dtype=torch.float64)
    labels = torch.randint(0, 5, (40,))
    kwargs = dict(
        classes=(1, 2),
        max_order=4,
        num_directions=2,
        prob_range=(0.0, 1.0),
        max_points=12,
        min_points=3,
        batch_size=5,
    )
    fast = measure_lambda(
        model, inputs, labels, method="fast", generator=torch.Generator().manual_seed(1), **kwargs
    )
    nested = measure_lambda(
        model, inputs, labels, method="nested", generator=torch.Generator().manual_seed(1), **kwargs
    )
    assert fast.method == "fast" and nested.method == "nested"
    assert fast.num_points == nested.num_points == 12
    assert math.isclose(fast.slope, nested.slope, rel_tol=1e-10)
    assert model.training  # restored
    too_few = measure_lambda(model, inputs, labels, classes=(1, 2), prob_range=(0.99, 1.0))
    assert too_few.fit is None and math.isnan(too_few.slope)
