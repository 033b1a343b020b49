"""Boundary points of a class pair: the notebook's rule and the pairwise rule, hand-built."""

from __future__ import annotations

import pytest
import torch

from geomlab.geometry.lambda_fit import boundary_point_indices, measure_lambda


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
