"""The sweep's tables: ``runs.csv`` (one row per run) and ``aggregate.csv`` (headline metrics
over seeds per grid point, by :mod:`geomlab.stats`), and reading a sweep directory back."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from geomlab import io, rundir, stats
from geomlab.sweep.layout import (
    FINISHED,
    CorruptFileError,
    SweepError,
    read_manifest,
)

if TYPE_CHECKING:
    from geomlab.sweep.executors import RunReport
    from geomlab.sweep.grid import RunSpec

# runs.csv: identity first, then config fields and metrics as runs finish, then these.
IDENTITY_COLUMNS = ("run", "label", "status", "config_hash", "seed")
TAIL_COLUMNS = ("wall_seconds", "started", "finished", "host", "error")


def _cell(value: Any) -> Any:
    return json.dumps(value) if isinstance(value, list | dict) else value


def run_row(run: RunSpec, manifest: dict[str, Any] | None, report: RunReport | None) -> dict:
    """One runs.csv row: identity, status, config fields, headline metrics, timing, error."""
    status = "pending"
    if manifest is not None:
        status = manifest.get("status", "pending")
    if report is not None and report.status != "skipped":
        status = report.status
    row: dict[str, Any] = {"run": run.name, "label": run.label, "status": status}
    row["config_hash"] = run.config_hash
    if run.seed is not None:
        row["seed"] = run.seed
    row.update({key: _cell(value) for key, value in run.config.items()})
    finished = manifest is not None and manifest.get("status") in FINISHED
    for key, value in ((manifest or {}).get("headline") or {}).items() if finished else ():
        row[key if key not in row else f"headline_{key}"] = value
    manifest = manifest or {}
    row["wall_seconds"] = manifest.get("wall_seconds")
    row["started"] = manifest.get("started")
    row["finished"] = manifest.get("finished")
    row["host"] = report.host if report else manifest.get("environment", {}).get("hostname")
    error = None
    if report is not None and report.traceback:
        error = report.traceback.strip()
    elif status in ("failed", "interrupted"):
        error = manifest.get("error")
    row["error"] = error
    return row


def runs_frame(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Rows in grid order with a stable column order (metrics appear as runs finish)."""
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns and key not in TAIL_COLUMNS)
    return pd.DataFrame(rows, columns=[*columns, *TAIL_COLUMNS])


def write_table(path: Path, frame: pd.DataFrame) -> Path:
    """Atomic CSV with shortest round-trip floats, so config values read as typed (1e-06)."""
    return io.write_csv(path, frame)


def headline_metrics(frame: pd.DataFrame, config_fields: list[str]) -> list[str]:
    """The numeric runs.csv columns that are neither identity, timing nor config fields."""
    known = {*IDENTITY_COLUMNS, *TAIL_COLUMNS, *config_fields}
    return [c for c in frame.columns if c not in known and pd.api.types.is_numeric_dtype(frame[c])]


def aggregate_over_seeds(
    runs: pd.DataFrame, group_keys: list[str], metrics: list[str]
) -> pd.DataFrame:
    """Per grid point: n, mean, std, 95% bootstrap CI of each headline metric over the seeds
    of its complete runs (failed runs and runs that failed a gate are left out).

    Statistics follow :mod:`geomlab.stats` (non-finite values dropped; std and CI need two
    values; the CI is seeded, so the table is reproducible)."""
    done = runs[runs["status"] == "complete"]
    groups = done.groupby(group_keys, sort=False, dropna=False) if group_keys else [((), done)]
    rows = []
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(group_keys, key, strict=True))
        row["n_runs"] = len(frame)
        for metric in metrics:
            values = pd.to_numeric(frame[metric], errors="coerce").to_numpy(dtype=float)
            summary = stats.summarize(values)
            row[f"{metric}_mean"] = summary["mean"]
            row[f"{metric}_std"] = summary["std"]
            row[f"{metric}_ci_low"], row[f"{metric}_ci_high"] = summary["ci95"]
        rows.append(row)
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- reading back


@dataclass
class SweepTables:
    """A sweep directory read back: its record, runs table, grid keys, headline metrics and
    their aggregate over seeds (computed from runs.csv, so a sweep still running has one)."""

    path: Path
    record: dict[str, Any]  # sweep.json
    runs: pd.DataFrame  # runs.csv
    grid_keys: list[str]
    metrics: list[str]
    aggregate: pd.DataFrame

    def run_dir(self, name: str) -> Path:
        """The run directory of runs.csv's ``run`` cell: refused (:class:`SweepError`) unless
        it resolves inside the sweep's ``runs/`` folder."""
        try:
            return rundir.sweep_run_dir(self.path, name)
        except rundir.RunDirError as error:
            raise SweepError(str(error)) from None


def load_sweep(sweep_dir: Path) -> SweepTables:
    """Read a sweep directory through :mod:`geomlab.rundir` (schemas of ``sweep.json`` and of
    the run manifests, ``runs.csv``'s columns, every run inside the sweep); a
    :class:`SweepError` names a missing, corrupt or wrongly shaped file."""
    sweep_dir = Path(sweep_dir)
    try:
        sweep = rundir.read_sweep(sweep_dir)
    except rundir.RunDirError as error:
        raise CorruptFileError(error.path, str(error)) from None
    record = sweep.record.model_dump(mode="json", exclude_unset=True)
    runs = sweep.runs
    grid_keys = list(sweep.record.grid)
    config_fields: list[str] = []
    for name in runs["run"]:  # the config's fields, from the first run that has a manifest
        manifest = read_manifest(sweep.run_dir(name))
        if manifest is not None:
            config_fields = list(manifest.get("config") or {})
            break
    metrics = headline_metrics(runs, config_fields or grid_keys)
    aggregate = aggregate_over_seeds(runs, grid_keys, metrics)
    return SweepTables(sweep_dir, record, runs, grid_keys, metrics, aggregate)
