"""Sweeps: grid expansion and hashing, validation before any run, the local process pool,
failing runs, resume after a SIGKILLed driver, and the Dask path on a LocalCluster."""

import json
import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from pydantic import Field
from typer.testing import CliRunner

from geomlab import experiments, stats, sweep
from geomlab.cli import app
from geomlab.experiments.base import Experiment, ExperimentConfig
from geomlab.runner import config_hash
from geomlab.sweep.driver import previous_sweep

runner = CliRunner()
SRC = Path(__file__).resolve().parents[1] / "src"
# Tiny E1 runs. The runs of data seed FAILING_SEED fail inside the run: a resume piece that is
# not E1's is planted in each of their run directories (a seed beyond 64 bits, used for this
# before, is now refused when the config is validated).
TINY = ["--preset", "quick", "--set", "n_samples=200", "--set", "epsilon_values=[1e-3,1e-2]"]
FAILING_SEED = 43
TINY_OVERRIDES = {"n_samples": 200, "epsilon_values": [1e-3, 1e-2]}


def plant_failing_pieces(out: Path, grid: dict, seeds: list[int]) -> None:
    """Each run of data_seed FAILING_SEED finds a piece it cannot use (KeyError inside E1)."""
    _, runs = sweep.expand(sweep.SweepSpec("e1", "quick", TINY_OVERRIDES, grid, seeds=seeds))
    for run in runs:
        if run.point["data_seed"] == FAILING_SEED:
            piece = out / "runs" / run.name / ".partial" / run.config_hash / f"seed_{run.seed}.json"
            piece.parent.mkdir(parents=True, exist_ok=True)
            piece.write_text("{}")


# Waits are on events (a run completes, a process exits); this only stops a hung test.
HANG_GUARD_S = 1800


def subprocess_env() -> dict[str, str]:
    """Our src first on the path, so a subprocess imports this checkout (installed or not)."""
    path = os.pathsep.join(p for p in (str(SRC), os.environ.get("PYTHONPATH")) if p)
    return {**os.environ, "PYTHONPATH": path}


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def completions(run_dir: Path) -> int:
    """How many times the runner finished this run (its log is appended, never rewritten)."""
    return (run_dir / "run.log").read_text().count(" complete in ")


# --------------------------------------------------------------------------- the package


def test_the_public_api_loads_on_first_use():
    """`import geomlab.sweep` loads no submodule; a name loads only the module that holds it."""
    code = (
        "import sys, json; import geomlab.sweep as s; a = set(sys.modules); s.SWEEP_FILE; "
        "b = set(sys.modules); s.run_sweep; c = set(sys.modules); "
        "print(json.dumps([sorted(m for m in x if m.startswith('geomlab.sweep')) "
        "for x in (a, b, c)]))"
    )
    out = subprocess.run([sys.executable, "-c", code], env=subprocess_env(), capture_output=True,
                         text=True)  # fmt: skip
    assert out.returncode == 0, out.stderr
    bare, constant, driver = json.loads(out.stdout)
    assert bare == ["geomlab.sweep"]
    assert constant == ["geomlab.sweep", "geomlab.sweep.layout"]
    assert "geomlab.sweep.driver" in driver
    assert sorted(sweep.__all__) == sorted(sweep._EXPORTS)
    for name in sweep.__all__:
        assert getattr(sweep, name) is not None


# --------------------------------------------------------------------------- parsing


def test_grid_values_split_on_top_level_commas_and_read_as_json():
    grid = sweep.parse_grid(
        ["rcond=1e-8,1e-6", "epsilon-values=[1e-4],[1e-3, 1e-2]", "kl_measurement=exact"]
    )
    assert grid == {
        "rcond": [1e-8, 1e-6],
        "epsilon_values": [[1e-4], [1e-3, 1e-2]],
        "kl_measurement": ["exact"],
    }
    for bad, needle in [("rcond", "key=value1"), ("rcond=", "no values")]:
        with pytest.raises(sweep.SweepError, match=needle):
            sweep.parse_grid([bad])
    with pytest.raises(sweep.SweepError, match="twice"):
        sweep.parse_grid(["rcond=1", "rcond=2"])


