"""One frozen SolveSpec; inverses as operators that carry their diagnostics; each method's
damping reaches it."""

import dataclasses

import pytest
import torch

from geomlab.geometry import curvature as cv
from geomlab.geometry import natural_gradient as ng
from geomlab.geometry.gates import fast_vs_reference
from geomlab.geometry.params import loss_and_gradient
from geomlab.testing.cases import case_named


def _classifier():
    """The zoo's tanh MLP classifier (``model, (inputs, labels)``; cross-entropy)."""
    case = case_named("mlp_tanh")
    return case.model(), case.data()


def test_solve_spec_is_frozen_and_checks_every_option():
    spec = ng.SolveSpec(solver="cg", damping=1e-3)
    assert spec.solver is ng.Solver.CG
    with pytest.raises(dataclasses.FrozenInstanceError):
        spec.damping = 0.0  # type: ignore[misc]
    for bad in ({"damping": -1.0}, {"rcond": -1.0}, {"tolerance": 0.0},
                {"max_iterations": 0}, {"kfac_damping": 0.0}):  # fmt: skip
        with pytest.raises(ValueError):
            ng.SolveSpec(**bad)


def test_each_method_names_its_own_damping():
    spec = ng.SolveSpec(solver="cg", damping=1e-4, kfac_damping=3e-2, tolerance=1e-9)
    assert spec.for_method("natgrad") is spec
    kfac = spec.for_method("kfac")
    assert kfac.solver is ng.Solver.KFAC and kfac.damping == 3e-2
    assert spec.for_method("ekfac").solver is ng.Solver.EKFAC
    with pytest.raises(ValueError, match="sgd"):
        spec.for_method("sgd")
    model, data = _classifier()
    pair = ng.kl_matched_steps(
        model,
        data,
        torch.tensor([1e-4], dtype=torch.float64),
        loss="cross_entropy",
        methods=["natgrad", "kfac"],
        solve=spec,
    )
    assert pair.solves[ng.StepMethod.NATGRAD].damping == 1e-4
    assert pair.solves[ng.StepMethod.KFAC].damping == 3e-2


def test_inverses_are_operators_with_diagnostics_and_agree():
    model, data = _classifier()
    fisher = cv.FisherOperator(model, data, loss="cross_entropy")
    _, gradient = loss_and_gradient(model, data, loss="cross_entropy")
    assert fisher.shape == (fisher.dim, fisher.dim)
    dense = fisher.dense()
    pinv = ng.pseudo_inverse(dense, rcond=0.0, damping=1e-3)
    cg = ng.CGInverse(fisher, damping=1e-3, tol=1e-12)
    direct = torch.linalg.solve(dense + 1e-3 * torch.eye(fisher.dim, dtype=torch.float64),
                                gradient)  # fmt: skip
    assert fast_vs_reference(pinv @ gradient, direct) < 1e-9
    assert fast_vs_reference(cg @ gradient, direct) < 1e-8
    assert cg.converged and cg.iterations > 0 and cg.relative_residual < 1e-10
    assert pinv.rank == fisher.dim and pinv.damping == 1e-3 and pinv.dropped_above_floor == 0
    two = torch.stack([gradient, 2 * gradient], dim=1)
    torch.testing.assert_close(pinv @ two, torch.stack([direct, 2 * direct], dim=1))
    solved = ng.natural_gradient(
        fisher, gradient, solve=ng.SolveSpec(solver="dense", damping=1e-3, rcond=0.0)
    )
    assert isinstance(solved.inverse, ng.PseudoInverse) and solved.rank == fisher.dim
    assert fast_vs_reference(solved.direction, direct) < 1e-9


def test_fast_vs_reference_is_relative_to_the_reference():
    reference = torch.tensor([2.0, -4.0], dtype=torch.float64)
    moved = reference + torch.tensor([0.0, 4e-3], dtype=torch.float64)
    assert fast_vs_reference(moved, reference) == pytest.approx(1e-3, rel=1e-12)
    assert fast_vs_reference(torch.zeros(2), torch.zeros(2)) == 0.0
