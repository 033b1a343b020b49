"""One self-contained HTML page for runs and sweeps: manifests, gates, headline tables,
figures (PNG embedded as data URIs) and, for a sweep, headline metrics over seeds per grid
point (mean, std, 95% bootstrap CI). No scripts, no network: CSS inline, images inline."""

from __future__ import annotations

import base64
import html
import json
import math
import re
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pandas as pd

from geomlab import io, rundir, stats, sweep
from geomlab.rundir import MANIFEST
from geomlab.runner import writer_state

# CSV tables of a run are shown when small enough to read on a page.
MAX_TABLE_ROWS = 60
MAX_TABLE_COLUMNS = 24

CSS = """
:root { --fg: #1b1f24; --muted: #5b6470; --line: #d7dbe0; --ok: #1a7f37; --bad: #c62828;
        --warn: #9a6700; --head: #f3f5f7; }
* { box-sizing: border-box; }
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, sans-serif;
       color: var(--fg); margin: 0 auto; padding: 24px; max-width: 1200px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 20px; margin: 36px 0 8px; padding-top: 12px; border-top: 2px solid var(--fg); }
h3 { font-size: 16px; margin: 20px 0 6px; }
.meta, figcaption, .note { color: var(--muted); font-size: 12px; }
table { border-collapse: collapse; margin: 6px 0 14px; font-size: 13px; }
th, td { border: 1px solid var(--line); padding: 3px 8px; text-align: left;
         vertical-align: top; }
th { background: var(--head); font-weight: 600; }
tbody tr:nth-child(even) td { background: #fafbfc; }
td.num { text-align: right; font-variant-numeric: tabular-nums; white-space: nowrap; }
td.ci { color: var(--muted); font-size: 12px; }
.wide { display: block; overflow-x: auto; max-width: 100%; }
.status { font-weight: 600; }
.complete, .pass { color: var(--ok); }
.failed, .gates_failed, .fail, .interrupted { color: var(--bad); }
.running, .pending { color: var(--warn); }
figure { margin: 10px 0 18px; }
figure img { max-width: min(100%, 900px); height: auto; border: 1px solid var(--line); }
table.runs td:first-child, table.aggregate td { white-space: nowrap; }
pre { background: #f6f8fa; border: 1px solid var(--line); padding: 8px; overflow-x: auto;
      font-size: 12px; white-space: pre-wrap; }
details { margin: 6px 0; }
details > summary { cursor: pointer; font-weight: 600; }
section.run { margin-left: 4px; }
nav ul { margin: 4px 0; }
"""


class ReportError(ValueError):
    """A directory is neither a run nor a sweep, one of its files is missing, corrupt or of
    the wrong shape, a path in it leads outside it, or the page cannot be written; the
    message names the file (the CLI exits 2)."""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """Numbers to 6 significant digits; missing or non-finite as a dash (never 'nan')."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return "—" if not math.isfinite(value) else f"{value:.6g}"
    if isinstance(value, list | dict):
        return json.dumps(value)
    return str(value)


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def table(
    headers: list[str], rows: list[list[Any]], *, css: str = "", raw_columns: set[int] = frozenset()
) -> str:
    """An HTML table; cells are escaped unless their column index is in ``raw_columns``."""
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = []
    for row in rows:
        cells = []
        for index, value in enumerate(row):
            if index in raw_columns:
                cells.append(f"<td>{value}</td>")
            else:
                klass = ' class="num"' if _is_number(value) else ""
                cells.append(f"<td{klass}>{esc(fmt(value))}</td>")
        body.append(f"<tr>{''.join(cells)}</tr>")
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def status_span(status: str) -> str:
    return f'<span class="status {esc(status)}">{esc(status)}</span>'


def png_figure(path: Path) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (
        f'<figure><img src="data:image/png;base64,{data}" alt="{esc(path.stem)}">'
        f"<figcaption>{esc(path.name)}</figcaption></figure>"
    )


def _anchor(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-") or "x"


# --------------------------------------------------------------------------- one run


def describe_status(run: rundir.RunDir) -> str:
    """The run's status, and for ``running`` whether its writer is alive (as ``show`` says)."""
    status = run.manifest.status
    if status != "running":
        return status
    alive, _ = writer_state(run.path, run.manifest.model_dump(mode="json"))
    return "running, but its writer is gone (killed?)" if alive is False else status


