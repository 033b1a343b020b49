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
         e3_invariance.invariance_for_seed(config, s, (inputs, labels))["rows"]]
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


# --- Rank, cutoff and dropped share; attention models --------------------------------------


def test_paper_path_reports_rank_cutoff_and_dropped_share(tmp_path, fake_context):
    from geomlab.experiments.e3_invariance import run

    config = get("e3").make_config("quick", {"n_samples": 200, "n_seeds": 1})
    result = run(config, fake_context(tmp_path))
    results = pd.read_csv(tmp_path / "E3_results.csv")
    ng = results[results["method"] == "natgrad"]
    sgd = results[results["method"] == "sgd"]
    # Bias-free softmax regression: F has the D = 16 class-uniform directions as null space,
    # all below round-off, so the cutoff drops exactly those and nothing the Fisher has.
    assert (ng["rank"] == 160 - 16).all() and (ng["dropped_directions"] == 16).all()
    assert (ng["dropped_above_floor"] == 0).all() and (ng["dropped_share"] < 1e-20).all()
    assert (ng["cutoff"] > 0).all() and (sgd["rank"] == -1).all() and sgd["cutoff"].isna().all()
    assert result.summary["rcond_warnings"] == [] and result.summary["ng_rank_min"] == 144


def full_rank_regression():
    import torch

    g = torch.Generator().manual_seed(0)
    x = torch.randn(80, 4, generator=g, dtype=torch.float64)
    return x, torch.stack([torch.sin(x[:, 0] * x[:, 1]), x[:, 2] ** 2 - 1], 1)


def test_rcond_dropping_directions_of_a_full_rank_fisher_warns(tmp_path, fake_context, caplog):
    from geomlab.experiments.e3_invariance import run

    overrides = {"model": "mlp", "mlp_hidden": [8], "data": f"{__name__}:full_rank_regression",
                 "n_samples": 80, "n_seeds": 1, "kappa_values": [1, 1000],
                 "scalings": ["two_block"]}  # fmt: skip
    (tmp_path / "a").mkdir()
    with caplog.at_level("WARNING"):
        result = run(get("e3").make_config("quick", overrides), fake_context(tmp_path / "a"))
    ng = pd.read_csv(tmp_path / "a" / "E3_results.csv").query("method == 'natgrad'").iloc[0]
    assert ng["dropped_above_floor"] > 0 and ng["rank"] < 4 * 8 + 8 + 9 * 2
    assert ng["rel_diff"] > 0.1  # 1.03: reported non-invariant, the cutoff.s doing
    [warning] = result.summary["rcond_warnings"]
    assert "rcond=1e-08 dropped" in warning and "above its round-off floor" in warning
    assert warning in caplog.text

    (tmp_path / "b").mkdir()
    exact = get("e3").make_config("quick", {**overrides, "rcond": 0.0})
    result = run(exact, fake_context(tmp_path / "b"))
    ng = pd.read_csv(tmp_path / "b" / "E3_results.csv").query("method == 'natgrad'").iloc[0]
    assert ng["rank"] == 58 and ng["dropped_directions"] == 0
    assert ng["rel_diff"] < 1e-4 and ng["logit_diff"] < 1e-6  # 8.5e-6, 4.1e-8 at kappa 1000
    assert result.summary["rcond_warnings"] == []


class HFStyleOutput:
    def __init__(self, logits):
        self.logits = logits


class ClsTokenTransformer(torch_nn_module := __import__("torch").nn.Module):
    """Learned CLS token cat'ed before 4 projected tokens, nn.TransformerEncoder, HF-style
    output."""

    def __init__(self):
        import torch
        from torch import nn

        super().__init__()
        self.cls = nn.Parameter(0.1 * torch.randn(1, 1, 8))
        self.proj = nn.Linear(4, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=16, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, 10)

    def forward(self, x):
        import torch

        tokens = self.proj(x.reshape(-1, 4, 4))
        tokens = torch.cat([self.cls.expand(len(tokens), -1, -1), tokens], dim=1)
        return HFStyleOutput(self.head(self.encoder(tokens)[:, 0]))


def test_e3_on_a_cls_token_transformer_with_hf_style_output(tmp_path, fake_context):
    from geomlab.experiments.e3_invariance import run

    overrides = {"model": f"{__name__}:ClsTokenTransformer", "n_samples": 40, "n_seeds": 1,
                 "kappa_values": [1, 100], "scalings": ["log_uniform"]}  # fmt: skip
    result = run(get("e3").make_config("quick", overrides), fake_context(tmp_path))
    results = pd.read_csv(tmp_path / "E3_results.csv")
    ng = results[results["method"] == "natgrad"].iloc[0]
    sgd = results[results["method"] == "sgd"].iloc[0]
    assert result.summary["gate_c_pass_rate"] == 1.0 and result.summary["results_finite"]
    assert sgd["logit_diff"] > 1e-4
    # 40 samples x 9 softmax directions bound the rank; the Fisher's small but real eigenvalues
    # below rcond * max are dropped, and the run says so rather than calling NG non-invariant.
    assert 0 < ng["rank"] <= 40 * 9 and ng["dropped_above_floor"] > 0
    assert "above its round-off floor" in result.summary["rcond_warnings"][0]
