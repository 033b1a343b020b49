"""Sweeps: many runs of one experiment over a grid of config values and seeds.

A sweep directory holds ``sweep.json`` (the grid and its runs), ``runs.csv`` (one row per
run, rewritten atomically after every finished run), ``aggregate.csv`` (headline metrics over
seeds per grid point), ``sweep.log``, and ``runs/<label>-<config hash>/``, one ordinary run
directory per grid point. A run's ``manifest.json`` status is the source of truth: rerunning
the sweep skips finished runs and resumes or reruns the others.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import logging
import os
import re
import socket
import threading
import time
import traceback
from collections import deque
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Executor, Future, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from rich.console import Console

from geomlab import experiments, io
from geomlab.config import ConfigError, build_config, check_keys, parse_value
from geomlab.experiments.base import Experiment
from geomlab.runner import (
    MANIFEST,
    close_logger,
    config_hash,
    make_logger,
    run_experiment,
)

SWEEP_FILE = "sweep.json"
RUNS_CSV = "runs.csv"
AGGREGATE_CSV = "aggregate.csv"
SWEEP_LOG = "sweep.log"
RUNS_DIR = "runs"
TRACEBACK_FILE = "traceback.txt"
FINISHED = ("complete", "gates_failed")
SEED_FIELDS = ("seed", "seeds")
LABEL_MAX = 60
BOOTSTRAP_RESAMPLES = 10_000
BOOTSTRAP_SEED = 0
# A run whose worker process died (segfault, OOM kill) is retried once in a fresh pool.
MAX_ATTEMPTS = 2

ExecutorKind = Literal["local", "dask"]


class SweepError(ValueError):
    """The sweep cannot start: bad grid, seeds, executor or directory; the message says why."""


# --------------------------------------------------------------------------- grid and seeds


def split_top_level(text: str) -> list[str]:
    """Split on commas outside brackets and quotes: ``[1,2],[3]`` -> ``["[1,2]", "[3]"]``."""
    parts, depth, quote, start = [], 0, "", 0
    for index, char in enumerate(text):
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif char in "[{":
            depth += 1
        elif char in "]}":
            depth -= 1
        elif char == "," and depth == 0:
            parts.append(text[start:index])
            start = index + 1
    parts.append(text[start:])
    return [part.strip() for part in parts if part.strip()]


def parse_grid(pairs: list[str]) -> dict[str, list[Any]]:
    """``["rcond=1e-8,1e-6", "epsilon_values=[1e-4],[1e-3,1e-2]"]`` -> values per key.

    Values are separated by top-level commas; each is read like a ``--set`` value (JSON first).
    """
    grid: dict[str, list[Any]] = {}
    for pair in pairs:
        key, sep, text = pair.partition("=")
        key = key.strip().replace("-", "_")
        if not sep or not key:
            raise SweepError(f"grid {pair!r} is not of the form key=value1,value2,...")
        if key in grid:
            raise SweepError(f"grid key {key!r} is given twice; list all its values in one --grid")
        values = [parse_value(part) for part in split_top_level(text)]
        if not values:
            raise SweepError(f"grid key {key!r} has no values")
        grid[key] = values
    return grid


def parse_seeds(text: str) -> list[int]:
    """``"0-9"`` -> 0..9; ``"0,3,7"``; ``"0-4,10-12"``. Order kept, duplicates are errors."""
    seeds: list[int] = []
    for part in (p.strip() for p in text.split(",")):
        match = re.fullmatch(r"(\d+)(?:\s*-\s*(\d+))?", part)
        if not match:
            raise SweepError(f"--seeds {text!r}: {part!r} is not a seed or a range like 0-9")
        first, last = int(match[1]), int(match[2] if match[2] is not None else match[1])
        if last < first:
            raise SweepError(f"--seeds {text!r}: range {part!r} runs backwards")
        seeds.extend(range(first, last + 1))
    if len(set(seeds)) != len(seeds):
        raise SweepError(f"--seeds {text!r} lists a seed twice")
    return seeds


def seed_overrides(experiment: Experiment, seed: int) -> dict[str, Any]:
    """How one sweep seed enters a config: ``seed=s`` if the config has a ``seed`` field,
    else ``seeds=[s]`` (one run per seed); an experiment with neither cannot take --seeds."""
    fields = experiment.config_cls.model_fields
    if "seed" in fields:
        return {"seed": seed}
    if "seeds" in fields:
        return {"seeds": [seed]}
    raise SweepError(
        f"{experiment.name} has no 'seed' or 'seeds' config field, so --seeds cannot apply; "
        "sweep over its own field with --grid instead"
    )


def format_value(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, float | int | str):
        return str(value)
    return json.dumps(value, separators=(",", ":"))


def make_label(point: dict[str, Any], seed: int | None) -> str:
    """Readable, file-name safe: ``rcond=1e-08_seed=3`` (the hash keeps names unique)."""
    items = [f"{key}={format_value(value)}" for key, value in point.items()]
    if seed is not None:
        items.append(f"seed={seed}")
    label = re.sub(r"[^A-Za-z0-9._=+-]+", "-", "_".join(items)).strip("-_")
    return label[:LABEL_MAX].rstrip("-_") or "base"


@dataclass(frozen=True)
class RunSpec:
    """One grid point: its validated config and where it lives in the sweep directory."""

    name: str  # directory name: <label>-<config hash>
    label: str
    point: dict[str, Any]
    seed: int | None
    overrides: dict[str, Any]  # everything on top of the preset, as build_config takes it
    config: dict[str, Any]  # the validated config, JSON values
    config_hash: str


@dataclass(frozen=True)
class SweepSpec:
    """What the user asked for: experiment, preset, fixed overrides, grid and seeds."""

    experiment: str
    preset: str
    overrides: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    seeds: list[int] | None = None


def expand(spec: SweepSpec) -> tuple[Experiment, list[RunSpec]]:
    """Every grid point (keys sorted, seeds innermost), each config validated before any run.

    Raises :class:`SweepError` naming unknown keys, and every bad point with its field and
    value; also when two points give the same config (e.g. ``1e-8`` and ``0.00000001``).
    """
    try:
        experiment = experiments.get(spec.experiment)
    except KeyError as error:
        raise SweepError(str(error).strip("'\"")) from None
    try:
        check_keys(experiment.config_cls, spec.grid, owner=experiment.name, what="grid key")
    except ConfigError as error:
        raise SweepError(str(error)) from None
    if spec.seeds is not None:
        clash = sorted(key for key in spec.grid if key in SEED_FIELDS or key == "n_seeds")
        if clash:
            raise SweepError(f"--seeds and --grid {clash[0]} both set the seed; use one of them")
    keys = sorted(spec.grid)
    seeds: list[int | None] = list(spec.seeds) if spec.seeds is not None else [None]
    runs: list[RunSpec] = []
    errors: list[str] = []
    by_hash: dict[str, str] = {}
    for values in itertools.product(*(spec.grid[key] for key in keys)):
        point = dict(zip(keys, values, strict=True))
        for seed in seeds:
            label = make_label(point, seed)
            overrides = {**spec.overrides, **point}
            if seed is not None:
                overrides.update(seed_overrides(experiment, seed))
            try:
                config = build_config(experiment, spec.preset, overrides)
            except ConfigError as error:
                errors.append(f"grid point {label}: {error}")
                continue
            digest = config_hash(experiment.name, config)
            if digest in by_hash:
                errors.append(f"grid points {by_hash[digest]} and {label} give the same config")
                continue
            by_hash[digest] = label
            runs.append(
                RunSpec(
                    name=f"{label}-{digest}",
                    label=label,
                    point=point,
                    seed=seed,
                    overrides=overrides,
                    config=config.model_dump(mode="json"),
                    config_hash=digest,
                )
            )
    if errors:
        shown = errors[:10] + ([f"... and {len(errors) - 10} more"] if len(errors) > 10 else [])
        raise SweepError("invalid sweep, nothing was run:\n  " + "\n  ".join(shown))
    return experiment, runs


def sweep_digest(experiment: Experiment, runs: list[RunSpec]) -> str:
    """Identity of a sweep: its set of run configs (spelling and flag order do not matter)."""
    import hashlib

    text = json.dumps([experiment.name, sorted(run.config_hash for run in runs)])
    return hashlib.sha256(text.encode()).hexdigest()[:8]


def default_sweep_dir(experiment: Experiment, runs: list[RunSpec], root: Path = Path("results")):
    """Deterministic, so that rerunning the same command resumes the same sweep."""
    return root / experiment.name / f"sweep-{sweep_digest(experiment, runs)}"


# --------------------------------------------------------------------------- one run (worker)


@dataclass(frozen=True)
class RunTask:
    """What a worker needs: plain data, picklable for process pools and Dask."""

    experiment: str
    preset: str
    overrides: dict[str, Any]
    config_hash: str
    out_dir: str
    torch_threads: int | None = None


@dataclass
class RunReport:
    name: str
    status: str  # complete | gates_failed | failed | interrupted | skipped
    host: str
    error: str | None = None
    traceback: str | None = None


@contextlib.contextmanager
def _run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive per-run lock, released by the OS when its holder dies: a worker orphaned by a
    killed driver and the new driver's worker never write one run directory together."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, resume still works
        yield
        return
    with open(run_dir / ".lock", "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _finished(run_dir: Path, digest: str) -> dict[str, Any] | None:
    path = run_dir / MANIFEST
    if not path.exists():
        return None
    manifest = io.read_json(path)
    if manifest.get("config_hash") == digest and manifest.get("status") in FINISHED:
        return manifest
    return None


def execute_run(task: RunTask) -> RunReport:
    """Run one grid point in its directory; never raises, so one failure stops nothing else."""
    run_dir = Path(task.out_dir)
    host = socket.gethostname()
    if task.torch_threads is not None:
        import torch

        torch.set_num_threads(task.torch_threads)
    try:
        with _run_lock(run_dir):
            if _finished(run_dir, task.config_hash) is not None:
                return RunReport(run_dir.name, "skipped", host)
            experiment = experiments.get(task.experiment)
            config = build_config(experiment, task.preset, task.overrides)
            if config_hash(experiment.name, config) != task.config_hash:
                raise RuntimeError("config hash differs between driver and worker (versions?)")
            # The run logs to its own run.log; the driver shows the sweep's progress.
            with open(os.devnull, "w") as sink:
                quiet = Console(file=sink)
                outcome = run_experiment(
                    experiment, config, preset=task.preset, out_dir=run_dir, console=quiet,
                    interactive=False,
                )  # fmt: skip
            return RunReport(run_dir.name, outcome.manifest["status"], host)
    except BaseException as error:  # noqa: BLE001 - reported, not raised
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        text = traceback.format_exc()
        with contextlib.suppress(OSError):
            io.atomic_write_text(run_dir / TRACEBACK_FILE, text)
        return RunReport(run_dir.name, status, host, f"{type(error).__name__}: {error}", text)


# --------------------------------------------------------------------------- executors


def _usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _watch_parent(parent_pid: int) -> None:
    """A pool worker whose driver was killed exits instead of running on as an orphan."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(70)
        time.sleep(0.5)


