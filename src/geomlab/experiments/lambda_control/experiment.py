"""Class-selective λ control on MNIST: train the notebook CNN with a derivative penalty on
all samples, none, or chosen classes, then measure λ at class-pair decision boundaries.

Wiring only: MNIST (``geomlab.data.mnist``) → CNN (``geomlab.models``) → training
(``geomlab.training``) → penalty and λ (``geomlab.geometry.penalty``, ``lambda_fit``) → tables,
statistics (``geomlab.stats``) → figures (``geomlab.plots.lambda_control``).
``measure.py`` re-measures λ from a finished run's checkpoints as a run of its own.
"""

from __future__ import annotations

import copy
import math
from typing import Annotated, Any

import pandas as pd
import torch
from pydantic import AfterValidator, Field, field_validator, model_validator

from geomlab import stats
from geomlab.data.mnist import NUM_CLASSES, MNISTTensors, load_mnist
from geomlab.experiments.base import (
    Experiment,
    ExperimentConfig,
    RunContext,
    RunResult,
    unique_seeds,
)
from geomlab.experiments.lambda_control.types import (
    ClassPair,
    Condition,
    Pair,
    conditions_from_cli,
    pairs_from_cli,
)
from geomlab.geometry import derivatives as deriv
from geomlab.geometry.derivatives import Method, Path
from geomlab.geometry.gates import GateResult, allclose_gate, finite_gate
from geomlab.geometry.lambda_fit import Boundary, measure_lambda, predict_probabilities
from geomlab.geometry.penalty import class_selective_loss
from geomlab.models.registry import MNIST_CLASSIFIERS, build_model, check_spec
from geomlab.training import (
    evaluate_classifier,
    load_checkpoint,
    save_checkpoint,
    train_classifier,
)

NOTEBOOK_CONDITIONS = [Condition.parse(c) for c in ("baseline", "global", "selective:4,9",
                                                    "selective:3,8")]  # fmt: skip
NOTEBOOK_PAIRS = [ClassPair(4, 9), ClassPair(3, 8), ClassPair(5, 6)]
SEED_LIMIT = 2**32  # seeds are combined into generator seeds, which must stay below 2**64
FIT_COLUMNS = [
    "condition", "seed", "pair", "order", "mean_log_abs_d", "slope", "intercept", "num_points",
    "method",
]  # fmt: skip


