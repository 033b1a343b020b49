"""lambda-control end to end on a tiny MNIST subset: files, columns, resume, re-measurement."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from geomlab import stats
from geomlab.cli import app
from geomlab.config import ConfigError, parse_overrides
from geomlab.data import mnist
from geomlab.experiments import get
from geomlab.experiments import lambda_control as lc
from geomlab.experiments.lambda_control.types import Condition
from geomlab.geometry import derivatives as deriv
from geomlab.geometry.lambda_fit import boundary_point_indices, predict_probabilities
from geomlab.remeasure import measure_lambda_from_run
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
    for name in ("fast_derivatives_match_nested", lc.experiment.INITIAL_GATE):
        assert gates[name]["passed"]
        assert gates[name]["rel_diff"] < 1e-9
    assert gates[lc.experiment.INITIAL_GATE]["scope"] == "initial model seed 0"


def test_resume_does_not_retrain_and_gives_identical_tables(tiny_run, monkeypatch):
    outcome, config, _ = tiny_run
    before = (outcome.out_dir / "models.csv").read_text()

    def refuse(*args, **kwargs):
        raise AssertionError("a finished model was retrained")

    monkeypatch.setattr(lc.experiment, "train_model", refuse)
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
    table = measure_lambda_from_run(outcome.out_dir, pairs="4v9 1,7", device="cpu")
    assert len(table) == 6 * 2
    models = pd.read_csv(outcome.out_dir / "models.csv").set_index(["condition", "seed"])
    same = table[table["pair"] == "4v9"].set_index(["condition", "seed"])
    for key, row in same.iterrows():
        assert math.isclose(row["lambda"], models.at[key, "lambda_4v9"], rel_tol=1e-12)
    # a run of its own, inside the source run, with a manifest that lists what it wrote
    measured = Path(table.attrs["out_dir"])
    assert measured.parent == outcome.out_dir / "measure-lambda"
    assert (measured / "lambda_remeasured.csv").exists()
    assert (measured / "lambda_remeasured_fits.csv").exists()
    manifest = json.loads((measured / "manifest.json").read_text())
    assert manifest["experiment"] == "measure-lambda" and manifest["status"] == "complete"
    assert {"lambda_remeasured.csv", "lambda_remeasured_fits.csv"} <= set(manifest["artifacts"])
    assert manifest["environment"]["device"] == "cpu"
    assert manifest["config"]["source"] == str(outcome.out_dir.resolve())
    assert manifest["config"]["pairs"] == [[4, 9], [1, 7]]
    # the same settings again: the finished measurement is reused, same table
    again = measure_lambda_from_run(outcome.out_dir, pairs=["4v9", "1v7"], device="cpu")
    assert again.attrs["out_dir"] == table.attrs["out_dir"]
    pd.testing.assert_frame_equal(again, table)


def test_measure_lambda_cli(tiny_run, tmp_path):
    outcome, _, _ = tiny_run
    out = tmp_path / "measured"
    result = CliRunner().invoke(
        app,
        ["measure-lambda", str(outcome.out_dir), "--pairs", "5,6", "2v3", "--max-order", "2",
         "--device", "cpu", "--out", str(out)],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "lambda_remeasured.csv")
    assert sorted(table["pair"].unique()) == ["2v3", "5v6"]
    assert (table["max_order"] == 2).all()
    assert json.loads((out / "manifest.json").read_text())["status"] == "complete"
    bad = CliRunner().invoke(app, ["measure-lambda", str(outcome.out_dir / "nope")])
    assert bad.exit_code != 0 and "manifest" in bad.output
    # validated before any work: a bad setting names its field and creates no directory
    bad = CliRunner().invoke(
        app,
        ["measure-lambda", str(outcome.out_dir), "--pairs", "4v4", "--out", str(tmp_path / "x")],
    )
    assert bad.exit_code == 2 and "pairs" in bad.output and not (tmp_path / "x").exists()
    bad = CliRunner().invoke(
        app, ["measure-lambda", str(outcome.out_dir), "--min-points", "500", "--out",
              str(tmp_path / "y")],
    )  # fmt: skip
    assert bad.exit_code == 2 and "min_points" in bad.output and not (tmp_path / "y").exists()
    empty = tmp_path / "no-weights"  # a lambda-control manifest without any checkpoint
    empty.mkdir()
    (empty / "manifest.json").write_text((outcome.out_dir / "manifest.json").read_text())
    bad = CliRunner().invoke(app, ["measure-lambda", str(empty), "--out", str(tmp_path / "z")])
    assert bad.exit_code == 2 and "checkpoints" in bad.output and not (tmp_path / "z").exists()


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
        ({"seeds": [1, 1]}, "seeds"),
        ({"seeds": [2**64]}, "seeds"),
        ({"reg_scale": float("inf")}, "reg_scale"),
        ({"measurement_seed": -1}, "measurement_seed"),
    ):
        with pytest.raises(ConfigError, match=field):
            experiment.make_config("paper", bad)


def test_condition_helpers():
    parse = Condition.parse
    assert parse("selective:9,4").targets == (4, 9)
    assert parse("selective:49").targets == (4, 9)
    assert parse("global").targets is None and parse("baseline").targets == ()
    assert parse("selective:3+8").label == "selective_38"
    assert parse("selective:4,9").role((4, 9)) == "targeted"
    assert parse("selective:4,9").role((3, 8)) == "untargeted"
    assert parse("selective:4,9").role((4, 8)) == "mixed"
    ci = stats.summarize([1.0, 2.0, 3.0], n_resamples=500, seed=0)
    assert ci["mean"] == 2.0 and 1.0 <= ci["ci95"][0] <= ci["ci95"][1] <= 3.0


def test_training_is_deterministic_for_a_seed(tmp_path):
    write_tiny_mnist(tmp_path)
    config = get("lambda").make_config(
        "quick", {**TINY, "data_dir": str(tmp_path), "train_limit": 64, "reg_directions": 1}
    )
    data = lc.load_data(config, "cpu")
    log = logging.getLogger("test")
    condition = Condition.parse("selective:4,9")
    first, record = lc.train_model(config, condition, 3, data, "cpu", log)
    second, _ = lc.train_model(config, condition, 3, data, "cpu", log)
    for a, b in zip(first.parameters(), second.parameters(), strict=True):
        assert (a == b).all()
    assert record["history"][0]["penalized_fraction"] > 0


# --- models: the GELU variant and a user's classifier (issue 12, item 5) ----------------------

SMALL = {
    **TINY,
    "conditions": ["baseline", "global"],
    "seeds": [0],
    "pairs": [[4, 9]],
    "train_limit": 64,
    "reg_directions": 1,
    "lambda_max_order": 2,
    "lambda_directions": 1,
    "max_points": 8,
    "min_points": 2,
}


def small_relu_classifier() -> torch.nn.Module:
    """A user's classifier, named by import path in the tests below."""
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(784, 16), torch.nn.ReLU(), torch.nn.Linear(16, 10)
    )


