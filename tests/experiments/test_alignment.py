import json
import math

import pandas as pd
import pytest
import torch
from pydantic import ValidationError

from geomlab.data import spiked
from geomlab.experiments import alignment
from geomlab.geometry import gd_tracking
from geomlab.models import two_layer

TINY = {
    "d": 24, "k": 30, "n_train": 20, "n_test": 16, "epoch_cap": 4, "top_k": 3,
    "angle_rank": 2, "angle_checkpoints": 3, "dtype": "float64",
}  # fmt: skip


def test_paper_preset_runs_every_notebook_setting():
    config = alignment.Config(**alignment.PRESETS["paper"])
    plan = alignment.comparisons(config)
    assert [c.family for c in plan] == ["relu-vs-sigmoid"] * 8 + ["ntk-vs-mf"]
    assert [c.teacher for c in plan[:8]] == ["sigmoid"] * 4 + ["relu"] * 4
    assert [c.runs[0].epochs for c in plan] == [100, 100, 100, 1000, 1000, 1000, 1000, 1000, 50]
    assert (config.d, config.k, config.n_train) == (1000, 1250, 750)
    assert config.nu_relu_vs_sigmoid == 0.125 and config.nu_ntk_vs_mf == 0.0
    first = plan[0].runs[0]
    assert two_layer.lr_value(first.lr, first.lr_scale, 1250) == pytest.approx(2 * math.sqrt(1250))
    assert two_layer.gamma_value(first.gamma_scale, 1250) == pytest.approx(1 / math.sqrt(1250))
    assert two_layer.gamma_value(plan[3].runs[0].gamma_scale, 1250) == pytest.approx(1 / 1250)
    ntk, mf = plan[-1].runs
    assert (ntk.gamma_scale, mf.gamma_scale) == ("1", "1/sqrt(k)")
    assert two_layer.lr_value(ntk.lr, ntk.lr_scale, 1250) == pytest.approx(math.sqrt(1250) / 2)
    assert sum(r.epochs for c in plan for r in c.runs) == 10_700


def test_presets_expect_the_notebooks_diverging_cells_to_run_away():
    # The γ = 1 cells s2, s6, s8 and the NTK run grow their train MSE in the notebook's own
    # configuration (paper: s2 ReLU ×693, NTK ×10.7); anything else that grows fails the gate.
    plan = alignment.comparisons(alignment.Config(**alignment.PRESETS["paper"]))
    assert [c.setting for c in plan if c.expect_runaway] == ["s2", "s6", "s8", "ntk-mf"]
    assert all(c.runs[0].gamma_scale == "1" for c in plan if c.expect_runaway)
    setting = {"teacher": "relu", "lr": 1e12, "gamma_scale": "1", "epochs": 5}
    custom = alignment.Config(relu_vs_sigmoid_settings=[setting])
    assert not alignment.comparisons(custom)[0].expect_runaway


@pytest.mark.parametrize(
    ("override", "field"),
    [
        ({"nu_relu_vs_sigmoid": -0.1}, "nu_relu_vs_sigmoid"),
        ({"k": 0}, "k"),
        ({"ntk_vs_mf_activation": "gelu"}, "ntk_vs_mf_activation"),
        ({"top_k": 50, "d": 20}, "top_k"),
        (
            {
                "relu_vs_sigmoid_settings": [
                    {"teacher": "swish", "lr": 1, "gamma_scale": "1", "epochs": 3}
                ]
            },
            "teacher",
        ),  # fmt: skip
        ({"parameterization": "ntk"}, "parameterization"),
        ({"max_train_mse_growth": 1.0}, "max_train_mse_growth"),
        ({"max_train_mse_growth": float("inf")}, "max_train_mse_growth"),
    ],
)
def test_bad_values_name_the_field(override, field):
    with pytest.raises(ValidationError) as info:
        alignment.Config(**override)
    assert field in str(info.value)


def test_notebook_parameterization_uses_its_outer_weights():
    assert alignment.outer_init_for("relu-vs-sigmoid", "notebook") == "notebook_binary"
    assert alignment.outer_init_for("relu-vs-sigmoid", "standard") == "rademacher"
    assert alignment.outer_init_for("ntk-vs-mf", "notebook") == "gaussian"


