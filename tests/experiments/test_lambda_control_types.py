"""Typed conditions and class pairs of lambda-control: the CLI syntax in, types out, text back."""

from __future__ import annotations

import pytest
from pydantic import TypeAdapter, ValidationError

from geomlab.config import parse_overrides
from geomlab.experiments.lambda_control.types import (
    ClassPair,
    Condition,
    Pair,
    conditions_from_cli,
    pairs_from_cli,
)


def test_conditions_parse_to_types_and_serialize_back_to_text():
    baseline, glob, selective = (
        Condition.parse(t) for t in ("baseline", "GLOBAL", "selective:9+4")
    )
    assert (baseline.kind, baseline.targets, baseline.label) == ("baseline", (), "baseline")
    assert (glob.kind, glob.targets, glob.label) == ("global", None, "global")
    assert (selective.classes, selective.label, str(selective)) == (
        (4, 9),
        "selective_49",
        "selective:4,9",
    )
    assert selective.model_dump() == "selective:4,9"
    assert Condition.parse(str(selective)) == selective == "selective:49"
    assert glob.role((1, 2)) == "targeted"
    assert len({selective, Condition.parse("selective:4,9")}) == 1


@pytest.mark.parametrize(
    "bad", ["sometimes", "selective:", "selective:4,10", "selective", {"kind": "global",
                                                                      "classes": [1]}]
)  # fmt: skip
def test_bad_conditions_are_errors(bad):
    with pytest.raises(ValidationError):
        Condition.parse(bad)


def test_cli_lists_of_conditions_rejoin_selective_classes():
    raw = parse_overrides(["conditions=baseline,global,selective:4,9,selective:3,8"])["conditions"]
    assert raw == ["baseline", "global", "selective:4", 9, "selective:3", 8]
    parsed = conditions_from_cli(raw)
    assert [str(c) for c in parsed] == ["baseline", "global", "selective:4,9", "selective:3,8"]
    with pytest.raises(ValueError, match="twice"):
        conditions_from_cli(["global", "baseline", "global"])


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("4v9", [(4, 9)]),
        ("4,9 3,8", [(4, 9), (3, 8)]),
        ("4v9;1-7", [(4, 9), (1, 7)]),
        ([4, 9, 3, 8], [(4, 9), (3, 8)]),
        ([[4, 9], [3, 8]], [(4, 9), (3, 8)]),
        (["4v9", "3x8"], [(4, 9), (3, 8)]),
    ],
)
def test_pair_syntaxes(value, expected):
    pairs = TypeAdapter(list[Pair]).validate_python(pairs_from_cli(value))
    assert pairs == expected
    assert all(isinstance(p, ClassPair) for p in pairs)
    assert [p.label for p in pairs] == [f"{a}v{b}" for a, b in expected]


@pytest.mark.parametrize("bad", [[[4, 4]], [[4, 12]], ["4v9v3"], [[1, 2, 3]]])
def test_bad_pairs_are_errors(bad):
    with pytest.raises(ValidationError):
        TypeAdapter(list[Pair]).validate_python(pairs_from_cli(bad))
    with pytest.raises(ValueError, match="even"):
        pairs_from_cli([1, 2, 3])
