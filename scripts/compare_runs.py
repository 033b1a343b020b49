"""Compare two run directories' CSV tables column by column (e.g. the same preset on cuda and
on cpu): max absolute and relative difference per numeric column, equality of the others.

    python scripts/compare_runs.py RUN_A RUN_B [--label e1-quick]

Only pandas. Rows are matched by position (runs of one config write them in the same order);
timing columns (names with "seconds", "_time" or "wall") are listed but not compared. Prints a
tab-separated table: label, file, column, kind, max_abs, max_rel, note. Exit status 0 even when
numbers differ (device runs are expected to differ by rounding); 2 when a run is missing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

TIMING = ("seconds", "_time", "wall")


def compare_frames(a: pd.DataFrame, b: pd.DataFrame) -> list[tuple[str, str, str, str, str]]:
    rows = []
    for column in a.columns.union(b.columns, sort=False):
        if column not in a.columns or column not in b.columns:
            rows.append((column, "missing", "", "", f"only in {'A' if column in a else 'B'}"))
            continue
        if any(key in column for key in TIMING):
            rows.append((column, "timing", "", "", "not compared"))
            continue
        x, y = a[column], b[column]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            xv, yv = x.to_numpy(dtype=float), y.to_numpy(dtype=float)
            finite = np.isfinite(xv) & np.isfinite(yv)
            same = (xv == yv) | (np.isnan(xv) & np.isnan(yv))  # inf == inf, NaN "==" NaN
            nonfinite_mismatch = int(np.sum(~finite & ~same))
            diff = np.abs(xv[finite] - yv[finite])
            scale = np.maximum(np.abs(xv[finite]), np.abs(yv[finite]))
            rel = np.divide(diff, scale, out=np.zeros_like(diff), where=scale > 0)
            max_abs = float(diff.max()) if diff.size else 0.0
            max_rel = float(rel.max()) if rel.size else 0.0
            note = f"{nonfinite_mismatch} NaN/inf mismatches" if nonfinite_mismatch else ""
            rows.append((column, "numeric", f"{max_abs:.3e}", f"{max_rel:.3e}", note))
        else:
            unequal = int((x.astype(str) != y.astype(str)).sum())
            note = f"{unequal} cells differ" if unequal else "equal"
            rows.append((column, "other", "", "", note))
    return rows


def compare_runs(run_a: Path, run_b: Path, label: str) -> list[tuple]:
    out = []
    files_a = {p.relative_to(run_a) for p in run_a.rglob("*.csv") if ".partial" not in p.parts}
    files_b = {p.relative_to(run_b) for p in run_b.rglob("*.csv") if ".partial" not in p.parts}
    for name in sorted(files_a | files_b):
        if name not in files_a or name not in files_b:
            out.append((label, str(name), "", "missing", "", "", "only in one run"))
            continue
        a, b = pd.read_csv(run_a / name), pd.read_csv(run_b / name)
        if len(a) != len(b):
            out.append((label, str(name), "", "rows", "", "", f"{len(a)} vs {len(b)} rows"))
            continue
        out.extend((label, str(name), *row) for row in compare_frames(a, b))
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_a", type=Path)
    parser.add_argument("run_b", type=Path)
    parser.add_argument("--label", default="")
    args = parser.parse_args(argv)
    for run in (args.run_a, args.run_b):
        if not run.is_dir():
            print(f"not a directory: {run}", file=sys.stderr)
            return 2
    print("label\tfile\tcolumn\tkind\tmax_abs\tmax_rel\tnote")
    for row in compare_runs(args.run_a, args.run_b, args.label or args.run_a.name):
        print("\t".join(row))
    return 0


if __name__ == "__main__":
    sys.exit(main())
