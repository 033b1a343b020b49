"""What the driver shows: one progress bar on a terminal (done / total, running, failed), plain
log lines elsewhere (CI, nohup, a pipe), and ``sweep.log`` with everything."""

from __future__ import annotations

import logging
from pathlib import Path

from rich.console import Console

from geomlab.runner import make_logger
from geomlab.sweep.layout import SWEEP_LOG


class SweepDisplay:
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


def sweep_logger(out_dir: Path, console: Console, interactive: bool) -> logging.Logger:
    """``sweep.log`` gets everything (DEBUG: tracebacks too); the screen INFO and up. Release
    it with :func:`geomlab.runner.close_logger`."""
    return make_logger(
        f"geomlab.sweep.{out_dir.resolve()}", out_dir / SWEEP_LOG, console=console,
        interactive=interactive, level=logging.DEBUG,
    )  # fmt: skip
