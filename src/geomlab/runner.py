"""One run of one experiment: run directory, lock, manifest, logging, progress, resume.

A run directory has one writer at a time (an OS file lock, :data:`LOCK_FILE`, released when the
writer exits or dies). Finished pieces of work are kept under ``.partial/<config hash>/`` so a
rerun of the same config resumes and nothing of another config is ever reused; ``force``
discards them. SIGTERM ends a run like Ctrl-C (status ``interrupted``, resumable).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console

import geomlab
from geomlab import io, rundir
from geomlab.experiments.base import Experiment, ExperimentConfig, RunResult

if TYPE_CHECKING:  # torch is imported where a run needs it: `geomlab show` stays light
    import torch

T = TypeVar("T")

MANIFEST = rundir.MANIFEST
LOG_FILE = "run.log"
PARTIAL_DIR = ".partial"
LOCK_FILE = ".run.lock"
STALE_SUFFIX = ".stale"  # --force moves another run's files into <stamp>.stale/
PROGRESS_LOG_INTERVAL_S = 5.0
# What a run directory holds besides its artifacts (a sweep worker's lock, a failed sweep
# run's traceback, a corrupt manifest it set aside): never taken for another run's files.
BOOKKEEPING = frozenset(
    {MANIFEST, LOG_FILE, PARTIAL_DIR, LOCK_FILE, ".lock", "traceback.txt", "manifest.json.corrupt"}
)


class RunError(RuntimeError):
    """The run could not start or did not finish; the message says why."""


class RunInputError(RunError):
    """The run cannot start because of what was asked: a run directory that cannot be one,
    is being written by another process, or holds a corrupt manifest (the CLI exits 2)."""


class RunDirBusy(RunInputError):
    """Another live process holds the run directory's lock; the message names it."""


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived (``timeout``, a batch scheduler): handled like Ctrl-C."""


def resolve_device(request: str) -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA without it is an error, not a fallback.

    The one device resolver of geomlab (runs and ``measure-lambda`` alike)."""
    import torch

    if request == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if request == "cuda" and not torch.cuda.is_available():
        raise RunError("device 'cuda' was requested but torch sees no CUDA device")
    return torch.device(request)


