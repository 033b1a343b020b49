import math

import pytest
import torch

from geomlab.geometry import reparam
from geomlab.geometry.curvature import softmax_regression_fisher as softmax_fisher
from geomlab.geometry.natural_gradient import SolveSpec, categorical_kl
from geomlab.models import softmax_regression as sr


def _spd(n: int, seed: int) -> torch.Tensor:
    a = torch.randn(n, n, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))
    return a @ a.T / n + 0.1 * torch.eye(n, dtype=torch.float64)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_transformed_fisher_equals_diag_s_f_diag_s(seed):
    fisher = _spd(24, seed)
    scale = reparam.log_uniform_scaling(100.0, reparam.log_uniform_pattern(24, seed=seed))
    fast = reparam.transform_fisher(fisher, scale)
    torch.testing.assert_close(fast, reparam.transform_fisher_reference(fisher, scale),
                               rtol=1e-14, atol=0)  # fmt: skip
    assert torch.equal(fast, fast.T)


def test_scalings_have_the_requested_condition_number():
    s = reparam.two_block_scaling(1000.0, 3, 5)
    assert s.shape == (15,)
    assert s.max() / s.min() == pytest.approx(1000.0, rel=1e-12)
    # the same per-feature pattern for every class (the notebook's family)
    assert torch.equal(s[:5], s[5:10])
    pattern = reparam.log_uniform_pattern(50, seed=3)
    assert pattern.min() == -0.5 and pattern.max() == 0.5
    r = reparam.log_uniform_scaling(1e4, pattern)
    assert r.max() / r.min() == pytest.approx(1e4, rel=1e-12)


def test_ng_step_is_invariant_to_round_off_for_an_invertible_fisher():
    n = 30
    fisher = _spd(n, 5)
    gradient = torch.randn(n, dtype=torch.float64, generator=torch.Generator().manual_seed(6))
    pattern = reparam.log_uniform_pattern(n, seed=7)
    base, _ = reparam.rescaled_step(
        fisher,
        gradient,
        torch.ones(n, dtype=torch.float64),
        method="natgrad",
        eta=1e-3,
        solve=SolveSpec(rcond=1e-12),
    )
    sgd_base = -1e-3 * gradient
    previous_sgd = 0.0
    for kappa in (10.0, 100.0, 1000.0):
        scale = reparam.log_uniform_scaling(kappa, pattern)
        ng, _ = reparam.rescaled_step(
            fisher, gradient, scale, method="natgrad", eta=1e-3, solve=SolveSpec(rcond=1e-12)
        )
        assert reparam.max_abs_difference(ng, base) < 1e-10 * base.abs().max()
        sgd, _ = reparam.rescaled_step(
            fisher, gradient, scale, method="sgd", eta=1e-3, solve=SolveSpec(rcond=0)
        )
        torch.testing.assert_close(sgd, -1e-3 * scale**2 * gradient, rtol=1e-15, atol=0)
        discrepancy = reparam.max_abs_difference(sgd, sgd_base)
        assert discrepancy > previous_sgd  # SGD's discrepancy grows with kappa
        previous_sgd = discrepancy


def test_ng_step_is_function_space_invariant_for_the_singular_softmax_fisher():
    g = torch.Generator().manual_seed(11)
    n, c, d = 400, 4, 6
    inputs = torch.randn(n, d, dtype=torch.float64, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    weight = 0.3 * torch.randn(c, d, dtype=torch.float64, generator=g)
    _, gradient, probs = sr.loss_and_gradient(weight, inputs, labels)
    fisher = softmax_fisher(probs, inputs)
    theta = weight.reshape(-1)
    base, _ = reparam.rescaled_step(
        fisher,
        gradient,
        torch.ones_like(theta),
        method="natgrad",
        eta=1e-2,
        solve=SolveSpec(rcond=1e-8),
    )
    # Per-coordinate scales that differ between classes move the Fisher's null space,
    # so the parameter-space step changes ...
    scale = reparam.log_uniform_scaling(1000.0, reparam.log_uniform_pattern(c * d, seed=1))
    step, _ = reparam.rescaled_step(
        fisher, gradient, scale, method="natgrad", eta=1e-2, solve=SolveSpec(rcond=1e-8)
    )
    assert reparam.max_abs_difference(step, base) > 1e-3 * base.abs().max()
    # ... only along class-uniform shifts, which no prediction sees.
    centred = reparam.max_abs_difference(
        reparam.centred_logit_change(step, inputs, c), reparam.centred_logit_change(base, inputs, c)
    )
    assert centred < 1e-12
    after_base = sr.logits((theta + base).reshape(c, d), inputs)
    after = sr.logits((theta + step).reshape(c, d), inputs)
    assert abs(float(categorical_kl(after_base, after))) < 1e-15
    # SGD is not invariant in function space either.
    sgd, _ = reparam.rescaled_step(
        fisher, gradient, scale, method="sgd", eta=1e-2, solve=SolveSpec(rcond=0)
    )
    sgd_centred = reparam.max_abs_difference(
        reparam.centred_logit_change(sgd, inputs, c),
        reparam.centred_logit_change(-1e-2 * gradient, inputs, c),
    )
    assert sgd_centred > 1e-4


def test_rescaled_step_rejects_unknown_method():
    with pytest.raises(ValueError, match="method"):
        reparam.rescaled_step(
            torch.eye(2),
            torch.ones(2),
            torch.ones(2),
            method="adam",
            eta=1,
            solve=SolveSpec(rcond=0),
        )


def test_two_block_scaling_preserves_the_softmax_null_space():
    c, d = 3, 4
    s = reparam.two_block_scaling(100.0, c, d)
    shift = torch.kron(torch.ones(c, dtype=torch.float64), torch.arange(1.0, d + 1).double())
    rescaled = shift / s
    # still a class-uniform shift: identical rows
    rows = rescaled.reshape(c, d)
    assert torch.equal(rows[0], rows[1]) and math.isfinite(float(rows.sum()))


# --- any nn.Module -----------------------------------------------------------------------------


def _linear_softmax(c=4, d=6, n=300, seed=0):
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, dtype=torch.float64, generator=g)
    labels = torch.randint(0, c, (n,), generator=g)
    weight = 0.3 * torch.randn(c, d, dtype=torch.float64, generator=g)
    model = torch.nn.Linear(d, c, bias=False).double()
    with torch.no_grad():
        model.weight.copy_(weight)
    return model, weight, inputs, labels


