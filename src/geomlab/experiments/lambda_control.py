"""Class-selective λ control on MNIST: train the notebook CNN with a derivative penalty on
all samples, none, or chosen classes, then measure λ at class-pair decision boundaries."""

from __future__ import annotations

import copy
import math
import os
import re
import time
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator, model_validator

from geomlab import io
from geomlab.data.mnist import NUM_CLASSES, MNISTTensors, batch_indices, load_mnist
from geomlab.experiments.base import (
    Experiment,
    ExperimentConfig,
    RunContext,
    RunResult,
    Seed,
    SeedList,
)
from geomlab.geometry import derivatives as deriv
from geomlab.geometry.gates import GateResult, allclose_gate, finite_gate
from geomlab.models.mnist_cnn import build_mnist_cnn

NOTEBOOK_CONDITIONS = ["baseline", "global", "selective:4,9", "selective:3,8"]
NOTEBOOK_PAIRS = [(4, 9), (3, 8), (5, 6)]
_CONDITION_RE = re.compile(r"^selective:(\d+(?:[,+]\d+)*)$")
ClassIndex = Annotated[int, Field(ge=0, lt=NUM_CLASSES)]


# --- conditions and pairs ----------------------------------------------------------------------


def parse_condition(text: str) -> tuple[int, ...] | None:
    """``baseline`` → (), ``global`` → None (all samples), ``selective:4,9`` → (4, 9)."""
    text = str(text).strip().lower()
    if text == "baseline":
        return ()
    if text == "global":
        return None
    match = _CONDITION_RE.match(text.replace(" ", ""))
    if not match:
        raise ValueError(
            f"condition {text!r} is not 'baseline', 'global' or 'selective:<classes>'"
            " (e.g. selective:4,9)"
        )
    body = match.group(1)
    parts = re.split(r"[,+]", body) if re.search(r"[,+]", body) else list(body)
    classes = sorted({int(p) for p in parts})
    if any(c >= NUM_CLASSES for c in classes):
        raise ValueError(f"condition {text!r}: classes must be in 0..{NUM_CLASSES - 1}")
    return tuple(classes)


def canonical_condition(text: str) -> str:
    targets = parse_condition(text)
    if targets is None:
        return "global"
    if not targets:
        return "baseline"
    return "selective:" + ",".join(map(str, targets))


def condition_label(text: str) -> str:
    """Table/file label: ``selective:4,9`` → ``selective_49`` (the notebook's names)."""
    targets = parse_condition(text)
    if targets is None or not targets:
        return canonical_condition(text)
    return "selective_" + "".join(map(str, targets))


def parse_pairs(value: Any) -> list[tuple[int, int]]:
    """Pairs from ``"4v9"``, ``"4,9"``, ``"4,9 3,8"``, ``[4, 9]``, ``[[4, 9], [3, 8]]`` or a
    flat list of ints taken two at a time (what ``--set pairs=4,9,3,8`` parses to)."""
    if isinstance(value, str):
        chunks = [c for c in re.split(r"[\s;]+", value.strip()) if c]
        return [_parse_one_pair(c) for c in chunks]
    items = list(value)
    if items and all(isinstance(v, int) for v in items):
        if len(items) % 2:
            raise ValueError(f"a flat list of classes must have even length, got {items}")
        return [(items[i], items[i + 1]) for i in range(0, len(items), 2)]
    pairs = []
    for item in items:
        pairs.extend(parse_pairs(item) if isinstance(item, str) else [_parse_one_pair(item)])
    return pairs


def _parse_one_pair(item: Any) -> tuple[int, int]:
    if isinstance(item, str):
        parts = [p for p in re.split(r"[v,\-x]", item.strip().lower()) if p]
    else:
        parts = list(item)
    if len(parts) != 2:
        raise ValueError(f"a class pair needs two classes, got {item!r} (write e.g. 4v9 or 4,9)")
    a, b = (int(p) for p in parts)
    if a == b:
        raise ValueError(f"a class pair needs two different classes, got {item!r}")
    return a, b


