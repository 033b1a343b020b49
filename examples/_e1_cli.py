"""What both examples share: E1 from the command line on a module's own factory and data, and a
``main`` that runs the Python part, then the CLI part into ``--out`` (or a temporary folder)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

HERE = Path(__file__).resolve().parent


def run_e1(module: str, out: Path, settings: Sequence[str]) -> dict:
    """``geomlab run e1 --preset quick`` with ``model=module:build_model``,
    ``data=module:load_data`` and ``settings`` (``key=value``); returns its summary."""
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")]),
    }
    command = [sys.executable, "-m", "geomlab.cli", "run", "e1", "--preset", "quick",
               "--set", f"model={module}:build_model",
               "--set", f"data={module}:load_data"]  # fmt: skip
    for setting in settings:
        command += ["--set", setting]
    command += ["--out", str(out), "--device", "cpu"]
    print("+", " ".join(command))
    subprocess.run(command, check=True, env=env)
    summary = json.loads((out / "E1_summary.json").read_text())
    print("advantage over SGD (%):", summary["advantage_pct_by_method"])
    assert summary["model"] == f"{module}:build_model"
    assert (out / "E1_figure.png").exists()
    return summary


def main(description: str, python_api: Callable[[], None], command_line: Callable[[Path], None],
         default_name: str) -> None:  # fmt: skip
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--out", type=Path, default=None, help="run directory of the CLI part")
    args = parser.parse_args()
    python_api()
    if args.out is not None:
        command_line(args.out)
    else:
        with tempfile.TemporaryDirectory() as tmp:
            command_line(Path(tmp) / default_name)