def run_small(data_dir, out, **overrides):
    experiment = get("lambda-control")
    config = experiment.make_config("quick", {**SMALL, "data_dir": str(data_dir), **overrides})
    outcome = run_experiment(experiment, config, preset="quick", out_dir=out, interactive=False)
    assert outcome.status == "complete", outcome.manifest.get("gates")
    return outcome, config, pd.read_csv(out / "models.csv")


def test_gelu_variant_runs_with_the_pairwise_boundary(tiny_run, tmp_path):
    _, _, data_dir = tiny_run
    outcome, config, models = run_small(
        data_dir, tmp_path / "gelu", model="mnist-cnn-gelu", boundary="pairwise"
    )
    assert outcome.manifest["config"]["model"] == "mnist-cnn-gelu"
    assert outcome.manifest["config"]["boundary"] == "pairwise"
    data = lc.load_data(config, "cpu")
    gelu = config.build_model(0, data)
    assert gelu.activation == "gelu"
    expected_method = deriv.resolve_path(gelu.train(), data.train_images[:1], "auto").method
    assert (models["derivative_method"] == expected_method).all()  # nested, or Taylor mode
    # λ's boundary points are the pairwise rule's, on the trained model
    model = config.build_model(0, data)
    model.load_state_dict(torch.load(tmp_path / "gelu/checkpoints/global_seed0.pt"))
    probs = predict_probabilities(model, data.test_images)
    found = boundary_point_indices(
        probs, data.test_labels, (4, 9), prob_range=(0.0, 1.0), max_points=10_000,
        boundary="pairwise",
    )  # fmt: skip
    row = models.set_index("condition").loc["global"]
    assert row["n_points_4v9"] == min(len(found), config.max_points)
    assert math.isfinite(row["lambda_4v9"]) == (row["n_points_4v9"] >= config.min_points)


