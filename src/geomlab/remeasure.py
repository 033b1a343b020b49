"""``geomlab measure-lambda``: λ re-measured from a finished lambda-control run's checkpoints,
as a run of its own through the runner (own directory, manifest, device from the resolver).

An edge module, beside the runner: it reads a received run directory (its manifest is data,
a model factory it names is imported only when trusted, checkpoints load as weights only) and
runs the measurement through :func:`geomlab.runner.run_experiment`. The science it wires —
boundary points, derivatives, λ fits — is lambda-control's (``measure_pairs``, ``fit_rows``)
and geometry's; nothing under ``geomlab.experiments`` imports this module."""

from __future__ import annotations

import math
import pickle
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, ValidationError, field_validator, model_validator

from geomlab import rundir
from geomlab.experiments.base import Experiment, ExperimentConfig, RunContext, RunResult
from geomlab.experiments.lambda_control.experiment import (
    EXPERIMENT,
    FIT_COLUMNS,
    Config,
    checkpoint_name,
    fit_rows,
    load_data,
    measure_pairs,
)
from geomlab.experiments.lambda_control.types import Condition, Pair, pairs_from_cli
from geomlab.geometry.gates import finite_columns_gate
from geomlab.models.loading import is_import_path
from geomlab.models.registry import MNIST_CLASSIFIERS, check_spec
from geomlab.runner import RunInputError, config_hash, run_experiment
from geomlab.training import load_checkpoint


class UntrustedModelError(ValueError):
    """The source run names a model factory by import path and nobody said to run it."""


class CheckpointError(RunInputError):
    """A checkpoint of the source run cannot be loaded into its model; names the file."""


def _source_manifest(source: str | Path) -> rundir.Manifest:
    """The source run's manifest, validated (never executed): :class:`ValueError` naming the
    file when it is missing, corrupt or of the wrong shape."""
    path = Path(source)
    try:
        manifest = rundir.read_manifest(path)
    except rundir.RunDirError as error:
        raise ValueError(str(error)) from None
    if manifest is None:
        raise ValueError(f"{source} has no manifest.json: not a geomlab run directory")
    return manifest


