"""One run of one experiment: run directory, manifest, logging, progress, resume, atomic I/O."""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from rich.console import Console

import geomlab
from geomlab import io
from geomlab.experiments.base import Experiment, ExperimentConfig, RunResult

if TYPE_CHECKING:  # torch is imported where a run needs it: `geomlab show` stays light
    import torch

T = TypeVar("T")

MANIFEST = "manifest.json"
LOG_FILE = "run.log"
PARTIAL_DIR = ".partial"
PROGRESS_LOG_INTERVAL_S = 5.0


class RunError(RuntimeError):
    """The run could not start or did not finish; the message says why."""


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
    payload = config.model_dump(mode="json", exclude={"device"})
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
        """Resume unit: a finished piece of work is stored atomically and never redone."""
        path = self.out_dir / PARTIAL_DIR / f"{key}.json"
        if path.exists():
            self.log.info("resume: reusing finished %s", key)
            return io.read_json(path)
        value = compute()
        io.write_json(path, value)
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

    A directory holding an unfinished run of the same config resumes it (finished pieces are
    kept); a finished one is left alone unless ``force``; a different config is an error.
    """
    console = console or Console(stderr=True)
    interactive = console.is_terminal if interactive is None else interactive
    out_dir = Path(out_dir) if out_dir is not None else default_out_dir(experiment)
    digest = config_hash(experiment.name, config)
    manifest_path = out_dir / MANIFEST

    previous = io.read_json(manifest_path) if manifest_path.exists() else None
    if previous is not None:
        if previous.get("config_hash") != digest:
            raise RunError(
                f"{out_dir} holds a run of another config (hash {previous.get('config_hash')}, "
                f"this one {digest}); choose another --out"
            )
        if previous.get("status") in ("complete", "gates_failed") and not force:
            return RunOutcome("already_complete", out_dir, None, previous)

    device = resolve_device(config.device)
    out_dir.mkdir(parents=True, exist_ok=True)
    log = make_logger(
        f"geomlab.run.{out_dir.resolve()}", out_dir / LOG_FILE, console=console,
        interactive=interactive,
    )  # fmt: skip
    manifest: dict[str, Any] = {
        "experiment": experiment.name,
        "preset": preset,
        "config": config.model_dump(mode="json"),
        "config_hash": digest,
        "status": "running",
        "started": _now(),
        "finished": None,
        "resumed": previous is not None,
        "command": sys.argv,
        "environment": environment_info(device),
    }
    io.write_json(manifest_path, manifest)
    log.info("%s (%s preset) -> %s on %s", experiment.name, preset, out_dir, device)
    if previous is not None:
        log.info("resuming an unfinished run in %s", out_dir)

    ctx = Context(out_dir=out_dir, device=device, log=log, console=console, interactive=interactive)
    start = time.perf_counter()
    try:
        result = experiment.run(config, ctx)
    except BaseException as error:
        manifest.update(
            status="interrupted" if isinstance(error, KeyboardInterrupt) else "failed",
            finished=_now(),
            error=f"{type(error).__name__}: {error}",
            wall_seconds=time.perf_counter() - start,
        )
        io.write_json(manifest_path, manifest)
        log.error("run %s: %s", manifest["status"], manifest["error"])
        close_logger(log)
        raise

    status = "complete" if result.gates_passed else "gates_failed"
    manifest.update(
        status=status,
        finished=_now(),
        wall_seconds=time.perf_counter() - start,
        gates=[gate.as_row() for gate in result.gates],
        headline=result.headline,
        artifacts=sorted(ctx.written),
    )
    if "data" in result.summary:  # e.g. label-noise records: part of what defines the run
        manifest["data"] = result.summary["data"]
    # The manifest's final status is written last: it is the completion marker.
    io.write_json(manifest_path, manifest)
    log.info("%s in %.1f s: %s", status, manifest["wall_seconds"], out_dir)
    close_logger(log)
    return RunOutcome(status, out_dir, result, manifest)
