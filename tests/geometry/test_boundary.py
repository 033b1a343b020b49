"""geometry.lambda_fit: boundary points of a class pair (the notebook's rule and the pairwise
rule, hand-built), the λ line fit, and modes left as they were."""

from __future__ import annotations

import math

import pytest
import torch

from geomlab.geometry.lambda_fit import (
    boundary_point_indices,
    fit_lambda,
    mean_log_abs,
    measure_lambda,
)


def probs_row(top: dict[int, float]) -> list[float]:
    """Ten class probabilities: the given ones, the rest shared equally."""
    rest = (1.0 - sum(top.values())) / (10 - len(top))
    return [top.get(c, rest) for c in range(10)]


# (label, probabilities): which rule accepts each point for the pair (4, 9), range [0.2, 0.8]
CASES = [
    (4, {4: 0.5, 9: 0.4}),  # 0: label 4, top two 4 and 9        -> both rules
    (4, {4: 0.5, 3: 0.4}),  # 1: label 4, top two 4 and 3        -> notebook only
    (7, {9: 0.6, 4: 0.3}),  # 2: label 7, top two 9 and 4        -> pairwise only
    (9, {9: 0.95, 4: 0.04}),  # 3: top two 9, 4 but too confident -> neither
    (1, {1: 0.5, 2: 0.4}),  # 4: another pair entirely           -> neither
    (9, {3: 0.5, 9: 0.2, 4: 0.1}),  # 5: label 9, 9 second, 4 third -> notebook only
    (9, {4: 0.2, 9: 0.2}),  # 6: top probability exactly at the low end (inclusive) -> both
]


def hand_built():
    labels = torch.tensor([label for label, _ in CASES])
    probs = torch.tensor([probs_row(top) for _, top in CASES], dtype=torch.float64)
    return probs, labels


@pytest.mark.parametrize(
    ("boundary", "expected"), [("notebook", [0, 1, 5, 6]), ("pairwise", [0, 2, 6])]
)
def test_rules_on_a_hand_built_case(boundary, expected):
    probs, labels = hand_built()
    for classes in ((4, 9), (9, 4)):
        chosen = boundary_point_indices(
            probs, labels, classes, prob_range=(0.2, 0.8), max_points=100, boundary=boundary
        )
        assert chosen.tolist() == expected


def test_default_is_the_notebook_rule_and_subsets_stay_inside_the_rule():
    probs, labels = hand_built()
    default = boundary_point_indices(probs, labels, (4, 9), prob_range=(0.2, 0.8), max_points=9)
    assert default.tolist() == [0, 1, 5, 6]
    g = torch.Generator().manual_seed(0)
    two = boundary_point_indices(
        probs, labels, (4, 9), prob_range=(0.2, 0.8), max_points=2, generator=g,
        boundary="pairwise",
    )  # fmt: skip
    assert len(two) == 2 and set(two.tolist()) <= {0, 2, 6}


def test_pairwise_needs_a_pair_and_unknown_rules_are_errors():
    probs, labels = hand_built()
    with pytest.raises(ValueError, match="two different classes"):
        boundary_point_indices(
            probs, labels, (4, 9, 3), prob_range=(0.2, 0.8), max_points=9, boundary="pairwise"
        )
    with pytest.raises(ValueError, match="boundary"):
        boundary_point_indices(
            probs, labels, (4, 9), prob_range=(0.2, 0.8), max_points=9, boundary="nearest"
        )


def test_measure_lambda_passes_the_rule_on():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(5, 3)).double()
    inputs = 3 * torch.randn(400, 5, dtype=torch.float64)
    with torch.no_grad():
        probs = torch.softmax(model(inputs), dim=1)
    labels = probs.argmax(dim=1)  # labels agree with the top class: pairwise ⊂ notebook here
    counts = {}
    for boundary in ("notebook", "pairwise"):
        result = measure_lambda(
            model, inputs, labels, (0, 1), prob_range=(0.0, 1.0), max_points=400, min_points=2,
            num_directions=1, max_order=2, boundary=boundary,
        )  # fmt: skip
        expected = boundary_point_indices(
            probs, labels, (0, 1), prob_range=(0.0, 1.0), max_points=400, boundary=boundary
        )
        assert result.num_points == len(expected) > 0
        counts[boundary] = result.num_points
    assert counts["pairwise"] < counts["notebook"]


def mixed_mode_model() -> torch.nn.Module:
    """A dropout/batch-norm network whose submodules are in different modes."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(10, 8), torch.nn.BatchNorm1d(8), torch.nn.Tanh(),
        torch.nn.Dropout(0.3), torch.nn.Linear(8, 4),
    ).double()  # fmt: skip
    model.train()
    model[2].eval()  # running statistics, inside a model in train mode
    model[4].eval()
    return model


def test_lambda_and_probabilities_leave_every_submodule_mode_as_it_was():
    from geomlab.geometry.derivatives import clear_path_cache
    from geomlab.geometry.lambda_fit import predict_probabilities
    from geomlab.geometry.penalty import class_selective_loss

    model = mixed_mode_model()
    modes = [m.training for m in model.modules()]
    assert modes == [True, True, True, False, True, False, True]
    inputs = torch.randn(24, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (24,))
    predict_probabilities(model, inputs)
    assert [m.training for m in model.modules()] == modes
    measure_lambda(model, inputs, labels, (1, 2), max_order=3, num_directions=2,
                   prob_range=(0.0, 1.0), max_points=8, min_points=3, batch_size=4,
                   generator=torch.Generator().manual_seed(0))  # fmt: skip
    assert [m.training for m in model.modules()] == modes
    for method in ("fast", "nested"):
        class_selective_loss(model, inputs, labels, target_classes=(1,), scale=0.1,
                             max_order=2, num_directions=1, method=method)  # fmt: skip
        assert [m.training for m in model.modules()] == modes
    with pytest.raises(ValueError, match="method must be"):
        class_selective_loss(model, inputs, labels, target_classes=(1,), scale=0.1,
                             max_order=2, num_directions=1, method="auto")  # fmt: skip
    assert [m.training for m in model.modules()] == modes
    clear_path_cache()


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
