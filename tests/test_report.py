"""The HTML report: self-contained (no scripts, no network), the right tables and numbers, and
rendered by a real headless browser (tables laid out, every embedded image decoded)."""

import base64
import json
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from geomlab import report, sweep
from geomlab.cli import app

runner = CliRunner()
FAILING_SEED = 43  # its runs find a planted resume piece that is not E1's and fail inside
BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


@pytest.fixture(scope="module")
def sweep_dir(tmp_path_factory) -> Path:
    """Two seeds that finish and two that fail, through the local executor."""
    out = tmp_path_factory.mktemp("report") / "sweep"
    spec = sweep.SweepSpec(
        "e1", "quick", {"n_samples": 200, "epsilon_values": [1e-3, 1e-2]},
        {"data_seed": [42, FAILING_SEED]}, seeds=[0, 1],
    )  # fmt: skip
    for run in sweep.expand(spec)[1]:
        if run.point["data_seed"] == FAILING_SEED:
            piece = out / "runs" / run.name / ".partial" / run.config_hash / f"seed_{run.seed}.json"
            piece.parent.mkdir(parents=True, exist_ok=True)
            piece.write_text("{}")
    outcome = sweep.run_sweep(spec, out_dir=out, workers=1, threads=1, interactive=False)
    assert outcome.counts == {"complete": 2, "failed": 2}
    return out


@pytest.fixture(scope="module")
def one_run(sweep_dir) -> Path:
    return next(p for p in sorted((sweep_dir / "runs").iterdir()) if "data_seed=42" in p.name)


@pytest.fixture(scope="module")
def page(sweep_dir, one_run, tmp_path_factory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("html") / "report.html"
    result = runner.invoke(app, ["report", str(sweep_dir), str(one_run), "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out, out.read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def n_figures(sweep_dir, one_run) -> int:
    """PNGs the page must embed: every run of the sweep, and the run given on its own."""
    n = len(list((sweep_dir / "runs").glob("*/*.png"))) + len(list(one_run.glob("*.png")))
    assert n >= 3  # E1 draws one figure per complete run
    return n


def _tables(text: str, css: str) -> list[str]:
    return re.findall(rf'<table class="{css}[^"]*">(.*?)</table>', text, flags=re.S)


def test_report_is_self_contained(page, n_figures):
    _, text = page
    assert "<script" not in text.lower()
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:|//)""", text)
    assert "@import" not in text and "url(" not in text
    sources = re.findall(r'<img src="([^"]+)"', text)
    assert len(sources) == n_figures
    for source in sources:
        assert source.startswith("data:image/png;base64,")
        assert base64.b64decode(source.split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"


def test_report_has_manifest_gates_headline_and_the_sweep_aggregate(page, sweep_dir):
    _, text = page
    assert len(_tables(text, "manifest")) == 5  # every run of the sweep + the lone run
    gates = _tables(text, "gates")
    assert len(gates) == 3 and all("gate_a_fisher_psd" in g and ">pass<" in g for g in gates)
    assert len(_tables(text, "headline")) == 3

    runs = pd.read_csv(sweep_dir / "runs.csv")
    metrics = sweep.headline_metrics(runs, ["data_seed", "seeds", "n_samples"])
    assert "mean_relative_advantage_pct" in metrics
    expected = sweep.aggregate_over_seeds(runs, ["data_seed"], metrics)
    assert len(expected) == 1  # the failing data seed has no complete run
    (aggregate,) = _tables(text, "aggregate")
    assert aggregate.count("<tr>") == 2  # header + one grid point
    mean = expected.loc[0, "mean_relative_advantage_pct_mean"]
    low = expected.loc[0, "mean_relative_advantage_pct_ci_low"]
    assert report.fmt(mean) in aggregate and report.fmt(low) in aggregate
    assert "10,000 resamples" in text

    (run_table,) = _tables(text, "runs")
    assert run_table.count(">failed<") == 2 and run_table.count(">complete<") == 2
    assert text.count("KeyError") >= 2  # failure tracebacks are shown


def test_report_command_rejects_a_directory_that_is_no_run(tmp_path):
    result = runner.invoke(app, ["report", str(tmp_path)])
    assert result.exit_code == 2
    assert "neither a run directory" in result.output
    assert not (tmp_path / "report.html").exists()


def test_report_names_a_truncated_manifest_or_sweep_file_with_exit_2(sweep_dir, one_run, tmp_path):
    lone = shutil.copytree(one_run, tmp_path / "lone")
    (lone / "manifest.json").write_text((lone / "manifest.json").read_text()[:80])
    copy = shutil.copytree(sweep_dir, tmp_path / "sweep")
    inner = next(p for p in sorted((copy / "runs").iterdir()) if "data_seed=42" in p.name)
    (inner / "manifest.json").write_text("{")
    broken_record = shutil.copytree(sweep_dir, tmp_path / "record")
    (broken_record / "sweep.json").write_text('{"grid": ')
    for target, named in [
        (lone, lone / "manifest.json"),
        (copy, inner / "manifest.json"),
        (broken_record, broken_record / "sweep.json"),
    ]:
        result = runner.invoke(app, ["report", str(target), "--out", str(tmp_path / "r.html")])
        assert result.exit_code == 2, result.output
        text = " ".join(result.output.split())
        assert f"{named} is not valid JSON" in text and "Traceback" not in text
        assert not (tmp_path / "r.html").exists()


PROBE = """<script>
window.addEventListener("load", () => {
  const images = [...document.images];
  const aggregate = document.querySelector("table.aggregate");
  const result = {
    tables: document.querySelectorAll("table").length,
    aggregateRows: aggregate ? aggregate.tBodies[0].rows.length : -1,
    aggregateHeight: aggregate ? aggregate.getBoundingClientRect().height : 0,
    images: images.length,
    decoded: images.filter((i) => i.complete && i.naturalWidth > 0).length,
    firstImageWidth: images.length ? images[0].getBoundingClientRect().width : 0,
  };
  const out = document.createElement("pre");
  out.id = "probe";
  out.textContent = JSON.stringify(result);
  document.body.appendChild(out);
});
</script>"""


def _browser() -> str | None:
    return next((path for name in BROWSERS if (path := shutil.which(name))), None)


def test_a_headless_browser_renders_tables_and_images(page, n_figures, tmp_path):
    browser = _browser()
    if browser is None:
        pytest.skip(
            "no headless browser: install Debian's chromium (apt-get install chromium; "
            ".ci/run does it when run as root) to check the report renders"
        )
    path, text = page
    # A probe script in a copy of the page reports what the browser laid out and decoded.
    probe = tmp_path / "probe.html"
    probe.write_text(text.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    command = [
        browser, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
        "--disable-background-networking", "--disable-component-update", "--disable-sync",
        "--disable-quic", f"--user-data-dir={tmp_path / 'profile'}",
        "--virtual-time-budget=10000", "--dump-dom", probe.as_uri(),
    ]  # fmt: skip
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    found = re.search(r'<pre id="probe">(.*?)</pre>', done.stdout, flags=re.S)
    assert found, f"probe did not run; browser said: {done.stderr[-2000:]}"
    rendered = json.loads(found.group(1).replace("&quot;", '"'))
    assert rendered["tables"] == text.count("<table")
    assert rendered["aggregateRows"] == 1 and rendered["aggregateHeight"] > 0
    assert rendered["images"] == n_figures and rendered["decoded"] == n_figures
    assert rendered["firstImageWidth"] > 100