class Config(ExperimentConfig):
    conditions: list[Condition] = Field(
        default_factory=lambda: list(NOTEBOOK_CONDITIONS),
        min_length=1,
        description="baseline | global | selective:<classes> (e.g. selective:4,9)",
    )
    seeds: Annotated[
        list[Annotated[int, Field(ge=0, lt=SEED_LIMIT)]], AfterValidator(unique_seeds)
    ] = Field(default_factory=lambda: [0, 1], min_length=1, description="model seeds")
    pairs: list[Pair] = Field(
        default_factory=lambda: list(NOTEBOOK_PAIRS),
        min_length=1,
        description="class pairs whose boundary λ is measured (e.g. 4v9,3v8)",
    )
    model: str = Field(
        "mnist-cnn",
        description="mnist-cnn (the notebook's), mnist-cnn-gelu (GELU in place of ReLU), or "
        "package.module:function returning a classifier of [B,1,28,28] (called after "
        "torch.manual_seed(seed))",
    )
    epochs: int = Field(15, ge=1, le=1000)
    batch_size: int = Field(128, ge=1, le=65536)
    lr: float = Field(1e-3, gt=0, lt=1, description="Adam learning rate")
    dropout: float = Field(0.5, ge=0, lt=1)
    label_noise: float = Field(0.2, ge=0, le=1, description="fraction of training labels flipped")
    noise_seed: int = Field(
        42, ge=0, lt=SEED_LIMIT, description="seed of the label noise (the notebook's 42)"
    )
    reg_scale: float = Field(
        200.0, ge=0, allow_inf_nan=False, description="penalty multiplier (notebook run: 200)"
    )
    reg_max_order: int = Field(3, ge=1, le=8, description="Nreg: orders 1..Nreg penalized")
    reg_directions: int = Field(2, ge=1, le=64, description="K_dirs of the penalty")
    lambda_max_order: int = Field(4, ge=2, le=8, description="n_max of the λ fit")
    lambda_directions: int = Field(4, ge=1, le=64, description="K_dirs of the λ measurement")
    prob_range: tuple[float, float] = Field(
        (0.2, 0.8), description="boundary points: top softmax probability in [low, high]"
    )
    boundary: Boundary = Field(
        Boundary.NOTEBOOK,
        description="boundary points: notebook = label in the pair; pairwise = the pair are the "
        "two most probable classes (both with the top probability in prob_range)",
    )
    max_points: int = Field(200, ge=1, description="boundary points per pair, at most")
    min_points: int = Field(10, ge=2, description="fewer boundary points: λ is not estimated")
    lambda_batch_size: int = Field(64, ge=1)
    derivative_method: Method = Field(
        Method.AUTO, description="auto: exact fast path when the model allows it, else nested"
    )
    train_limit: int | None = Field(None, ge=10, description="first N training images only")
    test_limit: int | None = Field(None, ge=10, description="first N test images only")
    data_dir: str | None = Field(None, description="folder with MNIST IDX files")
    eval_batch_size: int = Field(1000, ge=1)
    measurement_seed: int = Field(
        1234, ge=0, lt=SEED_LIMIT, description="seed of λ subsampling and directions"
    )
    bootstrap_samples: int = Field(10_000, ge=100, le=1_000_000)
    gate_points: int = Field(8, ge=1, le=256, description="test points of the fast-vs-nested gate")
    self_check: bool = Field(
        True,
        description="check the fast derivative path against the nested reference (float64) once "
        "per model before use, and gate the initial model before any training",
    )

    @field_validator("conditions", mode="before")
    @classmethod
    def _conditions_from_cli(cls, value: Any) -> Any:
        return conditions_from_cli(value)

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs_from_cli(cls, value: Any) -> Any:
        return pairs_from_cli(value)

    @field_validator("model")
    @classmethod
    def _known_model(cls, value: str) -> str:
        return check_spec(value, MNIST_CLASSIFIERS)

    @field_validator("seeds", mode="before")
    @classmethod
    def _single_seed(cls, value: Any) -> Any:
        return [value] if isinstance(value, int) else value  # `--set seeds=3`

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

    def build_model(self, seed: int, data: MNISTTensors) -> torch.nn.Module:
        """The configured classifier for one seed, float32 (the images' dtype) on the images'
        device, by :func:`geomlab.models.registry.build_model`: a built-in CNN with
        ``dropout``, or the user's factory called after ``torch.manual_seed(seed)``, which must
        map ``[1, 1, 28, 28]`` images to ``[1, 10]`` logits."""
        return build_model(
            self.model, seed=seed, inputs=data.train_images, n_outputs=NUM_CLASSES,
            dtype=torch.float32, dropout=self.dropout, check_outputs=True,
        )  # fmt: skip


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


# --- data, model, training ---------------------------------------------------------------------


def load_data(config: Config, device) -> MNISTTensors:
    return load_mnist(
        device=device,
        data_dir=config.data_dir,
        train_limit=config.train_limit,
        test_limit=config.test_limit,
        label_noise=config.label_noise,
        noise_seed=config.noise_seed,
    )


