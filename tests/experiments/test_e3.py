import json
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from geomlab.cli import app
from geomlab.config import ConfigError
from geomlab.experiments import e3_invariance, get
from geomlab.experiments.softmax_common import load_cluster_data

FIXTURE = Path(__file__).parents[1] / "fixtures" / "e3_notebook_cpu.json"


def test_discrepancies_match_the_notebook(cpu):
    config = e3_invariance.Config(scalings=["two_block"])
    inputs, labels = load_cluster_data(config, cpu)
    ours = pd.DataFrame(
        [r for s in config.seed_list for r in
         e3_invariance.invariance_for_seed(config, s, inputs, labels)["rows"]]
    )  # fmt: skip
    notebook = pd.DataFrame(json.loads(FIXTURE.read_text())["rows"])
    merged = notebook.merge(ours, on=["seed", "kappa", "method"], suffixes=("_nb", ""))
    assert len(merged) == len(notebook) == 18
    sgd = merged[merged["method"] == "sgd"]
    rel = ((sgd["max_diff"] - sgd["max_diff_nb"]).abs() / sgd["max_diff_nb"]).max()
    assert rel < 1e-9
    ng = merged[merged["method"] == "natgrad"]
    assert (ng["max_diff"] - ng["max_diff_nb"]).abs().max() <= 1e-8  # both at round-off
    assert ng["max_diff"].max() < 1e-8


@pytest.fixture
def cpu():
    import torch

    return torch.device("cpu")


def test_quick_run_writes_all_artifacts(tmp_path):
    out = tmp_path / "e3"
    result = CliRunner().invoke(
        app, ["run", "ng-invariance", "--preset", "quick", "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    for name in ("E3_results.csv", "E3_summary.json", "E3_figure.png", "E3_figure.pdf",
                 "manifest.json"):  # fmt: skip
        assert (out / name).stat().st_size > 0
    results = pd.read_csv(out / "E3_results.csv")
    assert list(results.columns) == e3_invariance.RESULT_COLUMNS
    assert set(results["kappa"]) == {10.0, 100.0, 1000.0}
    assert set(results["scaling"]) == {"two_block", "log_uniform"}
    summary = json.loads((out / "E3_summary.json").read_text())
    assert summary["ratio_at_1000"] > 1e3  # NG far more invariant than SGD
    assert summary["gate_a_pass_rate"] == 1.0 and summary["gate_c_pass_rate"] == 1.0
    ng = results[results["method"] == "natgrad"]
    assert ng["logit_diff"].max() < 1e-9  # function-space invariance for both families
    log_uniform_ng = ng[ng["scaling"] == "log_uniform"]
    assert log_uniform_ng["max_diff"].min() > 1e-8  # ... though not in parameter space


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"kappa_values": [10, 0]}, "kappa_values.1"),
        ({"kappa_values": [-1]}, "kappa_values.0"),
        ({"eta": 0}, "eta"),
        ({"eta": -1e-3}, "eta"),
        ({"scalings": ["diagonal"]}, "scalings.0"),
    ],
)
def test_bad_values_name_the_field(overrides, field):
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        get("e3").make_config("paper", overrides)


def test_any_kappa_list_and_ratio_key_follow_the_largest_kappa(tmp_path):
    out = tmp_path / "custom"
    args = ["run", "e3", "--preset", "quick", "--set", "kappa_values=[1,5,50]",
            "--set", "scalings=[\"two_block\"]", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    summary = json.loads((out / "E3_summary.json").read_text())
    assert "ratio_at_50" in summary


def test_any_model_reports_both_views_with_the_same_columns(tmp_path, fake_context):
    from geomlab.experiments.e3_invariance import run

    overrides = {"model": "mlp", "mlp_hidden": [6], "n_samples": 150, "n_seeds": 1,
                 "kappa_values": [1, 100]}  # fmt: skip
    config = get("e3").make_config("quick", overrides)
    result = run(config, fake_context(tmp_path))
    results = pd.read_csv(tmp_path / "E3_results.csv")
    assert list(results.columns) == e3_invariance.RESULT_COLUMNS
    assert len(results) == 4  # 2 families x 2 methods at kappa = 100
    assert result.summary["gate_a_pass_rate"] == 1.0 and result.summary["gate_c_pass_rate"] == 1.0
    sgd = results[results["method"] == "sgd"]
    ng = results[results["method"] == "natgrad"]
    assert (sgd["logit_diff"] > 1e-4).all()  # SGD moves predictions with the coordinates
    assert ng["logit_diff"].min() < sgd["logit_diff"].min()


def test_cg_solver_and_user_regression_data(tmp_path, fake_context, monkeypatch):
    from geomlab.experiments.e3_invariance import run

    (tmp_path / "my_regression.py").write_text(
        "import torch\n"
        "def data():\n"
        "    g = torch.Generator().manual_seed(0)\n"
        "    x = torch.randn(80, 3, generator=g, dtype=torch.float64)\n"
        "    return x, torch.stack([x[:, 0] * x[:, 1], x[:, 2]], 1)\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    overrides = {"model": "mlp", "mlp_hidden": [4], "data": "my_regression:data",
                 "n_samples": 80, "n_seeds": 1, "kappa_values": [1, 10], "solver": "cg",
                 "scalings": ["log_uniform"]}  # fmt: skip
    config = get("e3").make_config("quick", overrides)
    out = tmp_path / "run"
    out.mkdir()
    result = run(config, fake_context(out))
    results = pd.read_csv(out / "E3_results.csv")
    assert set(results["method"]) == {"sgd", "natgrad"}
    # a full-rank Gaussian Fisher and an exact solve: NG is invariant, SGD is not
    ng = results[results["method"] == "natgrad"].iloc[0]
    sgd = results[results["method"] == "sgd"].iloc[0]
    assert ng["rel_diff"] < 1e-4 < sgd["rel_diff"]
    assert result.summary["gate_c_pass_rate"] == 1.0
