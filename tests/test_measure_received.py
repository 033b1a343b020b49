"""`geomlab measure-lambda` on a run someone sent: the model a manifest names is imported only
when trusted, checkpoints load as weights only, and a bad one is an error naming the file.

The trust checks run as real processes (`python -m geomlab.cli`, a fresh interpreter in which
an import would show); all on real files."""

from __future__ import annotations

import builtins
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from geomlab.cli import app
from geomlab.data import mnist
from geomlab.experiments import get

SRC = Path(__file__).resolve().parents[1] / "src"
EVIL_MODULE = "geomlab_received_factory"


def write_tiny_mnist(folder: Path) -> None:
    rng = np.random.default_rng(0)
    for split, rows in (("train", 64), ("test", 40)):
        labels = (np.arange(rows) % 10).astype(np.uint8)
        images = rng.integers(0, 256, size=(rows, 28, 28), dtype=np.uint8)
        image_stem, label_stem = mnist.SPLIT_FILES[split]
        mnist.write_idx(folder / image_stem, images)
        mnist.write_idx(folder / label_stem, labels)


def received_run(root: Path, *, model: str = "mnist-cnn") -> Path:
    """A lambda-control run directory as if mailed: a manifest and a checkpoint folder."""
    data_dir = root / "mnist"
    data_dir.mkdir(parents=True)
    write_tiny_mnist(data_dir)
    config = get("lambda-control").make_config("quick", {
        "conditions": ["baseline"], "seeds": [0], "pairs": [[4, 9]], "epochs": 1,
        "train_limit": 64, "test_limit": 40, "lambda_max_order": 2, "lambda_directions": 1,
        "prob_range": [0.0, 1.0], "max_points": 4, "min_points": 2, "gate_points": 1,
        "bootstrap_samples": 100, "device": "cpu", "data_dir": str(data_dir),
    })  # fmt: skip
    values = config.model_dump(mode="json")
    values["model"] = model
    run_dir = root / "received"
    (run_dir / "checkpoints").mkdir(parents=True)
    manifest = {
        "experiment": "lambda-control", "preset": "quick", "config": values,
        "config_hash": "0123456789ab", "status": "complete", "artifacts": [],
    }  # fmt: skip
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    return run_dir


