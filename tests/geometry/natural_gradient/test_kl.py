import math

import pytest
import torch

from geomlab.data.synthetic import gaussian_clusters
from geomlab.geometry import curvature as cv
from geomlab.geometry import natural_gradient as ng
from geomlab.models import softmax_regression as sr
from geomlab.testing.cases import softmax_regression_case


def test_pseudo_inverse_inverts_on_range_and_kills_null_space():
    probs, inputs = softmax_regression_case(400, 5, 4)
    fisher = cv.softmax_regression_fisher(probs, inputs)
    pinv = ng.pseudo_inverse(fisher, rcond=1e-8)
    assert pinv.rank == 5 * 4 - 4
    reference = torch.linalg.pinv(fisher, hermitian=True, rtol=1e-8)
    torch.testing.assert_close(pinv.dense(), reference, rtol=1e-9, atol=1e-9)
    # Moore-Penrose identities
    p = pinv.dense()
    torch.testing.assert_close(fisher @ p @ fisher, fisher, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(p @ fisher @ p, p, rtol=1e-10, atol=1e-10)


def test_pseudo_inverse_rejects_negative_rcond():
    with pytest.raises(ValueError, match="rcond"):
        ng.pseudo_inverse(torch.eye(3, dtype=torch.float64), rcond=-1.0)


def test_kl_matched_step_gives_second_order_kl_exactly_epsilon():
    probs, inputs = softmax_regression_case(120, 4, 6)
    fisher = cv.softmax_regression_fisher(probs, inputs)
    direction = torch.randn(24, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    eps = torch.tensor([1e-6, 1e-3, 0.5], dtype=torch.float64)
    eta = ng.step_size_for_kl(ng.fisher_curvature(fisher, direction), eps)
    torch.testing.assert_close(ng.second_order_kl(direction, fisher, eta), eps, rtol=1e-14, atol=0)


def test_kl_matched_step_rejects_null_direction():
    fisher = torch.diag(torch.tensor([1.0, 0.0], dtype=torch.float64))
    with pytest.raises(ValueError, match="curvature"):
        ng.step_size_for_kl(
            ng.fisher_curvature(fisher, torch.tensor([0.0, 1.0], dtype=torch.float64)), 1e-3
        )


def test_categorical_kl_hand_case_and_stability():
    # KL([1/2,1/2] || [1/4,3/4]) = 1/2 ln 2 + 1/2 ln(2/3)
    p = torch.log(torch.tensor([[0.5, 0.5]], dtype=torch.float64))
    q = torch.log(torch.tensor([[0.25, 0.75]], dtype=torch.float64))
    expected = 0.5 * math.log(2) + 0.5 * math.log(2 / 3)
    assert ng.categorical_kl(p, q).item() == pytest.approx(expected, rel=1e-14)
    assert ng.categorical_kl(p, p).item() == 0.0
    # Extreme logits: finite, non-negative (no 1e-10 fudge needed).
    big = torch.tensor([[800.0, -800.0, 0.0]], dtype=torch.float64)
    value = ng.categorical_kl(big, big.flip(-1))
    assert torch.isfinite(value) and value > 0


def test_measured_kl_tends_to_target_as_epsilon_shrinks():
    inputs, labels = gaussian_clusters(n_samples=600, n_features=6, n_classes=4, seed=0)
    weight = sr.init_weights(4, 6, seed=0)
    _, gradient, probs = sr.loss_and_gradient(weight, inputs, labels)
    fisher = cv.softmax_regression_fisher(probs, inputs)
    natural = ng.pseudo_inverse(fisher, rcond=1e-8) @ gradient
    errors = []
    for direction in (gradient, natural):
        previous = math.inf
        for eps in (1e-2, 1e-4, 1e-6, 1e-8):
            eta = ng.step_size_for_kl(ng.fisher_curvature(fisher, direction), eps)
            after = weight - eta * direction.reshape(weight.shape)
            kl = ng.categorical_kl(sr.logits(weight, inputs), sr.logits(after, inputs)).item()
            error = abs(kl / eps - 1)
            assert error < previous  # monotone approach
            previous = error
        errors.append(previous)
    assert max(errors) < 1e-3  # third-order term ~ sqrt(eps)
