import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from geomlab.cli import app

runner = CliRunner()
RAW_COLUMNS = [
    "seed", "epsilon", "method", "loss_before", "loss_after", "delta_loss", "kl_step",
    "kl_target", "kl_ratio", "eta", "grad_norm", "direction_norm", "cos_g_v",
]  # fmt: skip
E1_ARTIFACTS = [
    "E1_results_raw.csv", "E1_results_aggregated.csv", "E1_gate_validation.csv",
    "E1_summary.json", "E1_figure.png", "E1_figure.pdf", "manifest.json", "run.log",
]  # fmt: skip


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "e1"
    result = runner.invoke(app, ["run", "ng-pareto", "--preset", "quick", "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


def test_list_shows_experiments_and_presets():
    result = runner.invoke(app, ["list"])
    assert result.exit_code == 0
    assert "e1" in result.output and "ng-pareto" in result.output and "quick" in result.output


def test_quick_run_writes_every_artifact_with_the_right_columns(quick_run):
    for name in E1_ARTIFACTS:
        assert (quick_run / name).stat().st_size > 0, name
    raw = pd.read_csv(quick_run / "E1_results_raw.csv")
    assert list(raw.columns) == RAW_COLUMNS
    assert len(raw) == 3 * 5 * 2
    assert raw["cos_g_v"].isna().sum() == len(raw) / 2  # only NG rows carry it
    numeric = raw.drop(columns="method")
    assert all(pd.api.types.is_numeric_dtype(t) for t in numeric.dtypes)  # no printed tensors
    agg = pd.read_csv(quick_run / "E1_results_aggregated.csv")
    assert {"delta_loss_mean", "kl_ratio_mean", "n_seeds"} <= set(agg.columns)
    gates = pd.read_csv(quick_run / "E1_gate_validation.csv")
    assert list(gates["seed"]) == [0, 1, 2]
    assert {"gate_a_passed", "min_eigenvalue", "max_eigenvalue"} <= set(gates.columns)
    summary = json.loads((quick_run / "E1_summary.json").read_text())
    for key in ("mean_relative_advantage_pct", "min_advantage_pct", "max_advantage_pct",
                "gate_a_pass_rate"):  # fmt: skip
        assert isinstance(summary[key], float)
    assert (quick_run / "E1_figure.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (quick_run / "E1_figure.pdf").read_bytes()[:5] == b"%PDF-"


def test_manifest_records_config_versions_device_seed(quick_run):
    manifest = json.loads((quick_run / "manifest.json").read_text())
    assert manifest["status"] == "complete"
    assert manifest["preset"] == "quick"
    assert manifest["config"]["n_seeds"] == 3 and manifest["config"]["data_seed"] == 42
    for key in ("geomlab", "torch", "python", "device"):
        assert manifest["environment"][key]
    assert manifest["started"] <= manifest["finished"]
    assert all(g["passed"] for g in manifest["gates"])


def test_rerun_of_finished_dir_is_a_no_op_and_show_prints_it(quick_run):
    before = (quick_run / "E1_results_raw.csv").stat().st_mtime_ns
    result = runner.invoke(app, ["run", "e1", "--preset", "quick", "--out", str(quick_run)])
    assert result.exit_code == 0
    assert "already holds a finished run" in result.output
    assert (quick_run / "E1_results_raw.csv").stat().st_mtime_ns == before
    shown = runner.invoke(app, ["show", str(quick_run)])
    assert shown.exit_code == 0
    assert "gate_a_fisher_psd" in shown.output and "mean_relative_advantage_pct" in shown.output


def test_same_config_gives_identical_numbers(quick_run, tmp_path):
    result = runner.invoke(app, ["run", "e1", "--preset", "quick", "--out", str(tmp_path / "b")])
    assert result.exit_code == 0
    a = pd.read_csv(quick_run / "E1_results_raw.csv")
    b = pd.read_csv(tmp_path / "b" / "E1_results_raw.csv")
    pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_other_config_in_same_dir_is_refused(quick_run):
    result = runner.invoke(
        app, ["run", "e1", "--preset", "quick", "--set", "n_seeds=2", "--out", str(quick_run)]
    )
    assert result.exit_code == 3
    assert "another config" in result.output


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--set", "epsilon_values=[-1e-3]"], "epsilon_values.0"),
        (["--set", "n_classes=1"], "n_classes"),
        (["--set", "nope=1"], "nope"),
        (["--set", "n_seeds"], "key=value"),
        (["--preset", "huge"], "huge"),
        (["--device", "tpu"], "device"),
    ],
)
def test_bad_input_stops_before_any_work(tmp_path, args, needle):
    out = tmp_path / "never"
    result = runner.invoke(app, ["run", "e1", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert needle in result.output
    assert not out.exists()


def test_unknown_experiment_lists_known_ones():
    result = runner.invoke(app, ["run", "e9"])
    assert result.exit_code == 2
    assert "ng-pareto" in result.output


def test_failed_gate_sets_exit_status_unless_allowed(tmp_path):
    # A tolerance below round-off turns the Fisher's ~1e-17 null eigenvalues into failures.
    args = ["run", "e1", "--preset", "quick", "--set", "gate_rel_tol=1e-300"]
    result = runner.invoke(app, [*args, "--out", str(tmp_path / "strict")])
    assert result.exit_code == 1
    assert "validation gate" in result.output
    manifest = json.loads((tmp_path / "strict" / "manifest.json").read_text())
    assert manifest["status"] == "gates_failed"
    summary = json.loads((tmp_path / "strict" / "E1_summary.json").read_text())
    assert summary["gate_a_pass_rate"] < 1 and summary["gate_a_failed_seeds"]
    shown = runner.invoke(app, ["show", str(tmp_path / "strict")])
    assert "FAIL" in shown.output
    allowed = runner.invoke(app, [*args, "--allow-gate-failures", "--out", str(tmp_path / "ok")])
    assert allowed.exit_code == 0


def test_show_rejects_non_run_dir(tmp_path):
    result = runner.invoke(app, ["show", str(tmp_path)])
    assert result.exit_code == 2
    assert "not a run directory" in result.output


def test_killed_run_leaves_nothing_that_looks_complete_and_resumes(tmp_path):
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "geomlab.cli", "run", "e1", "--preset", "quick",
           "--set", "n_seeds=80", "--set", "n_samples=2000", "--out", str(out)]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    partial = out / ".partial"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if partial.exists() and len(list(partial.glob("seed_*.json"))) >= 3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done_before = {p.name for p in partial.glob("seed_*.json")}
    assert 3 <= len(done_before) < 80
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "running"  # not a completion marker
    assert not any(out.glob("E1_*")), "final artifacts must not exist for a killed run"
    for piece in partial.glob("seed_*.json"):
        json.loads(piece.read_text())  # every stored piece is whole

    # The same command resumes (another config in this directory would be refused).
    result = runner.invoke(app, cmd[3:])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "complete" and manifest["resumed"] is True
    assert "reusing finished seed_" in (out / "run.log").read_text()
    raw = pd.read_csv(out / "E1_results_raw.csv")
    assert sorted(raw["seed"].unique()) == list(range(80))
