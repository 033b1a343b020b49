"""Sweeps: many runs of one experiment over a grid of config values and seeds.

A sweep directory holds ``sweep.json`` (the grid and its runs), ``runs.csv`` (one row per
run, rewritten atomically after every finished run), ``aggregate.csv`` (headline metrics over
seeds per grid point), ``sweep.log``, and ``runs/<label>-<config hash>/``, one ordinary run
directory per grid point. A run's ``manifest.json`` status is the source of truth: rerunning
the sweep skips finished runs and resumes or reruns the others.

The package, in the order a sweep uses it:

- :mod:`~geomlab.sweep.grid`: ``--grid`` / ``--seeds`` parsing and expansion into validated runs;
- :mod:`~geomlab.sweep.executors`: the worker (one run under a per-run lock), the local process
  pool and Dask;
- :mod:`~geomlab.sweep.driver`: the loop that keeps runs in flight and records them;
- :mod:`~geomlab.sweep.tables`: ``runs.csv`` and ``aggregate.csv``, and reading a sweep back;
- :mod:`~geomlab.sweep.display`: progress bar or log lines; :mod:`~geomlab.sweep.layout`:
  file names, the error types, reading JSON that may be corrupt.

This module is the public API (the CLI and :mod:`geomlab.report` use only it). Its names load
on first use, so ``import geomlab.sweep`` costs nothing until a sweep is run or read.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    # layout: file names, statuses, errors, reading
    "AGGREGATE_CSV": "layout",
    "FINISHED": "layout",
    "RUNS_CSV": "layout",
    "RUNS_DIR": "layout",
    "SWEEP_FILE": "layout",
    "SWEEP_LOG": "layout",
    "TRACEBACK_FILE": "layout",
    "CorruptFileError": "layout",
    "SweepError": "layout",
    "is_run_dir": "layout",
    "is_sweep_dir": "layout",
    "read_manifest": "layout",
    # grid
    "LABEL_MAX": "grid",
    "RunSpec": "grid",
    "SweepSpec": "grid",
    "default_sweep_dir": "grid",
    "expand": "grid",
    "make_label": "grid",
    "parse_grid": "grid",
    "parse_seeds": "grid",
    "seed_overrides": "grid",
    # executors
    "ExecutorKind": "executors",
    "check_executor": "executors",
    # tables
    "SweepTables": "tables",
    "aggregate_over_seeds": "tables",
    "headline_metrics": "tables",
    "load_sweep": "tables",
    # driver
    "SweepOutcome": "driver",
    "run_sweep": "driver",
}

if TYPE_CHECKING:
    from geomlab.sweep.driver import SweepOutcome, run_sweep
    from geomlab.sweep.executors import ExecutorKind, check_executor
    from geomlab.sweep.grid import (
        LABEL_MAX,
        RunSpec,
        SweepSpec,
        default_sweep_dir,
        expand,
        make_label,
        parse_grid,
        parse_seeds,
        seed_overrides,
    )
    from geomlab.sweep.layout import (
        AGGREGATE_CSV,
        FINISHED,
        RUNS_CSV,
        RUNS_DIR,
        SWEEP_FILE,
        SWEEP_LOG,
        TRACEBACK_FILE,
        CorruptFileError,
        SweepError,
        is_run_dir,
        is_sweep_dir,
        read_manifest,
    )
    from geomlab.sweep.tables import (
        SweepTables,
        aggregate_over_seeds,
        headline_metrics,
        load_sweep,
    )

__all__ = [
    "AGGREGATE_CSV",
    "CorruptFileError",
    "ExecutorKind",
    "FINISHED",
    "LABEL_MAX",
    "RUNS_CSV",
    "RUNS_DIR",
    "RunSpec",
    "SWEEP_FILE",
    "SWEEP_LOG",
    "SweepError",
    "SweepOutcome",
    "SweepSpec",
    "SweepTables",
    "TRACEBACK_FILE",
    "aggregate_over_seeds",
    "check_executor",
    "default_sweep_dir",
    "expand",
    "headline_metrics",
    "is_run_dir",
    "is_sweep_dir",
    "load_sweep",
    "make_label",
    "parse_grid",
    "parse_seeds",
    "read_manifest",
    "run_sweep",
    "seed_overrides",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(import_module(f"{__name__}.{module}"), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