class MeasureConfig(ExperimentConfig):
    """λ re-measured from a lambda-control run's checkpoints: the run's config with the λ
    settings given here (None keeps the run's value).

    A run directory may come from someone else: its manifest is data. When it names a model
    factory by import path (``model=package.module:function``), that code is imported and
    called only with ``trust_model`` (``--trust-model``) or when ``model`` names it again
    (``--model``); otherwise validation stops, saying which import it would run."""

    source: str = Field(description="the lambda-control run directory whose models are measured")
    pairs: list[Pair] | None = None
    prob_range: tuple[float, float] | None = None
    boundary: Literal["notebook", "pairwise"] | None = None
    lambda_max_order: int | None = Field(None, ge=2, le=8)
    lambda_directions: int | None = Field(None, ge=1, le=64)
    max_points: int | None = Field(None, ge=1)
    min_points: int | None = Field(None, ge=2)
    data_dir: str | None = None
    model: str | None = Field(
        None, description="the model factory (import path) to build the run's models with"
    )
    trust_model: bool = Field(
        False, description="import and call the model factory the source manifest names"
    )

    def hash_payload(self) -> dict[str, Any]:
        """Trusting the source changes nothing measured; a model given again that equals the
        run's is the run's (the hash is the one of earlier geomlab versions)."""
        payload = super().hash_payload()
        payload.pop("trust_model", None)
        if payload.get("model") is None:
            payload.pop("model", None)
        return payload

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs_from_cli(cls, value: Any) -> Any:
        return None if value is None else pairs_from_cli(value)

    @field_validator("source")
    @classmethod
    def _lambda_control_run(cls, value: str) -> str:
        path = Path(value).resolve()
        experiment = _source_manifest(path).experiment
        if experiment != EXPERIMENT.name:
            raise ValueError(f"{value} is a {experiment!r} run, not {EXPERIMENT.name}")
        return str(path)

    @field_validator("model")
    @classmethod
    def _model_spec(cls, value: str | None) -> str | None:
        # named here by whoever measures, so trusted: checked (and imported) as the run's is
        return None if value is None else check_spec(value, MNIST_CLASSIFIERS)

    @model_validator(mode="after")
    def _merged_config_is_valid(self) -> MeasureConfig:
        self.check_trust()
        if not any(path.is_file() for path in self.checkpoints(self.run_config()).values()):
            raise ValueError(f"no model checkpoints found in {Path(self.source) / 'checkpoints'}")
        return self

    def source_model(self) -> Any:
        return _source_manifest(self.source).config.get("model")

    def check_trust(self) -> None:
        """Refuse (:class:`UntrustedModelError`) to import a model factory that only the
        received manifest names."""
        named = self.source_model()
        if self.model is not None or self.trust_model:
            return
        if isinstance(named, str) and is_import_path(named):
            module, _, function = named.partition(":")
            raise UntrustedModelError(
                f"{Path(self.source) / rundir.MANIFEST} names the model {named!r}: measuring "
                f"would import module {module!r} and call {function}(), code chosen by whoever "
                f"wrote that run. If you trust it, pass --trust-model, or name it yourself "
                f"with --model {named}"
            )

    def checkpoints(self, run_config: Config) -> dict[tuple[Condition, int], Path]:
        """Where the source run keeps each (condition, seed) model (``summary.json`` records
        it; older runs: ``checkpoints/<condition>_seed<s>.pt``); every path must stay inside
        the source run (:class:`ValueError` naming the file otherwise)."""
        source = Path(self.source)
        summary = source / "summary.json"
        recorded: Any = {}
        try:
            if summary.is_file() or summary.is_symlink():
                recorded = rundir.read_contained_json(source, "summary.json")
                recorded = recorded.get("checkpoints", {}) if isinstance(recorded, dict) else None
                if not isinstance(recorded, dict):
                    raise ValueError(f"{summary}: field 'checkpoints' is not an object")
            paths = {}
            for condition in run_config.conditions:
                for seed in run_config.seeds:
                    name = checkpoint_name(condition, seed)
                    relative = recorded.get(name.removesuffix(".pt"), f"checkpoints/{name}")
                    paths[condition, seed] = rundir.contained(
                        source, relative, source=summary, what="checkpoint"
                    )
        except rundir.RunDirError as error:
            raise ValueError(str(error)) from None
        return paths

    def run_config(self) -> Config:
        """The source run's config with this measurement's settings."""
        values = dict(_source_manifest(self.source).config)
        self.check_trust()  # before Config imports a model factory to validate it
        fields = ("pairs", "prob_range", "boundary", "lambda_max_order", "lambda_directions",
                  "max_points", "min_points", "data_dir", "model")  # fmt: skip
        values.update({k: getattr(self, k) for k in fields if getattr(self, k) is not None})
        values["device"] = self.device
        try:
            return Config(**values)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in error.errors())  # fmt: skip
            raise ValueError(
                f"with the run's config ({Path(self.source) / rundir.MANIFEST}): {problems}"
            ) from None


def _load_model(model: Any, path: Path, device: Any) -> Any:
    """``path``'s weights (``weights_only``: nothing in the file is executed) into ``model``;
    :class:`CheckpointError` naming the file when it is refused or does not fit."""
    try:
        return load_checkpoint(model, path, device=device)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, TypeError, ValueError,
            AttributeError, KeyError) as error:  # fmt: skip
        first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        if isinstance(error, pickle.UnpicklingError):
            why = f"the safe loader (weights only) refused it, nothing in it was run: {first}"
        else:
            why = f"it does not fit the run's model ({type(error).__name__}: {first[:300]})"
        raise CheckpointError(f"checkpoint {path} cannot be loaded: {why}") from None