def test_tiny_run_writes_tables_summary_and_figures(tmp_path, fake_context):
    config = alignment.Config(**TINY)
    result = alignment.run(config, fake_context(tmp_path))
    assert result.gates_passed, [g.message for g in result.gates]
    metrics = pd.read_csv(tmp_path / "alignment_metrics.csv")
    head = ["run", "family", "setting", "teacher", "activation", "gamma_scale", "gamma", "lr",
            "nu", "parameterization", "epoch", "train_mse", "test_mse"]  # fmt: skip
    assert list(metrics.columns[: len(head)]) == head
    expected = {"grad_sv_1", "grad_sv_3", "w_spectral_norm", "cos_v1_spike", "cos_v1_residue",
                "energy_fraction", "sv_ratio_12", "sv_ratio_23", "stable_rank", "top2_cos_1",
                "top2_cos_2"}  # fmt: skip
    assert expected <= set(metrics.columns)
    assert metrics["run"].nunique() == 18 and len(metrics) == 18 * 5
    angles = pd.read_csv(tmp_path / "alignment_angles.csv")
    assert set(angles["subspace"]) == {"weights", "update"}
    assert angles["mean_angle_deg"].between(0, 90).all()
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert len(summary["final"]) == 18
    assert summary["column_space_angle_bound_deg"] == pytest.approx(90 * 6 / 24)
    for stem in alignment_figures():
        assert (tmp_path / f"{stem}.png").stat().st_size > 10_000
        assert (tmp_path / f"{stem}.pdf").read_bytes()[:5] == b"%PDF-"


def alignment_figures():
    from geomlab.plots.alignment import FIGURES

    return list(FIGURES)


# Through the real CLI and runner: the quick preset with smaller sizes writes every artifact.
ONE_SETTING = '[{"teacher": "relu", "lr": 2, "gamma_scale": "1", "epochs": 9}]'
CLI_TINY = ["--set", "d=40", "--set", "k=50", "--set", "n_train=30", "--set", "n_test=20",
            "--set", "epoch_cap=3", "--set", "angle_checkpoints=3",
            "--set", f"relu_vs_sigmoid_settings={ONE_SETTING}"]  # fmt: skip
ARTIFACTS = ["alignment_metrics.csv", "alignment_angles.csv", "summary.json",
             "manifest.json", "run.log"]  # fmt: skip