def test_a_users_classifier_runs_and_is_remeasured(tiny_run, tmp_path):
    _, _, data_dir = tiny_run
    spec = f"{__name__}:small_relu_classifier"
    outcome, config, models = run_small(data_dir, tmp_path / "user", model=spec)
    assert outcome.manifest["config"]["model"] == spec
    assert (models["derivative_method"] == "fast").all()  # piecewise linear: generic JVP path
    gates = {g["name"]: g for g in outcome.manifest["gates"]}
    assert gates["fast_derivatives_match_nested"]["rel_diff"] < 1e-9
    # seeded as the notebooks seed their models: manual_seed(seed), then the factory
    torch.manual_seed(0)
    reference = small_relu_classifier()
    built = config.build_model(0, lc.load_data(config, "cpu"))
    for a, b in zip(reference.parameters(), built.parameters(), strict=True):
        assert torch.equal(a, b)
    table = measure_lambda_from_run(
        outcome.out_dir, device="cpu", boundary="pairwise", trust_model=True
    )  # the run names a model factory: a received run's code runs only when trusted
    assert len(table) == 2 and set(table["pair"]) == {"4v9"}
    manifest = json.loads((Path(table.attrs["out_dir"]) / "manifest.json").read_text())
    assert manifest["config"]["boundary"] == "pairwise"


def test_bad_model_is_an_error_naming_model_before_any_work(tmp_path):
    experiment = get("lambda")
    assert experiment.make_config("paper", {}).model == "mnist-cnn"
    assert experiment.make_config("paper", {}).boundary == "notebook"
    for bad in ("resnet", "no_such_package_xyz.models:build", f"{__name__}:not_there"):
        with pytest.raises(ConfigError, match="model"):
            experiment.make_config("quick", {"model": bad})
    with pytest.raises(ConfigError, match="boundary"):
        experiment.make_config("quick", {"boundary": "nearest"})
    out = tmp_path / "never"
    result = CliRunner().invoke(
        app, ["run", "lambda", "--preset", "quick", "--set", "model=nope_xyz:f", "--out", str(out)]
    )
    assert result.exit_code == 2 and "model" in result.output and not out.exists()


def test_a_wrong_fast_path_fails_the_run_before_any_training(tiny_run, tmp_path, monkeypatch):
    # issue 17: the gate used to run only after all training had used the wrong penalty
    _, _, data_dir = tiny_run
    real_fast = deriv.fast_directional_derivatives

    def wrong_fast(*args, **kwargs):  # a fast path off by 1 % at every order
        values, logits = real_fast(*args, **kwargs)
        return values * 1.01, logits

    class TrainingStarted(Exception):
        pass

    def no_training(*args, **kwargs):
        raise TrainingStarted

    monkeypatch.setattr(deriv, "fast_directional_derivatives", wrong_fast)
    monkeypatch.setattr(lc.experiment, "train_model", no_training)
    experiment = get("lambda-control")
    config = experiment.make_config("quick", {**SMALL, "data_dir": str(data_dir)})
    assert config.self_check
    with pytest.raises(ValueError, match="initial mnist-cnn model, before training"):
        run_experiment(experiment, config, preset="quick", out_dir=tmp_path / "a",
                       interactive=False)  # fmt: skip
    # with the check turned off the run goes on to training (where the wrong path would be used)
    unchecked = experiment.make_config(
        "quick", {**SMALL, "data_dir": str(data_dir), "self_check": False}
    )
    with pytest.raises(TrainingStarted):
        run_experiment(experiment, unchecked, preset="quick", out_dir=tmp_path / "b",
                       interactive=False)  # fmt: skip
