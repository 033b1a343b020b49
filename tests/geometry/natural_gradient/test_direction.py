"""Natural-gradient directions of any nn.Module (dense, CG, K-FAC/EK-FAC solves, their
diagnostics and progress) against the dense float64 Fisher reference, on the shared case zoo
(:mod:`geomlab.testing.cases`)."""

import pytest
import torch

from geomlab.geometry import curvature as cv
from geomlab.geometry import natural_gradient as ng
from geomlab.geometry import params as gp
from geomlab.testing.cases import CASES, case_named
from geomlab.testing.compare import assert_relative_close


@pytest.mark.parametrize("case", CASES, ids=str)
@pytest.mark.parametrize("damping", [1e-3, 0.0])
def test_dense_and_cg_directions_match_the_reference_solve(case, damping):
    model, data, loss = case.make()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    reference = cv.dense_fisher_reference(model, data, loss=loss)
    shifted = reference + damping * torch.eye(len(reference), dtype=torch.float64)
    expected = torch.linalg.pinv(shifted, hermitian=True, rtol=1e-10) @ gradient
    dense = ng.natural_gradient(
        operator, gradient, solve=ng.SolveSpec(solver="dense", damping=damping, rcond=1e-10)
    )
    assert_relative_close(dense.direction, expected, rtol=1e-7, what=f"{case} dense direction")
    if damping > 0:  # CG on a well-posed system: to its tolerance
        cg = ng.natural_gradient(
            operator,
            gradient,
            solve=ng.SolveSpec(
                solver="cg", damping=damping, tolerance=1e-10, max_iterations=10 * operator.dim
            ),
        )
        assert cg.relative_residual < 1e-8  # true residual; CG stops on its recurrence
        assert_relative_close(cg.direction, expected, rtol=1e-6, what=f"{case} CG direction")
        assert 0 < cg.cg_iterations <= 10 * operator.dim


def test_dense_diagnostics_null_space_share_and_rank():
    model, data, loss = case_named("mlp_tanh").make()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    result = ng.natural_gradient(operator, gradient, solve=ng.SolveSpec(solver="dense", rcond=1e-8))
    # Softmax: shifting every output bias equally changes nothing, so F has a null space ...
    assert result.rank < operator.dim
    # ... and the gradient has no component in it (sum_c (p_c - y_c) = 0).
    assert result.null_space_share < 1e-20
    assert result.relative_residual < 1e-8 and 0 < result.cos_g_v <= 1


@pytest.mark.parametrize("eigenvalue_corrected", [False, True])
def test_kfac_direction_matches_curvlinops_dense_kfac(eigenvalue_corrected):
    model, data, loss = case_named("mlp_tanh").make()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    approximation = operator.kfac(eigenvalue_corrected=eigenvalue_corrected)
    dense_kfac = approximation @ torch.eye(operator.dim, dtype=torch.float64)
    damping = 1e-2
    expected = torch.linalg.solve(dense_kfac + damping * torch.eye(operator.dim).double(),
                                  gradient)  # fmt: skip
    solver = "ekfac" if eigenvalue_corrected else "kfac"
    result = ng.natural_gradient(
        operator,
        gradient,
        solve=ng.SolveSpec(solver=solver, damping=damping, kfac_exact_damping=True),
    )
    torch.testing.assert_close(result.direction, expected, rtol=1e-8, atol=1e-10)


def test_kfac_factored_damping_is_close_to_exact_damping_for_small_damping():
    model, data, loss = case_named("mlp_tanh").make()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    exact = ng.natural_gradient(
        operator, gradient, solve=ng.SolveSpec(solver="kfac", damping=1e-2, kfac_exact_damping=True)
    ).direction
    factored = ng.natural_gradient(
        operator, gradient, solve=ng.SolveSpec(solver="kfac", damping=1e-2)
    ).direction
    cosine = float(exact @ factored / (exact.norm() * factored.norm()))
    assert 0.9 < cosine < 1 - 1e-8  # a different damping, the same approximation


def test_progress_reports_cg_iterations_with_residuals_and_dense_columns():
    model, data, loss = case_named("transformer_encoder").make()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    seen = []
    cg = ng.natural_gradient(
        operator,
        gradient,
        progress=lambda *event: seen.append(event),
        solve=ng.SolveSpec(solver="cg", damping=1e-3, tolerance=1e-8),
    )
    assert [e[1] for e in seen] == list(range(1, cg.cg_iterations + 1))
    assert {e[0] for e in seen} == {"CG"} and {e[2] for e in seen} == {10 * operator.dim}
    residuals = [float(e[3].removeprefix("residual ")) for e in seen]
    assert residuals[-1] <= 1e-8 < residuals[0]
    seen.clear()
    ng.natural_gradient(
        operator, gradient, progress=lambda *e: seen.append(e), solve=ng.SolveSpec(solver="dense")
    )
    assert seen[-1] == ("Fisher columns", operator.dim, operator.dim, "")
    assert [e[1] for e in seen] == [min(256 * k, operator.dim) for k in range(1, len(seen) + 1)]


def test_an_unconverged_cg_solve_says_so():
    model, data, loss = case_named("mlp_tanh").make()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    capped = ng.natural_gradient(
        operator,
        gradient,
        solve=ng.SolveSpec(solver="cg", damping=1e-3, tolerance=1e-8, max_iterations=2),
    )
    assert capped.cg_iterations == 2 and not capped.converged and capped.tolerance == 1e-8
    assert capped.relative_residual > 1e-3
    assert capped.label() == f"CG, 2 iterations, residual {capped.relative_residual:.2g}"
    full = ng.natural_gradient(
        operator, gradient, solve=ng.SolveSpec(solver="cg", damping=1e-3, tolerance=1e-8)
    )
    assert full.converged and full.relative_residual <= ng.CG_RESIDUAL_SLACK * 1e-8
    dense = ng.natural_gradient(operator, gradient, solve=ng.SolveSpec(solver="dense"))
    assert dense.converged and dense.label() == "dense"


def test_progress_brackets_the_kfac_factors():
    model, data, loss = case_named("mlp_tanh").make()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    seen = []
    ng.natural_gradient(
        operator,
        gradient,
        progress=lambda *e: seen.append(e[:3]),
        solve=ng.SolveSpec(solver="ekfac", damping=1e-2),
    )
    assert seen == [("ekfac factors", 0, 1), ("ekfac factors", 1, 1)]