def train_model(
    config: Config, condition: Condition, seed: int, data: MNISTTensors, device, log
) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Train one (condition, seed) model; returns it and a JSON-able record."""
    model = config.build_model(seed, data)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    model.train()
    # resolved and self-checked (train mode, the penalty's orders) before the first step
    path = deriv.resolve_path(
        model, data.train_images[:2], config.derivative_method, max_order=config.reg_max_order,
        labels=data.train_labels[:2], self_check=config.self_check,
    )  # fmt: skip
    method = str(path.method)  # fast: linear (cumulants) or Taylor mode
    direction_generator = torch.Generator(device=device).manual_seed(10_000 + seed)

    def loss_fn(model, images, labels):
        return class_selective_loss(
            model, images, labels, target_classes=condition.targets, scale=config.reg_scale,
            max_order=config.reg_max_order, num_directions=config.reg_directions,
            method=path, generator=direction_generator, self_check=config.self_check,
        )  # fmt: skip

    def log_epoch(row):
        log.info("%s seed %d epoch %d/%d: loss %.4f (penalty %.4f) test acc %.4f", condition,
                 seed, row["epoch"], config.epochs, row["train_loss"], row["train_penalty"],
                 row["test_acc"])  # fmt: skip

    record = train_classifier(
        model, optimizer, data.train_images, data.train_labels, loss_fn=loss_fn,
        epochs=config.epochs, batch_size=config.batch_size,
        batch_generator=torch.Generator().manual_seed(seed),
        evaluate=lambda m: evaluate_classifier(m, data.test_images, data.test_labels,
                                               batch_size=config.eval_batch_size),
        on_epoch=log_epoch,
    )  # fmt: skip
    last = record.history[-1]
    return model, {
        "condition": str(condition),
        "seed": seed,
        "derivative_method": method,
        "test_acc": last["test_acc"],
        "test_loss": last["test_loss"],
        "penalty_share": record.penalty_share,
        "train_time_s": record.seconds,
        "history": record.history,
    }


def checkpoint_name(condition: Condition, seed: int) -> str:
    return f"{condition.label}_seed{seed}.pt"


def trained_model(config: Config, condition: Condition, seed: int, data, ctx: RunContext):
    """The (condition, seed) model and its training record: trained once, then reused from
    the run's resume cache and checkpoint (retrained if the checkpoint is gone)."""
    checkpoint = ctx.checkpoint_path(checkpoint_name(condition, seed))
    trained: dict[str, torch.nn.Module] = {}

    def train() -> dict[str, Any]:
        model, record = train_model(config, condition, seed, data, ctx.device, ctx.log)
        save_checkpoint(model, checkpoint)
        trained["model"] = model
        return record

    record = ctx.cached(f"train_{condition.label}_seed{seed}", train)
    if not checkpoint.exists():  # record without weights (deleted): train again
        ctx.log.warning("checkpoint %s missing: retraining", checkpoint.name)
        record = train()
    if "model" in trained:
        return trained["model"].eval(), record, checkpoint
    model = config.build_model(seed, data)
    return load_checkpoint(model, checkpoint, device=ctx.device), record, checkpoint


# --- λ measurement -----------------------------------------------------------------------------


def measurement_generator(base_seed: int, seed: int, pair, device) -> torch.Generator:
    """The same random stream for a (seed, pair) under every condition (common random numbers)."""
    value = base_seed * 1_000_003 + seed * 1_009 + pair[0] * 11 + pair[1]
    return torch.Generator(device=device).manual_seed(value)


def measure_pairs(model, data: MNISTTensors, config: Config, *, seed: int, device):
    """λ of every configured pair for one model: ``[(pair, LambdaMeasurement), ...]``."""
    probs = predict_probabilities(model, data.test_images, batch_size=config.eval_batch_size)
    return [
        (pair, measure_lambda(
            model, data.test_images, data.test_labels, pair,
            max_order=config.lambda_max_order, num_directions=config.lambda_directions,
            prob_range=tuple(config.prob_range), max_points=config.max_points,
            min_points=config.min_points, batch_size=config.lambda_batch_size,
            method=config.derivative_method, boundary=config.boundary,
            generator=measurement_generator(config.measurement_seed, seed, pair, device),
            probs=probs, self_check=config.self_check,
        ))
        for pair in config.pairs
    ]  # fmt: skip


def fit_rows(condition: Condition, seed: int, measurements) -> list[dict[str, Any]]:
    """``lambda_fits.csv`` rows: y_n = mean log|d_n| per order, with the fitted line."""
    return [
        {"condition": condition.label, "seed": seed, "pair": pair.label, "order": n,
         "mean_log_abs_d": value, "slope": m.fit.slope, "intercept": m.fit.intercept,
         "num_points": m.num_points, "method": m.method}
        for pair, m in measurements
        if m.fit is not None
        for n, value in zip(m.fit.orders, m.fit.mean_log_abs, strict=True)
    ]  # fmt: skip


def fast_path_gate(
    model, data: MNISTTensors, config: Config, scope: str,
    name: str = "fast_derivatives_match_nested",
) -> GateResult:  # fmt: skip
    """Fast vs nested derivatives on a float64 copy of a model (eval mode), compared order by
    order relative to each order's largest value (orders differ by many decades)."""
    points = data.test_images[: config.gate_points].double()
    labels = data.test_labels[: config.gate_points]
    reference_model = copy.deepcopy(model).double().eval()
    path = deriv.resolve_path(reference_model, points, config.derivative_method)
    if path is Path.NESTED:
        return GateResult(name, True, "skipped: nested reference in use", "")
    generator = torch.Generator(device=points.device).manual_seed(config.measurement_seed)
    directions = deriv.sample_unit_directions(2, points, generator=generator)
    order = config.lambda_max_order
    with torch.no_grad():
        fast, _ = deriv.fast_directional_derivatives(
            reference_model, points, labels, directions, max_order=order, path=path
        )
    nested = deriv.nested_directional_derivatives(
        reference_model, points, labels, directions, max_order=order
    )
    scale = nested.abs().flatten(1).amax(dim=1).clamp_min(1e-300).view(-1, 1, 1)
    return allclose_gate(fast / scale, nested / scale, name=name, scope=scope, rel_tol=1e-9)