def pair_label(pair: tuple[int, int]) -> str:
    return f"{pair[0]}v{pair[1]}"


# --- config --------------------------------------------------------------------------------


class Config(ExperimentConfig):
    conditions: list[str] = Field(
        default_factory=lambda: list(NOTEBOOK_CONDITIONS),
        min_length=1,
        description="baseline | global | selective:<classes> (e.g. selective:4,9)",
    )
    seeds: SeedList = Field(default_factory=lambda: [0, 1], min_length=1, description="model seeds")
    pairs: list[tuple[ClassIndex, ClassIndex]] = Field(
        default_factory=lambda: list(NOTEBOOK_PAIRS),
        min_length=1,
        description="class pairs whose boundary λ is measured (e.g. 4v9,3v8)",
    )
    epochs: int = Field(15, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, lt=1, description="Adam learning rate")
    dropout: float = Field(0.5, ge=0, lt=1)
    label_noise: float = Field(0.2, ge=0, le=1, description="fraction of training labels flipped")
    noise_seed: Seed = Field(42, description="seed of the label noise (the notebook's 42)")
    reg_scale: float = Field(200.0, ge=0, description="penalty multiplier (notebook run: 200)")
    reg_max_order: int = Field(3, ge=1, le=8, description="Nreg: orders 1..Nreg penalized")
    reg_directions: int = Field(2, ge=1, le=64, description="K_dirs of the penalty")
    lambda_max_order: int = Field(4, ge=2, le=8, description="n_max of the λ fit")
    lambda_directions: int = Field(4, ge=1, le=64, description="K_dirs of the λ measurement")
    prob_range: tuple[float, float] = Field(
        (0.2, 0.8), description="boundary points: top softmax probability in [low, high]"
    )
    max_points: int = Field(200, ge=1, description="boundary points per pair, at most")
    min_points: int = Field(10, ge=2, description="fewer boundary points: λ is not estimated")
    lambda_batch_size: int = Field(64, ge=1)
    derivative_method: Literal["auto", "fast", "nested"] = Field(
        "auto", description="auto: exact fast path when the model allows it, else nested"
    )
    train_limit: int | None = Field(None, ge=10, description="first N training images only")
    test_limit: int | None = Field(None, ge=10, description="first N test images only")
    data_dir: str | None = Field(None, description="folder with MNIST IDX files")
    eval_batch_size: int = Field(1000, ge=1)
    measurement_seed: Seed = Field(1234, description="seed of λ subsampling and directions")
    bootstrap_samples: int = Field(10_000, ge=100, le=1_000_000)
    gate_points: int = Field(8, ge=1, le=256, description="test points of the fast-vs-nested gate")

    @field_validator("conditions", mode="before")
    @classmethod
    def _rejoin_conditions(cls, value: Any) -> Any:
        # `--set conditions=baseline,selective:4,9` arrives as ["baseline", "selective:4", 9]
        if isinstance(value, str):
            value = [value]
        merged: list[str] = []
        for item in value:
            if isinstance(item, int) and merged and merged[-1].startswith("selective:"):
                merged[-1] += f",{item}"
            else:
                merged.append(str(item))
        out = []
        for item in merged:
            canonical = canonical_condition(item)
            if canonical in out:
                raise ValueError(f"condition {canonical!r} is listed twice")
            out.append(canonical)
        return out

    @field_validator("seeds", mode="before")
    @classmethod
    def _single_seed(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value  # `--set seeds=3`

    @field_validator("pairs", mode="before")
    @classmethod
    def _parse_pairs(cls, value: Any) -> Any:
        return parse_pairs(value)

    @field_validator("prob_range")
    @classmethod
    def _check_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        low, high = value
        if not 0.0 <= low < high <= 1.0:
            raise ValueError(f"prob_range must satisfy 0 <= low < high <= 1, got {value}")
        return value

    @model_validator(mode="after")
    def _points(self) -> Config:
        if self.min_points > self.max_points:
            raise ValueError(
                f"min_points ({self.min_points}) must be <= max_points ({self.max_points})"
            )
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {
        "conditions": ["baseline", "global", "selective:4,9"],
        "seeds": [0, 1],
        "epochs": 2,
        "train_limit": 3000,
        "test_limit": 2000,
        "max_points": 100,
        "bootstrap_samples": 2000,
    },
}


