import math

import pytest
import torch

from geomlab.geometry.gates import allclose_gate, finite_gate, psd_gate


def test_psd_gate_passes_psd_and_fails_indefinite():
    a = torch.randn(6, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    assert psd_gate(a @ a.T).passed
    bad = psd_gate(torch.diag(torch.tensor([1.0, -0.1], dtype=torch.float64)), scope="seed=1")
    assert not bad.passed
    assert bad.scope == "seed=1"
    assert bad.details["min_eigenvalue"] == -0.1
    assert "FAIL" in bad.message


def test_psd_gate_tolerates_round_off_relative_to_scale():
    m = torch.diag(torch.tensor([1e3, -1e-6], dtype=torch.float64))
    assert psd_gate(m, rel_tol=1e-7).passed
    assert not psd_gate(m, rel_tol=1e-10).passed


def test_finite_gate_names_the_offender():
    gate = finite_gate({"ok": torch.ones(3), "loss": torch.tensor([1.0, math.nan])})
    assert not gate.passed
    assert gate.details["non_finite"] == "loss"
    assert finite_gate({"x": [1.0, 2.0]}).passed


def test_allclose_gate():
    a = torch.tensor([1.0, 2.0], dtype=torch.float64)
    assert allclose_gate(a, a + 1e-14, name="eq").passed
    assert not allclose_gate(a, a + 1e-3, name="eq").passed


def test_finite_gate_counts_none_inf_and_strings_as_non_finite():
    import numpy as np
    import pandas as pd

    from geomlab.geometry.gates import finite_columns_gate

    gate = finite_gate({"a": [1.0, None], "b": np.array([math.inf, 1, 2]), "c": 3.0})
    assert not gate.passed
    assert gate.details["non_finite"] == "a,b"
    assert gate.details["non_finite_count"] == 2
    assert "a (1)" in gate.message and "b (1)" in gate.message
    frame = pd.DataFrame({"x": [1.0, float("nan")], "y": [1, 2], "label": ["p", "q"]})
    table = finite_columns_gate(frame)
    assert not table.passed and table.details["non_finite"] == "x"
    assert finite_columns_gate(frame, ["y"]).passed
    assert not finite_gate({"s": "text"}).passed


def test_topk_tolerance_rule():
    from geomlab.geometry.gates import topk_tolerance

    assert topk_tolerance(1e-5, torch.float32) == pytest.approx(1e-4)
    assert topk_tolerance(1e-8, torch.float64) == pytest.approx(1e-7)
    # A tolerance below rounding is floored at 100 eps of the solve's dtype.
    assert topk_tolerance(1e-12, torch.float32) == pytest.approx(
        100 * torch.finfo(torch.float32).eps
    )


def test_topk_reference_gate_passes_converged_and_fails_truncated_solves():
    from geomlab.geometry.gates import topk_reference_gate
    from geomlab.geometry.spectral import top_singular_triplets

    g = torch.Generator().manual_seed(0)
    left = torch.linalg.qr(torch.randn(60, 4, generator=g, dtype=torch.float64))[0]
    right = torch.linalg.qr(torch.randn(40, 4, generator=g, dtype=torch.float64))[0]
    A = (left * torch.tensor([10.0, 6.0, 3.0, 2.0], dtype=torch.float64)) @ right.mT
    A += 0.05 * torch.randn(60, 40, generator=g, dtype=torch.float64)
    fast = top_singular_triplets(A, 3, generator=g, tol=1e-10, max_iter=500)
    gate = topk_reference_gate(A, fast, solver_tol=1e-10, scope="case")
    assert gate.passed and gate.name == "fast_topk_vs_full_svd" and gate.scope == "case"
    assert gate.details["rel_tol"] == pytest.approx(1e-9)
    assert gate.details["cos_v1_vs_reference"] > 0.999999
    # One iteration from a random start is far from the full SVD: the gate says so.
    rough = top_singular_triplets(A, 3, oversample=0, generator=g, tol=1e-10, max_iter=1)
    assert not topk_reference_gate(A, rough, solver_tol=1e-10).passed


def test_topk_converged_gate_counts():
    from geomlab.geometry.gates import topk_converged_gate

    assert topk_converged_gate(0).passed
    failed = topk_converged_gate(3)
    assert not failed.passed and failed.details["unconverged"] == 3 and "3 fast" in failed.message


def test_loss_growth_rule():
    from geomlab.geometry.gates import loss_growth

    assert loss_growth(2.0, 5.0) == 2.5
    assert loss_growth(0.0, 0.0) == 1.0 and loss_growth(0.0, 1e-3) == math.inf
    assert math.isnan(loss_growth(1.0, math.inf)) and math.isnan(loss_growth(math.nan, 1.0))


def test_loss_growth_gate_names_runaway_runs():
    from geomlab.geometry.gates import loss_growth_gate

    growth = {"a": 0.5, "b": 101.7, "c": math.nan, "d": 10.0}
    gate = loss_growth_gate(growth, max_growth=10.0)
    assert not gate.passed and gate.name == "train_mse_growth"
    assert gate.details["runaway"] == "b,c" and gate.details["unexpected_runaway"] == "b,c"
    assert gate.details["largest_growth"] == 101.7
    assert "b (×102)" in gate.message and "c (×nan)" in gate.message
    expected = loss_growth_gate(growth, max_growth=10.0, expected=["b", "c"])
    assert expected.passed and expected.details["runaway"] == "b,c"
    assert expected.details["unexpected_runaway"] == "" and "expected runaways" in expected.message
    assert loss_growth_gate({"a": 0.5}, max_growth=10.0).passed


def test_runaway_runs_is_the_gate_rule():
    from geomlab.geometry.gates import runaway_runs

    assert runaway_runs({"a": 1.0, "b": 11.0, "c": math.inf, "d": math.nan}, max_growth=10) == [
        "b",
        "c",
        "d",
    ]