def run_section(run_dir: Path, *, title: str | None = None, level: int = 2) -> str:
    """One run: its manifest, gates, headline, and exactly the figures and tables its
    manifest lists as artifacts (each checked to stay inside ``run_dir``), never a glob."""
    run = rundir.read_run(run_dir)
    manifest = run.manifest
    env = manifest.environment
    status = describe_status(run)
    css_status = manifest.status if status == manifest.status else "failed"
    parts = [
        f"<h{level}>{esc(title or run_dir.name)} "
        f'<span class="status {esc(css_status)}">{esc(status)}</span></h{level}>'
    ]
    parts.append(f'<p class="meta">{esc(run_dir)}</p>')

    info = [
        ("experiment", manifest.experiment),
        ("preset", manifest.preset),
        ("status", status),
        ("config hash", manifest.config_hash),
        ("started", manifest.started),
        ("finished", manifest.finished),
        ("wall seconds", manifest.wall_seconds),
        ("resumed", manifest.resumed),
        ("device", env.device),
        ("host", env.hostname),
        ("torch threads", env.torch_threads),
        ("versions", f"geomlab {env.geomlab}, torch {env.torch}, "
                     f"numpy {env.numpy}, python {env.python}"),
        ("git commit", env.git_commit),
        ("error", manifest.error),
    ]  # fmt: skip
    rows = [[key, value] for key, value in info if value is not None]
    parts.append("<h4>Manifest</h4>" + table(["field", "value"], rows, css="manifest"))

    parts.append(
        "<details><summary>Config</summary>"
        + table(["field", "value"], [[k, v] for k, v in manifest.config.items()], css="config")
        + "</details>"
    )
    if manifest.gates:
        gate_rows = [
            [
                gate.name,
                gate.scope,
                status_span("pass" if gate.passed else "fail"),
                gate.message,
            ]
            for gate in manifest.gates
        ]
        parts.append(
            "<h4>Gates</h4>"
            + table(["gate", "scope", "result", "message"], gate_rows, css="gates", raw_columns={2})
        )
    if manifest.headline:
        parts.append(
            "<h4>Headline</h4>"
            + table(
                ["metric", "value"], [[k, v] for k, v in manifest.headline.items()], css="headline"
            )
        )
    for png in run.artifacts(".png"):
        parts.append(png_figure(png))
    for csv in run.artifacts(".csv"):
        parts.append(_csv_details(csv))
    if manifest.status in ("failed", "interrupted"):
        trace = run.read_text(sweep.TRACEBACK_FILE)
        if trace is not None:
            parts.append(f"<h4>Traceback</h4><pre>{esc(trace)}</pre>")
    anchor = _anchor(f"run-{run_dir.resolve()}")
    return f'<section class="run" id="{anchor}">{"".join(parts)}</section>'


def _csv_details(path: Path) -> str:
    try:
        frame = pd.read_csv(path)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError):
        return f'<p class="note">{esc(path.name)}: not a readable CSV table</p>'
    if len(frame) > MAX_TABLE_ROWS or len(frame.columns) > MAX_TABLE_COLUMNS:
        return (
            f'<p class="note">{esc(path.name)}: {len(frame)} rows x {len(frame.columns)} '
            "columns (too large to show; open the CSV)</p>"
        )
    rows = [[_plain(v) for v in row] for row in frame.itertuples(index=False)]
    body = table(list(frame.columns), rows, css="data wide")
    return f"<details><summary>{esc(path.name)} ({len(frame)} rows)</summary>{body}</details>"


def _plain(value: Any) -> Any:
    """numpy scalars to Python ones, so numbers are formatted and aligned as numbers."""
    return value.item() if hasattr(value, "item") else value


# --------------------------------------------------------------------------- one sweep


def sweep_section(sweep_dir: Path) -> str:
    tables = sweep.load_sweep(sweep_dir)
    spec, runs, grid_keys, metrics = tables.record, tables.runs, tables.grid_keys, tables.metrics
    counts = runs["status"].value_counts().to_dict()
    parts = [f"<h2>Sweep {esc(sweep_dir.name)} — {esc(spec.get('experiment'))}</h2>"]
    parts.append(f'<p class="meta">{esc(sweep_dir)}</p>')
    info = [
        ["experiment", spec.get("experiment")],
        ["preset", spec.get("preset")],
        ["fixed overrides", spec.get("overrides") or {}],
        ["grid", spec.get("grid") or {}],
        ["seeds", spec.get("seeds")],
        ["seed field", spec.get("seed_field")],
        ["runs", len(runs)],
        ["status", ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))],
        ["created", spec.get("created")],
    ]
    parts.append(table(["field", "value"], info, css="sweep"))

    parts.append("<h3>Headline metrics over seeds</h3>")
    parts.append(
        f'<p class="note">Per grid point, over its complete runs: mean ± std (n - 1), and a 95% '
        f"percentile bootstrap CI of the mean ({stats.BOOTSTRAP_RESAMPLES:,} resamples, "
        f"seeded). Failed runs and runs that failed a gate are left out.</p>"
    )
    parts.append(_aggregate_table(tables.aggregate, grid_keys, metrics))

    parts.append("<h3>Runs</h3>")
    columns = [*grid_keys, *(["seed"] if "seed" in runs.columns else [])]
    headers = ["run", "status", *columns, *metrics, "wall seconds"]
    rows = []
    for row in runs.to_dict(orient="records"):
        run_dir = tables.run_dir(row["run"]).resolve()
        link = f'<a href="#{_anchor(f"run-{run_dir}")}">'
        rows.append(
            [
                f"{link}{esc(row['label'])}</a>",
                status_span(str(row["status"])),
                *(_plain(row.get(c)) for c in columns),
                *(_plain(row.get(m)) for m in metrics),
                _plain(row.get("wall_seconds")),
            ]
        )
    parts.append(table(headers, rows, css="runs wide", raw_columns={0, 1}))

    failures = runs[runs["status"].isin(["failed", "interrupted"])]
    if len(failures):
        parts.append("<h3>Failures</h3>")
        for row in failures.to_dict(orient="records"):
            parts.append(
                f"<details open><summary>{esc(row['label'])}: {esc(row['status'])}</summary>"
                f"<pre>{esc(fmt(row.get('error')))}</pre></details>"
            )

    parts.append("<h3>Each run</h3>")
    for row in runs.to_dict(orient="records"):
        run_dir = tables.run_dir(row["run"])
        if sweep.is_run_dir(run_dir):
            summary = f"{esc(row['label'])} {status_span(str(row['status']))}"
            body = run_section(run_dir, title=row["label"], level=4)
            parts.append(f"<details><summary>{summary}</summary>{body}</details>")
    return (
        f'<section class="sweep" id="{_anchor(f"sweep-{sweep_dir.resolve()}")}">'
        + "".join(parts)
        + "</section>"
    )


