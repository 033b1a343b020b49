import json

import pandas as pd
import pytest
from pydantic import ValidationError

from geomlab.experiments import gradient_rank


def test_regime_verdicts_read_the_table():
    table = pd.DataFrame(
        {
            "nu": [0.0, 0.1, 0.3, 0.4],
            "sv_ratio_12": [6.0, 5.0, 1.5, 1.2],
            "sv_ratio_23": [1.1, 1.2, 4.0, 5.0],
            "cos_v1_residue": [0.99, 0.98, 0.6, 0.3],
            "cos_v1_spike": [0.1, 0.1, 0.7, 0.9],
            "top2_cos_2": [0.2, 0.3, 0.9, 0.95],
        }
    )
    verdicts = gradient_rank.regime_verdicts(table, threshold=2.0)
    assert verdicts["nu < 1/4"]["holds_on_average"] is True
    assert verdicts["1/4 <= nu < 1/2"]["holds_on_average"] is True
    flat = table.assign(sv_ratio_23=1.0)
    assert gradient_rank.regime_verdicts(flat, 2.0)["1/4 <= nu < 1/2"]["holds_on_average"] is False


def test_bad_values_name_the_field():
    for override, field in (({"nus": [0.1, -0.2]}, "nus"), ({"k": 0}, "k"),
                            ({"activation": "softplus"}, "activation")):  # fmt: skip
        with pytest.raises(ValidationError) as info:
            gradient_rank.Config(**override)
        assert field in str(info.value)


def test_tiny_run_writes_outputs(tmp_path, fake_context):
    config = gradient_rank.Config(d=30, k=40, n_train=24, nus=[0.0, 0.3], n_seeds=2, top_k=4)
    result = gradient_rank.run(config, fake_context(tmp_path))
    assert result.gates_passed, [g.message for g in result.gates]
    table = pd.read_csv(tmp_path / "gradient_rank.csv")
    assert len(table) == 4 and {"nu", "seed", "grad_sv_1", "cos_v1_residue"} <= set(table.columns)
    by_nu = pd.read_csv(tmp_path / "gradient_rank_by_nu.csv")
    assert list(by_nu["nu"]) == [0.0, 0.3] and (by_nu["n_seeds"] == 2).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert set(summary["regimes"]) == {"nu < 1/4", "1/4 <= nu < 1/2"}
    assert (tmp_path / "gradient_rank.png").stat().st_size > 10_000


def test_cli_quick_preset_writes_all_outputs(tmp_path):
    from typer.testing import CliRunner

    from geomlab.cli import app

    out = tmp_path / "gradient-rank"
    args = ["run", "gradient-rank", "--preset", "quick", "--set", "d=40", "--set", "k=50",
            "--set", "n_train=30", "--set", "n_seeds=2", "--set", "nus=[0.0,0.3]",
            "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    for name in ("gradient_rank.csv", "gradient_rank_by_nu.csv", "summary.json",
                 "gradient_rank.png", "gradient_rank.pdf", "manifest.json"):  # fmt: skip
        assert (out / name).stat().st_size > 0, name
    bad = CliRunner().invoke(app, ["run", "gradient-rank", "--set", "nus=[-0.1]",
                                   "--out", str(tmp_path / "never")])  # fmt: skip
    assert bad.exit_code == 2 and "nus" in bad.output


def test_manifest_records_the_data(tmp_path):
    from typer.testing import CliRunner

    from geomlab.cli import app

    out = tmp_path / "run"
    args = ["run", "gradient-rank", "--set", "d=20", "--set", "k=25", "--set", "n_train=16",
            "--set", "n_seeds=1", "--set", "nus=[0.25]", "--out", str(out)]  # fmt: skip
    assert CliRunner().invoke(app, args).exit_code == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["data"]["nus"] == [0.25] and manifest["data"]["label_noise_std"] == 1.0


def test_config_options_are_enums_that_keep_their_text():
    from geomlab.models.two_layer import Activation, GammaScale, Parameterization

    config = gradient_rank.Config(gamma_scale="1/k", activation="tanh", parameterization="notebook")
    assert config.gamma_scale is GammaScale.INV_K and config.activation is Activation.TANH
    assert config.parameterization is Parameterization.NOTEBOOK
    dumped = config.model_dump(mode="json")  # what the manifest stores
    assert (dumped["gamma_scale"], dumped["activation"], dumped["teacher"]) == (
        "1/k",
        "tanh",
        "sigmoid",
    )
    with pytest.raises(ValidationError) as info:
        gradient_rank.Config(gamma_scale="1/sqrt(d)")
    assert "gamma_scale" in str(info.value) and "1/sqrt(k)" in str(info.value)
