import json
import math

import pytest
from rich.console import Console

from geomlab.experiments.base import Experiment, ExperimentConfig, RunResult
from geomlab.geometry.gates import finite_gate
from geomlab.runner import RunError, config_hash, resolve_device, run_experiment


class ToyConfig(ExperimentConfig):
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
    assert (tmp_path / "r" / ".partial" / "unit.json").exists()


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