# --- training --------------------------------------------------------------------------------


@torch.no_grad()
def evaluate(model, images, labels, *, batch_size: int) -> tuple[float, float]:
    """Test accuracy and mean cross-entropy in eval mode."""
    was_training = model.training
    model.eval()
    correct, loss_sum = 0, 0.0
    for start in range(0, images.shape[0], batch_size):
        logits = model(images[start : start + batch_size])
        target = labels[start : start + batch_size]
        loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
        correct += int((logits.argmax(1) == target).sum())
    model.train(was_training)
    return correct / images.shape[0], loss_sum / images.shape[0]


def train_model(
    config: Config, condition: str, seed: int, data: MNISTTensors, device: torch.device, log
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one (condition, seed) model; returns it and a JSON-able record."""
    targets = parse_condition(condition)
    model = build_mnist_cnn(seed=seed, dropout=config.dropout, device=device)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    model.train()
    method = deriv.resolve_method(model, data.train_images[:1], config.derivative_method)
    batch_generator = torch.Generator().manual_seed(seed)
    direction_generator = torch.Generator(device=device).manual_seed(10_000 + seed)
    history = []
    total_sum = penalty_sum = 0.0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        epoch_start = time.perf_counter()
        sums = {"loss": 0.0, "ce": 0.0, "penalty": 0.0, "penalized": 0}
        batches = 0
        model.train()
        for index in batch_indices(
            data.train_labels.numel(), config.batch_size, generator=batch_generator, device=device
        ):
            parts = deriv.class_selective_loss(
                model,
                data.train_images[index],
                data.train_labels[index],
                target_classes=targets,
                scale=config.reg_scale,
                max_order=config.reg_max_order,
                num_directions=config.reg_directions,
                method=method,
                generator=direction_generator,
            )
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            sums["loss"] += parts.total.item()
            sums["ce"] += parts.cross_entropy.item()
            sums["penalty"] += parts.penalty.item()
            sums["penalized"] += parts.num_penalized
            batches += 1
        test_acc, test_loss = evaluate(
            model, data.test_images, data.test_labels, batch_size=config.eval_batch_size
        )
        total_sum += sums["loss"]
        penalty_sum += sums["penalty"]
        row = {
            "epoch": epoch,
            "train_loss": sums["loss"] / batches,
            "train_ce": sums["ce"] / batches,
            "train_penalty": sums["penalty"] / batches,
            "penalized_fraction": sums["penalized"] / data.train_labels.numel(),
            "test_acc": test_acc,
            "test_loss": test_loss,
            "epoch_time_s": time.perf_counter() - epoch_start,
        }
        history.append(row)
        log.info(
            "%s seed %d epoch %d/%d: loss %.4f (penalty %.4f) test acc %.4f",
            condition, seed, epoch, config.epochs, row["train_loss"], row["train_penalty"],
            test_acc,
        )  # fmt: skip
    record = {
        "condition": condition,
        "seed": seed,
        "derivative_method": method,
        "test_acc": history[-1]["test_acc"],
        "test_loss": history[-1]["test_loss"],
        "penalty_share": penalty_sum / total_sum if total_sum else 0.0,
        "train_time_s": time.perf_counter() - start,
        "history": history,
    }
    return model, record


def save_state(model: torch.nn.Module, path: Path) -> None:
    """Atomic checkpoint (unique temporary name, fsync, rename: geomlab.io.atomic_write)."""
    io.atomic_write(path, lambda tmp: torch.save(model.state_dict(), tmp))


def load_model(path: Path, *, dropout: float, device: torch.device) -> torch.nn.Module:
    model = build_mnist_cnn(seed=0, dropout=dropout, device=device)
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model.eval()


def checkpoint_name(condition: str, seed: int) -> str:
    return f"{condition_label(condition)}_seed{seed}.pt"


# --- λ measurement -----------------------------------------------------------------------------


def measurement_generator(base_seed: int, seed: int, pair, device) -> torch.Generator:
    """The same random stream for a (seed, pair) under every condition (common random numbers)."""
    value = base_seed * 1_000_003 + seed * 1_009 + pair[0] * 11 + pair[1]
    return torch.Generator(device=device).manual_seed(value)


def measure_pairs(
    model,
    data: MNISTTensors,
    pairs,
    *,
    seed: int,
    config: Config,
    device,
) -> list[tuple[tuple[int, int], deriv.LambdaMeasurement]]:
    probs = deriv.predict_probabilities(model, data.test_images, batch_size=config.eval_batch_size)
    results = []
    for pair in pairs:
        measurement = deriv.measure_lambda(
            model,
            data.test_images,
            data.test_labels,
            pair,
            max_order=config.lambda_max_order,
            num_directions=config.lambda_directions,
            prob_range=tuple(config.prob_range),
            max_points=config.max_points,
            min_points=config.min_points,
            batch_size=config.lambda_batch_size,
            method=config.derivative_method,
            generator=measurement_generator(config.measurement_seed, seed, pair, device),
            probs=probs,
        )
        results.append((tuple(pair), measurement))
    return results


def fit_rows(condition: str, seed: int, measurements) -> list[dict[str, Any]]:
    rows = []
    for pair, m in measurements:
        if m.fit is None:
            continue
        for n, value in zip(m.fit.orders, m.fit.mean_log_abs, strict=True):
            rows.append(
                {
                    "condition": condition_label(condition),
                    "seed": seed,
                    "pair": pair_label(pair),
                    "order": n,
                    "mean_log_abs_d": value,
                    "slope": m.fit.slope,
                    "intercept": m.fit.intercept,
                    "num_points": m.num_points,
                    "method": m.method,
                }
            )
    return rows


def fast_path_gate(model, data: MNISTTensors, config: Config, scope: str) -> GateResult | None:
    """Fast vs nested derivatives on a float64 copy of a trained model (eval mode), compared
    order by order relative to each order's largest value (orders differ by many decades)."""
    points = data.test_images[: config.gate_points].double()
    labels = data.test_labels[: config.gate_points]
    reference_model = copy.deepcopy(model).double().eval()
    if deriv.resolve_method(reference_model, points, config.derivative_method) != "fast":
        return None
    generator = torch.Generator(device=points.device).manual_seed(config.measurement_seed)
    directions = deriv.sample_unit_directions(2, points, generator=generator)
    order = config.lambda_max_order
    with torch.no_grad():
        fast, _ = deriv.fast_directional_derivatives(
            reference_model, points, labels, directions, max_order=order
        )
    nested = deriv.nested_directional_derivatives(
        reference_model, points, labels, directions, max_order=order
    )
    scale = nested.abs().flatten(1).amax(dim=1).clamp_min(1e-300).view(-1, 1, 1)
    return allclose_gate(fast / scale, nested / scale, name="fast_derivatives_match_nested",
                         scope=scope, rel_tol=1e-9)  # fmt: skip


# --- statistics --------------------------------------------------------------------------------


def bootstrap_mean_ci(values, *, samples: int, seed: int) -> dict[str, Any]:
    """Mean and 95% percentile bootstrap interval over the given per-seed values."""
    values = np.asarray([v for v in values if v is not None and math.isfinite(v)], dtype=float)
    if values.size == 0:
        return {"mean": None, "ci95": [None, None], "n": 0}
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(samples, values.size))].mean(axis=1)
    low, high = np.percentile(means, [2.5, 97.5])
    return {"mean": float(values.mean()), "ci95": [float(low), float(high)], "n": int(values.size)}