def _aggregate_table(aggregate: pd.DataFrame, grid_keys: list[str], metrics: list[str]) -> str:
    if aggregate.empty or not metrics:
        return '<p class="note">No complete runs yet.</p>'
    headers = [*grid_keys, "n", *metrics]
    rows = []
    for row in aggregate.to_dict(orient="records"):
        cells = [esc(fmt(_plain(row[k]))) for k in grid_keys] + [esc(row["n_runs"])]
        for metric in metrics:
            mean, std = row[f"{metric}_mean"], row[f"{metric}_std"]
            low, high = row[f"{metric}_ci_low"], row[f"{metric}_ci_high"]
            spread = f" ± {fmt(std)}" if math.isfinite(std) else ""
            ci = f"[{fmt(low)}, {fmt(high)}]" if math.isfinite(low) else "CI needs n ≥ 2"
            cells.append(
                f'<span class="num">{esc(fmt(mean))}{esc(spread)}</span><br>'
                f'<span class="ci">{esc(ci)}</span>'
            )
        rows.append(cells)
    return table(headers, rows, css="aggregate wide", raw_columns=set(range(len(headers))))


# --------------------------------------------------------------------------- the page


def classify(path: Path) -> str:
    if not path.is_dir():
        raise ReportError(f"{path} is not a directory (a run or sweep directory is)")
    if sweep.is_sweep_dir(path):
        return "sweep"
    if sweep.is_run_dir(path):
        return "run"
    raise ReportError(
        f"{path} is neither a run directory ({MANIFEST}) nor a sweep ({sweep.SWEEP_FILE})"
    )


def build_report(dirs: list[Path]) -> str:
    """The HTML text of a report over run and sweep directories (checked before building).

    Raises :class:`ReportError` for a directory that is neither, and for a missing or corrupt
    file in one (the message names the file)."""
    kinds = [(Path(d), classify(Path(d))) for d in dirs]
    sections, toc = [], []
    for path, kind in kinds:
        try:
            if kind == "sweep":
                sections.append(sweep_section(path))
                anchor = _anchor(f"sweep-{path.resolve()}")
            else:
                sections.append(run_section(path))
                anchor = _anchor(f"run-{path.resolve()}")
        except (sweep.SweepError, rundir.RunDirError) as error:  # a bad file, a path out
            raise ReportError(str(error)) from None
        toc.append(f'<li><a href="#{anchor}">{esc(kind)}: {esc(path)}</a></li>')
    stamp = datetime.now(UTC).isoformat(timespec="seconds")
    import geomlab

    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>geomlab report</title><style>{CSS}</style></head><body>"
        f"<h1>geomlab report</h1>"
        f'<p class="meta">generated {esc(stamp)} by geomlab {esc(geomlab.__version__)}</p>'
        f"<nav><ul>{''.join(toc)}</ul></nav>{''.join(sections)}</body></html>\n"
    )


def write_report(dirs: list[Path], out: Path) -> Path:
    """Build the page, then write it atomically to ``out``; :class:`ReportError` for an
    ``out`` that is a directory or cannot be written (read-only, missing permission, full)."""
    out = Path(out)
    if out.is_dir():
        raise ReportError(f"--out {out} is a directory; give the HTML file's path")
    text = build_report(dirs)
    try:
        return io.atomic_write_text(out, text)
    except OSError as error:
        raise ReportError(f"cannot write the report to {out}: {error.strerror or error}") from None
