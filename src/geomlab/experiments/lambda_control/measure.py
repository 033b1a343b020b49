"""``geomlab measure-lambda``: λ re-measured from a finished lambda-control run's checkpoints,
as a run of its own through the runner (own directory, manifest, device from the resolver)."""

from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path
from typing import Any, Literal

import pandas as pd
from pydantic import Field, ValidationError, field_validator, model_validator

from geomlab import io
from geomlab.experiments.base import Experiment, ExperimentConfig, RunContext, RunResult
from geomlab.experiments.lambda_control.experiment import (
    EXPERIMENT,
    FIT_COLUMNS,
    Config,
    build_model,
    checkpoint_name,
    fit_rows,
    load_data,
    measure_pairs,
)
from geomlab.experiments.lambda_control.types import Condition, Pair, pairs_from_cli
from geomlab.geometry.gates import finite_columns_gate
from geomlab.training import load_checkpoint


class MeasureConfig(ExperimentConfig):
    """λ re-measured from a lambda-control run's checkpoints: the run's config with the λ
    settings given here (None keeps the run's value)."""

    source: str = Field(description="the lambda-control run directory whose models are measured")
    pairs: list[Pair] | None = None
    prob_range: tuple[float, float] | None = None
    boundary: Literal["notebook", "pairwise"] | None = None
    lambda_max_order: int | None = Field(None, ge=2, le=8)
    lambda_directions: int | None = Field(None, ge=1, le=64)
    max_points: int | None = Field(None, ge=1)
    min_points: int | None = Field(None, ge=2)
    data_dir: str | None = None

    @field_validator("pairs", mode="before")
    @classmethod
    def _pairs_from_cli(cls, value: Any) -> Any:
        return None if value is None else pairs_from_cli(value)

    @field_validator("source")
    @classmethod
    def _lambda_control_run(cls, value: str) -> str:
        path = Path(value).resolve()
        manifest = path / "manifest.json"
        if not manifest.is_file():
            raise ValueError(f"{value} has no manifest.json: not a geomlab run directory")
        try:
            experiment = io.read_json(manifest).get("experiment")
        except (OSError, ValueError) as error:
            raise ValueError(f"cannot read {manifest}: {error}") from None
        if experiment != EXPERIMENT.name:
            raise ValueError(f"{value} is a {experiment!r} run, not {EXPERIMENT.name}")
        return str(path)

    @model_validator(mode="after")
    def _merged_config_is_valid(self) -> MeasureConfig:
        if not any(path.is_file() for path in self.checkpoints(self.run_config()).values()):
            raise ValueError(f"no model checkpoints found in {Path(self.source) / 'checkpoints'}")
        return self

    def checkpoints(self, run_config: Config) -> dict[tuple[Condition, int], Path]:
        """Where the source run keeps each (condition, seed) model (``summary.json`` records
        it; older runs: ``checkpoints/<condition>_seed<s>.pt``)."""
        source = Path(self.source)
        summary = source / "summary.json"
        recorded = io.read_json(summary).get("checkpoints", {}) if summary.is_file() else {}
        paths = {}
        for condition in run_config.conditions:
            for seed in run_config.seeds:
                name = checkpoint_name(condition, seed)
                paths[condition, seed] = source / recorded.get(
                    name.removesuffix(".pt"), f"checkpoints/{name}"
                )
        return paths

    def run_config(self) -> Config:
        """The source run's config with this measurement's settings."""
        values = dict(io.read_json(Path(self.source) / "manifest.json")["config"])
        fields = ("pairs", "prob_range", "boundary", "lambda_max_order", "lambda_directions",
                  "max_points", "min_points", "data_dir")  # fmt: skip
        values.update({k: getattr(self, k) for k in fields if getattr(self, k) is not None})
        values["device"] = self.device
        try:
            return Config(**values)
        except ValidationError as error:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}"
                                 for e in error.errors())  # fmt: skip
            raise ValueError(f"with the run's config: {problems}") from None


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
        model = build_model(run_config, seed=seed, device=ctx.device)
        model = load_checkpoint(model, path, device=ctx.device)
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
) -> pd.DataFrame:
    """Re-measure λ from a run's checkpoints (no retraining) for other pairs or settings.

    A run of its own (``measure-lambda``) through the runner: validated before any work, its
    own ``manifest.json`` listing what it wrote, the device from the runner's resolver. Writes
    ``lambda_remeasured.csv`` (one row per model and pair) and ``lambda_remeasured_fits.csv``
    (per order) into ``out_dir`` (default ``RUN_DIR/measure-lambda/<settings hash>``, so the
    same settings are measured once) and returns the first; ``table.attrs["out_dir"]`` says where.
    """
    from geomlab.runner import run_experiment

    overrides = {
        "source": str(run_dir), "pairs": pairs, "prob_range": prob_range, "boundary": boundary,
        "lambda_max_order": max_order, "lambda_directions": num_directions,
        "max_points": max_points, "min_points": min_points, "data_dir": data_dir,
        "device": device,
    }  # fmt: skip
    config = MEASURE_EXPERIMENT.make_config(
        "default", {k: v for k, v in overrides.items() if v is not None}
    )
    if out_dir is None:
        settings = json.dumps(config.model_dump(mode="json", exclude={"device"}), sort_keys=True)
        digest = hashlib.sha256(settings.encode()).hexdigest()[:12]
        out_dir = Path(config.source) / "measure-lambda" / digest
    outcome = run_experiment(
        MEASURE_EXPERIMENT, config, preset="default", out_dir=Path(out_dir), force=force
    )
    table = pd.read_csv(outcome.out_dir / "lambda_remeasured.csv")
    table.attrs["out_dir"] = str(outcome.out_dir)
    return table