def _init_local_worker(parent_pid: int, torch_threads: int, gpu_queue: Any) -> None:
    if gpu_queue is not None:  # before CUDA initialises: this process sees one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())
    import torch

    torch.set_num_threads(torch_threads)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


class _Backend:
    slots: int
    torch_threads: int | None = None
    executor: Executor

    def submit(self, task: RunTask) -> Future:
        return self.executor.submit(execute_run, task)

    def restart(self) -> None:
        """Replace a broken pool (only the local pool can break as a whole)."""

    def close(self, *, cancel: bool = False) -> None:
        raise NotImplementedError


class _LocalBackend(_Backend):
    """The standard library's process pool, spawn start method, one run at a time per worker."""

    def __init__(self, workers: int, gpus: int, threads: int | None) -> None:
        import multiprocessing

        self.slots = workers
        self.gpus = gpus
        self.context = multiprocessing.get_context("spawn")
        self.worker_threads = threads or max(1, _usable_cores() // workers)
        self.executor = self._new_pool()

    def _new_pool(self) -> Executor:
        from concurrent.futures import ProcessPoolExecutor

        gpu_queue = None
        if self.gpus > 1:
            gpu_queue = self.context.Queue()
            for index in range(self.slots):
                gpu_queue.put(index % self.gpus)
        return ProcessPoolExecutor(
            max_workers=self.slots,
            mp_context=self.context,
            initializer=_init_local_worker,
            initargs=(os.getpid(), self.worker_threads, gpu_queue),
        )

    def restart(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.executor = self._new_pool()

    def close(self, *, cancel: bool = False) -> None:
        # Waits even when cancelling: on Ctrl-C the workers got SIGINT too and record their
        # runs as interrupted within moments; then runs.csv says so.
        self.executor.shutdown(wait=True, cancel_futures=cancel)


class _DaskBackend(_Backend):
    """Dask distributed through its concurrent.futures executor: an existing cluster at
    ``address``, or a LocalCluster with ``workers`` single-threaded workers."""

    def __init__(
        self, workers: int | None, address: str | None, processes: bool, threads: int | None
    ) -> None:
        from distributed import Client, LocalCluster

        self.cluster = None
        if address:
            try:
                self.client = Client(address, timeout="30s")
            except (OSError, TimeoutError) as error:
                raise SweepError(f"cannot reach the Dask scheduler at {address}: {error}") from None
            # Cluster workers get OMP_NUM_THREADS=1 from their nannies; unless told, leave
            # torch alone (we cannot see how many workers share a machine).
            self.slots = workers or max(1, sum(self.client.nthreads().values()))
            self.torch_threads = threads
        else:
            workers = workers or _usable_cores()
            self.cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=processes,
                dashboard_address=None,
            )
            self.client = Client(self.cluster)
            self.slots = workers
            self.torch_threads = threads or max(1, _usable_cores() // workers)
        self.executor = self.client.get_executor(pure=False)

    def close(self, *, cancel: bool = False) -> None:
        self.executor.shutdown(wait=not cancel)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def check_executor(kind: str, address: str | None) -> None:
    """Before anything is written: a known executor, and Dask importable when asked for."""
    if kind not in ("local", "dask"):
        raise SweepError(f"unknown executor {kind!r}; choose local or dask")
    if address and kind != "dask":
        raise SweepError("--address needs --executor dask")
    if kind == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise SweepError(
                "the dask executor needs Dask distributed: pip install 'geomlab[dask]'"
            ) from None


def _cuda_devices(runs: list[RunSpec]) -> int:
    if not any(run.config.get("device") in ("auto", "cuda") for run in runs):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


# --------------------------------------------------------------------------- tables


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
    tail = ["wall_seconds", "started", "finished", "host", "error"]
    columns: list[str] = []
    for row in rows:
        columns.extend(key for key in row if key not in columns and key not in tail)
    return pd.DataFrame(rows, columns=[*columns, *tail])


def write_table(path: Path, frame: pd.DataFrame) -> Path:
    """Atomic CSV with shortest round-trip floats, so config values read as typed (1e-06)."""
    return io.atomic_write(path, lambda tmp: frame.to_csv(tmp, index=False))


def bootstrap_ci(
    values: np.ndarray, *, n_resamples: int = BOOTSTRAP_RESAMPLES, seed: int = BOOTSTRAP_SEED
) -> tuple[float, float]:
    """95% percentile bootstrap CI of the mean; NaN with fewer than two values."""
    values = np.asarray(values, dtype=float)
    if values.size < 2:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, values.size, size=(n_resamples, values.size))].mean(axis=1)
    low, high = np.quantile(means, [0.025, 0.975])
    return float(low), float(high)


