"""The sweep driver: checks the directory, takes the driver lock, records the sweep, then keeps
``slots`` runs in flight until every run is finished, writing ``runs.csv`` after each one and
``aggregate.csv`` at the end.

A run's ``manifest.json`` status is the source of truth: rerunning the sweep skips finished
runs and resumes or reruns the others. Ctrl-C and SIGTERM stop the runs in flight, record them
and re-raise (the CLI exits 3). A run whose manifest is corrupt is redone (its worker
keeps the bad file as ``manifest.json.corrupt``; the driver names it in the log).
"""

from __future__ import annotations

import contextlib
import logging
import traceback
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console

from geomlab import io, rundir
from geomlab.experiments.base import Experiment
from geomlab.runner import (
    MANIFEST,
    Terminated,
    close_logger,
    record_stopped_run,
    sigterm_as_interrupt,
)
from geomlab.sweep.display import SweepDisplay, sweep_logger
from geomlab.sweep.executors import (
    Backend,
    ExecutorKind,
    RunReport,
    RunTask,
    check_executor,
    start_backend,
)
from geomlab.sweep.grid import (
    SEED_FIELDS,
    RunSpec,
    SweepSpec,
    default_sweep_dir,
    expand,
    sweep_digest,
)
from geomlab.sweep.layout import (
    AGGREGATE_CSV,
    DRIVER_LOCK,
    RUNS_CSV,
    RUNS_DIR,
    SWEEP_FILE,
    SWEEP_LOG,
    CorruptFileError,
    SweepError,
    finished_manifest,
    is_run_dir,
    read_manifest,
)
from geomlab.sweep.tables import (
    aggregate_over_seeds,
    headline_metrics,
    run_row,
    runs_frame,
    write_table,
)

# A run whose worker process died (segfault, OOM kill) is retried once in a fresh pool.
MAX_ATTEMPTS = 2


class SweepTerminated(Terminated):
    """SIGTERM (``timeout``, a batch scheduler) stops a sweep as Ctrl-C does."""


@dataclass
class SweepOutcome:
    out_dir: Path
    runs: pd.DataFrame
    counts: dict[str, int]  # status -> number of runs
    executed: int  # runs handed to a worker in this invocation
    skipped: int  # finished before this invocation


# --------------------------------------------------------------------------- before any work


def check_options(
    executor: str, address: str | None, workers: int | None, threads: int | None
) -> None:
    check_executor(executor, address)
    if workers is not None and workers < 1:
        raise SweepError(f"--workers must be >= 1 (got {workers})")
    if threads is not None and threads < 1:
        raise SweepError(f"--threads must be >= 1 (got {threads})")


def previous_sweep(out_dir: Path, experiment: Experiment, runs: list[RunSpec]) -> dict | None:
    """The sweep already recorded in ``out_dir``, if any. A directory that is a file, a run
    directory, or holds another sweep is refused; a superset of its runs extends it."""
    if out_dir.exists() and not out_dir.is_dir():
        raise SweepError(f"--out {out_dir} is a file, not a directory")
    if is_run_dir(out_dir):
        raise SweepError(
            f"{out_dir} is a run directory (it has {MANIFEST}); a sweep and a run cannot share "
            "one directory: choose another --out"
        )
    path = out_dir / SWEEP_FILE
    if not path.exists():
        return None
    try:
        previous = rundir.read_sweep_record(out_dir).model_dump(mode="json", exclude_unset=True)
    except rundir.RunDirError as error:
        raise SweepError(
            f"{error}; remove it to start this sweep in {out_dir}, or choose another --out"
        ) from None
    old = {run.get("config_hash") for run in previous.get("runs", [])}
    new = {run.config_hash for run in runs}
    if previous.get("experiment") != experiment.name or not old <= new:
        raise SweepError(
            f"{out_dir} holds another sweep ({len(old - new)} of its runs are not in this "
            "one); choose another --out"
        )
    return previous