INITIAL_GATE = "fast_derivatives_match_nested_before_training"


def initial_gate(config: Config, data: MNISTTensors, ctx: RunContext) -> GateResult:
    """The fast-vs-nested gate on the first job's initial (untrained) model, before any
    training: a fast path that is wrong for this model fails the run now, not after all the
    training has run with a wrong penalty. Raises ``ValueError`` when it fails."""
    seed = config.seeds[0]
    model = config.build_model(seed, data)
    gate = fast_path_gate(model, data, config, scope=f"initial model seed {seed}",
                          name=INITIAL_GATE)  # fmt: skip
    if not gate.passed:
        raise ValueError(
            f"the fast derivative path disagrees with the nested reference on the initial "
            f"{config.model} model, before training ({gate.message}); set "
            "derivative_method=nested, or report the model"
        )
    ctx.log.info("fast derivative path checked on the initial model: %s", gate.message)
    return gate


# --- statistics over seeds ---------------------------------------------------------------------


def selectivity_effects(models: pd.DataFrame, config: Config) -> dict[str, Any]:
    """Δλ = λ(condition) − λ(baseline), paired by seed, averaged over targeted and untargeted
    pairs; selectivity = Δ_targeted − Δ_untargeted; mean and 95% bootstrap interval over seeds
    (``geomlab.stats``: non-finite values dropped and counted, an interval needs two)."""
    if "baseline" not in config.conditions:
        return {"note": "no baseline condition: Δλ is not defined"}
    baseline = models[models["condition"] == "baseline"].set_index("seed")
    effects: dict[str, Any] = {}
    for condition in config.conditions:
        if condition.kind == "baseline":
            continue
        rows = models[models["condition"] == condition.label].set_index("seed")
        roles = {pair.label: condition.role(pair) for pair in config.pairs}
        per_seed = []
        for seed in rows.index.intersection(baseline.index):
            deltas = {
                name: rows.at[seed, f"lambda_{name}"] - baseline.at[seed, f"lambda_{name}"]
                for name in roles
            }
            entry: dict[str, Any] = {"seed": int(seed)}
            for role in ("targeted", "untargeted"):
                entry[f"delta_{role}"] = stats.mean(d for n, d in deltas.items()
                                                    if roles[n] == role)  # fmt: skip
            entry["selectivity"] = entry["delta_targeted"] - entry["delta_untargeted"]
            entry.update({f"delta_{n}": float(d) for n, d in deltas.items()})
            per_seed.append(entry)
        result: dict[str, Any] = {
            "targets": "all" if condition.targets is None else list(condition.targets),
            "pair_roles": roles,
            "per_seed": per_seed,
        }
        for key in ("delta_targeted", "delta_untargeted", "selectivity"):
            result[key] = stats.summarize([e[key] for e in per_seed],
                                          n_resamples=config.bootstrap_samples,
                                          seed=config.measurement_seed)  # fmt: skip
        effects[condition.label] = result
    return effects


def condition_summary(models: pd.DataFrame, config: Config) -> dict[str, Any]:
    """Per condition: mean and std over seeds (ddof 0) of the metrics and of λ per pair."""
    summary = {}
    for condition in config.conditions:
        rows = models[models["condition"] == condition.label]
        entry: dict[str, Any] = {"n_seeds": len(rows)}
        for column in ("test_acc", "test_loss", "penalty_share", "train_time_s"):
            entry[f"{column}_mean"] = stats.mean(rows[column])
            entry[f"{column}_std"] = stats.std(rows[column], ddof=0)
        for pair in config.pairs:
            values = rows[f"lambda_{pair.label}"]
            entry[f"lambda_{pair.label}"] = {
                "mean": stats.mean(values),
                "std": stats.std(values, ddof=0),
                "n_measured": len(stats.finite_values(values)[0]),
            }
        summary[condition.label] = entry
    return summary


