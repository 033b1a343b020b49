import math

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
        module, aliases, description, presets = REGISTRY[experiment.name]
        assert tuple(experiment.aliases) == aliases
        assert experiment.description == description  # `geomlab list` shows the table's
        assert tuple(experiment.presets) == presets
        assert experiment.run.__module__ == module
        for spelling in (experiment.name, *aliases):
            assert get(spelling) is experiment
        assert {"paper", "quick"} <= set(experiment.presets)


def test_one_unknown_key_check_names_keys_and_lists_known_ones():
    from pydantic import BaseModel

    from geomlab.config import build_config, check_keys

    class Small(BaseModel):
        alpha: float = 1.0
        beta: int = 2

    with pytest.raises(ConfigError, match=r"unknown grid key\(s\) 'gamma', 'zeta' for toy; "
                       r"known keys: alpha, beta"):  # fmt: skip
        check_keys(Small, ["zeta", "alpha", "gamma"], owner="toy", what="grid key")
    check_keys(Small, ["alpha"], owner="toy")  # known keys pass

    class Source:
        name = "toy"
        presets = {"paper": {}}
        config_cls = Small

    with pytest.raises(ConfigError, match="unknown config key\\(s\\) 'gamma' for toy"):
        build_config(Source, "paper", {"gamma": 1})
    assert build_config(Source, "paper", {"beta": 5}) == Small(beta=5)


def test_validation_rejects_non_finite_floats_and_huge_sizes_naming_the_field():
    from pydantic import BaseModel, ValidationError

    from geomlab.experiments.base import ExperimentConfig, Seed, SeedList

    class Inner(BaseModel):  # a nested model with its own (permissive) settings
        rate: float = 1.0

    class Strict(ExperimentConfig):
        value: float = 1.0
        values: list[float] = [1.0]
        inner: list[Inner] = [Inner()]
        n: int = 10
        seed: Seed = 0
        seeds: SeedList = [0]

        def memory_estimates(self):
            return {"n": self.n * 8.0}

    for bad, field in [({"value": math.inf}, "value"), ({"values": [1, math.nan]}, "values.1"),
                       ({"inner": [{"rate": -math.inf}]}, "inner.0.rate"),
                       ({"n": 10**18}, "n"), ({"seed": 2**64}, "seed"),
                       ({"seeds": [3, 1, 3]}, "seeds")]:  # fmt: skip
        with pytest.raises(ValidationError, match=field):
            Strict(**bad)
    assert Strict(seeds=[2**63 - 1, 0]).seeds == [2**63 - 1, 0]