def config_hash(experiment_name: str, config: ExperimentConfig) -> str:
    """Short stable hash of the validated config (device excluded: it does not define science)."""
    payload = config.hash_payload()
    text = json.dumps({"experiment": experiment_name, "config": payload}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def environment_info(device: torch.device) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {
        "geomlab": geomlab.__version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "hostname": socket.gethostname(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
    }
    try:
        import numpy
        import pandas

        info["numpy"] = numpy.__version__
        info["pandas"] = pandas.__version__
    except ImportError:  # pragma: no cover - both are dependencies
        pass
    if device.type == "cuda":
        info["cuda_device_name"] = torch.cuda.get_device_name(device)
        info["cuda_version"] = torch.version.cuda
    info["git_commit"] = _git_commit()
    return info


def _git_commit() -> str | None:
    source_dir = Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=source_dir,
            capture_output=True,
            text=True,
            timeout=5,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class Context:
    """The runner side of :class:`geomlab.experiments.base.RunContext`."""

    out_dir: Path
    device: torch.device
    log: logging.Logger
    console: Console
    interactive: bool
    pieces_dir: Path | None = None  # default: <out_dir>/.partial/unkeyed
    written: list[str] = field(default_factory=list)

    def progress(
        self, iterable: Iterable[T], *, total: int | None = None, description: str = ""
    ) -> Iterator[T]:
        if total is None and hasattr(iterable, "__len__"):
            total = len(iterable)  # type: ignore[arg-type]
        if self.interactive:
            from rich.progress import (
                BarColumn,
                MofNCompleteColumn,
                Progress,
                TextColumn,
                TimeElapsedColumn,
            )

            columns = (
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
            )
            with Progress(*columns, console=self.console, transient=False) as bar:
                task = bar.add_task(description or "working", total=total)
                for item in iterable:
                    yield item
                    bar.advance(task)
            return
        last_line = time.monotonic()
        for index, item in enumerate(iterable, start=1):
            yield item
            now = time.monotonic()
            # Plain logs stay short: the first, the last, and at most one line per interval.
            if index in (1, total) or now - last_line >= PROGRESS_LOG_INTERVAL_S:
                self.log.info("%s: %d/%s done", description or "progress", index, total or "?")
                last_line = now

    def _track(self, path: Path) -> Path:
        name = str(path.relative_to(self.out_dir))
        if name not in self.written:
            self.written.append(name)
        return path

    def write_csv(self, name: str, frame: Any) -> Path:
        return self._track(io.write_csv(self.out_dir / name, frame))

    def write_json(self, name: str, obj: Any) -> Path:
        return self._track(io.write_json(self.out_dir / name, obj))

    def save_figure(self, figure: Any, stem: str) -> list[Path]:
        import matplotlib.pyplot as plt

        paths = []
        for fmt in ("png", "pdf"):
            target = self.out_dir / f"{stem}.{fmt}"
            io.atomic_write(target, lambda tmp, fmt=fmt: figure.savefig(tmp, format=fmt, dpi=300))
            paths.append(self._track(target))
        plt.close(figure)
        return paths

    def checkpoint_path(self, key: str) -> Path:
        path = self.out_dir / "checkpoints" / key
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def cached(self, key: str, compute: Callable[[], Any]) -> Any:
        """Resume unit: a finished piece of work is stored atomically and never redone.

        Pieces live in this config's own folder (``.partial/<config hash>/<key>.json``) and
        keep NaN and infinities as such (the finite gates see them, not None). A fresh value
        is returned as read back from its file, so a first run and a resumed one compute
        with the same values."""
        folder = self.pieces_dir or self.out_dir / PARTIAL_DIR / "unkeyed"
        path = folder / f"{key}.json"
        if path.exists():
            try:
                value = io.read_json(path)
            except io.CorruptFileError as error:  # not written by atomic_write: redo it
                self.log.warning("resume: %s; computing %s again", error, key)
            else:
                self.log.info("resume: reusing finished %s", key)
                return value
        value = compute()
        io.write_json(path, value, keep_non_finite=True)
        return io.read_json(path)


@dataclass
class RunOutcome:
    status: str  # complete | gates_failed | already_complete
    out_dir: Path
    result: RunResult | None
    manifest: dict[str, Any]


def default_out_dir(experiment: Experiment, root: Path = Path("results")) -> Path:
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return root / experiment.name / stamp


def make_logger(
    name: str,
    log_file: Path,
    *,
    console: Console,
    interactive: bool,
    level: int = logging.INFO,
    screen_level: int = logging.INFO,
) -> logging.Logger:
    """The one logger set-up of geomlab (runs and sweeps): ``log_file`` gets every record at
    ``level`` and up with timestamps; the screen gets ``screen_level`` and up, through rich on
    a terminal, as plain timestamped lines on ``console``'s file otherwise. Calling it again
    for the same name replaces the handlers; :func:`close_logger` releases them."""
    logger = logging.getLogger(name)
    logger.setLevel(level)
    logger.propagate = False
    close_logger(logger)
    file_handler = logging.FileHandler(log_file, encoding="utf-8")
    file_handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    logger.addHandler(file_handler)
    screen: logging.Handler
    if interactive:
        from rich.logging import RichHandler

        screen = RichHandler(console=console, show_path=False, markup=False)
    else:
        screen = logging.StreamHandler(console.file)  # the caller's console, not always stderr
        screen.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%H:%M:%S"))
    screen.setLevel(screen_level)
    logger.addHandler(screen)
    return logger


def close_logger(logger: logging.Logger) -> None:
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()


# --- one writer per run directory ------------------------------------------------------------

_held: dict[Path, int] = {}  # run directories this process holds the lock of (re-entrant)
_held_guard = threading.Lock()


def _writer_identity() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(), "since": _now()}


def _describe_writer(info: dict[str, Any] | None) -> str:
    if not info:
        return "another process"
    return f"pid {info.get('pid', '?')} on {info.get('host', '?')} (since {info.get('since', '?')})"


def _read_lock_info(path: Path) -> dict[str, Any] | None:
    try:
        text = path.read_text(encoding="utf-8")
        return json.loads(text) if text.strip() else None
    except (OSError, ValueError):
        return None


@contextlib.contextmanager
def hold_run_dir(out_dir: Path) -> Iterator[None]:
    """Be the one writer of ``out_dir`` (which must exist) for the duration of the block.

    An exclusive ``flock`` on :data:`LOCK_FILE`: the OS releases it when the holder exits or is
    killed, so a crashed run never blocks the next. The holder's pid, host and start time are
    written into the lock file for the message another process gets (:class:`RunDirBusy`).
    Re-entrant within one process (a sweep worker may hold it around its run)."""
    key = Path(out_dir).resolve()
    with _held_guard:
        if key in _held:
            _held[key] += 1
            nested = True
        else:
            nested = False
    if nested:
        try:
            yield
        finally:
            with _held_guard:
                _held[key] -= 1
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: no lock
        yield
        return
    lock_path = key / LOCK_FILE
    try:
        handle = open(lock_path, "a+", encoding="utf-8")  # noqa: SIM115 - held across the yield
    except OSError as error:
        raise RunInputError(f"cannot use {out_dir} as a run directory: {error}") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _describe_writer(_read_lock_info(lock_path))
            raise RunDirBusy(
                f"{out_dir} is being written by another geomlab run: {holder}; wait for it to "
                "finish or choose another --out"
            ) from None
        try:  # who holds it, for the message another process gets; the flock is what counts
            handle.seek(0)
            handle.truncate()
            handle.write(json.dumps(_writer_identity()) + "\n")
            handle.flush()
        except OSError:  # e.g. a full disk: the lock is held all the same
            pass
        with _held_guard:
            _held[key] = 1
        try:
            yield
        finally:
            with _held_guard:
                del _held[key]
            with contextlib.suppress(OSError):
                handle.seek(0)
                handle.truncate()  # no writer now (the lock goes with the close)
    finally:
        with contextlib.suppress(OSError):
            handle.close()


def writer_state(run_dir: Path, manifest: dict[str, Any]) -> tuple[bool | None, str]:
    """Is the process writing a ``running`` run alive? ``(alive, description)``; alive is None
    when this machine cannot tell (the writer is on another host and holds no lock we see)."""
    writer = manifest.get("writer") or {}
    described = _describe_writer(writer) if writer else "unknown writer"
    same_host = writer.get("host") == socket.gethostname()
    if same_host and isinstance(writer.get("pid"), int):
        try:
            os.kill(writer["pid"], 0)
        except ProcessLookupError:
            return False, f"{described}: not running"
        except PermissionError:  # exists, owned by someone else
            pass
    # The pid exists (or is on another host): whoever holds the lock is the live writer.
    try:
        import fcntl
    except ImportError:  # pragma: no cover
        return None, described
    lock_path = Path(run_dir) / LOCK_FILE
    try:
        with open(lock_path, encoding="utf-8") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return True, f"{_describe_writer(_read_lock_info(lock_path) or writer)}: alive"
            fcntl.flock(handle, fcntl.LOCK_UN)
    except FileNotFoundError:
        pass
    except OSError:
        return None, f"{described}: cannot tell ({lock_path} is not readable)"
    if writer and not same_host:  # file locks may not cross machines (NFS): do not guess
        return None, f"{described}: on another host, holds no lock seen here"
    return False, f"{described}: not running"


def record_stopped_run(run_dir: Path) -> bool:
    """A run whose manifest says ``running`` although its writer is gone (stopped by a signal
    before it could say so): record it ``interrupted``, as it would have, under its lock (a
    live writer keeps it: nothing changes). True when the manifest was rewritten."""
    run_dir = Path(run_dir)
    try:
        with hold_run_dir(run_dir):
            manifest = _read_manifest(run_dir / MANIFEST)
            if manifest is None or manifest.get("status") != "running":
                return False
            manifest["status"] = "interrupted"
            manifest.setdefault("error", "stopped by a signal before it could record it")
            invocations = manifest.get("invocations") or []
            if invocations and invocations[-1].get("status") == "running":
                invocations[-1]["status"] = "interrupted"
            write_manifest(run_dir / MANIFEST, manifest)
            return True
    except (RunInputError, OSError):  # busy (alive), unreadable: leave it as it is
        return False


# --- the run ---------------------------------------------------------------------------------


def _prepare_run_dir(out_dir: Path) -> None:
    if out_dir.exists() and not out_dir.is_dir():
        raise RunInputError(f"{out_dir} exists and is not a directory; choose another --out")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise RunInputError(
            f"cannot create run directory {out_dir}: {error.strerror or error}"
        ) from None
    if not os.access(out_dir, os.W_OK | os.X_OK):
        raise RunInputError(f"run directory {out_dir} is not writable")


def _read_manifest(path: Path) -> dict[str, Any] | None:
    """The run directory's manifest (validated by :mod:`geomlab.rundir`), None if it has none."""
    try:
        return rundir.read_manifest_dict(path.parent)
    except rundir.RunDirError as error:
        raise RunInputError(f"{error}; move it away to start this run afresh") from None


def write_manifest(path: Path, manifest: dict[str, Any]) -> Path:
    """Validate ``manifest`` with the readers' schema (:class:`geomlab.rundir.Manifest`),
    then write it atomically: what the runner writes, every reader accepts."""
    rundir.check_manifest(io.to_jsonable(manifest), path)
    return io.write_json(path, manifest)


def foreign_files(out_dir: Path) -> list[str]:
    """Top-level entries of ``out_dir`` that are no run's bookkeeping: with no manifest beside
    them, files another run left (its figures, tables, checkpoints)."""
    names = []
    for entry in sorted(out_dir.iterdir()):
        name = entry.name
        if name in BOOKKEEPING or name.endswith(STALE_SUFFIX) or io.is_temporary(entry):
            continue
        names.append(name)
    return names


def set_aside(out_dir: Path, names: list[str]) -> Path:
    """Move ``names`` (entries of ``out_dir``) into a fresh ``<UTC stamp>.stale/`` folder."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    folder = out_dir / f"previous-{stamp}{STALE_SUFFIX}"
    index = 1
    while folder.exists():
        index += 1
        folder = out_dir / f"previous-{stamp}-{index}{STALE_SUFFIX}"
    folder.mkdir()
    for name in names:
        os.replace(out_dir / name, folder / name)
    return folder


def _parse_time(stamp: Any) -> float | None:
    try:
        return datetime.fromisoformat(str(stamp)).timestamp()
    except ValueError:
        return None


def _closed_invocations(previous: dict[str, Any] | None, out_dir: Path) -> list[dict[str, Any]]:
    """The earlier invocations of this run, each with its wall time. One killed without a
    word (SIGKILL, power loss) gets the time from its start to the last line of run.log."""
    if previous is None:
        return []
    invocations = [dict(item) for item in previous.get("invocations") or []]
    if not invocations and previous.get("started"):  # a manifest from before invocations
        invocations = [{"started": previous["started"], "status": previous.get("status"),
                        "wall_seconds": previous.get("wall_seconds")}]  # fmt: skip
    for item in invocations:
        if item.get("wall_seconds") is None:
            started = _parse_time(item.get("started"))
            log_file = out_dir / LOG_FILE
            if started is not None and log_file.exists():
                item["wall_seconds"] = max(0.0, log_file.stat().st_mtime - started)
                item["wall_seconds_estimated"] = True
            else:
                item["wall_seconds"] = 0.0
            if item.get("status") == "running":
                item["status"] = "killed"
    return invocations


@contextlib.contextmanager
def sigterm_as_interrupt(raises: type[Terminated] = Terminated) -> Iterator[None]:
    """Within the block, the first SIGTERM raises ``raises`` (a :class:`Terminated`, hence a
    KeyboardInterrupt), so a run or a sweep stopped by ``timeout`` or a scheduler records
    ``interrupted`` and can resume. Only the main thread can install handlers; elsewhere (a Dask
    thread) this does nothing. A SIGTERM the parent chose to ignore stays ignored."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_IGN:  # the parent chose to ignore it: so do we
        yield
        return

    fired = []

    def handler(signum: int, frame: Any) -> None:
        if not fired:  # once: a second SIGTERM must not interrupt the last writes
            fired.append(signum)
            raise raises(f"signal {signal.Signals(signum).name}")

    signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_experiment(
    experiment: Experiment,
    config: ExperimentConfig,
    *,
    preset: str,
    out_dir: Path | None = None,
    console: Console | None = None,
    interactive: bool | None = None,
    force: bool = False,
) -> RunOutcome:
    """Run ``experiment`` with a validated ``config`` into ``out_dir``.

    A directory holding an unfinished run of the same config resumes it (its finished pieces
    are kept); a finished one is left alone unless ``force``, which recomputes everything; a
    different config is an error. Raises :class:`RunDirBusy` while another process writes
    there, :class:`RunInputError` for a directory that cannot be a run directory.
    """
    console = console or Console(stderr=True)
    interactive = console.is_terminal if interactive is None else interactive
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(experiment)
    digest = config_hash(experiment.name, config)
    manifest_path = out_dir / MANIFEST
    device = resolve_device(config.device)  # before anything exists on disk
    _prepare_run_dir(out_dir)
    with hold_run_dir(out_dir), sigterm_as_interrupt():
        previous = _read_manifest(manifest_path)
        if previous is not None:
            if previous.get("config_hash") != digest:
                raise RunInputError(
                    f"{out_dir} holds a run of another config ({previous.get('experiment')}, "
                    f"hash {previous.get('config_hash')}; this one: {experiment.name}, hash "
                    f"{digest}); choose another --out"
                )
            if previous.get("status") in ("complete", "gates_failed") and not force:
                return RunOutcome("already_complete", out_dir, None, previous)
        stale = foreign_files(out_dir) if previous is None or force else []
        if stale and not force:
            shown = ", ".join(stale[:8]) + (f" and {len(stale) - 8} more" if len(stale) > 8 else "")
            raise RunInputError(
                f"{out_dir} holds files of another run but no {MANIFEST} ({shown}); they would "
                "be mixed with this run's: choose another --out, or --force to move them "
                f"aside into a *{STALE_SUFFIX}/ folder"
            )
        moved = set_aside(out_dir, stale) if stale else None
        return _run_locked(
            experiment, config, preset=preset, out_dir=out_dir, digest=digest, device=device,
            previous=previous, console=console, interactive=interactive, force=force,
            moved=moved,
        )  # fmt: skip


def _run_locked(
    experiment: Experiment,
    config: ExperimentConfig,
    *,
    preset: str,
    out_dir: Path,
    digest: str,
    device: torch.device,
    previous: dict[str, Any] | None,
    console: Console,
    interactive: bool,
    force: bool,
    moved: Path | None = None,
) -> RunOutcome:
    pieces_dir = out_dir / PARTIAL_DIR / digest
    if force:
        shutil.rmtree(out_dir / PARTIAL_DIR, ignore_errors=True)
        previous = None  # a forced run starts afresh: its history is its own
    resumed = previous is not None or pieces_dir.is_dir()
    log = make_logger(
        f"geomlab.run.{out_dir.resolve()}", out_dir / LOG_FILE, console=console,
        interactive=interactive,
    )  # fmt: skip
    earlier = _closed_invocations(previous, out_dir)
    writer = _writer_identity()
    invocation: dict[str, Any] = {
        "started": writer["since"], "finished": None, "status": "running",
        "wall_seconds": None, "pid": writer["pid"], "host": writer["host"],
    }  # fmt: skip
    manifest: dict[str, Any] = {
        "experiment": experiment.name,
        "preset": preset,
        "config": config.model_dump(mode="json"),
        "config_hash": digest,
        "status": "running",
        "started": earlier[0]["started"] if earlier else invocation["started"],
        "finished": None,
        "resumed": resumed,
        "forced": force,
        "command": sys.argv,
        "environment": environment_info(device),
        "writer": writer,  # pid, host, since: `geomlab show` tells whether it is alive
        "invocations": [*earlier, invocation],
    }

    def close(status: str, **extra: Any) -> None:
        wall = time.perf_counter() - start
        invocation.update(status=status, finished=_now(), wall_seconds=wall)
        manifest.update(
            status=status,
            finished=invocation["finished"],
            wall_seconds=sum(item["wall_seconds"] or 0.0 for item in manifest["invocations"]),
            **extra,
        )
        write_manifest(out_dir / MANIFEST, manifest)

    finishing: list[str] = []  # the final status, once its write has begun

    def stopped(error: BaseException) -> None:
        status = "interrupted" if isinstance(error, KeyboardInterrupt) else "failed"
        if finishing:  # the signal came while the completion marker was being written
            with contextlib.suppress(Exception):
                if io.read_json(out_dir / MANIFEST).get("status") == finishing[0]:
                    close_logger(log)  # it is on disk: the run finished, keep it so
                    return
        manifest.pop("artifacts", None)  # a run that did not finish lists none
        close(status, error=f"{type(error).__name__}: {error}")
        log.error("run %s: %s", status, manifest["error"])
        close_logger(log)

    ctx = Context(
        out_dir=out_dir, device=device, log=log, console=console, interactive=interactive,
        pieces_dir=pieces_dir,
    )  # fmt: skip
    start = time.perf_counter()
    write_manifest(out_dir / MANIFEST, manifest)
    # From here on a signal at any point (not only inside the experiment) records the run as
    # `interrupted`: the manifest never stays `running` once this process is gone.
    try:
        log.info("%s (%s preset) -> %s on %s", experiment.name, preset, out_dir, device)
        if moved is not None:
            log.info("--force: moved the files of an earlier run aside into %s", moved.name)
        if force:
            log.info("--force: recomputing every piece")
        elif resumed:
            log.info("resuming an unfinished run in %s", out_dir)
        result = experiment.run(config, ctx)
        status = "complete" if result.gates_passed else "gates_failed"
        extra: dict[str, Any] = {
            "gates": [gate.as_row() for gate in result.gates],
            "headline": result.headline,
            "artifacts": sorted(ctx.written),
        }
        if "data" in result.summary:  # e.g. label-noise records: part of what defines the run
            extra["data"] = result.summary["data"]
        # The manifest's final status is written last: it is the completion marker.
        finishing.append(status)
        close(status, **extra)
    except BaseException as error:
        stopped(error)
        raise
    removed = io.remove_orphaned_temporaries(out_dir)  # we hold the lock: nobody writes them
    if removed:
        log.info("removed %d temporary file(s) left by an earlier, killed invocation", len(removed))
    log.info(
        "%s in %.1f s (%.1f s over %d invocation(s)): %s", status, invocation["wall_seconds"],
        manifest["wall_seconds"], len(manifest["invocations"]), out_dir,
    )  # fmt: skip
    close_logger(log)
    return RunOutcome(status, out_dir, result, manifest)