@contextlib.contextmanager
def driver_lock(out_dir: Path) -> Iterator[None]:
    """One driver per sweep directory (released by the OS if the driver is killed)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    try:
        handle = open(out_dir / DRIVER_LOCK, "a")  # noqa: SIM115 - held across the yield
    except OSError as error:
        raise SweepError(
            f"cannot use {out_dir} as a sweep directory: {error.strerror or error}"
        ) from None
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another sweep driver is running in {out_dir}") from None
        yield


def sweep_record(
    spec: SweepSpec, experiment: Experiment, runs: list[RunSpec], previous: dict | None
) -> dict:
    """What sweep.json holds: the request, how seeds enter the config, and every run."""
    import geomlab

    now = datetime.now(UTC).isoformat(timespec="seconds")
    seed_field = None
    if spec.seeds is not None:
        seed_field = next((f for f in SEED_FIELDS if runs and f in runs[0].overrides), None)
    return {
        "experiment": experiment.name,
        "preset": spec.preset,
        "overrides": spec.overrides,
        "grid": {key: spec.grid[key] for key in sorted(spec.grid)},
        "seeds": spec.seeds,
        "seed_field": seed_field,
        "sweep_hash": sweep_digest(experiment, runs),
        "geomlab": geomlab.__version__,
        "created": (previous or {}).get("created", now),
        "updated": now,
        "runs": [
            {
                "name": r.name,
                "label": r.label,
                "config_hash": r.config_hash,
                "point": r.point,
                "seed": r.seed,
            }
            for r in runs
        ],  # fmt: skip
    }


# --------------------------------------------------------------------------- the loop


class _Drive:
    """One invocation's bookkeeping: the runs.csv rows, the queue, the runs in flight."""

    def __init__(
        self,
        spec: SweepSpec,
        experiment: Experiment,
        runs: list[RunSpec],
        out_dir: Path,
        log: logging.Logger,
    ) -> None:
        self.spec, self.experiment, self.runs = spec, experiment, runs
        self.out_dir, self.runs_dir, self.log = out_dir, out_dir / RUNS_DIR, log
        self.rows: dict[str, dict[str, Any]] = {}
        self.todo: deque[RunSpec] = deque()
        self.inflight: dict[Future, RunSpec] = {}
        self.attempts: dict[str, int] = {}
        self.done = self.failed = self.executed = self.skipped = 0
        self.pool_broken = False

    def _manifest(self, run: RunSpec) -> dict[str, Any] | None:
        """The run's manifest as it is now; a corrupt one is named in the log, not raised."""
        try:
            return read_manifest(self.runs_dir / run.name)
        except CorruptFileError as error:
            self.log.warning("%s: %s", run.label, error)
            return None

    def scan(self) -> None:
        """Which runs are finished already; the others are queued, in grid order."""
        for run in self.runs:
            try:
                manifest = finished_manifest(self.runs_dir / run.name, run.config_hash)
            except CorruptFileError as error:
                self.log.warning("%s: %s; the run will be redone", run.label, error)
                manifest = None
            self.rows[run.name] = run_row(run, manifest, None)
            if manifest is None:
                self.todo.append(run)
        self.skipped = self.done = len(self.runs) - len(self.todo)

    def write_runs(self) -> pd.DataFrame:
        frame = runs_frame([self.rows[run.name] for run in self.runs])
        write_table(self.out_dir / RUNS_CSV, frame)
        return frame

    def submit_ready(self, backend: Backend) -> None:
        """Fill every free slot from the queue."""
        while self.todo and len(self.inflight) < backend.slots:
            run = self.todo.popleft()
            task = RunTask(self.experiment.name, self.spec.preset, run.overrides,
                           run.config_hash, str(self.runs_dir / run.name),
                           backend.torch_threads)  # fmt: skip
            self.inflight[backend.submit(task)] = run
            self.attempts[run.name] = self.attempts.get(run.name, 0) + 1
            self.rows[run.name]["status"] = "running"

    def _report(self, future: Future, run: RunSpec) -> RunReport | None:
        """The worker's report; None when its pool broke and the run goes back in the queue."""
        try:
            return future.result()
        except BrokenProcessPool as error:
            self.pool_broken = True
            if self.attempts[run.name] < MAX_ATTEMPTS:
                self.log.warning("%s: worker process died (%s); retrying", run.label, error)
                self.todo.appendleft(run)
                return None
            return RunReport(run.name, "failed", "?", f"worker process died: {error}",
                             traceback.format_exc())  # fmt: skip
        except Exception as error:  # e.g. a Dask worker lost for good
            return RunReport(run.name, "failed", "?", f"{type(error).__name__}: {error}",
                             traceback.format_exc())  # fmt: skip

    def collect(self, future: Future) -> str | None:
        """Record one finished future in runs.csv; returns the line to show (None: retried)."""
        run = self.inflight.pop(future)
        report = self._report(future, run)
        if report is None:
            return None
        if report.note:
            self.log.warning("%s: %s", run.label, report.note)
        self.executed += report.status != "skipped"
        self.rows[run.name] = run_row(run, self._manifest(run), report)
        status = self.rows[run.name]["status"]
        self.done += 1
        if status in ("failed", "interrupted"):
            self.failed += 1
            self.log.error("%s %s: %s (traceback in %s)", run.label, status, report.error,
                           SWEEP_LOG)  # fmt: skip
            self.log.debug("%s traceback:\n%s", run.label, report.traceback or report.error)
        self.write_runs()
        return f"{run.label}: {status}"

    def requeue_inflight(self) -> None:
        """The whole pool went down with one worker: its other runs go back in the queue."""
        for future in list(self.inflight):
            self.todo.appendleft(self.inflight.pop(future))
        self.pool_broken = False

    def record_interrupted(self) -> None:
        """After Ctrl-C or SIGTERM the workers were stopped (the pool is closed): read what
        they recorded. A run whose manifest still says ``running`` and whose writer is gone
        was stopped before it could say so itself: it is recorded ``interrupted``."""
        for run in self.runs:
            if self.rows[run.name]["status"] == "running":
                manifest = self._manifest(run)
                still_running = manifest is not None and manifest.get("status") == "running"
                # stopped before it could record it: its lock is free, record it here
                if still_running and record_stopped_run(self.runs_dir / run.name):
                    self.log.warning("%s: stopped before it recorded it; now interrupted",
                                     run.label)  # fmt: skip
                    manifest = self._manifest(run)
                self.rows[run.name] = run_row(run, manifest, None)
        self.write_runs()

    def finish(self) -> SweepOutcome:
        frame = self.write_runs()
        metrics = headline_metrics(frame, list(self.runs[0].config) if self.runs else [])
        aggregate = aggregate_over_seeds(frame, sorted(self.spec.grid), metrics)
        write_table(self.out_dir / AGGREGATE_CSV, aggregate)
        counts = frame["status"].value_counts().to_dict()
        self.log.info(
            "sweep done: %s; %s", ", ".join(f"{n} {s}" for s, n in counts.items()), self.out_dir
        )
        return SweepOutcome(self.out_dir, frame, counts, self.executed, self.skipped)

    def run(
        self,
        console: Console,
        interactive: bool,
        *,
        executor: ExecutorKind,
        workers: int | None,
        address: str | None,
        threads: int | None,
        dask_processes: bool,
    ) -> SweepOutcome:
        self.scan()
        self.write_runs()
        self.log.info(
            "sweep of %s (%s preset): %d runs, %d finished before, %d to run -> %s",
            self.experiment.name, self.spec.preset, len(self.runs), self.skipped,
            len(self.todo), self.out_dir,
        )  # fmt: skip
        display = SweepDisplay(console, interactive, self.log, len(self.runs))
        display.update(self.done, 0, 0)
        backend: Backend | None = None
        try:
            if self.todo:
                backend = start_backend(
                    executor, n_runs=len(self.todo), configs=[r.config for r in self.runs],
                    workers=workers, address=address, threads=threads,
                    dask_processes=dask_processes,
                )  # fmt: skip
                self.log.info("%s executor, %d parallel runs", executor, backend.slots)
            while self.todo or self.inflight:
                assert backend is not None
                self.submit_ready(backend)
                display.update(self.done, len(self.inflight), self.failed)
                finished, _ = wait(list(self.inflight), return_when=FIRST_COMPLETED)
                for future in finished:
                    line = self.collect(future)
                    if line is not None:
                        display.update(self.done, len(self.inflight), self.failed, line)
                if self.pool_broken:
                    self.requeue_inflight()
                    backend.restart()
        except KeyboardInterrupt as interrupt:
            self.log.error("sweep interrupted; rerun the same command to resume")
            if backend is not None:  # Ctrl-C reached the workers too; SIGTERM did not
                backend.close(cancel=True, stop_runs=isinstance(interrupt, SweepTerminated))
                backend = None
            self.record_interrupted()
            raise
        finally:
            display.close()
            if backend is not None:
                backend.close()
        return self.finish()


