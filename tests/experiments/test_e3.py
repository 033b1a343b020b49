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
