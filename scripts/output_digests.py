"""Digest every CSV of the quick presets (and E1/E3 paper) to show a refactor changed no number.

    python scripts/output_digests.py write  digests.json   # before a change
    python scripts/output_digests.py check  digests.json   # after it: exit 1 on any difference

Timing columns (names containing "seconds", "_time" or "wall") are dropped before hashing; all
other cells are hashed as written (shortest float repr), so "same digest" means byte-identical
numbers. Compare on the same machine: BLAS code paths differ across CPUs.
"""

from __future__ import annotations

import hashlib
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

RUNS = [
    ("e1", "paper"),
    ("e1", "quick"),
    ("e3", "paper"),
    ("e3", "quick"),
    ("alignment", "quick"),
    ("gradient-rank", "quick"),
    ("lambda-control", "quick"),
]
TIMING_MARKERS = ("seconds", "_time", "wall")


def digest_csv(path: Path) -> str:
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    keep = [c for c in frame.columns if not any(m in c.lower() for m in TIMING_MARKERS)]
    buffer = io.StringIO()
    frame[keep].to_csv(buffer, index=False)
    return hashlib.sha256(buffer.getvalue().encode()).hexdigest()


def collect() -> dict[str, str]:
    geomlab = Path(sys.executable).with_name("geomlab")
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, preset in RUNS:
            out = Path(tmp) / f"{name}-{preset}"
            cmd = [
                str(geomlab),
                "run",
                name,
                "--preset",
                preset,
                "--out",
                str(out),
                "--device",
                "cpu",
            ]
            print("+", " ".join(cmd), flush=True)
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            for csv in sorted(out.rglob("*.csv")):
                digests[f"{name}-{preset}/{csv.relative_to(out)}"] = digest_csv(csv)
    return digests


def main() -> int:
    mode, target = sys.argv[1], Path(sys.argv[2])
    digests = collect()
    if mode == "write":
        target.write_text(json.dumps(digests, indent=2, sort_keys=True) + "\n")
        print(f"wrote {len(digests)} digests to {target}")
        return 0
    expected = json.loads(target.read_text())
    bad = sorted(k for k in expected.keys() | digests.keys() if expected.get(k) != digests.get(k))
    for key in bad:
        print(f"DIFFERS: {key}: {expected.get(key)} -> {digests.get(key)}")
    print(f"{len(expected) - len(bad)} of {len(expected)} tables identical")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