def pair_role(pair, targets) -> str:
    """``targeted`` if both classes are penalized, ``untargeted`` if neither, else ``mixed``."""
    if targets is None:
        return "targeted"
    inside = sum(c in targets for c in pair)
    return {2: "targeted", 0: "untargeted"}.get(inside, "mixed")


def selectivity_effects(models: pd.DataFrame, config: Config) -> dict[str, Any]:
    """Δλ = λ(condition) − λ(baseline), paired by seed, averaged over targeted and untargeted
    pairs; selectivity = Δ_targeted − Δ_untargeted; 95% bootstrap intervals over seeds."""
    if "baseline" not in config.conditions:
        return {"note": "no baseline condition: Δλ is not defined"}
    baseline = models[models["condition"] == "baseline"].set_index("seed")
    effects: dict[str, Any] = {}
    for condition in config.conditions:
        targets = parse_condition(condition)
        if targets == ():
            continue
        label = condition_label(condition)
        rows = models[models["condition"] == label].set_index("seed")
        roles = {pair_label(p): pair_role(p, targets) for p in config.pairs}
        per_seed = []
        for seed in rows.index:
            if seed not in baseline.index:
                continue
            deltas = {
                name: rows.at[seed, f"lambda_{name}"] - baseline.at[seed, f"lambda_{name}"]
                for name in roles
            }
            entry = {"seed": int(seed)}
            for role in ("targeted", "untargeted"):
                chosen = [d for n, d in deltas.items() if roles[n] == role and math.isfinite(d)]
                entry[f"delta_{role}"] = float(np.mean(chosen)) if chosen else float("nan")
            entry["selectivity"] = entry["delta_targeted"] - entry["delta_untargeted"]
            entry.update({f"delta_{n}": float(d) for n, d in deltas.items()})
            per_seed.append(entry)
        result = {
            "targets": "all" if targets is None else list(targets),
            "pair_roles": roles,
            "per_seed": per_seed,
        }
        for key in ("delta_targeted", "delta_untargeted", "selectivity"):
            result[key] = bootstrap_mean_ci(
                [e[key] for e in per_seed],
                samples=config.bootstrap_samples,
                seed=config.measurement_seed,
            )
        effects[label] = result
    return effects