def test_generalized_families_reduce_to_the_notebooks_on_softmax_regression():
    model, _, _, _ = _linear_softmax()
    params = dict(model.named_parameters())
    two_block = reparam.parameter_scale_vector(
        params, reparam.two_block_parameter_scales(params, 100.0)
    )
    assert torch.equal(two_block, reparam.two_block_scaling(100.0, 4, 6))
    log_uniform = reparam.parameter_scale_vector(
        params, reparam.log_uniform_parameter_scales(params, 100.0, seed=3)
    )
    expected = reparam.log_uniform_scaling(100.0, reparam.log_uniform_pattern(24, seed=3))
    torch.testing.assert_close(log_uniform, expected, rtol=1e-15, atol=0)


def test_per_parameter_scales_validate_names_and_values():
    model, _, _, _ = _linear_softmax()
    params = dict(model.named_parameters())
    with pytest.raises(KeyError, match="bias"):
        reparam.parameter_scale_vector(params, {"bias": 2.0})
    with pytest.raises(ValueError, match="> 0"):
        reparam.parameter_scale_vector(params, {"weight": -1.0})
    assert torch.equal(reparam.parameter_scale_vector(params, {}), torch.ones(24).double())


@pytest.mark.parametrize("solver", ["dense", "cg"])
def test_model_step_equals_the_matrix_step_on_softmax_regression(solver):
    from geomlab.geometry.curvature import FisherOperator

    model, weight, inputs, labels = _linear_softmax()
    _, gradient, probs = sr.loss_and_gradient(weight, inputs, labels)
    fisher = softmax_fisher(probs, inputs)
    operator = FisherOperator(model, (inputs, labels), loss="cross_entropy")
    scale = reparam.two_block_scaling(10.0, 4, 6)
    expected, _ = reparam.rescaled_step(
        fisher, gradient, scale, method="natgrad", eta=1e-2, solve=SolveSpec(rcond=1e-8)
    )
    step, _ = reparam.rescaled_step(operator, gradient, scale, method="natgrad", eta=1e-2,
                                    solve=SolveSpec(solver=solver, rcond=1e-8,
                                                    tolerance=1e-10))  # fmt: skip
    # CG (from zero) converges to the minimum-norm solution, the pseudo-inverse's.
    torch.testing.assert_close(step, expected, rtol=1e-6, atol=1e-9 * expected.abs().max())


