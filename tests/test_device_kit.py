"""The device kit's helpers (scripts/compare_runs.py, scripts/kit_requirements.py) and that its
shell scripts parse; the kit itself is built and run by hand (it needs pip's registry / a GPU)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"


def _load(name: str):
    spec = importlib.util.spec_from_file_location(name, SCRIPTS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_runs_reports_max_differences_and_skips_timings(tmp_path, capsys):
    compare = _load("compare_runs")
    a, b = tmp_path / "a", tmp_path / "b"
    (a / "sub").mkdir(parents=True)
    (b / "sub").mkdir(parents=True)
    pd.DataFrame(
        {
            "x": [1.0, 2.0],
            "c": [float("inf"), 1.0],
            "d": [1.0, float("nan")],
            "name": ["p", "q"],
            "train_time_s": [1.0, 2.0],
        }
    ).to_csv(a / "sub" / "t.csv", index=False)
    pd.DataFrame(
        {
            "x": [1.0, 2.5],
            "c": [float("inf"), 1.0],
            "d": [float("nan"), 1.0],
            "name": ["p", "r"],
            "train_time_s": [9.0, 9.0],
        }
    ).to_csv(b / "sub" / "t.csv", index=False)
    pd.DataFrame({"y": [1]}).to_csv(a / "only_a.csv", index=False)
    rows = {(r[1], r[2]): r for r in compare.compare_runs(a, b, "lbl")}
    x = rows[("sub/t.csv", "x")]
    assert x[3] == "numeric" and float(x[4]) == pytest.approx(0.5)
    assert float(x[5]) == pytest.approx(0.2)
    assert rows[("sub/t.csv", "c")][4:] == ("0.000e+00", "0.000e+00", "")  # inf == inf
    assert rows[("sub/t.csv", "d")][6] == "2 NaN/inf mismatches"
    assert rows[("sub/t.csv", "name")][6] == "1 cells differ"
    assert rows[("sub/t.csv", "train_time_s")][3] == "timing"
    assert rows[("only_a.csv", "")][3] == "missing"
    assert compare.main([str(a), str(tmp_path / "nope")]) == 2
    assert compare.main([str(a), str(a)]) == 0
    assert "0.000e+00" in capsys.readouterr().out


def test_kit_requirements_satisfied_here():
    assert _load("kit_requirements").unsatisfied("geomlab") == []


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash")
@pytest.mark.parametrize("script", ["device_kit.sh", "device_run.sh"])
def test_kit_shell_scripts_parse(script):
    subprocess.run(["bash", "-n", str(SCRIPTS / script)], check=True)
