import math

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
