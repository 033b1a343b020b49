"""Run and sweep directories someone sent you: `show`, `report` and reruns read them through
one validating reader (geomlab.rundir); nothing outside them is read, no stale file is reported,
every bad file is named with exit 2."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
from typer.testing import CliRunner

from geomlab import rundir, sweep
from geomlab.cli import app
from geomlab.runner import LOCK_FILE, STALE_SUFFIX, record_stopped_run

runner = CliRunner()
E1_ARGS = ["--preset", "quick", "--set", "n_samples=200", "--set", "epsilon_values=[1e-3,1e-2]"]
SECRET = "TOPSECRET-7f3a"


def flat(text: str) -> str:
    return " ".join(text.split())


@pytest.fixture(scope="module")
def e1_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("received") / "e1"
    result = runner.invoke(app, ["run", "e1", *E1_ARGS, "--out", str(out)])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture
def received(e1_run, tmp_path) -> Path:
    """A copy of a finished e1 run, as if mailed."""
    return shutil.copytree(e1_run, tmp_path / "mailed")


@pytest.fixture
def secret(tmp_path) -> Path:
    """Files outside every run directory that must never reach a report."""
    folder = tmp_path / "private"
    folder.mkdir()
    (folder / "secret.csv").write_text(f"key,value\n{SECRET},1\n")
    (folder / "secret.png").write_bytes(SECRET.encode() * 50)
    return folder


def report(target: Path, out: Path) -> tuple[int, str]:
    result = runner.invoke(app, ["report", str(target), "--out", str(out)])
    return result.exit_code, flat(result.output)


def artifacts(run_dir: Path) -> list[str]:
    return json.loads((run_dir / "manifest.json").read_text())["artifacts"]


# --------------------------------------------------------------------------- stale files


def test_report_embeds_only_the_files_the_manifest_lists(received, tmp_path):
    figure = (received / "E1_figure.png").read_bytes()
    (received / "E3_figure.png").write_bytes(figure)  # a valid PNG, but no artifact of this run
    (received / "E3_results.csv").write_text("kappa,ratio\n1,2\n")
    code, output = report(received, tmp_path / "r.html")
    assert code == 0, output
    page = (tmp_path / "r.html").read_text()
    assert "E3_figure.png" not in page and "E3_results.csv" not in page
    pngs = [name for name in artifacts(received) if name.endswith(".png")]
    assert pngs == ["E1_figure.png"] and page.count("<img ") == 1
    for name in artifacts(received):
        if name.endswith(".csv"):
            assert name in page


def test_a_run_without_manifest_beside_old_files_is_refused_unless_force_moves_them(received):
    (received / "E3_figure.png").write_bytes((received / "E1_figure.png").read_bytes())
    old_raw = (received / "E1_results_raw.csv").read_bytes()
    (received / "manifest.json").rename(received.parent / "kept-manifest.json")
    args = ["run", "e1", *E1_ARGS, "--set", "n_seeds=2", "--out", str(received)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    text = flat(result.output)
    assert "E1_figure.png" in text and "E3_figure.png" in text and "--force" in text
    assert not (received / "manifest.json").exists()  # refused before any work

    forced = runner.invoke(app, [*args, "--force"])
    assert forced.exit_code == 0, forced.output
    stale = [p for p in received.iterdir() if p.name.endswith(STALE_SUFFIX)]
    assert len(stale) == 1 and (stale[0] / "E3_figure.png").exists()
    assert (stale[0] / "E1_results_raw.csv").read_bytes() == old_raw
    assert not (received / "E3_figure.png").exists()
    listed = set(artifacts(received))
    top = {p.name for p in received.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert top - listed == {"manifest.json", "run.log"}  # nothing at the top but this run's
    page = rundir.read_run(received)
    assert page.manifest.config["n_seeds"] == 2


def test_another_experiment_into_a_finished_run_dir_is_refused_with_exit_2(received):
    result = runner.invoke(app, ["run", "e3", "--preset", "quick", "--out", str(received)])
    assert result.exit_code == 2, result.output
    assert "another config" in flat(result.output) and "e1" in flat(result.output)


# --------------------------------------------------------------------------- containment


def _fake_sweep(root: Path, run_names: list[str], grid_column: bool = True) -> Path:
    folder = root / "sweep"
    (folder / "runs").mkdir(parents=True)
    record = {"experiment": "e1", "preset": "quick", "grid": {"rcond": [1e-8]}, "runs": []}
    (folder / "sweep.json").write_text(json.dumps(record))
    rows = [{"run": name, "label": f"r{i}", "status": "complete", "rcond": 1e-8}
            for i, name in enumerate(run_names)]  # fmt: skip
    columns = ["run", "label", "status", *(["rcond"] if grid_column else [])]
    frame = pd.DataFrame(rows, columns=columns)
    frame.to_csv(folder / "runs.csv", index=False)
    return folder


@pytest.mark.parametrize("how", ["dotdot", "absolute", "symlink", "runs_folder_symlink"])
def test_a_sweeps_runs_must_lie_inside_it(e1_run, tmp_path, how):
    outside = shutil.copytree(e1_run, tmp_path / "elsewhere")
    (outside / "E1_results_raw.csv").write_text(f"seed,x\n{SECRET},1\n")
    if how == "dotdot":
        name = "../../elsewhere"
    elif how == "absolute":
        name = str(outside)
    else:
        name = "linked"
    folder = _fake_sweep(tmp_path, [name])
    if how == "symlink":
        (folder / "runs" / "linked").symlink_to(outside)
    if how == "runs_folder_symlink":  # runs/ itself leads out of the sweep
        (tmp_path / "outer").mkdir()
        os.replace(outside, tmp_path / "outer" / "linked")
        (folder / "runs").rmdir()
        (folder / "runs").symlink_to(tmp_path / "outer")
    code, output = report(folder, tmp_path / "r.html")
    assert code == 2, output
    assert str(folder / "runs.csv") in output and "refused" in output
    assert not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("link", ["E1_results_raw.csv", "E1_figure.png", "manifest.json"])
def test_a_symlink_out_of_a_run_is_refused(received, secret, tmp_path, link):
    target = secret / ("secret.png" if link.endswith(".png") else "secret.csv")
    if link == "manifest.json":
        target = secret / "manifest.json"
        shutil.copy(received / "manifest.json", target)
    (received / link).unlink()
    (received / link).symlink_to(target)
    code, output = report(received, tmp_path / "r.html")
    assert code == 2, output
    assert str(received / link) in output or link in output
    assert "outside" in output and not (tmp_path / "r.html").exists()


@pytest.mark.parametrize("name", ["../private/secret.csv", "ABSOLUTE", "sub/../../x.csv"])
def test_artifact_paths_leading_out_are_refused(received, secret, tmp_path, name):
    if name == "ABSOLUTE":
        name = str(secret / "secret.csv")
    manifest = json.loads((received / "manifest.json").read_text())
    manifest["artifacts"].append(name)
    (received / "manifest.json").write_text(json.dumps(manifest))
    code, output = report(received, tmp_path / "r.html")
    assert code == 2, output
    assert "manifest.json" in output and "refused" in output
    assert not (tmp_path / "r.html").exists()


def test_a_symlink_that_stays_inside_the_run_is_fine(received, tmp_path):
    (received / "figures").mkdir()
    os.replace(received / "E1_figure.png", received / "figures" / "E1_figure.png")
    (received / "E1_figure.png").symlink_to(Path("figures") / "E1_figure.png")
    code, output = report(received, tmp_path / "r.html")
    assert code == 0, output
    assert (tmp_path / "r.html").read_text().count("<img ") == 1


# --------------------------------------------------------------------------- wrong shapes

WRONG_SHAPES = [
    ({"gates": "all passed"}, "gates"),
    ({"gates": [{"name": "fisher_psd"}]}, "gates.0.passed"),
    ({"gates": [{"name": "fisher_psd", "passed": "yes"}]}, "gates.0.passed"),
    ({"config": [1, 2]}, "config"),
    ({"environment": "cpu"}, "environment"),
    ({"headline": [0.5]}, "headline"),
    ({"headline": {"ratio": [1, 2]}}, "headline.ratio"),
    ({"status": "done"}, "status"),
    ({"artifacts": "E1_figure.png"}, "artifacts"),
    ({"experiment": None}, "experiment"),
]


@pytest.mark.parametrize(("change", "field"), WRONG_SHAPES)
def test_a_manifest_of_the_wrong_shape_is_named_by_show_and_report(
    received, tmp_path, change, field
):
    manifest = json.loads((received / "manifest.json").read_text())
    manifest.update(change)
    (received / "manifest.json").write_text(json.dumps(manifest))
    for command in (["show", str(received)], ["report", str(received), "--out",
                                                str(tmp_path / "r.html")]):  # fmt: skip
        result = runner.invoke(app, command)
        text = flat(result.output)
        assert result.exit_code == 2, (command, result.output)
        assert str(received / "manifest.json") in text and f"'{field}'" in text, text
        assert "Traceback" not in text
    assert not (tmp_path / "r.html").exists()


def test_a_manifest_that_is_a_json_list_is_named(received):
    (received / "manifest.json").write_text("[1, 2]")
    result = runner.invoke(app, ["show", str(received)])
    assert result.exit_code == 2 and "not a geomlab manifest" in flat(result.output)


def test_manifests_the_writer_wrote_read_back(e1_run):
    run = rundir.read_run(e1_run)
    assert run.manifest.status == "complete" and run.manifest.gates
    assert [p.name for p in run.artifacts(".png")] == ["E1_figure.png"]
    raw = json.loads((e1_run / "manifest.json").read_text())
    assert rundir.read_manifest_dict(e1_run) == raw  # nothing added, nothing lost


# --------------------------------------------------------------------------- report --out, sweep


def test_report_out_that_cannot_be_written_is_an_input_error(received, tmp_path):
    (tmp_path / "a_dir").mkdir()
    for out, needle in [(tmp_path / "a_dir", "is a directory"),
                        (Path("/sys/geomlab-no-such/r.html"), "cannot write")]:  # fmt: skip
        code, output = report(received, out)
        assert code == 2, output
        assert needle in output and "Traceback" not in output


def test_report_of_a_sweep_whose_grid_key_is_no_runs_csv_column(received, tmp_path):
    folder = _fake_sweep(tmp_path, [], grid_column=False)
    code, output = report(folder, tmp_path / "r.html")
    assert code == 2, output
    assert str(folder / "runs.csv") in output and "'rcond'" in output


def test_sweep_out_that_cannot_be_created_is_an_input_error(tmp_path):
    out = Path("/sys/geomlab-no-such-sweep")
    result = runner.invoke(app, ["sweep", "e1", *E1_ARGS, "--seeds", "0", "--out", str(out)])
    assert result.exit_code == 2, result.output
    assert str(out) in flat(result.output)


def test_a_run_manifest_of_the_wrong_shape_in_a_sweep_is_named_and_redone(tmp_path):
    out = tmp_path / "sw"
    args = ["sweep", "e1", *E1_ARGS, "--seeds", "0", "--workers", "1", "--threads", "1",
            "--out", str(out)]  # fmt: skip
    assert runner.invoke(app, args).exit_code == 0
    run_dir = next((out / "runs").iterdir())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    manifest["gates"] = "all passed"
    (run_dir / "manifest.json").write_text(json.dumps(manifest))
    code, output = report(out, tmp_path / "r.html")
    assert code == 2 and str(run_dir / "manifest.json") in output and "'gates'" in output
    again = runner.invoke(app, args)
    assert again.exit_code == 0, again.output
    assert "'gates'" in (out / "sweep.log").read_text()
    assert (run_dir / "manifest.json.corrupt").exists()
    assert rundir.read_run(run_dir).manifest.status == "complete"


# --------------------------------------------------------------------------- status, full disk


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_report_tells_a_killed_writer_as_show_does(received, tmp_path):
    manifest = json.loads((received / "manifest.json").read_text())
    manifest["status"] = "running"
    manifest["writer"] = {"pid": _dead_pid(), "host": socket.gethostname(), "since": "x"}
    (received / "manifest.json").write_text(json.dumps(manifest))
    code, output = report(received, tmp_path / "r.html")
    assert code == 0, output
    assert "writer is gone" in (tmp_path / "r.html").read_text()
    shown = runner.invoke(app, ["show", str(received)])
    assert "writer is gone" in flat(shown.output)
    # a sweep driver that stopped it records it as interrupted (the writer's lock is free)
    assert record_stopped_run(received)
    assert rundir.read_run(received).manifest.status == "interrupted"


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
def test_rerunning_a_finished_run_on_a_full_disk_says_it_is_finished(received):
    lock = received / LOCK_FILE
    lock.unlink(missing_ok=True)
    lock.symlink_to("/dev/full")  # every write to the lock file: ENOSPC, as on a full disk
    result = runner.invoke(app, ["run", "e1", *E1_ARGS, "--out", str(received)])
    assert result.exit_code == 0, result.output
    assert "already holds a finished run" in flat(result.output)


def test_true_is_not_a_number_of_seeds(tmp_path):
    out = tmp_path / "never"
    for value, field in [("n_seeds=true", "n_seeds"), ("seeds=[0,false]", "seeds.1")]:
        result = runner.invoke(app, ["run", "e1", "--preset", "quick", "--set", value,
                                     "--out", str(out)])  # fmt: skip
        assert result.exit_code == 2, result.output
        assert f"'{field}'" in flat(result.output) and "boolean" in result.output
        assert not out.exists()


def test_the_sweep_reader_keeps_its_api(received, tmp_path):
    folder = _fake_sweep(tmp_path, ["a"])
    shutil.copytree(received, folder / "runs" / "a")
    tables = sweep.load_sweep(folder)
    assert tables.grid_keys == ["rcond"] and tables.run_dir("a") == folder / "runs" / "a"
    with pytest.raises(sweep.SweepError, match="refused"):
        tables.run_dir("../../x")
