"""Where runs execute: the worker function (one run under a per-run lock) and two executors,
the standard library's process pool and Dask distributed.

A worker gets a picklable :class:`RunTask`, rebuilds and re-validates the config, and runs it
through the runner into its own run directory; it never raises, so one failure stops nothing
else. Both executors give ``concurrent.futures`` futures of :class:`RunReport`.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import threading
import time
import traceback
from collections.abc import Iterator
from concurrent.futures import Executor, Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from rich.console import Console

from geomlab import experiments, io
from geomlab.config import build_config
from geomlab.runner import config_hash, foreign_files, run_experiment
from geomlab.runner import set_aside as move_aside
from geomlab.sweep.layout import (
    CORRUPT_SUFFIX,
    RUN_LOCK,
    TRACEBACK_FILE,
    CorruptFileError,
    SweepError,
    finished_manifest,
)

ExecutorKind = Literal["local", "dask"]
EXECUTORS: tuple[str, ...] = ("local", "dask")
DASK_PROTOCOLS = ("tcp", "tls", "ucx", "ws", "wss")
DASK_CONNECT_TIMEOUT = "30s"
PARENT_POLL_S = 0.5  # how often a pool worker checks that its driver is alive

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
    note: str | None = None  # something the driver should log (e.g. a corrupt manifest redone)


@contextlib.contextmanager
def run_lock(run_dir: Path) -> Iterator[None]:
    """Exclusive per-run lock, released by the OS when its holder dies: a worker orphaned by a
    killed driver and the new driver's worker never write one run directory together."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock, resume still works
        yield
        return
    with open(run_dir / RUN_LOCK, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def set_aside(error: CorruptFileError) -> str:
    """Move a corrupt run manifest out of the way (kept as ``manifest.json.corrupt``), so the
    run is redone; returns what to log."""
    kept = error.path.with_name(error.path.name + CORRUPT_SUFFIX)
    os.replace(error.path, kept)
    note = f"{error}; kept it as {kept.name} and redid the run"
    stale = foreign_files(error.path.parent)  # that run's files: never mixed with the redo
    if stale:
        folder = move_aside(error.path.parent, stale)
        note += f" (its other files are in {folder.name}/)"
    return note


def execute_run(task: RunTask) -> RunReport:
    """Run one grid point in its directory; never raises, so one failure stops nothing else.

    Under the run's lock: a finished run of this config is skipped; a corrupt manifest is set
    aside (named in the report's note) and the run redone; anything else runs or resumes."""
    run_dir = Path(task.out_dir)
    host = socket.gethostname()
    if task.torch_threads is not None:
        import torch

        torch.set_num_threads(task.torch_threads)
    note = None
    try:
        with run_lock(run_dir):
            try:
                if finished_manifest(run_dir, task.config_hash) is not None:
                    return RunReport(run_dir.name, "skipped", host)
            except CorruptFileError as error:
                note = set_aside(error)
            experiment = experiments.get(task.experiment)
            config = build_config(experiment, task.preset, task.overrides)
            if config_hash(experiment.name, config) != task.config_hash:
                raise RuntimeError("config hash differs between driver and worker (versions?)")
            # The run logs to its own run.log; the driver shows the sweep's progress.
            with open(os.devnull, "w") as sink:
                outcome = run_experiment(
                    experiment, config, preset=task.preset, out_dir=run_dir,
                    console=Console(file=sink), interactive=False,
                )  # fmt: skip
            return RunReport(run_dir.name, outcome.manifest["status"], host, note=note)
    except BaseException as error:  # noqa: BLE001 - reported, not raised
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        text = traceback.format_exc()
        with contextlib.suppress(OSError):
            io.atomic_write_text(run_dir / TRACEBACK_FILE, text)
        message = f"{type(error).__name__}: {error}"
        return RunReport(run_dir.name, status, host, message, text, note=note)


# --------------------------------------------------------------------------- executors


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS
        return os.cpu_count() or 1


def _watch_parent(parent_pid: int) -> None:
    """A pool worker whose driver was killed exits instead of running on as an orphan."""
    while True:
        if os.getppid() != parent_pid:
            os._exit(70)
        time.sleep(PARENT_POLL_S)


def _init_local_worker(parent_pid: int, torch_threads: int, gpu_queue: Any) -> None:
    if gpu_queue is not None:  # before CUDA initialises: this process sees one GPU
        os.environ["CUDA_VISIBLE_DEVICES"] = str(gpu_queue.get())
    import torch

    torch.set_num_threads(torch_threads)
    threading.Thread(target=_watch_parent, args=(parent_pid,), daemon=True).start()


class Backend:
    """Runs :func:`execute_run` on ``slots`` runs at a time."""

    slots: int
    torch_threads: int | None = None
    executor: Executor

    def submit(self, task: RunTask) -> Future:
        return self.executor.submit(execute_run, task)

    def restart(self) -> None:
        """Replace a broken pool (only the local pool can break as a whole)."""

    def close(self, *, cancel: bool = False, stop_runs: bool = False) -> None:
        """Shut down; ``cancel`` drops queued runs, ``stop_runs`` also asks running ones to
        stop (SIGTERM: they record ``interrupted``, as on Ctrl-C, which reaches them anyway)."""
        raise NotImplementedError


class LocalPool(Backend):
    """The standard library's process pool, spawn start method, one run at a time per worker."""

    def __init__(self, workers: int, gpus: int, threads: int | None) -> None:
        import multiprocessing

        self.slots = workers
        self.gpus = gpus
        self.context = multiprocessing.get_context("spawn")
        self.worker_threads = threads or max(1, usable_cores() // workers)
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

    def close(self, *, cancel: bool = False, stop_runs: bool = False) -> None:
        if stop_runs:  # only this pool's workers: the driver starts no other processes
            import multiprocessing
            import signal

            # SIGINT, not SIGTERM: an idle worker killed by SIGTERM dies holding the call
            # queue's lock and the pool's shutdown then waits forever; SIGINT unwinds it (the
            # lock is released) and a running run records `interrupted`, as on Ctrl-C.
            for worker in multiprocessing.active_children():
                if worker.pid is not None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(worker.pid, signal.SIGINT)
        # Waits even when cancelling: on Ctrl-C the workers got SIGINT too and record their
        # runs as interrupted within moments; then runs.csv says so.
        self.executor.shutdown(wait=True, cancel_futures=cancel)


class DaskCluster(Backend):
    """Dask distributed through its concurrent.futures executor: an existing cluster at
    ``address``, or a LocalCluster with ``workers`` single-threaded workers."""

    def __init__(
        self, workers: int | None, address: str | None, processes: bool, threads: int | None
    ) -> None:
        from distributed import Client, LocalCluster

        self.cluster = None
        if address:
            try:
                self.client = Client(address, timeout=DASK_CONNECT_TIMEOUT)
            except (OSError, TimeoutError) as error:
                raise SweepError(f"cannot reach the Dask scheduler at {address}: {error}") from None
            # Cluster workers get OMP_NUM_THREADS=1 from their nannies; unless told, leave
            # torch alone (we cannot see how many workers share a machine).
            self.slots = workers or max(1, sum(self.client.nthreads().values()))
            self.torch_threads = threads
        else:
            workers = workers or usable_cores()
            self.cluster = LocalCluster(
                n_workers=workers,
                threads_per_worker=1,
                processes=processes,
                dashboard_address=None,
            )
            self.client = Client(self.cluster)
            self.slots = workers
            self.torch_threads = threads or max(1, usable_cores() // workers)
        self.executor = self.client.get_executor(pure=False)

    def close(self, *, cancel: bool = False, stop_runs: bool = False) -> None:
        # A LocalCluster's workers close with it; runs on a cluster of one's own finish there
        # (the next invocation waits for their run locks and skips them).
        self.executor.shutdown(wait=not cancel)
        self.client.close()
        if self.cluster is not None:
            self.cluster.close()


def cuda_devices(configs: list[dict[str, Any]]) -> int:
    """GPUs the local pool spreads runs over: none unless a run may use CUDA."""
    if not any(config.get("device") in ("auto", "cuda") for config in configs):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def start_backend(
    kind: ExecutorKind,
    *,
    n_runs: int,
    configs: list[dict[str, Any]],
    workers: int | None,
    address: str | None,
    threads: int | None,
    dask_processes: bool,
) -> Backend:
    """The executor for ``n_runs`` runs: the local pool gets one slot per core (or GPU, when
    the runs use CUDA), never more than there are runs."""
    if kind == "local":
        gpus = cuda_devices(configs)
        return LocalPool(min(workers or gpus or usable_cores(), n_runs), gpus, threads)
    return DaskCluster(workers, address, dask_processes, threads)


# --------------------------------------------------------------------------- validation


def check_address(address: str) -> None:
    """A Dask scheduler address: ``[protocol://]host:port`` (``tcp://head:8786``)."""
    text = address if "://" in address else f"tcp://{address}"
    problem = None
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as error:
        parts, port, problem = None, None, str(error)
    if problem is None and parts is not None:
        if parts.scheme not in DASK_PROTOCOLS:
            problem = f"unknown protocol {parts.scheme!r} (use {', '.join(DASK_PROTOCOLS)})"
        elif not parts.hostname or not re.fullmatch(r"[A-Za-z0-9._:\[\]-]+", parts.hostname):
            problem = "no valid host"
        elif not port:
            problem = "no port"
        elif parts.path not in ("", "/") or parts.query or parts.fragment:
            problem = "unexpected path or query"
    if problem is not None:
        raise SweepError(
            f"--address {address!r} is not a Dask scheduler address like tcp://host:8786 "
            f"({problem})"
        )


def check_executor(kind: str, address: str | None) -> None:
    """Before anything is written: a known executor, a well-formed ``--address`` (only with
    dask), and Dask importable when asked for."""
    if kind not in EXECUTORS:
        raise SweepError(f"unknown executor {kind!r}; choose local or dask")
    if address is not None and kind != "dask":
        raise SweepError("--address needs --executor dask")
    if address is not None:
        check_address(address)
    if kind == "dask":
        try:
            import distributed  # noqa: F401
        except ImportError:
            raise SweepError(
                "the dask executor needs Dask distributed: pip install 'geomlab[dask]'"
            ) from None
