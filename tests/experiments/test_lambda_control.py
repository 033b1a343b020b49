"""lambda-control end to end on a tiny MNIST subset: files, columns, resume, re-measurement."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from geomlab.cli import app
from geomlab.config import ConfigError, parse_overrides
from geomlab.data import mnist
from geomlab.experiments import get
from geomlab.experiments import lambda_control as lc
from geomlab.runner import run_experiment

TINY = {
    "conditions": ["baseline", "global", "selective:4,9"],
    "seeds": [0, 1],
    "pairs": [[4, 9], [3, 8]],
    "epochs": 1,
    "batch_size": 64,
    "train_limit": 128,
    "test_limit": 300,
    "reg_max_order": 2,
    "lambda_max_order": 3,
    "lambda_directions": 2,
    "prob_range": [0.0, 1.0],
    "max_points": 12,
    "min_points": 3,
    "gate_points": 2,
    "bootstrap_samples": 200,
    "device": "cpu",
}


def write_tiny_mnist(folder: Path) -> str:
    """A few hundred real MNIST images from the offline CSV when installed, else synthetic."""
    csvs = mnist.offline_csv_paths()
    for split, rows in (("train", 128), ("test", 300)):
        if csvs is not None:
            table = pd.read_csv(csvs[split], nrows=rows, dtype=np.uint8).to_numpy()
            labels, images = table[:, 0], table[:, 1:].reshape(-1, 28, 28)
        else:
            rng = np.random.default_rng(0 if split == "train" else 1)
            labels = (np.arange(rows) % 10).astype(np.uint8)
            images = rng.integers(0, 256, size=(rows, 28, 28), dtype=np.uint8)
        image_stem, label_stem = mnist.SPLIT_FILES[split]
        mnist.write_idx(folder / image_stem, images)
        mnist.write_idx(folder / label_stem, labels)
    return "real" if csvs is not None else "synthetic"


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("mnist")
    write_tiny_mnist(data_dir)
    experiment = get("lambda-control")
    config = experiment.make_config("quick", {**TINY, "data_dir": str(data_dir)})
    out = tmp_path_factory.mktemp("runs") / "lambda"
    outcome = run_experiment(experiment, config, preset="quick", out_dir=out, interactive=False)
    return outcome, config, data_dir


def test_run_writes_tables_with_the_issue_columns(tiny_run):
    outcome, _, _ = tiny_run
    out = outcome.out_dir
    assert outcome.status == "complete", outcome.manifest.get("gates")
    models = pd.read_csv(out / "models.csv")
    assert list(models.columns) == [
        "condition", "seed", "test_acc", "test_loss", "lambda_4v9", "n_points_4v9",
        "lambda_3v8", "n_points_3v8", "penalty_share", "train_time_s", "derivative_method",
    ]  # fmt: skip
    assert sorted(models["condition"].unique()) == ["baseline", "global", "selective_49"]
    assert len(models) == 6
    assert (models["derivative_method"] == "fast").all()
    assert (models.loc[models["condition"] == "baseline", "penalty_share"] == 0).all()
    assert (models.loc[models["condition"] == "global", "penalty_share"] > 0).all()
    assert models[["lambda_4v9", "lambda_3v8"]].notna().all().all()

    history = pd.read_csv(out / "history.csv")
    for column in ("train_loss", "train_ce", "train_penalty", "test_acc", "test_loss"):
        assert column in history.columns
    assert len(history) == 6  # one epoch per model
    assert np.allclose(history["train_loss"], history["train_ce"] + history["train_penalty"])

    fits = pd.read_csv(out / "lambda_fits.csv")
    assert list(fits.columns) == lc.FIT_COLUMNS
    assert len(fits) == 6 * 2 * 3  # models x pairs x orders
    one = fits[(fits["condition"] == "global") & (fits["seed"] == 1) & (fits["pair"] == "3v8")]
    slope = np.polyfit(one["order"], one["mean_log_abs_d"], 1)[0]
    assert math.isclose(slope, one["slope"].iloc[0], rel_tol=1e-9)
    assert math.isclose(
        slope, models.set_index(["condition", "seed"]).at[("global", 1), "lambda_3v8"],
        rel_tol=1e-9,
    )  # fmt: skip


def test_summary_figures_checkpoints_and_gates(tiny_run):
    outcome, _, _ = tiny_run
    out = outcome.out_dir
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["conditions"]) == {"baseline", "global", "selective_49"}
    effect = summary["selectivity"]["selective_49"]
    assert effect["pair_roles"] == {"4v9": "targeted", "3v8": "untargeted"}
    low, high = effect["selectivity"]["ci95"]
    assert low <= effect["selectivity"]["mean"] <= high
    assert summary["data"]["label_noise"]["num_corrupted"] == int(0.2 * 128)
    for stem in ("lambda_by_pair", "lambda_fits", "training_curves"):
        assert (out / f"{stem}.png").stat().st_size > 10_000
        assert (out / f"{stem}.pdf").exists()
    assert len(list((out / "checkpoints").glob("*.pt"))) == 6
    gates = {g["name"]: g for g in outcome.manifest["gates"]}
    assert gates["fast_derivatives_match_nested"]["passed"]
    assert gates["fast_derivatives_match_nested"]["rel_diff"] < 1e-9


def test_resume_does_not_retrain_and_gives_identical_tables(tiny_run, monkeypatch):
    outcome, config, _ = tiny_run
    before = (outcome.out_dir / "models.csv").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished model was retrained")

    monkeypatch.setattr(lc, "train_model", refuse)
    # Re-enter the run as an interrupted one (--force would now recompute every piece).
    manifest_path = outcome.out_dir / "manifest.json"
    manifest_path.write_text(json.dumps({**json.loads(manifest_path.read_text()),
                                         "status": "interrupted"}))  # fmt: skip
    again = run_experiment(
        get("lambda-control"), config, preset="quick", out_dir=outcome.out_dir,
        interactive=False,
    )  # fmt: skip
    assert again.status == "complete"
    after = pd.read_csv(outcome.out_dir / "models.csv")
    expected = pd.read_csv(pd.io.common.StringIO(before))
    columns = [c for c in expected.columns if c != "train_time_s"]
    pd.testing.assert_frame_equal(after[columns], expected[columns])


def test_measure_lambda_from_run_reproduces_and_extends(tiny_run):
    outcome, _, _ = tiny_run
    table = lc.measure_lambda_from_run(outcome.out_dir, pairs="4v9 1,7", device="cpu")
    assert len(table) == 6 * 2
    models = pd.read_csv(outcome.out_dir / "models.csv").set_index(["condition", "seed"])
    same = table[table["pair"] == "4v9"].set_index(["condition", "seed"])
    for key, row in same.iterrows():
        assert math.isclose(row["lambda"], models.at[key, "lambda_4v9"], rel_tol=1e-12)
    assert (outcome.out_dir / "lambda_remeasured.csv").exists()
    assert (outcome.out_dir / "lambda_remeasured_fits.csv").exists()


def test_measure_lambda_cli(tiny_run):
    outcome, _, _ = tiny_run
    result = CliRunner().invoke(
        app,
        ["measure-lambda", str(outcome.out_dir), "--pairs", "5,6", "2v3", "--max-order", "2",
         "--device", "cpu"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(outcome.out_dir / "lambda_remeasured.csv")
    assert sorted(table["pair"].unique()) == ["2v3", "5v6"]
    assert (table["max_order"] == 2).all()
    bad = CliRunner().invoke(app, ["measure-lambda", str(outcome.out_dir / "nope")])
    assert bad.exit_code != 0 and "manifest" in bad.output


def test_config_parsing_and_errors():
    experiment = get("lambda")
    overrides = parse_overrides(
        ["conditions=baseline,global,selective:4,9", "pairs=4v9,3v8", "prob_range=0.3,0.7"]
    )
    config = experiment.make_config("paper", overrides)
    assert config.conditions == ["baseline", "global", "selective:4,9"]
    assert config.pairs == [(4, 9), (3, 8)]
    assert experiment.make_config("paper", parse_overrides(["seeds=3"])).seeds == [3]
    paper = experiment.make_config("paper", {})
    assert (paper.reg_scale, paper.epochs, paper.batch_size, paper.label_noise) == (
        200,
        15,
        128,
        0.2,
    )
    assert (paper.reg_max_order, paper.reg_directions, paper.lambda_directions) == (3, 2, 4)
    assert paper.conditions == lc.NOTEBOOK_CONDITIONS and paper.seeds == [0, 1]
    for bad, field in (
        ({"conditions": ["sometimes"]}, "conditions"),
        ({"pairs": [[4, 4]]}, "pairs"),
        ({"prob_range": [0.8, 0.2]}, "prob_range"),
        ({"reg_scale": -1}, "reg_scale"),
        ({"pairs": [[4, 12]]}, "pairs"),
        ({"min_points": 50, "max_points": 20}, "min_points"),
    ):
        with pytest.raises(ConfigError, match=field):
            experiment.make_config("paper", bad)


def test_condition_helpers():
    assert lc.parse_condition("selective:9,4") == (4, 9)
    assert lc.parse_condition("selective:49") == (4, 9)
    assert lc.parse_condition("global") is None and lc.parse_condition("baseline") == ()
    assert lc.condition_label("selective:3+8") == "selective_38"
    assert lc.pair_role((4, 9), (4, 9)) == "targeted"
    assert lc.pair_role((3, 8), (4, 9)) == "untargeted"
    assert lc.pair_role((4, 8), (4, 9)) == "mixed"
    ci = lc.bootstrap_mean_ci([1.0, 2.0, 3.0], samples=500, seed=0)
    assert ci["mean"] == 2.0 and 1.0 <= ci["ci95"][0] <= ci["ci95"][1] <= 3.0


def test_training_is_deterministic_for_a_seed(tmp_path):
    write_tiny_mnist(tmp_path)
    config = get("lambda").make_config(
        "quick", {**TINY, "data_dir": str(tmp_path), "train_limit": 64, "reg_directions": 1}
    )
    data = lc.load_data(config, "cpu")
    log = logging.getLogger("test")
    first, record = lc.train_model(config, "selective:4,9", 3, data, "cpu", log)
    second, _ = lc.train_model(config, "selective:4,9", 3, data, "cpu", log)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert (a == b).all()
    assert record["history"][0]["penalized_fraction"] > 0