def condition_summary(models: pd.DataFrame, config: Config) -> dict[str, Any]:
    summary = {}
    for condition in config.conditions:
        label = condition_label(condition)
        rows = models[models["condition"] == label]
        entry: dict[str, Any] = {"n_seeds": len(rows)}
        for column in ("test_acc", "test_loss", "penalty_share", "train_time_s"):
            entry[f"{column}_mean"] = float(rows[column].mean())
            entry[f"{column}_std"] = float(rows[column].std(ddof=0))
        for pair in config.pairs:
            values = rows[f"lambda_{pair_label(pair)}"].dropna()
            entry[f"lambda_{pair_label(pair)}"] = {
                "mean": float(values.mean()) if len(values) else None,
                "std": float(values.std(ddof=0)) if len(values) else None,
                "n_measured": int(len(values)),
            }
        summary[label] = entry
    return summary


# --- the run -------------------------------------------------------------------------------


def load_data(config: Config, device) -> MNISTTensors:
    return load_mnist(
        device=device,
        data_dir=config.data_dir,
        train_limit=config.train_limit,
        test_limit=config.test_limit,
        label_noise=config.label_noise,
        noise_seed=config.noise_seed,
    )


def run(config: Config, ctx: RunContext) -> RunResult:
    from geomlab.plots import lambda_control as plots

    device = ctx.device
    data = load_data(config, device)
    ctx.log.info(
        "MNIST from %s: %d train (%d labels corrupted), %d test",
        data.source, data.train_labels.numel(), data.label_noise["num_corrupted"],
        data.test_labels.numel(),
    )  # fmt: skip
    jobs = [(condition, seed) for condition in config.conditions for seed in config.seeds]
    model_rows, history_rows, fit_table, gates = [], [], [], []
    for condition, seed in ctx.progress(jobs, total=len(jobs), description="models"):
        label = condition_label(condition)
        checkpoint = ctx.checkpoint_path(checkpoint_name(condition, seed))
        trained: dict[str, torch.nn.Module] = {}

        def train(condition=condition, seed=seed, checkpoint=checkpoint, trained=trained):
            model, record = train_model(config, condition, seed, data, device, ctx.log)
            save_state(model, checkpoint)
            trained["model"] = model
            return record

        key = f"train_{label}_seed{seed}"
        record = ctx.cached(key, train)
        if not checkpoint.exists():  # record without weights (deleted): train again
            ctx.log.warning("checkpoint %s missing: retraining", checkpoint.name)
            record = train()
        if "model" in trained:
            model = trained["model"].eval()
        else:
            model = load_model(checkpoint, dropout=config.dropout, device=device)
        measurements = measure_pairs(model, data, config.pairs, seed=seed, config=config,
                                     device=device)  # fmt: skip
        if not gates:  # the engine check once per run, on the first trained model
            gate = fast_path_gate(model, data, config, scope=f"{label} seed {seed}")
            gates.append(
                gate
                if gate is not None
                else GateResult(
                    "fast_derivatives_match_nested", True, "skipped: nested reference in use", ""
                )
            )
        row = {
            "condition": label,
            "seed": seed,
            "test_acc": record["test_acc"],
            "test_loss": record["test_loss"],
        }
        for pair, m in measurements:
            row[f"lambda_{pair_label(pair)}"] = m.slope
            row[f"n_points_{pair_label(pair)}"] = m.num_points
        row.update(
            penalty_share=record["penalty_share"],
            train_time_s=record["train_time_s"],
            derivative_method=record["derivative_method"],
        )
        model_rows.append(row)
        for epoch_row in record["history"]:
            history_rows.append({"condition": label, "seed": seed, **epoch_row})
        fit_table.extend(fit_rows(condition, seed, measurements))

    models = pd.DataFrame(model_rows)
    history = pd.DataFrame(history_rows)
    fits = pd.DataFrame(fit_table, columns=FIT_COLUMNS)
    ctx.write_csv("models.csv", models)
    ctx.write_csv("history.csv", history)
    ctx.write_csv("lambda_fits.csv", fits)

    selectivity = selectivity_effects(models, config)
    summary = {
        "conditions": condition_summary(models, config),
        "selectivity": selectivity,
        "data": data.manifest(),
        "pairs": [pair_label(p) for p in config.pairs],
        "derivative_methods": sorted(set(models["derivative_method"])),
        "missing_lambda": [
            f"{r['condition']} seed {r['seed']} {pair_label(p)}"
            for r in model_rows
            for p in config.pairs
            if not math.isfinite(r[f"lambda_{pair_label(p)}"])
        ],
    }
    ctx.write_json("summary.json", summary)

    labels = [condition_label(c) for c in config.conditions]
    pair_names = [pair_label(p) for p in config.pairs]
    ctx.save_figure(plots.lambda_by_pair(models, labels, pair_names), "lambda_by_pair")
    if not fits.empty:
        ctx.save_figure(plots.lambda_fits(fits, labels, pair_names), "lambda_fits")
    ctx.save_figure(plots.training_curves(history, labels), "training_curves")

    numeric = models.select_dtypes("number")
    gates.insert(0, finite_gate({"test_acc": numeric["test_acc"].to_numpy(),
                                 "test_loss": numeric["test_loss"].to_numpy(),
                                 "train_loss": history["train_loss"].to_numpy()},
                                name="finite_metrics"))  # fmt: skip
    headline = {
        f"test_acc_{label}": summary["conditions"][label]["test_acc_mean"] for label in labels
    }
    for label, effect in selectivity.items():
        if isinstance(effect, dict) and effect.get("selectivity", {}).get("mean") is not None:
            headline[f"selectivity_{label}"] = effect["selectivity"]["mean"]
        elif isinstance(effect, dict) and effect.get("delta_targeted", {}).get("mean") is not None:
            headline[f"delta_lambda_{label}"] = effect["delta_targeted"]["mean"]
    return RunResult(summary=summary, gates=gates, headline=headline)