def test_seed_ranges():
    assert sweep.parse_seeds("0-3") == [0, 1, 2, 3]
    assert sweep.parse_seeds("0-1, 5,9-10") == [0, 1, 5, 9, 10]
    for bad in ("3-1", "-1", "a", "0-2,2", ""):
        with pytest.raises(sweep.SweepError, match="--seeds"):
            sweep.parse_seeds(bad)


def _fake_experiment(config_cls: type[ExperimentConfig]) -> Experiment:
    return Experiment("fake", (), "", config_cls, {"paper": {}}, run=lambda c, ctx: None)


def test_a_sweep_seed_maps_to_seed_or_seeds_or_is_refused():
    class WithSeed(ExperimentConfig):
        seed: int = Field(0, ge=0)

    class WithoutSeed(ExperimentConfig):
        width: int = 1

    assert sweep.seed_overrides(experiments.get("e1"), 3) == {"seeds": [3]}
    assert sweep.seed_overrides(_fake_experiment(WithSeed), 3) == {"seed": 3}
    with pytest.raises(sweep.SweepError, match="no 'seed' or 'seeds'"):
        sweep.seed_overrides(_fake_experiment(WithoutSeed), 3)


def test_expansion_and_names_are_stable():
    spec = sweep.SweepSpec(
        "ng-pareto", "quick", {"n_samples": 200}, {"rcond": [1e-8, 1e-6], "dtype": ["float64"]},
        seeds=[0, 1, 2],
    )  # fmt: skip
    experiment, runs = sweep.expand(spec)
    assert experiment.name == "e1" and len(runs) == 2 * 3
    first = runs[0]
    assert first.label == "dtype=float64_rcond=1e-08_seed=0"
    config = experiment.make_config("quick", {"n_samples": 200, "rcond": 1e-8, "seeds": [0]})
    assert first.config_hash == config_hash("e1", config)
    assert first.name == f"{first.label}-{first.config_hash}"
    assert [r.seed for r in runs] == [0, 1, 2, 0, 1, 2]  # seeds innermost

    # Flag order and spelling of values do not change the runs.
    respelled = sweep.SweepSpec(
        "e1", "quick", {"n_samples": 200.0}, {"dtype": ["float64"], "rcond": [1e-08, 0.000001]},
        seeds=[0, 1, 2],
    )  # fmt: skip
    assert [r.name for r in sweep.expand(respelled)[1]] == [r.name for r in runs]

    # Nor does the interpreter: a fresh process with another hash seed gives the same names.
    code = (
        "from geomlab import sweep; import json; "
        "spec = sweep.SweepSpec('e1', 'quick', {'n_samples': 200}, "
        "{'rcond': [1e-8, 1e-6], 'dtype': ['float64']}, seeds=[0, 1, 2]); "
        "print(json.dumps([r.name for r in sweep.expand(spec)[1]]))"
    )
    env = {**subprocess_env(), "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout) == [r.name for r in runs]


def test_labels_are_file_name_safe_and_bounded():
    label = sweep.make_label({"epsilon_values": [1e-4, 1e-3], "kl_measurement": "a b/c"}, 7)
    assert label == "epsilon_values=-0.0001-0.001-_kl_measurement=a-b-c_seed=7"
    assert len(sweep.make_label({"x": "y" * 500}, None)) <= sweep.LABEL_MAX
    assert sweep.make_label({}, None) == "base"


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--grid", "nope=1,2"], "'nope'"),
        (["--grid", "rcond=1e-8,2"], "rcond"),
        (["--grid", "n_classes=10,1"], "n_classes"),
        (["--grid", "rcond=1e-8,0.00000001"], "same config"),
        (["--grid", "seeds=[0],[1]", "--seeds", "0-1"], "--seeds and --grid seeds"),
        (["--seeds", "4-2"], "backwards"),
        (["--executor", "ray"], "ray"),
        (["--address", "tcp://localhost:8786"], "--executor dask"),
        (["--workers", "0"], "--workers"),
        (["--threads", "0"], "--threads"),
        (["--preset", "huge"], "huge"),
        (["--executor", "dask", "--address", "notaurl"], "--address 'notaurl'"),
        (["--executor", "dask", "--address", "tcp://host"], "no port"),
        (["--executor", "dask", "--address", "http://host:8786"], "protocol 'http'"),
    ],
)
def test_bad_sweeps_are_rejected_before_anything_runs(tmp_path, args, needle):
    out = tmp_path / "never"
    result = runner.invoke(app, ["sweep", "e1", *args, "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert needle in result.output
    assert not out.exists()


def test_bad_value_names_the_grid_point_and_field():
    spec = sweep.SweepSpec("e1", "quick", {}, {"rcond": [1e-8, 2.0]}, seeds=[0])
    with pytest.raises(sweep.SweepError) as error:
        sweep.expand(spec)
    message = str(error.value)
    assert "grid point rcond=2.0_seed=0" in message and "field 'rcond'" in message
    assert "rcond=1e-08_seed=0" not in message  # the valid point is not blamed


def test_scheduler_addresses_of_every_form_dask_takes_pass():
    for address in ("tcp://127.0.0.1:8786", "head-node:8786", "tls://[::1]:8786", "ucx://h:1"):
        sweep.check_executor("dask", address)


def test_a_sweep_and_a_run_never_share_a_directory(tmp_path):
    run_dir = tmp_path / "a-run"
    run_dir.mkdir()
    (run_dir / "manifest.json").write_text(json.dumps({"experiment": "e1", "status": "complete"}))
    result = runner.invoke(app, ["sweep", "e1", *TINY, "--seeds", "0", "--out", str(run_dir)])
    assert result.exit_code == 2, result.output
    assert "is a run directory" in result.output
    assert sorted(p.name for p in run_dir.iterdir()) == ["manifest.json"]  # nothing written

    sweep_dir = tmp_path / "a-sweep"
    sweep_dir.mkdir()
    (sweep_dir / "sweep.json").write_text(json.dumps({"experiment": "e1", "runs": []}))
    result = runner.invoke(app, ["run", "e1", *TINY, "--out", str(sweep_dir)])
    assert result.exit_code == 2, result.output
    assert "is a sweep directory" in result.output
    assert sorted(p.name for p in sweep_dir.iterdir()) == ["sweep.json"]


def test_a_truncated_sweep_json_is_named_and_nothing_runs(tmp_path):
    (tmp_path / "sweep.json").write_text('{"experiment": "e1", "runs": [')
    result = runner.invoke(app, ["sweep", "e1", *TINY, "--seeds", "0", "--out", str(tmp_path)])
    assert result.exit_code == 2, result.output
    assert "sweep.json is not valid JSON" in " ".join(result.output.split())
    assert not (tmp_path / "runs").exists()


def test_dask_missing_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import now raises ImportError
    with pytest.raises(sweep.SweepError, match=r"pip install 'geomlab\[dask\]'"):
        sweep.check_executor("dask", None)


# --------------------------------------------------------------------------- bootstrap


def test_bootstrap_ci_is_seeded_and_covers_the_mean():
    values = np.array([1.0, 2.0, 4.0, 8.0])
    low, high = stats.bootstrap_ci(values)
    assert (low, high) == stats.bootstrap_ci(values)  # seeded: the report is reproducible
    assert values.min() <= low < values.mean() < high <= values.max()
    assert all(math.isnan(x) for x in stats.bootstrap_ci(np.array([1.0])))


def test_aggregate_over_seeds_per_grid_point():
    runs = pd.DataFrame(
        {
            "status": ["complete", "complete", "complete", "failed", "gates_failed"],
            "rcond": [1e-8, 1e-8, 1e-6, 1e-6, 1e-6],
            "score": [1.0, 3.0, 5.0, float("nan"), 100.0],
        }
    )
    agg = sweep.aggregate_over_seeds(runs, ["rcond"], ["score"]).set_index("rcond")
    assert agg.loc[1e-8, "n_runs"] == 2 and agg.loc[1e-6, "n_runs"] == 1
    assert agg.loc[1e-8, "score_mean"] == 2.0
    assert agg.loc[1e-8, "score_std"] == pytest.approx(np.std([1.0, 3.0], ddof=1))
    assert 1.0 <= agg.loc[1e-8, "score_ci_low"] <= agg.loc[1e-8, "score_ci_high"] <= 3.0
    assert agg.loc[1e-6, "score_mean"] == 5.0 and math.isnan(agg.loc[1e-6, "score_std"])


# --------------------------------------------------------------------------- local executor


@pytest.fixture(scope="module")
def local_sweep(tmp_path_factory) -> Path:
    """2 rcond x 2 data seeds (one fails inside the run) x 2 seeds = 8 runs, 4 fail."""
    out = tmp_path_factory.mktemp("sweeps") / "local"
    plant_failing_pieces(out, {"rcond": [1e-8, 1e-6], "data_seed": [42, FAILING_SEED]}, [0, 1])
    args = ["sweep", "e1", *TINY, "--grid", "rcond=1e-8,1e-6",
            "--grid", f"data_seed=42,{FAILING_SEED}", "--seeds", "0-1", "--workers", "2",
            "--threads", "1", "--out", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 3, result.output  # some runs failed
    assert "4 run(s) did not finish" in result.output
    return out


def test_sweep_writes_runs_table_with_config_status_metrics_and_time(local_sweep):
    spec = json.loads((local_sweep / "sweep.json").read_text())
    assert spec["grid"] == {"data_seed": [42, FAILING_SEED], "rcond": [1e-8, 1e-6]}
    assert spec["seeds"] == [0, 1] and spec["seed_field"] == "seeds"
    runs = pd.read_csv(local_sweep / "runs.csv")
    assert len(runs) == 8 and list(runs["run"]) == [r["name"] for r in spec["runs"]]
    for column in ("run", "label", "status", "config_hash", "seed", "rcond", "data_seed",
                   "n_samples", "mean_relative_advantage_pct", "gate_a_pass_rate",
                   "wall_seconds", "started", "finished", "host", "error"):  # fmt: skip
        assert column in runs.columns, column
    good = runs[runs["data_seed"] == 42]
    bad = runs[runs["data_seed"] != 42]
    assert set(good["status"]) == {"complete"} and set(bad["status"]) == {"failed"}
    assert good["mean_relative_advantage_pct"].notna().all() and (good["wall_seconds"] > 0).all()
    assert good["error"].isna().all()
    assert bad["error"].str.contains("Traceback").all()
    assert bad["error"].str.contains("KeyError").all()
    assert sorted(runs["rcond"].unique()) == [1e-8, 1e-6]  # CSV floats read back as given
    assert "Traceback" in (local_sweep / "sweep.log").read_text()

    for row in runs.itertuples():
        run_dir = local_sweep / "runs" / row.run
        assert row.run.endswith(row.config_hash) and manifest(run_dir)["status"] == row.status
        assert manifest(run_dir)["config"]["seeds"] == [row.seed]
    for row in good.itertuples():
        assert completions(local_sweep / "runs" / row.run) == 1
        raw = pd.read_csv(local_sweep / "runs" / row.run / "E1_results_raw.csv")
        assert list(raw["seed"].unique()) == [row.seed]
    for row in bad.itertuples():
        assert "KeyError" in (local_sweep / "runs" / row.run / "traceback.txt").read_text()

    agg = pd.read_csv(local_sweep / "aggregate.csv")
    assert len(agg) == 2 and list(agg["n_runs"]) == [2, 2]  # failed points are left out
    first = good[good["rcond"] == agg.loc[0, "rcond"]]["mean_relative_advantage_pct"]
    assert agg.loc[0, "mean_relative_advantage_pct_mean"] == pytest.approx(first.mean())


def test_rerun_skips_finished_runs_and_reruns_failed_ones(local_sweep):
    before = pd.read_csv(local_sweep / "runs.csv").set_index("run")
    outcome = sweep.run_sweep(
        sweep.SweepSpec(
            "e1", "quick", {"n_samples": 200, "epsilon_values": [1e-3, 1e-2]},
            {"rcond": [1e-8, 1e-6], "data_seed": [42, FAILING_SEED]}, seeds=[0, 1],
        ),
        out_dir=local_sweep, workers=1, interactive=False,
    )  # fmt: skip
    assert outcome.skipped == 4 and outcome.executed == 4
    after = outcome.runs.set_index("run")
    finished = before[before["status"] == "complete"].index
    assert (after.loc[finished, "started"] == before.loc[finished, "started"]).all()
    for name in finished:
        assert completions(local_sweep / "runs" / name) == 1
    failed = before[before["status"] == "failed"].index
    assert (after.loc[failed, "status"] == "failed").all()
    assert (after.loc[failed, "started"] >= before.loc[failed, "started"]).all()


def test_a_corrupt_run_manifest_is_named_and_the_run_redone(local_sweep):
    runs = pd.read_csv(local_sweep / "runs.csv")
    # A complete run that the Dask test below does not compare against (rcond=1e-6).
    name = runs[(runs["status"] == "complete") & (runs["rcond"] == 1e-6)]["run"].iloc[0]
    path = local_sweep / "runs" / name / "manifest.json"
    truncated = path.read_text()[:100]
    path.write_text(truncated)
    before = completions(path.parent)
    outcome = sweep.run_sweep(
        sweep.SweepSpec(
            "e1", "quick", {"n_samples": 200, "epsilon_values": [1e-3, 1e-2]},
            {"rcond": [1e-8, 1e-6], "data_seed": [42, FAILING_SEED]}, seeds=[0, 1],
        ),
        out_dir=local_sweep, workers=1, threads=1, interactive=False,
    )  # fmt: skip
    assert outcome.skipped == 3  # the other complete runs
    after = outcome.runs.set_index("run")
    assert after.loc[name, "status"] == "complete" and manifest(path.parent)["status"] == "complete"
    assert completions(path.parent) == before + 1  # redone once
    assert (path.parent / "manifest.json.corrupt").read_text() == truncated  # kept, not lost
    log = (local_sweep / "sweep.log").read_text()
    assert f"{path} is not valid JSON" in log and "redid the run" in log


def test_another_sweep_in_the_same_directory_is_refused(local_sweep):
    result = runner.invoke(app, ["sweep", "e1", *TINY, "--seeds", "7", "--out", str(local_sweep)])
    assert result.exit_code == 2
    assert "holds another sweep" in result.output


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        found.extend(int(p) for p in task.read_text().split())
    return found


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _wait_until(condition, what: str) -> None:
    """Poll until ``condition()``; no deadline on the event itself (a loaded machine only makes
    it later), just a guard against a test that would otherwise hang forever."""
    guard = time.monotonic() + HANG_GUARD_S
    while not condition():
        assert time.monotonic() < guard, f"still waiting after {HANG_GUARD_S} s for {what}"
        time.sleep(0.05)


def _complete_runs(out: Path) -> list[Path]:
    return [p.parent for p in out.glob("runs/*/manifest.json")
            if manifest(p.parent)["status"] == "complete"]  # fmt: skip


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigkilled_driver_resumes_with_every_run_done_exactly_once(tmp_path):
    out = tmp_path / "killed"
    args = ["sweep", "e1", *TINY, "--seeds", "0-7", "--workers", "2", "--out", str(out)]
    proc = subprocess.Popen(
        [sys.executable, "-m", "geomlab.cli", *args],
        env=subprocess_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    # Kill the driver as soon as one run is complete: two workers hold runs 1 and 2, run 3
    # waits for a free slot. Waiting on the event, not on a clock, keeps this true however
    # slow a loaded machine runs the sweep.
    _wait_until(lambda: _complete_runs(out) or proc.poll() is not None, "a complete run")
    assert proc.poll() is None, "the driver exited before any run was seen complete"
    workers = _children(proc.pid)  # pool workers and multiprocessing helpers
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert workers
    # Orphaned pool workers notice the dead driver and exit instead of running on.
    _wait_until(lambda: not any(map(_alive, workers)), "the orphaned workers to exit")
    finished_before = {p.name: manifest(p)["started"] for p in _complete_runs(out)}
    assert 1 <= len(finished_before) < 8
    logs_before = {p.name: (p / "run.log").read_text() for p in out.glob("runs/*")}

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{len(finished_before)} were already done" in result.output
    runs = pd.read_csv(out / "runs.csv")
    assert sorted(runs["seed"]) == list(range(8)) and set(runs["status"]) == {"complete"}
    for name in runs["run"]:
        run_dir = out / "runs" / name
        if name in finished_before:  # not redone: neither restarted nor run again
            assert manifest(run_dir)["started"] == finished_before[name]
            assert (run_dir / "run.log").read_text() == logs_before[name]
            # <= 1: a worker killed between writing its manifest (the completion marker)
            # and logging "complete in" leaves a complete run without that log line.
            assert completions(run_dir) <= 1, name
        else:  # finished exactly once, by the rerun
            assert completions(run_dir) == 1, name


@pytest.mark.skipif(not Path("/proc/self/task").exists(), reason="needs Linux /proc")
def test_sigterm_stops_a_sweep_as_ctrl_c_does_and_it_resumes(tmp_path):
    """What `timeout` and batch schedulers send: the driver stops its runs, records them and
    exits 3; before, it died at once and left runs.csv saying "running"."""
    out = tmp_path / "terminated"
    args = ["sweep", "e1", *TINY, "--seeds", "0-7", "--workers", "2", "--out", str(out)]
    with open(tmp_path / "driver.err", "w") as err:
        command = [sys.executable, "-m", "geomlab.cli", *args]
        proc = subprocess.Popen(command, env=subprocess_env(), stdout=err, stderr=err)
        _wait_until(lambda: _complete_runs(out) or proc.poll() is not None, "a complete run")
        assert proc.poll() is None, "the driver exited before any run was seen complete"
        workers = _children(proc.pid)
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=HANG_GUARD_S)
    stderr = (tmp_path / "driver.err").read_text()
    assert proc.returncode == 3, stderr  # not -15: the driver handled the signal
    assert "interrupted; rerun the same command to resume" in stderr
    _wait_until(lambda: not any(map(_alive, workers)), "the workers to exit")
    assert "sweep interrupted" in (out / "sweep.log").read_text()
    # runs.csv was rewritten after the signal: every row says what its manifest says.
    runs = pd.read_csv(out / "runs.csv")
    for row in runs.itertuples():
        run_dir = out / "runs" / row.run
        on_disk = manifest(run_dir)["status"] if (run_dir / "manifest.json").exists() else None
        assert row.status == (on_disk or "pending"), row.run
    finished_before = {p.name for p in _complete_runs(out)}
    assert 1 <= len(finished_before) < 8  # eight runs: see the SIGKILL test

    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{len(finished_before)} were already done" in result.output
    runs = pd.read_csv(out / "runs.csv")
    assert set(runs["status"]) == {"complete"}
    for name in set(runs["run"]) - finished_before:
        assert completions(out / "runs" / name) == 1, name


# --------------------------------------------------------------------------- dask


def test_dask_local_cluster_gives_the_local_results(local_sweep, tmp_path):
    pytest.importorskip("distributed")
    threads = torch.get_num_threads()
    spec = sweep.SweepSpec(
        "e1", "quick", {"n_samples": 200, "epsilon_values": [1e-3, 1e-2]},
        {"rcond": [1e-8], "data_seed": [42]}, seeds=[0, 1],
    )  # fmt: skip
    try:
        # One torch thread, as in the local sweep: BLAS sums depend on the thread count.
        outcome = sweep.run_sweep(
            spec, out_dir=tmp_path / "dask", executor="dask", workers=1, threads=1,
            dask_processes=False, interactive=False,
        )  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert outcome.counts == {"complete": 2}
    local = pd.read_csv(local_sweep / "runs.csv").set_index("run")
    dask = pd.read_csv(tmp_path / "dask" / "runs.csv").set_index("run")
    metrics = [c for c in dask.columns if c.startswith(("mean_", "min_", "max_", "kl_", "gate"))]
    assert metrics
    pd.testing.assert_frame_equal(dask[metrics], local.loc[dask.index, metrics], check_exact=True)
    for name in dask.index:
        a = pd.read_csv(local_sweep / "runs" / name / "E1_results_raw.csv")
        b = pd.read_csv(tmp_path / "dask" / "runs" / name / "E1_results_raw.csv")
        pd.testing.assert_frame_equal(a, b, check_exact=True)


def test_a_superset_of_runs_extends_a_sweep_and_anything_else_is_refused(tmp_path):
    small = sweep.SweepSpec("e1", "quick", {}, {}, seeds=[0, 1])
    experiment, small_runs = sweep.expand(small)
    (tmp_path / "sweep.json").write_text(
        json.dumps(
            {"experiment": "e1", "runs": [{"config_hash": r.config_hash} for r in small_runs]}
        )
    )
    _, more = sweep.expand(sweep.SweepSpec("e1", "quick", {}, {}, seeds=[0, 1, 2]))
    assert previous_sweep(tmp_path, experiment, more)["experiment"] == "e1"
    for other in ([0], [5, 6]):
        _, runs = sweep.expand(sweep.SweepSpec("e1", "quick", {}, {}, seeds=other))
        with pytest.raises(sweep.SweepError, match="holds another sweep"):
            previous_sweep(tmp_path, experiment, runs)