def aggregate_over_seeds(
    runs: pd.DataFrame, group_keys: list[str], metrics: list[str]
) -> pd.DataFrame:
    """Per grid point: n, mean, std, 95% bootstrap CI of each headline metric over the seeds
    of its complete runs (failed runs and runs that failed a gate are left out)."""
    done = runs[runs["status"] == "complete"]
    groups = done.groupby(group_keys, sort=False, dropna=False) if group_keys else [((), done)]
    rows = []
    for key, frame in groups:
        key = key if isinstance(key, tuple) else (key,)
        row: dict[str, Any] = dict(zip(group_keys, key, strict=True))
        row["n_runs"] = len(frame)
        for metric in metrics:
            values = pd.to_numeric(frame[metric], errors="coerce").to_numpy(dtype=float)
            values = values[np.isfinite(values)]
            low, high = bootstrap_ci(values)
            row[f"{metric}_mean"] = float(values.mean()) if values.size else float("nan")
            row[f"{metric}_std"] = float(values.std(ddof=1)) if values.size > 1 else float("nan")
            row[f"{metric}_ci_low"] = low
            row[f"{metric}_ci_high"] = high
        rows.append(row)
    return pd.DataFrame(rows)


def headline_metrics(frame: pd.DataFrame, config_fields: list[str]) -> list[str]:
    known = {"run", "label", "status", "config_hash", "seed", "wall_seconds", "started",
             "finished", "host", "error", *config_fields}  # fmt: skip
    return [c for c in frame.columns if c not in known and pd.api.types.is_numeric_dtype(frame[c])]