def test_ng_is_invariant_for_an_invertible_fisher_and_damping_breaks_it():
    from geomlab.geometry.curvature import FisherOperator
    from geomlab.geometry.params import LossKind, model_outputs

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    model = model.double()
    g = torch.Generator().manual_seed(1)
    data = (torch.randn(200, 3, dtype=torch.float64, generator=g),
            torch.randn(200, 2, dtype=torch.float64, generator=g))  # fmt: skip
    operator = FisherOperator(model, data, loss="mse")
    params = {n: p.detach() for n, p in operator.parameters.items()}
    from geomlab.geometry.params import loss_and_gradient

    _, gradient = loss_and_gradient(model, data, loss="mse")
    ones = torch.ones(operator.dim, dtype=torch.float64)
    scale = reparam.parameter_scale_vector(
        params, reparam.log_uniform_parameter_scales(params, 100.0, seed=0)
    )
    batches = [data]
    start = model_outputs(model, params, batches)
    results = {}
    for damping in (0.0, 1e-2):
        kwargs = {
            "method": "natgrad",
            "eta": 1e-2,
            "solve": SolveSpec(solver="dense", damping=damping, rcond=1e-14),
        }
        base, _ = reparam.rescaled_step(operator, gradient, ones, **kwargs)
        moved, _ = reparam.rescaled_step(operator, gradient, scale, **kwargs)
        results[damping] = reparam.step_discrepancy(
            model, params, moved, base, batches, loss=LossKind.MSE, outputs_start=start
        )
    assert results[0.0].rel_diff < 1e-6  # F invertible: (S F S)^-1 maps back to F^-1
    assert results[1e-2].rel_diff > 1e-3  # lambda I in phi is lambda S^-2 in theta
    assert results[1e-2].logit_diff > 1e3 * results[0.0].logit_diff


def test_solve_cutoff_counts_what_rcond_dropped_against_the_round_off_floor():
    from geomlab.geometry.natural_gradient import pseudo_inverse

    # Hand-derived: eigenvalues 1, 1e-3, 1e-10, 0 under rcond 1e-8: cutoff 1e-8 keeps two;
    # of the two dropped only 1e-10 is above the floor 4 eps(float64) * 1 = 8.9e-16.
    generator = torch.Generator().manual_seed(0)
    rotation, _ = torch.linalg.qr(torch.randn(4, 4, dtype=torch.float64, generator=generator))
    w = torch.tensor([1.0, 1e-3, 1e-10, 0.0], dtype=torch.float64)
    matrix = rotation @ torch.diag(w) @ rotation.T
    rhs = rotation @ torch.tensor([1.0, 1.0, 1.0, 1.0], dtype=torch.float64)
    cutoff = reparam.solve_cutoff(pseudo_inverse(matrix, rcond=1e-8), rhs)
    assert cutoff.rank == 2 and cutoff.dropped == 2 and cutoff.dropped_above_floor == 1
    assert cutoff.cutoff == pytest.approx(1e-8, rel=1e-12)
    assert cutoff.round_off_floor == pytest.approx(4 * torch.finfo(torch.float64).eps, rel=1e-12)
    assert cutoff.dropped_share == pytest.approx(0.5, rel=1e-9)
    kept_all = reparam.solve_cutoff(pseudo_inverse(matrix, rcond=1e-12), rhs)
    assert kept_all.dropped_above_floor == 0 and kept_all.rank == 3


def test_rescaled_step_reports_the_cutoff_of_its_pseudo_inverse():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(6, 6, dtype=torch.float64, generator=g)
    fisher, gradient = a @ a.T, torch.randn(6, dtype=torch.float64, generator=g)
    scale = torch.linspace(0.5, 2.0, 6, dtype=torch.float64)
    for method in ("sgd", "natgrad"):
        delta, cutoff = reparam.rescaled_step(
            fisher, gradient, scale, method=method, eta=1e-2, solve=SolveSpec(rcond=1e-8)
        )
        same, _ = reparam.rescaled_step(
            fisher,
            gradient,
            scale,
            method=method,
            eta=1e-2,
            solve=SolveSpec(rcond=1e-8),
            fisher_matrix=fisher,
        )
        assert torch.equal(delta, same)
        assert cutoff.rank == (6 if method == "natgrad" else -1)


def test_model_step_with_cutoff_reports_dense_cutoff_and_cg_progress():
    from geomlab.geometry.curvature import FisherOperator

    model, weight, inputs, labels = _linear_softmax()
    operator = FisherOperator(model, (inputs, labels), loss="cross_entropy")
    _, gradient, _ = sr.loss_and_gradient(weight, inputs, labels)
    scale = reparam.two_block_scaling(10.0, 4, 6)
    kwargs = {"method": "natgrad", "eta": 1e-2}
    _, dense = reparam.rescaled_step(operator, gradient, scale, solve=SolveSpec(rcond=1e-8),
                                     **kwargs)  # fmt: skip
    assert dense.rank == 24 - 6 and dense.dropped == 6 and dense.dropped_above_floor == 0
    seen = []
    cg_spec = SolveSpec(solver="cg", rcond=1e-8, tolerance=1e-10)
    step, cg = reparam.rescaled_step(
        operator, gradient, scale, solve=cg_spec, progress=lambda *e: seen.append(e), **kwargs
    )
    assert cg.rank == -1 and math.isnan(cg.cutoff)
    assert [e[1] for e in seen] == list(range(1, len(seen) + 1)) and seen[0][2] == 240
    assert float(seen[-1][3].removeprefix("residual ")) <= 1e-10
    again, _ = reparam.rescaled_step(operator, gradient, scale, solve=cg_spec, **kwargs)
    assert torch.equal(step, again)