def geomlab(args: list[str], *, extra_path: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1")
    paths = [str(SRC), *([str(extra_path)] if extra_path else [])]
    env["PYTHONPATH"] = os.pathsep.join([*paths, env.get("PYTHONPATH", "")])
    return subprocess.run(
        [sys.executable, "-m", "geomlab.cli", *args], env=env, capture_output=True, text=True,
        timeout=300,
    )  # fmt: skip


def flat(result: subprocess.CompletedProcess) -> str:
    return " ".join((result.stdout + result.stderr).split())


def in_process(args: list[str]) -> tuple[int, str]:
    """The same command in this process (torch is loaded already: faster)."""
    result = CliRunner().invoke(app, args)
    return result.exit_code, " ".join(result.output.split())


@pytest.fixture
def factory(tmp_path) -> tuple[Path, Path]:
    """A module that leaves a marker when imported: was code from the manifest run?"""
    folder = tmp_path / "code"
    folder.mkdir()
    marker = tmp_path / "imported.marker"
    (folder / f"{EVIL_MODULE}.py").write_text(
        f"import pathlib\npathlib.Path({str(marker)!r}).write_text('imported')\n"
        "def build():\n    raise SystemExit('called')\n"
    )
    return folder, marker


def test_a_model_named_by_a_received_manifest_is_not_imported_unless_trusted(tmp_path, factory):
    code, marker = factory
    run_dir = received_run(tmp_path, model=f"{EVIL_MODULE}:build")
    refused = geomlab(["measure-lambda", str(run_dir), "--device", "cpu"], extra_path=code)
    assert refused.returncode == 2, refused.stderr
    text = flat(refused)
    assert f"import module '{EVIL_MODULE}'" in text and "--trust-model" in text
    assert str(run_dir / "manifest.json") in text and "Traceback" not in text
    assert not marker.exists()
    assert not (run_dir / "measure-lambda").exists()  # refused before any work

    trusted = geomlab(
        ["measure-lambda", str(run_dir), "--device", "cpu", "--trust-model"], extra_path=code
    )
    assert marker.exists(), trusted.stderr  # trusted: imported (then: no checkpoints)
    assert trusted.returncode == 2 and "no model checkpoints" in flat(trusted)
    marker.unlink()
    named = geomlab(
        ["measure-lambda", str(run_dir), "--device", "cpu", "--model", f"{EVIL_MODULE}:build"],
        extra_path=code,
    )
    assert marker.exists(), named.stderr  # the import path given again on the command line


class _Payload:
    def __reduce__(self):
        return (builtins.exec, ("open('MARKER', 'w').write('ran')",))


def test_a_checkpoint_the_safe_loader_refuses_is_named_and_never_run(tmp_path):
    run_dir = received_run(tmp_path)
    checkpoint = run_dir / "checkpoints" / "baseline_seed0.pt"
    torch.save({"weights": _Payload()}, checkpoint)
    code, text = in_process(["measure-lambda", str(run_dir), "--device", "cpu"])
    assert code == 2, text
    assert str(checkpoint) in text and "safe loader" in text and "Traceback" not in text
    assert not Path("MARKER").exists() and not (run_dir / "MARKER").exists()


def test_a_checkpoint_that_does_not_fit_the_model_is_named(tmp_path):
    run_dir = received_run(tmp_path)
    checkpoint = run_dir / "checkpoints" / "baseline_seed0.pt"
    torch.save({"conv1.weight": torch.zeros(3)}, checkpoint)
    code, text = in_process(["measure-lambda", str(run_dir), "--device", "cpu"])
    assert code == 2, text
    assert str(checkpoint) in text and "does not fit" in text and "Traceback" not in text


def test_checkpoint_paths_a_received_summary_records_stay_inside_the_run(tmp_path):
    run_dir = received_run(tmp_path)
    outside = tmp_path / "elsewhere.pt"
    torch.save({}, outside)
    summary = {"checkpoints": {"baseline_seed0": "../elsewhere.pt"}}
    (run_dir / "summary.json").write_text(json.dumps(summary))
    code, text = in_process(["measure-lambda", str(run_dir), "--device", "cpu"])
    assert code == 2, text
    assert "refused" in text and "summary.json" in text


def test_a_received_manifest_of_the_wrong_shape_is_named(tmp_path):
    run_dir = received_run(tmp_path)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["config"] = "mnist-cnn"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    code, text = in_process(["measure-lambda", str(run_dir), "--device", "cpu"])
    assert code == 2, text
    assert "'config'" in text and str(run_dir / "manifest.json") in text


def test_a_measurement_is_kept_under_the_runners_config_hash(tmp_path):
    """One config hash: the default directory of a measurement is named by the hash the runner
    records in its manifest (and keys its resume pieces by), so the same settings are found
    again and measured once."""
    from geomlab.models.mnist_cnn import build_mnist_cnn
    from geomlab.remeasure import MEASURE_EXPERIMENT, measure_lambda_from_run
    from geomlab.runner import config_hash

    run_dir = received_run(tmp_path)
    model = build_mnist_cnn(seed=0, dropout=0.0, device="cpu")
    torch.save(model.state_dict(), run_dir / "checkpoints" / "baseline_seed0.pt")
    table = measure_lambda_from_run(run_dir, device="cpu")
    out = Path(table.attrs["out_dir"])
    manifest = json.loads((out / "manifest.json").read_text())
    config = MEASURE_EXPERIMENT.make_config("default", {"source": str(run_dir), "device": "cpu"})
    assert out.parent == run_dir.resolve() / "measure-lambda"
    assert out.name == manifest["config_hash"] == config_hash("measure-lambda", config)
    assert manifest["status"] == "complete" and list(table["pair"]) == ["4v9"]
    again = measure_lambda_from_run(run_dir, device="cpu")
    assert again.attrs["out_dir"] == table.attrs["out_dir"]