def test_cli_quick_preset_writes_all_outputs(tmp_path):
    from typer.testing import CliRunner

    from geomlab.cli import app

    out = tmp_path / "alignment"
    result = CliRunner().invoke(app, ["run", "alignment", "--preset", "quick", *CLI_TINY,
                                      "--out", str(out)])  # fmt: skip
    assert result.exit_code == 0, result.output
    for name in ARTIFACTS + [
        f"{stem}.{ext}" for stem in alignment_figures() for ext in ("png", "pdf")
    ]:
        assert (out / name).stat().st_size > 0, name
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["preset"] == "quick"
    assert manifest["config"]["d"] == 40 and manifest["config"]["epoch_cap"] == 3
    metrics = pd.read_csv(out / "alignment_metrics.csv")
    assert metrics["epoch"].max() == 3 and metrics["run"].nunique() == 4


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "nu_relu_vs_sigmoid=-0.5"], "nu_relu_vs_sigmoid"),
        (["--set", "k=0"], "'k'"),
        (["--set", "ntk_vs_mf_activation=gelu"], "ntk_vs_mf_activation"),
    ],
)
def test_cli_bad_values_stop_with_the_field_name(tmp_path, args, needle):
    from typer.testing import CliRunner

    from geomlab.cli import app

    out = tmp_path / "never"
    result = CliRunner().invoke(app, ["run", "alignment", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert needle in result.output
    assert not out.exists()


def test_notebook_parameterization_runs_with_gamma_squared(tmp_path, fake_context):
    setting = {"teacher": "sigmoid", "lr": 2.0, "lr_scale": "sqrt(k)", "gamma_scale": "1/sqrt(k)",
               "epochs": 2}  # fmt: skip
    config = alignment.Config(
        **{
            **TINY,
            "families": ["relu-vs-sigmoid"],
            "parameterization": "notebook",
            "relu_vs_sigmoid_settings": [setting],
        }  # fmt: skip
    )
    result = alignment.run(config, fake_context(tmp_path))
    assert result.gates_passed
    metrics = pd.read_csv(tmp_path / "alignment_metrics.csv")
    assert set(metrics["parameterization"]) == {"notebook"} and metrics["run"].nunique() == 2
    # Same data and W_0 under notebook outer weights: reproduce epoch 0's train MSE by hand.
    g = torch.Generator().manual_seed(alignment.family_seed(config.seed, "relu-vs-sigmoid"))
    q, W0, a = spiked.draw_shared_init(d=24, k=30, outer_init="notebook_binary",
                                       generator=g, dtype=torch.float64)  # fmt: skip
    data = spiked.draw_teacher_data(
        q, teacher="sigmoid", n_train=20, n_test=16, nu=0.125, alpha=0.0, label_noise=1.0,
        generator=g,
    )  # fmt: skip
    problem = gd_tracking.spiked_problem(data, q=q, W0=W0, a=a, device=torch.device("cpu"))
    gamma = 30**-0.5
    by_hand = gamma * (gamma * (a @ torch.relu(W0 @ problem.x.T)))
    first = metrics[(metrics["activation"] == "relu") & (metrics["epoch"] == 0)].iloc[0]
    assert first["train_mse"] == pytest.approx(
        float(((by_hand - problem.y) ** 2).mean()), rel=1e-10
    )


# Issue 13 item 5: lr = 1e12 in a γ = 1 cell grows the ReLU run's train MSE 2.4 -> 242.
RUNAWAY_SETTINGS = json.dumps(
    [
        {"teacher": "sigmoid", "lr": 1e12, "gamma_scale": "1/sqrt(k)", "epochs": 100},
        {"teacher": "sigmoid", "lr": 1e12, "gamma_scale": "1", "epochs": 100},
    ]
)


def test_cli_runaway_run_fails_the_growth_gate_and_stays_out_of_the_headline(tmp_path):
    from typer.testing import CliRunner

    from geomlab.cli import app

    out = tmp_path / "runaway"
    args = ["run", "alignment", "--preset", "quick", "--set", 'families=["relu-vs-sigmoid"]',
            "--set", f"relu_vs_sigmoid_settings={RUNAWAY_SETTINGS}", "--out", str(out)]  # fmt: skip
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 1, result.output  # the "gate failed" exit code
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "gates_failed"
    gate = next(g for g in manifest["gates"] if g["name"] == "train_mse_growth")
    assert not gate["passed"] and "relu-vs-sigmoid/s2-relu" in gate["unexpected_runaway"]
    assert all(g["passed"] for g in manifest["gates"] if g["name"] != "train_mse_growth")
    metrics = pd.read_csv(out / "alignment_metrics.csv")
    ran_away = metrics[metrics["run"] == "relu-vs-sigmoid/s2-relu"].sort_values("epoch")
    assert ran_away["train_mse"].iloc[-1] > 50 * ran_away["train_mse"].iloc[0]
    summary = json.loads((out / "summary.json").read_text())
    assert "relu-vs-sigmoid/s2-relu" in summary["runaway_runs"]
    assert summary["final"]["relu-vs-sigmoid/s2-relu"]["runaway"] is True
    assert summary["final"]["relu-vs-sigmoid/s1-relu"]["runaway"] is False
    # The headline medians use only the runs that trained.
    clean = [v for run, v in summary["final"].items() if run not in summary["runaway_runs"]]
    assert manifest["headline"]["runaway_runs"] == len(summary["runaway_runs"])
    assert manifest["headline"]["median_final_energy_fraction"] == pytest.approx(
        float(pd.Series([v["energy_fraction"] for v in clean]).median())
    )


def test_runaway_panels_are_marked_in_the_figures():
    import matplotlib.pyplot as plt

    from geomlab.plots.alignment import FIGURES

    rows = []
    for run, mse in (("fam/s1-relu", [1.0, 0.5]), ("fam/s1-sigmoid", [1.0, 50.0])):
        for epoch, value in enumerate(mse):
            rows.append({"run": run, "family": "fam", "setting": "s1", "teacher": "relu",
                         "lr": 2.0, "gamma_scale": "1", "epoch": epoch, "train_mse": value,
                         "test_mse": value, "cos_v1_spike": 0.5, "cos_v1_residue": 0.5,
                         "energy_fraction": 0.5, "grad_sv_1": 3.0, "grad_sv_2": 2.0,
                         "grad_sv_3": 1.0})  # fmt: skip
    metrics = pd.DataFrame(rows)
    angles = pd.DataFrame({"family": ["fam"], "setting": ["s1"], "epoch": [1],
                           "subspace": ["weights"], "rank": [2],
                           "mean_angle_deg": [10.0]})  # fmt: skip
    for make in FIGURES.values():
        fig = make(metrics, angles, runaway={"fam/s1-sigmoid": 50.0})
        texts = [t.get_text() for t in fig.axes[0].texts]
        assert "ran away: Sigmoid (train MSE ×50)" in texts, texts
        plain = make(metrics, angles)
        assert not any("ran away" in t.get_text() for t in plain.axes[0].texts)
        plt.close("all")