def run_sweep(
    spec: SweepSpec,
    *,
    out_dir: str | Path | None = None,
    executor: ExecutorKind = "local",
    workers: int | None = None,
    address: str | None = None,
    console: Console | None = None,
    interactive: bool | None = None,
    threads: int | None = None,
    dask_processes: bool = True,
) -> SweepOutcome:
    """Run every grid point of ``spec`` not yet finished in ``out_dir``; see the module doc.

    ``threads`` is torch's thread count in each run (default: usable cores // parallel runs);
    results are bit-identical across executors for the same thread count (BLAS reductions
    depend on it). Raises :class:`SweepError` before anything runs for a bad grid, seeds,
    executor, address or directory. Failed runs are recorded (status, traceback) and stop no
    other.
    """
    check_options(executor, address, workers, threads)
    experiment, runs = expand(spec)
    out_dir = Path(out_dir) if out_dir is not None else default_sweep_dir(experiment, runs)
    console = console or Console(stderr=True)
    interactive = console.is_terminal if interactive is None else interactive
    previous = previous_sweep(out_dir, experiment, runs)
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SweepError(
            f"cannot create sweep directory {out_dir}: {error.strerror or error}"
        ) from None
    with driver_lock(out_dir), sigterm_as_interrupt(SweepTerminated):
        try:
            io.write_json(out_dir / SWEEP_FILE, sweep_record(spec, experiment, runs, previous))
        except OSError as error:
            raise SweepError(
                f"cannot write {out_dir / SWEEP_FILE}: {error.strerror or error}"
            ) from None
        log = sweep_logger(out_dir, console, interactive)
        try:
            drive = _Drive(spec, experiment, runs, out_dir, log)
            return drive.run(console, interactive, executor=executor, workers=workers,
                             address=address, threads=threads,
                             dask_processes=dask_processes)  # fmt: skip
        finally:
            close_logger(log)