def run_measurement(config: MeasureConfig, ctx: RunContext) -> RunResult:
    """Load each (condition, seed) checkpoint of the source run and measure λ again."""
    run_config = config.run_config()
    source = Path(config.source)
    data = load_data(run_config, ctx.device)
    rows, fit_table, missing = [], [], []
    for (condition, seed), path in config.checkpoints(run_config).items():
        if not path.is_file():
            ctx.log.warning("skipping %s seed %d: no checkpoint %s", condition, seed, path)
            missing.append(str(path.relative_to(source)))
            continue
        model = run_config.build_model(seed, data)
        model = _load_model(model, path, ctx.device)
        measurements = measure_pairs(model, data, run_config, seed=seed, device=ctx.device)
        rows += [
            {"condition": condition.label, "seed": seed, "pair": pair.label,
             "lambda": m.slope, "num_points": m.num_points,
             "intercept": m.fit.intercept if m.fit else float("nan"),
             "max_order": run_config.lambda_max_order,
             "num_directions": run_config.lambda_directions,
             "prob_low": run_config.prob_range[0], "prob_high": run_config.prob_range[1],
             "method": m.method}
            for pair, m in measurements
        ]  # fmt: skip
        fit_table.extend(fit_rows(condition, seed, measurements))
    table = pd.DataFrame(rows)
    fits = pd.DataFrame(fit_table, columns=FIT_COLUMNS)
    ctx.write_csv("lambda_remeasured.csv", table)
    ctx.write_csv("lambda_remeasured_fits.csv", fits)
    summary = {
        "source": str(source),
        "data": data.manifest(),
        "pairs": [pair.label for pair in run_config.pairs],
        "missing_checkpoints": missing,
        "missing_lambda": [
            f"{r['condition']} seed {r['seed']} {r['pair']}"
            for r in rows
            if not math.isfinite(r["lambda"])
        ],  # fmt: skip
    }
    ctx.write_json("summary.json", summary)
    gate = finite_columns_gate(fits, ["mean_log_abs_d", "slope", "intercept"], name="finite_fits")
    return RunResult(summary=summary, gates=[gate])


MEASURE_EXPERIMENT = Experiment(
    name="measure-lambda",
    aliases=(),
    description="λ re-measured from a finished lambda-control run's checkpoints (no training).",
    config_cls=MeasureConfig,
    presets={"default": {}},
    run=run_measurement,
    default_preset="default",
)


def measure_lambda_from_run(
    run_dir: str | Path,
    *,
    pairs: Any = None,
    prob_range: tuple[float, float] | None = None,
    boundary: str | None = None,
    max_order: int | None = None,
    num_directions: int | None = None,
    max_points: int | None = None,
    min_points: int | None = None,
    device: str = "auto",
    data_dir: str | None = None,
    out_dir: str | Path | None = None,
    force: bool = False,
    model: str | None = None,
    trust_model: bool = False,
) -> pd.DataFrame:
    """Re-measure λ from a run's checkpoints (no retraining) for other pairs or settings.

    A run of its own (``measure-lambda``) through the runner: validated before any work, its
    own ``manifest.json`` listing what it wrote, the device from the runner's resolver. Writes
    ``lambda_remeasured.csv`` (one row per model and pair) and ``lambda_remeasured_fits.csv``
    (per order) into ``out_dir`` (default ``RUN_DIR/measure-lambda/<config hash>``, the
    runner's :func:`~geomlab.runner.config_hash` of this measurement, the one its manifest
    records: the same settings are measured once) and returns the first;
    ``table.attrs["out_dir"]`` says where.

    A model factory the run's manifest names by import path is imported only with
    ``trust_model`` or when ``model`` names one (see :class:`MeasureConfig`).
    """
    overrides = {
        "source": str(run_dir), "pairs": pairs, "prob_range": prob_range, "boundary": boundary,
        "lambda_max_order": max_order, "lambda_directions": num_directions,
        "max_points": max_points, "min_points": min_points, "data_dir": data_dir,
        "device": device, "model": model, "trust_model": trust_model or None,
    }  # fmt: skip
    config = MEASURE_EXPERIMENT.make_config(
        "default", {k: v for k, v in overrides.items() if v is not None}
    )
    if out_dir is None:
        digest = config_hash(MEASURE_EXPERIMENT.name, config)
        out_dir = Path(config.source) / "measure-lambda" / digest
    outcome = run_experiment(
        MEASURE_EXPERIMENT, config, preset="default", out_dir=Path(out_dir), force=force
    )
    table = pd.read_csv(outcome.out_dir / "lambda_remeasured.csv")
    table.attrs["out_dir"] = str(outcome.out_dir)
    return table
