"""The Python examples of the README and docs/your-model.md run as written.

Every ```python block is executed on its own (a fresh namespace, in a temporary directory);
a block that is deliberately a fragment is marked in the markdown by an HTML comment on the
line before it that starts with ``<!-- not run`` and says why, and only those are skipped.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = ("README.md", "docs/your-model.md")
BLOCK = re.compile(r"^```python\n(.*?)^```", re.S | re.M)
NOT_RUN = "<!-- not run"


def python_blocks(text: str) -> list[tuple[int, str, bool]]:
    """``(line, code, runs)`` of every ```python block; ``runs`` is False when the nearest
    non-blank line above it is a ``<!-- not run ... -->`` comment."""
    blocks = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start()) + 1
        above = [row for row in text[: match.start()].splitlines() if row.strip()]
        runs = not (above and above[-1].strip().startswith(NOT_RUN))
        blocks.append((line, match.group(1), runs))
    return blocks


def test_blocks_are_found_and_fragments_are_marked():
    text = "a\n\n```python\nx = 1\n```\n<!-- not run: fragment -->\n```python\ny\n```\n"
    assert python_blocks(text) == [(3, "x = 1\n", True), (7, "y\n", False)]
    readme = python_blocks((ROOT / "README.md").read_text(encoding="utf-8"))
    assert len(readme) >= 2 and all(runs for _, _, runs in readme)  # the README has no fragment


CASES = [
    pytest.param(code, id=f"{name}:{line}")
    for name in DOCUMENTS
    for line, code, runs in python_blocks((ROOT / name).read_text(encoding="utf-8"))
    if runs
]


@pytest.mark.parametrize("code", CASES)
def test_python_example_runs_as_written(code, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "<markdown example>", "exec"), {"__name__": "__example__"})
    capsys.readouterr()  # examples print; what they print is for the reader