# --- the run -----------------------------------------------------------------------------------


def run(config: Config, ctx: RunContext) -> RunResult:
    from geomlab.plots import lambda_control as plots

    data = load_data(config, ctx.device)
    ctx.log.info(
        "MNIST from %s: %d train (%d labels corrupted), %d test",
        data.source, data.train_labels.numel(), data.label_noise["num_corrupted"],
        data.test_labels.numel(),
    )  # fmt: skip
    jobs = [(condition, seed) for condition in config.conditions for seed in config.seeds]
    gates = [initial_gate(config, data, ctx)] if config.self_check else []
    model_rows, history_rows, fit_table, checkpoints = [], [], [], {}
    for condition, seed in ctx.progress(jobs, total=len(jobs), description="models"):
        model, record, checkpoint = trained_model(config, condition, seed, data, ctx)
        checkpoints[f"{condition.label}_seed{seed}"] = str(checkpoint.relative_to(ctx.out_dir))
        measurements = measure_pairs(model, data, config, seed=seed, device=ctx.device)
        if len(gates) < 1 + config.self_check:  # once per run, on the first trained model
            gates.append(
                fast_path_gate(model, data, config, scope=f"{condition.label} seed {seed}")
            )
        row = {"condition": condition.label, "seed": seed, "test_acc": record["test_acc"],
               "test_loss": record["test_loss"]}  # fmt: skip
        for pair, m in measurements:
            row[f"lambda_{pair.label}"] = m.slope
            row[f"n_points_{pair.label}"] = m.num_points
        row.update({key: record[key] for key in ("penalty_share", "train_time_s",
                                                 "derivative_method")})  # fmt: skip
        model_rows.append(row)
        history_rows += [{"condition": condition.label, "seed": seed, **epoch_row}
                         for epoch_row in record["history"]]  # fmt: skip
        fit_table.extend(fit_rows(condition, seed, measurements))

    models = pd.DataFrame(model_rows)
    history = pd.DataFrame(history_rows)
    fits = pd.DataFrame(fit_table, columns=FIT_COLUMNS)
    ctx.write_csv("models.csv", models)
    ctx.write_csv("history.csv", history)
    ctx.write_csv("lambda_fits.csv", fits)

    labels = [condition.label for condition in config.conditions]
    pair_names = [pair.label for pair in config.pairs]
    selectivity = selectivity_effects(models, config)
    summary = {
        "conditions": condition_summary(models, config),
        "selectivity": selectivity,
        "data": data.manifest(),
        "pairs": pair_names,
        "derivative_methods": sorted(set(models["derivative_method"])),
        "missing_lambda": [
            f"{r['condition']} seed {r['seed']} {name}"
            for r in model_rows
            for name in pair_names
            if not math.isfinite(r[f"lambda_{name}"])
        ],
        "checkpoints": checkpoints,
    }
    ctx.write_json("summary.json", summary)

    ctx.save_figure(plots.lambda_by_pair(models, labels, pair_names), "lambda_by_pair")
    if not fits.empty:
        ctx.save_figure(plots.lambda_fits(fits, labels, pair_names), "lambda_fits")
    ctx.save_figure(plots.training_curves(history, labels), "training_curves")

    gates.insert(0, finite_gate({"test_acc": models["test_acc"].to_numpy(),
                                 "test_loss": models["test_loss"].to_numpy(),
                                 "train_loss": history["train_loss"].to_numpy()},
                                name="finite_metrics"))  # fmt: skip
    headline = {f"test_acc_{label}": summary["conditions"][label]["test_acc_mean"]
                for label in labels}  # fmt: skip
    for label, effect in selectivity.items():
        if not isinstance(effect, dict):
            continue
        if math.isfinite(effect["selectivity"]["mean"]):
            headline[f"selectivity_{label}"] = effect["selectivity"]["mean"]
        elif math.isfinite(effect["delta_targeted"]["mean"]):
            headline[f"delta_lambda_{label}"] = effect["delta_targeted"]["mean"]
    return RunResult(summary=summary, gates=gates, headline=headline)


EXPERIMENT = Experiment(
    name="lambda-control",
    aliases=("lambda", "class-selective-lambda", "e4"),
    description="Class-selective λ control on MNIST: derivative penalty on chosen classes, "
    "λ measured at class-pair decision boundaries (exact fast derivative engine).",
    config_cls=Config,
    presets=PRESETS,
    run=run,
)
