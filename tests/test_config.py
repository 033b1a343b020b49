import pytest

from geomlab.config import ConfigError, parse_overrides, parse_value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3", 3),
        ("1e-3", 1e-3),
        ("[1, 2]", [1, 2]),
        ("1e-5,1e-4", [1e-5, 1e-4]),
        ("true", True),
        ("float32", "float32"),
        ("cpu", "cpu"),
    ],
)
def test_parse_value(text, value):
    assert parse_value(text) == value


def test_parse_overrides_normalises_dashes_and_rejects_malformed():
    assert parse_overrides(["n-seeds=3", "rcond=1e-9"]) == {"n_seeds": 3, "rcond": 1e-9}
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["n_seeds"])
    with pytest.raises(ConfigError, match="key=value"):
        parse_overrides(["=3"])


def test_registry_table_agrees_with_every_experiment_module():
    from geomlab.experiments import REGISTRY, all_experiments, get

    for experiment in all_experiments():
        module, aliases = REGISTRY[experiment.name]
        assert tuple(experiment.aliases) == aliases
        for spelling in (experiment.name, *aliases):
            assert get(spelling) is experiment
        assert {"paper", "quick"} <= set(experiment.presets)