FIT_COLUMNS = [
    "condition", "seed", "pair", "order", "mean_log_abs_d", "slope", "intercept", "num_points",
    "method",
]  # fmt: skip


# --- re-measurement from a finished run ----------------------------------------------------


def measure_lambda_from_run(
    run_dir: str | os.PathLike,
    *,
    pairs: Any = None,
    prob_range: tuple[float, float] | None = None,
    max_order: int | None = None,
    num_directions: int | None = None,
    max_points: int | None = None,
    min_points: int | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    log=None,
) -> pd.DataFrame:
    """Re-measure λ from a run's checkpoints (no retraining) for other pairs or settings.

    Writes ``lambda_remeasured.csv`` (one row per model and pair) and
    ``lambda_remeasured_fits.csv`` (per order) into the run directory; returns the first.
    """
    from geomlab.runner import resolve_device

    run_dir = Path(run_dir)
    manifest_path = run_dir / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{run_dir} has no manifest.json: not a geomlab run directory")
    manifest = io.read_json(manifest_path)
    if manifest.get("experiment") != EXPERIMENT.name:
        raise ValueError(
            f"{run_dir} is a {manifest.get('experiment')!r} run, not {EXPERIMENT.name}"
        )
    values = dict(manifest["config"])
    overrides = {
        "pairs": pairs,
        "prob_range": prob_range,
        "lambda_max_order": max_order,
        "lambda_directions": num_directions,
        "max_points": max_points,
        "min_points": min_points,
        "data_dir": data_dir,
    }
    values.update({k: v for k, v in overrides.items() if v is not None})
    values["device"] = device
    config = Config(**values)
    torch_device = resolve_device(device)
    data = load_data(config, torch_device)
    rows, fit_table = [], []
    for condition in config.conditions:
        for seed in config.seeds:
            path = run_dir / "checkpoints" / checkpoint_name(condition, seed)
            if not path.exists():
                if log is not None:
                    log(f"skipping {condition} seed {seed}: no checkpoint {path.name}")
                continue
            model = load_model(path, dropout=config.dropout, device=torch_device)
            measurements = measure_pairs(model, data, config.pairs, seed=seed, config=config,
                                         device=torch_device)  # fmt: skip
            for pair, m in measurements:
                rows.append(
                    {
                        "condition": condition_label(condition),
                        "seed": seed,
                        "pair": pair_label(pair),
                        "lambda": m.slope,
                        "num_points": m.num_points,
                        "intercept": m.fit.intercept if m.fit else float("nan"),
                        "max_order": config.lambda_max_order,
                        "num_directions": config.lambda_directions,
                        "prob_low": config.prob_range[0],
                        "prob_high": config.prob_range[1],
                        "method": m.method,
                    }
                )
            fit_table.extend(fit_rows(condition, seed, measurements))
    if not rows:
        raise FileNotFoundError(f"no model checkpoints found in {run_dir / 'checkpoints'}")
    table = pd.DataFrame(rows)
    io.write_csv(run_dir / "lambda_remeasured.csv", table)
    io.write_csv(
        run_dir / "lambda_remeasured_fits.csv", pd.DataFrame(fit_table, columns=FIT_COLUMNS)
    )
    return table


EXPERIMENT = Experiment(
    name="lambda-control",
    aliases=("lambda", "class-selective-lambda", "e4"),
    description="Class-selective λ control on MNIST: derivative penalty on chosen classes, "
    "λ measured at class-pair decision boundaries (exact fast derivative engine).",
    config_cls=Config,
    presets=PRESETS,
    run=run,
)