# --------------------------------------------------------------------------- driver


@dataclass
class SweepOutcome:
    out_dir: Path
    runs: pd.DataFrame
    counts: dict[str, int]  # status -> number of runs
    executed: int  # runs handed to a worker in this invocation
    skipped: int  # finished before this invocation


class _Display:
    """One progress bar (done / total, running, failed) or plain log lines off a terminal."""

    def __init__(self, console: Console, interactive: bool, log: logging.Logger, total: int):
        self.log, self.total, self.bar, self.task = log, total, None, None
        if interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            self.bar = Progress(
                TextColumn("sweep"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("running {task.fields[running]}, failed {task.fields[failed]}"),
                TimeElapsedColumn(),
                console=console,
            )
            self.task = self.bar.add_task("sweep", total=total, running=0, failed=0)
            self.bar.start()

    def update(self, done: int, running: int, failed: int, message: str | None = None) -> None:
        if self.bar is not None:
            self.bar.update(self.task, completed=done, running=running, failed=failed)
        if message:
            line = f"[{done}/{self.total}] {message} (running {running}, failed {failed})"
            if self.bar is None:
                self.log.info(line)
            else:  # the file log gets it; the bar shows the counts on the terminal
                self.log.debug(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.stop()


def _sweep_logger(out_dir: Path, console: Console, interactive: bool) -> logging.Logger:
    return make_logger(
        f"geomlab.sweep.{out_dir.resolve()}", out_dir / SWEEP_LOG, console=console,
        interactive=interactive, level=logging.DEBUG,
    )  # fmt: skip


@contextlib.contextmanager
def _driver_lock(out_dir: Path) -> Iterator[None]:
    """One driver per sweep directory (released by the OS if the driver is killed)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        yield
        return
    with open(out_dir / ".sweep.lock", "a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise SweepError(f"another sweep driver is running in {out_dir}") from None
        yield


def _previous_sweep(out_dir: Path, experiment: Experiment, runs: list[RunSpec]) -> dict | None:
    """Refuse a directory that holds another sweep; a superset of its runs extends it."""
    path = out_dir / SWEEP_FILE
    if not path.exists():
        return None
    previous = io.read_json(path)
    old = {run["config_hash"] for run in previous.get("runs", [])}
    new = {run.config_hash for run in runs}
    if previous.get("experiment") != experiment.name or not old <= new:
        raise SweepError(
            f"{out_dir} holds another sweep ({len(old - new)} of its runs are not in this "
            "one); choose another --out"
        )
    return previous


def _sweep_record(
    spec: SweepSpec, experiment: Experiment, runs: list[RunSpec], previous: dict | None
) -> dict:
    import geomlab

    now = datetime.now(UTC).isoformat(timespec="seconds")
    return {
        "experiment": experiment.name,
        "preset": spec.preset,
        "overrides": spec.overrides,
        "grid": {key: spec.grid[key] for key in sorted(spec.grid)},
        "seeds": spec.seeds,
        "seed_field": next((f for f in SEED_FIELDS if runs and f in runs[0].overrides), None)
        if spec.seeds is not None
        else None,
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


def run_sweep(
    spec: SweepSpec,
    *,
    out_dir: Path | None = None,
    executor: ExecutorKind = "local",
    workers: int | None = None,
    address: str | None = None,
    console: Console | None = None,
    interactive: bool | None = None,
    threads: int | None = None,
    dask_processes: bool = True,
) -> SweepOutcome:
    """Run every grid point of ``spec`` not yet finished in ``out_dir``; see module doc.

    ``threads`` is torch's thread count in each run (default: usable cores // parallel runs);
    results are bit-identical across executors for the same thread count (BLAS reductions
    depend on it). Raises :class:`SweepError` before anything runs for a bad grid, seeds,
    executor or directory. Failed runs are recorded (status, traceback) and stop no other.
    """
    check_executor(executor, address)
    if workers is not None and workers < 1:
        raise SweepError(f"--workers must be >= 1 (got {workers})")
    if threads is not None and threads < 1:
        raise SweepError(f"--threads must be >= 1 (got {threads})")
    experiment, runs = expand(spec)
    out_dir = Path(out_dir) if out_dir is not None else default_sweep_dir(experiment, runs)
    console = console or Console(stderr=True)
    interactive = console.is_terminal if interactive is None else interactive
    previous = _previous_sweep(out_dir, experiment, runs)
    out_dir.mkdir(parents=True, exist_ok=True)
    with _driver_lock(out_dir):
        io.write_json(out_dir / SWEEP_FILE, _sweep_record(spec, experiment, runs, previous))
        log = _sweep_logger(out_dir, console, interactive)
        try:
            return _drive(spec, experiment, runs, out_dir, log, console, interactive,
                          executor=executor, workers=workers, address=address,
                          threads=threads, dask_processes=dask_processes)  # fmt: skip
        finally:
            close_logger(log)


def _drive(
    spec: SweepSpec,
    experiment: Experiment,
    runs: list[RunSpec],
    out_dir: Path,
    log: logging.Logger,
    console: Console,
    interactive: bool,
    *,
    executor: str,
    workers: int | None,
    address: str | None,
    threads: int | None,
    dask_processes: bool,
) -> SweepOutcome:
    runs_dir = out_dir / RUNS_DIR
    rows: dict[str, dict[str, Any]] = {}
    todo: deque[RunSpec] = deque()
    for run in runs:
        manifest = _finished(runs_dir / run.name, run.config_hash)
        rows[run.name] = run_row(run, manifest, None)
        if manifest is None:
            todo.append(run)
    skipped = len(runs) - len(todo)

    def write_tables() -> pd.DataFrame:
        frame = runs_frame([rows[run.name] for run in runs])
        write_table(out_dir / RUNS_CSV, frame)
        return frame

    write_tables()
    log.info(
        "sweep of %s (%s preset): %d runs, %d finished before, %d to run -> %s",
        experiment.name, spec.preset, len(runs), skipped, len(todo), out_dir,
    )  # fmt: skip
    failed = 0
    executed = 0
    display = _Display(console, interactive, log, len(runs))
    display.update(skipped, 0, 0)
    backend: _Backend | None = None
    try:
        if todo:
            gpus = _cuda_devices(runs) if executor == "local" else 0
            if executor == "local":
                default = gpus or _usable_cores()
                backend = _LocalBackend(min(workers or default, len(todo)), gpus, threads)
            else:
                backend = _DaskBackend(workers, address, dask_processes, threads)
            log.info("%s executor, %d parallel runs", executor, backend.slots)
        attempts: dict[str, int] = {}
        inflight: dict[Future, RunSpec] = {}
        done = skipped
        while todo or inflight:
            while todo and len(inflight) < backend.slots:
                run = todo.popleft()
                task = RunTask(experiment.name, spec.preset, run.overrides, run.config_hash,
                               str(runs_dir / run.name), backend.torch_threads)  # fmt: skip
                inflight[backend.submit(task)] = run
                attempts[run.name] = attempts.get(run.name, 0) + 1
                rows[run.name]["status"] = "running"
            display.update(done, len(inflight), failed)
            finished, _ = wait(list(inflight), return_when=FIRST_COMPLETED)
            broken = False
            for future in finished:
                run = inflight.pop(future)
                try:
                    report = future.result()
                except BrokenProcessPool as error:
                    broken = True
                    if attempts[run.name] < MAX_ATTEMPTS:
                        log.warning("%s: worker process died (%s); retrying", run.label, error)
                        todo.appendleft(run)
                        continue
                    report = RunReport(run.name, "failed", "?", f"worker process died: {error}",
                                       traceback.format_exc())  # fmt: skip
                except Exception as error:  # e.g. a Dask worker lost for good
                    report = RunReport(run.name, "failed", "?", f"{type(error).__name__}: "
                                       f"{error}", traceback.format_exc())  # fmt: skip
                executed += report.status != "skipped"
                manifest_path = runs_dir / run.name / MANIFEST
                manifest = io.read_json(manifest_path) if manifest_path.exists() else None
                rows[run.name] = run_row(run, manifest, report)
                status = rows[run.name]["status"]
                done += 1
                if status in ("failed", "interrupted"):
                    failed += 1
                    log.error("%s %s: %s (traceback in %s)", run.label, status, report.error,
                              SWEEP_LOG)  # fmt: skip
                    log.debug("%s traceback:\n%s", run.label, report.traceback or report.error)
                write_tables()
                display.update(done, len(inflight), failed, f"{run.label}: {status}")
            if broken:
                for future in list(inflight):  # the whole pool went down with the worker
                    run = inflight.pop(future)
                    todo.appendleft(run)
                backend.restart()
    except KeyboardInterrupt:
        log.error("sweep interrupted; rerun the same command to resume")
        if backend is not None:
            backend.close(cancel=True)
            backend = None
        for run in runs:  # workers got the signal too: read what they recorded
            if rows[run.name]["status"] == "running":
                path = runs_dir / run.name / MANIFEST
                rows[run.name] = run_row(run, io.read_json(path) if path.exists() else None, None)
        write_tables()
        raise
    finally:
        display.close()
        if backend is not None:
            backend.close()

    frame = write_tables()
    metrics = headline_metrics(frame, list(runs[0].config) if runs else [])
    aggregate = aggregate_over_seeds(frame, sorted(spec.grid), metrics)
    write_table(out_dir / AGGREGATE_CSV, aggregate)
    counts = frame["status"].value_counts().to_dict()
    log.info("sweep done: %s; %s", ", ".join(f"{n} {s}" for s, n in counts.items()), out_dir)
    return SweepOutcome(out_dir, frame, counts, executed, skipped)
