"""What a sweep directory holds, the sweep's error type, and reading its JSON files.

A sweep directory::

    sweep.json       the grid and its runs (SWEEP_FILE)
    runs.csv         one row per run (RUNS_CSV), rewritten atomically after every finished run
    aggregate.csv    headline metrics over seeds per grid point (AGGREGATE_CSV)
    sweep.log        the driver's log (SWEEP_LOG)
    runs/<label>-<config hash>/   one ordinary run directory per grid point (RUNS_DIR)

A run's ``manifest.json`` status is the source of truth for whether it is finished. A file
that is not valid JSON (truncated, overwritten) is named in a :class:`CorruptFileError`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from geomlab import io, rundir

SWEEP_FILE = "sweep.json"
RUNS_CSV = "runs.csv"
AGGREGATE_CSV = "aggregate.csv"
SWEEP_LOG = "sweep.log"
RUNS_DIR = "runs"
TRACEBACK_FILE = "traceback.txt"  # in a run directory: the traceback of a failed run
RUN_LOCK = ".lock"  # in a run directory: held by the worker running it
DRIVER_LOCK = ".sweep.lock"  # in the sweep directory: held by its one driver
CORRUPT_SUFFIX = ".corrupt"  # a corrupt run manifest is kept under this suffix, then redone
FINISHED = ("complete", "gates_failed")


class SweepError(ValueError):
    """The sweep cannot start: bad grid, seeds, executor or directory; the message says why."""


class CorruptFileError(SweepError):
    """A sweep or run file is not valid JSON (truncated or overwritten); names the file."""

    def __init__(self, path: Path, message: str) -> None:
        self.path = Path(path)
        super().__init__(message)


def read_json(path: Path) -> Any:
    """The JSON in ``path``; :class:`CorruptFileError` naming it when it cannot be parsed."""
    try:
        return io.read_json(path)
    except ValueError as error:  # JSONDecodeError, UnicodeDecodeError: both ValueErrors
        message = str(error)
        if str(path) not in message:  # a reader that names the file says it already
            message = f"{path} is not valid JSON ({message})"
        raise CorruptFileError(path, message) from None


def read_manifest(run_dir: Path) -> dict[str, Any] | None:
    """A run's manifest, ``None`` when it has none yet; :class:`CorruptFileError` naming the
    file when it is not valid JSON or not a manifest's shape (:mod:`geomlab.rundir` checks)."""
    try:
        return rundir.read_manifest_dict(run_dir)
    except rundir.RunDirError as error:
        raise CorruptFileError(error.path, str(error)) from None


def finished_manifest(run_dir: Path, digest: str) -> dict[str, Any] | None:
    """The manifest if the run of config hash ``digest`` in ``run_dir`` is finished."""
    manifest = read_manifest(run_dir)
    finished = manifest is not None and manifest.get("status") in FINISHED
    return manifest if finished and manifest.get("config_hash") == digest else None


is_sweep_dir = rundir.is_sweep_dir
is_run_dir = rundir.is_run_dir
