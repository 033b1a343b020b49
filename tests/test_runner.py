import json
import math

import pytest
from pydantic import ConfigDict
from rich.console import Console

from geomlab.experiments.base import Experiment, ExperimentConfig, RunResult
from geomlab.geometry.gates import finite_gate
from geomlab.runner import (
    RunError,
    RunInputError,
    config_hash,
    resolve_device,
    run_experiment,
)


class ToyConfig(ExperimentConfig):
    model_config = ConfigDict(allow_inf_nan=True)  # lets NaN through to test the result side

    value: float = 1.0
    fail: bool = False


def _toy_run(config: ToyConfig, ctx) -> RunResult:
    calls = ctx.cached("unit", lambda: {"value": config.value * 2})
    if config.fail:
        raise RuntimeError("boom")
    ctx.write_json("toy_summary.json", calls)
    gate = finite_gate({"value": [config.value]}, name="finite")
    summary = {**calls, "data": {"label_noise": {"fraction": 0.2}}}
    return RunResult(summary=summary, gates=[gate], headline={"value": config.value})


TOY = Experiment("toy", (), "toy", ToyConfig, {"paper": {}}, _toy_run)
QUIET = Console(file=open("/dev/null", "w"), stderr=False)  # noqa: SIM115


def _run(config, out, **kwargs):
    return run_experiment(TOY, config, preset="paper", out_dir=out, console=QUIET,
                          interactive=False, **kwargs)  # fmt: skip


