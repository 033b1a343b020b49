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
from geomlab.experiments import get
from geomlab.runner import config_hash

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
    assert result.exit_code == 2  # refused: bad input, not a failure while working
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
    experiment = get("e1")
    config = experiment.make_config("quick", {"n_seeds": 80, "n_samples": 2000})
    partial = out / ".partial" / config_hash("e1", config)  # pieces are keyed by config
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


# --- issue 13: one writer per directory, --force, validation first, clean failures -------------

E1_SLOW = ["e1", "--preset", "quick", "--set", "n_seeds=10000", "--set", "n_samples=2000"]
E1_80 = ["e1", "--preset", "quick", "--set", "n_seeds=80", "--set", "n_samples=2000"]


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "geomlab.cli", *args]


def _spawn(args: list[str], out: Path) -> subprocess.Popen:
    return subprocess.Popen(_cli("run", *args, "--out", str(out)), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_until_running(out: Path, proc: subprocess.Popen, pieces: int = 0) -> dict:
    """Poll (no timing asserted) until ``proc`` has written a running manifest and pieces."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.stderr.read() if proc.stderr else proc.returncode
        try:
            manifest = json.loads((out / "manifest.json").read_text())
        except (FileNotFoundError, ValueError):
            manifest = None
        done = len(list((out / ".partial").glob("*/seed_*.json")))
        if manifest and manifest["status"] == "running" and done >= pieces:
            return manifest
        time.sleep(0.05)
    raise AssertionError(f"{out} never showed a running run")


def test_a_second_run_into_a_busy_out_is_refused_and_show_tells_alive_from_dead(tmp_path):
    import socket

    out = tmp_path / "X"
    first = _spawn(E1_SLOW, out)
    try:
        _wait_until_running(out, first)
        other = [*E1_SLOW[:-1], "n_samples=3000"]  # issue 13.1: another config, same --out
        second = subprocess.run(_cli("run", *other, "--out", str(out)), capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert "being written by another geomlab run" in second.stderr
        assert f"pid {first.pid} on {socket.gethostname()}" in second.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["config"]["n_samples"] == 2000 and manifest["writer"]["pid"] == first.pid
        assert [p.name for p in (out / ".partial").iterdir()] == [manifest["config_hash"]]
        shown = runner.invoke(app, ["show", str(out)])
        assert shown.exit_code == 0 and "alive" in shown.output and str(first.pid) in shown.output
    finally:
        first.kill()
        first.wait()
    shown = runner.invoke(app, ["show", str(out)])
    assert "gone" in shown.output and "alive" not in shown.output


def _write_fake_mnist(folder: Path) -> None:
    import numpy as np

    from geomlab.data import mnist

    rng = np.random.default_rng(0)
    for split, rows in (("train", 128), ("test", 100)):
        image_stem, label_stem = mnist.SPLIT_FILES[split]
        mnist.write_idx(folder / image_stem, rng.integers(0, 256, (rows, 28, 28), np.uint8))
        mnist.write_idx(folder / label_stem, (np.arange(rows) % 10).astype(np.uint8))


def test_two_same_config_lambda_runs_have_one_writer_and_sigterm_interrupts(tmp_path):
    data = tmp_path / "mnist"
    _write_fake_mnist(data)
    args = ["lambda-control", "--preset", "quick", "--device", "cpu", "--set", f"data_dir={data}",
            "--set", "train_limit=128", "--set", "test_limit=100", "--set", "epochs=1000",
            "--set", "seeds=[0]", "--set", "conditions=baseline"]  # fmt: skip
    out = tmp_path / "L"
    first = _spawn(args, out)
    try:
        _wait_until_running(out, first)
        second = subprocess.run(_cli("run", *args, "--out", str(out)), capture_output=True,
                                text=True, timeout=300)  # fmt: skip
        assert second.returncode == 2, second.stderr
        assert f"pid {first.pid}" in second.stderr
        manifest = json.loads((out / "manifest.json").read_text())
        assert manifest["status"] == "running" and manifest["writer"]["pid"] == first.pid
        first.send_signal(signal.SIGTERM)  # what `timeout` and batch schedulers send
        assert first.wait(timeout=300) == 3
        assert "terminated (SIGTERM)" in first.stderr.read()
    finally:
        first.kill()
        first.wait()
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "interrupted" and "SIGTERM" in manifest["error"]
    assert manifest["invocations"][0]["status"] == "interrupted"
    assert not list(out.rglob(".*.tmp"))


def test_sigterm_then_resume_records_the_first_start_total_wall_time_and_cleans_up(tmp_path):
    out = tmp_path / "T"
    first = _spawn(E1_80, out)
    try:
        _wait_until_running(out, first, pieces=3)
        first.send_signal(signal.SIGTERM)
        assert first.wait(timeout=300) == 3
    finally:
        first.kill()
        first.wait()
    stopped = json.loads((out / "manifest.json").read_text())
    assert stopped["status"] == "interrupted"
    pieces = out / ".partial" / stopped["config_hash"]
    orphans = [out / ".E1_results_raw.csv.k3j2h1g0.tmp", pieces / ".seed_79.json.abcd_123.tmp"]
    for orphan in orphans:  # what a SIGKILL in the middle of a write leaves
        orphan.write_text("half")
    result = runner.invoke(app, ["run", *E1_80, "--out", str(out)])
    assert result.exit_code == 0, result.output
    manifest = json.loads((out / "manifest.json").read_text())
    invocations = manifest["invocations"]
    assert manifest["status"] == "complete" and manifest["resumed"] is True
    assert [item["status"] for item in invocations] == ["interrupted", "complete"]
    assert manifest["started"] == stopped["started"] == invocations[0]["started"]
    assert manifest["wall_seconds"] == pytest.approx(sum(i["wall_seconds"] for i in invocations))
    assert manifest["wall_seconds"] > invocations[1]["wall_seconds"]
    assert not any(orphan.exists() for orphan in orphans)


def test_force_recomputes_a_finished_run(tmp_path):
    args = ["run", "e1", "--preset", "quick", "--set", "n_seeds=2", "--out", str(tmp_path / "F")]
    assert runner.invoke(app, args).exit_code == 0
    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    assert "already holds a finished run" not in forced.output
    manifest = json.loads((tmp_path / "F" / "manifest.json").read_text())
    assert manifest["forced"] is True and manifest["status"] == "complete"
    second_log = (tmp_path / "F" / "run.log").read_text().split("--force")[-1]
    assert "E1 seeds: 2/2 done" in second_log and "reusing" not in second_log


@pytest.mark.parametrize(
    ("name", "args", "needle"),
    [
        ("e1", ["--set", "seeds=[1,1,2]"], "seeds must be unique"),
        ("lambda-control", ["--set", "seeds=[1,1,2]"], "seeds must be unique"),
        ("e1", ["--set", "center_scale=inf"], "center_scale"),
        ("e1", ["--set", "noise_std=Infinity"], "noise_std"),
        ("e3", ["--set", "kappa_values=[1,Infinity]"], "kappa_values.1"),
        ("e1", ["--set", "seeds=[18446744073709551616]"], "seeds.0"),
        ("e1", ["--set", "data_seed=18446744073709551616"], "data_seed"),
        ("e1", ["--set", "n_samples=1000000000000"], "n_samples"),
        ("gradient-rank", ["--set", "seed=18446744073709551616"], "seed"),
        ("lambda-control", ["--set", "noise_seed=18446744073709551616"], "noise_seed"),
        ("alignment", ["--set", "ntk_vs_mf_lr=Infinity"], "ntk_vs_mf_lr"),
    ],
)
def test_bad_values_fail_before_the_run_directory_exists(tmp_path, name, args, needle):
    out = tmp_path / "never"
    result = runner.invoke(app, ["run", name, "--preset", "quick", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not out.exists()


def test_bad_out_is_an_input_error(tmp_path):
    a_file = tmp_path / "file"
    a_file.write_text("not a directory")
    for out in (a_file, a_file / "below"):
        result = runner.invoke(app, ["run", "e1", "--preset", "quick", "--out", str(out)])
        assert result.exit_code == 2, result.output
        assert str(a_file) in result.output.replace("\n", "")


def test_truncated_manifest_is_named_in_show_and_report(tmp_path):
    run_dir = tmp_path / "cut"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text('{"experiment": "e1", "status": "compl')
    for command in (["show", str(run_dir)], ["report", str(run_dir)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 2, result.output
        assert str(run_dir / "manifest.json") in result.output.replace("\n", "")
        assert "not valid JSON" in result.output


def test_a_refused_model_exits_2_naming_what_was_refused(tmp_path, monkeypatch):
    # K-FAC has no factors for attention, norms or a CLS token: refused before any work, as bad
    # input (2), not as a run that failed while working (3).
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "examples"))
    args = ["run", "e1", "--preset", "quick", "--set", "model=transformer:build_model",
            "--set", "data=transformer:load_data", "--set", "n_samples=60",
            "--set", "n_seeds=1", "--set", 'methods=["sgd","kfac"]',
            "--out", str(tmp_path / "r")]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "refused: UnsupportedShapeError" in result.output
    assert "requires_grad_(False)" in result.output
    assert not (tmp_path / "r" / "E1_results_raw.csv").exists()
