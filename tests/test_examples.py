import subprocess
import sys
from pathlib import Path

EXAMPLES = Path(__file__).parents[1] / "examples"


def test_own_model_example_runs_through_the_api_and_the_cli(tmp_path):
    out = tmp_path / "e1-own"
    result = subprocess.run([sys.executable, str(EXAMPLES / "own_model.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Fisher operator vs dense J^T H J reference" in result.stdout
    for name in ("E1_results_raw.csv", "E1_summary.json", "E1_figure.png", "manifest.json"):
        assert (out / name).stat().st_size > 0


def test_transformer_example_runs_e1_with_cg_and_lambda(tmp_path):
    out = tmp_path / "e1-transformer"
    result = subprocess.run([sys.executable, str(EXAMPLES / "transformer.py"), "--out", str(out)],
                            capture_output=True, text=True, timeout=600)  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Taylor mode (taylor) vs nested autograd" in result.stdout
    assert "λ at the 0/1 boundary" in result.stdout
    for name in ("E1_results_raw.csv", "E1_summary.json", "E1_figure.png", "manifest.json"):
        assert (out / name).stat().st_size > 0