def test_failed_run_is_recorded_in_the_manifest(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        _run(ToyConfig(fail=True), tmp_path / "r")
    manifest = json.loads((tmp_path / "r" / "manifest.json").read_text())
    assert manifest["status"] == "failed"
    assert "RuntimeError: boom" in manifest["error"]
    assert "boom" in (tmp_path / "r" / "run.log").read_text()
    # the unit finished before the failure is kept for the rerun
    digest = config_hash("toy", ToyConfig(fail=True))
    assert (tmp_path / "r" / ".partial" / digest / "unit.json").exists()


def test_non_finite_result_fails_its_gate(tmp_path):
    outcome = _run(ToyConfig(value=math.nan), tmp_path / "nan")
    assert outcome.status == "gates_failed"
    summary = json.loads((tmp_path / "nan" / "toy_summary.json").read_text())
    assert summary == {"value": None}  # strict JSON: NaN is written as null
    manifest = json.loads((tmp_path / "nan" / "manifest.json").read_text())
    assert manifest["gates"][0]["passed"] is False


def test_artifacts_are_listed_and_readable(tmp_path):
    outcome = _run(ToyConfig(), tmp_path / "ok")
    assert outcome.manifest["artifacts"] == ["toy_summary.json"]
    manifest = json.loads((tmp_path / "ok" / "manifest.json").read_text())
    assert manifest["data"] == {"label_noise": {"fraction": 0.2}}  # data records reach it
    mode = (tmp_path / "ok" / "toy_summary.json").stat().st_mode & 0o777
    assert mode & 0o044 == 0o044  # readable by others (not mkstemp's 0600)
    assert not list((tmp_path / "ok").glob(".*.tmp"))


def test_config_hash_ignores_device_but_not_science():
    assert config_hash("toy", ToyConfig(device="cpu")) == config_hash("toy", ToyConfig())
    assert config_hash("toy", ToyConfig(value=2)) != config_hash("toy", ToyConfig())


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    import torch

    if not torch.cuda.is_available():
        with pytest.raises(RunError, match="cuda"):
            resolve_device("cuda")


# --- issue 13: one writer, config-keyed pieces, --force, NaN, history --------------------------

CALLS: list[float] = []
STOP = {"after_piece": False}  # stop a run without changing its config (hash)


class CountConfig(ExperimentConfig):
    model_config = ConfigDict(allow_inf_nan=True)

    value: float = 1.0
    fail: bool = False


def _count_run(config: CountConfig, ctx) -> RunResult:
    """One piece (counted when computed), then arithmetic on it: a None would raise here."""

    def compute():
        CALLS.append(config.value)
        return {"doubled": config.value * 2, "all": [config.value, config.value / 2]}

    piece = ctx.cached("unit", compute)
    if config.fail or STOP["after_piece"]:
        raise RuntimeError("boom after the piece")
    total = piece["doubled"] + sum(piece["all"])  # None + float: TypeError
    ctx.write_json("count_summary.json", {"total": total, **piece})
    gate = finite_gate({"doubled": piece["doubled"], "all": piece["all"]}, name="finite")
    return RunResult(summary={"total": total}, gates=[gate], headline={"total": total})


COUNT = Experiment("count", (), "count", CountConfig, {"paper": {}}, _count_run)


def _count(config, out, **kwargs):
    return run_experiment(COUNT, config, preset="paper", out_dir=out, console=QUIET,
                          interactive=False, **kwargs)  # fmt: skip


def test_pieces_of_another_config_are_never_reused_even_without_manifest(tmp_path):
    CALLS.clear()
    out = tmp_path / "s"
    assert _count(CountConfig(value=3.0), out).result.summary["total"] == 6 + 4.5
    (out / "manifest.json").unlink()
    # the old run's artifact without its manifest: refused, never mixed into the new run
    with pytest.raises(RunInputError, match="count_summary.json"):
        _count(CountConfig(value=1.0), out)
    (out / "count_summary.json").unlink()  # only the resume pieces are left
    outcome = _count(CountConfig(value=1.0), out)
    assert outcome.result.summary["total"] == 2 + 1.5  # value 1's numbers, not value 3's
    assert CALLS == [3.0, 1.0]
    assert outcome.manifest["config"]["value"] == 1.0
    pieces = sorted(p.parent.name for p in (out / ".partial").glob("*/unit.json"))
    assert pieces == sorted([config_hash("count", CountConfig(value=v)) for v in (3.0, 1.0)])
    # the same config again (manifest gone) reuses its own piece
    (out / "manifest.json").unlink()
    (out / "count_summary.json").unlink()
    assert _count(CountConfig(value=1.0), out).manifest["resumed"] is True
    assert CALLS == [3.0, 1.0]


def test_force_recomputes_finished_runs_and_discards_pieces(tmp_path):
    CALLS.clear()
    out = tmp_path / "f"
    for force in (False, False, True):
        with pytest.raises(RuntimeError, match="boom"):
            _count(CountConfig(fail=True), out, force=force)
    assert CALLS == [1.0, 1.0]  # the second call resumed; --force recomputed the piece
    CALLS.clear()
    out2 = tmp_path / "g"
    _count(CountConfig(), out2)
    assert _count(CountConfig(), out2).status == "already_complete"
    outcome = _count(CountConfig(), out2, force=True)
    assert outcome.status == "complete" and CALLS == [1.0, 1.0]
    assert outcome.manifest["forced"] is True and outcome.manifest["resumed"] is False
    assert "reusing" not in (out2 / "run.log").read_text().split("--force")[-1]


def test_nan_survives_the_pieces_and_reaches_the_finite_gate(tmp_path, monkeypatch):
    out = tmp_path / "nan"
    config = CountConfig(value=math.nan)
    monkeypatch.setitem(STOP, "after_piece", True)
    with pytest.raises(RuntimeError, match="boom"):
        _count(config, out)
    monkeypatch.setitem(STOP, "after_piece", False)
    stored = json.loads((out / ".partial" / config_hash("count", config) / "unit.json").read_text())
    assert math.isnan(stored["doubled"]) and all(math.isnan(v) for v in stored["all"])
    # A resumed run (NaN read back from the piece) and a fresh one (inf) both compute with the
    # non-finite values and report them through the finite gate instead of crashing.
    for target, run_config in ((out, config), (tmp_path / "fresh", CountConfig(value=math.inf))):
        outcome = _count(run_config, target)
        assert outcome.status == "gates_failed"
        gate = outcome.manifest["gates"][0]
        assert gate["passed"] is False and "doubled (1)" in gate["message"]
        assert "all (2)" in gate["message"] and gate["non_finite_count"] == 3
        assert json.loads((target / "count_summary.json").read_text())["doubled"] is None
    assert "reusing finished unit" in (out / "run.log").read_text()


def _hold_lock_in_another_process(out, ready):
    from geomlab.runner import hold_run_dir

    out.mkdir(parents=True, exist_ok=True)
    with hold_run_dir(out):
        ready.set()
        import time

        time.sleep(60)


def test_a_second_writer_is_refused_naming_the_holder(tmp_path):
    import multiprocessing
    import socket

    from geomlab.runner import RunDirBusy

    out = tmp_path / "busy"
    context = multiprocessing.get_context("spawn")
    ready = context.Event()
    holder = context.Process(target=_hold_lock_in_another_process, args=(out, ready))
    holder.start()
    try:
        assert ready.wait(120)
        with pytest.raises(RunDirBusy, match=f"pid {holder.pid} on {socket.gethostname()}"):
            _count(CountConfig(), out)
        assert not (out / "manifest.json").exists()  # the refused run wrote nothing
    finally:
        holder.kill()
        holder.join()
    # The OS released the killed holder's lock: the directory is usable again.
    assert _count(CountConfig(), out).status == "complete"


def test_the_lock_is_reentrant_within_a_process_and_released_after(tmp_path):
    from geomlab.runner import LOCK_FILE, hold_run_dir

    out = tmp_path / "re"
    out.mkdir()
    with hold_run_dir(out):  # e.g. a sweep worker holding its run directory
        assert _count(CountConfig(), out).status == "complete"
    assert (out / LOCK_FILE).read_text() == ""  # no writer recorded any more
    assert _count(CountConfig(), out, force=True).status == "complete"


def test_orphaned_temporaries_are_removed_after_a_successful_resume(tmp_path):
    out = tmp_path / "tmp"
    with pytest.raises(RuntimeError):
        _count(CountConfig(fail=True), out)
    digest = config_hash("count", CountConfig())
    orphans = [out / ".count_summary.json.a1b2c3d4.tmp", out / ".partial" / digest /
               ".unit.json.zz_9yy8x.tmp"]  # fmt: skip
    for orphan in orphans:
        orphan.parent.mkdir(parents=True, exist_ok=True)
        orphan.write_text("half")
    keep = out / ".partial" / "notes.tmp"  # not one of atomic_write's names: not ours
    keep.write_text("mine")
    (out / "manifest.json").unlink()  # (another config than the failed one: fresh start)
    assert _count(CountConfig(), out).status == "complete"
    assert not any(orphan.exists() for orphan in orphans)
    assert keep.read_text() == "mine"


def test_manifest_records_first_start_and_wall_time_over_invocations(tmp_path):
    out = tmp_path / "inv"
    config = CountConfig(fail=True)
    with pytest.raises(RuntimeError):
        _count(config, out)
    first = json.loads((out / "manifest.json").read_text())
    killed = dict(first, status="running")  # as a SIGKILLed invocation leaves it
    killed["invocations"] = [dict(first["invocations"][0], status="running", wall_seconds=None,
                                  finished=None)]  # fmt: skip
    (out / "manifest.json").write_text(json.dumps(killed))
    with pytest.raises(RuntimeError):
        _count(config, out)
    manifest = json.loads((out / "manifest.json").read_text())
    invocations = manifest["invocations"]
    assert [item["status"] for item in invocations] == ["killed", "failed"]
    assert invocations[0]["wall_seconds_estimated"] is True
    assert manifest["started"] == first["started"] == invocations[0]["started"]
    assert manifest["wall_seconds"] == pytest.approx(sum(i["wall_seconds"] for i in invocations))
    assert manifest["writer"]["pid"] == invocations[1]["pid"]


def test_bad_run_directory_and_corrupt_manifest_are_input_errors(tmp_path):
    from geomlab.runner import RunInputError

    a_file = tmp_path / "file"
    a_file.write_text("x")
    for bad in (a_file, a_file / "below"):
        with pytest.raises(RunInputError, match=str(a_file)):
            _count(CountConfig(), bad)
    out = tmp_path / "corrupt"
    out.mkdir()
    (out / "manifest.json").write_text('{"experiment": "count", "conf')
    with pytest.raises(RunInputError, match=r"corrupt/manifest.json is not valid JSON"):
        _count(CountConfig(), out)
