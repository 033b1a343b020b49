"""Every geometry path on every case of the shared zoo (:mod:`geomlab.testing.cases`), each
against its float64 reference (:mod:`geomlab.testing.compare`):

* the Fisher/GGN operator's products and dense form vs the dense ``torch.func`` reference;
* KL-matched steps (SGD, dense natural gradient): finite, measured KL / target → 1 as ε → 0;
* directional input derivatives, orders 1–3: ``auto`` (the exact fast path where it applies)
  vs the nested-autograd reference;
* natural-gradient invariance under reparameterization, in function space (small models).
"""

from __future__ import annotations

import math

import pytest
import torch

from geomlab.experiments.e1_pareto import records
from geomlab.geometry import curvature, derivatives, natural_gradient, params, reparam
from geomlab.testing.cases import CASES, case_named
from geomlab.testing.compare import assert_relative_close, relative_error


def test_the_zoo_covers_what_users_bring():
    names = [case.name for case in CASES]
    assert len(set(names)) == len(names) and case_named("mlp_tanh").name == "mlp_tanh"
    with pytest.raises(KeyError, match="mlp_tanh"):
        case_named("resnet")
    assert {case.loss for case in CASES} == {"cross_entropy", "mse"}
    for case in CASES:  # seeded: the same numbers on every call
        first, again = case.model(), case.model()
        assert not first.training
        for a, b in zip(first.state_dict().values(), again.state_dict().values(), strict=True):
            assert torch.equal(a, b)
        x, y = case.data()
        assert x.shape == (case.batch, *case.input_shape) and x.dtype == torch.float64
        assert torch.equal(x, case.data()[0]) and torch.equal(y, case.data()[1])


def test_the_compare_helper_says_what_differs():
    expected = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=torch.float64)
    assert relative_error(expected, expected) == 0.0
    assert relative_error(expected.float(), expected) < 1e-7
    assert relative_error(torch.tensor([float("nan")]), torch.tensor([1.0])) == math.inf
    assert_relative_close(expected * (1 + 1e-12), expected, rtol=1e-11)
    with pytest.raises(AssertionError, match=r"Fisher: relative error .* at index \(1, 0\)"):
        assert_relative_close(expected + torch.tensor([[0, 0], [1e-3, 0]]), expected,
                              rtol=1e-6, what="Fisher")  # fmt: skip
    wrong_order_two = torch.stack([expected[0], expected[1] * 1.01])
    with pytest.raises(AssertionError, match=r"order 2: relative error 0\.01"):
        assert_relative_close(wrong_order_two, expected, rtol=1e-6, per="order", first=1)
    with pytest.raises(AssertionError, match="shapes differ"):
        assert_relative_close(expected[0], expected, rtol=1)
    # max norm: max |a - e| / max |e| (0.5 / 4), not Frobenius (0.5 / 5.48); floor: absolute
    off = expected + torch.tensor([[0.5, 0.0], [0.0, 0.0]], dtype=torch.float64)
    assert relative_error(off, expected, norm="max") == 0.125
    assert relative_error(off, expected) == pytest.approx(0.5 / 30**0.5, rel=1e-15)
    assert relative_error(torch.tensor([2e-9]).double(), torch.tensor([1e-9]).double(), norm="max",
                          floor=1e-6) == pytest.approx(1e-3)  # fmt: skip
    with pytest.raises(AssertionError, match=r"order 1: relative error 0\.25"):
        assert_relative_close(off, expected, rtol=0.1, norm="max", per="order", first=1)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_fisher_products_match_the_dense_reference(case):
    model, data, loss = case.make()
    reference = curvature.dense_fisher_reference(model, data, loss=loss)
    operator = curvature.FisherOperator(model, data, loss=loss, batch_size=7)  # ragged batches
    assert operator.dim == sum(p.numel() for p in model.parameters()) == len(reference)
    vectors = torch.randn(operator.dim, 2, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(0))  # fmt: skip
    for v in vectors.T:
        assert_relative_close(operator @ v, reference @ v, rtol=1e-10, what="F @ v")
    assert_relative_close(operator.dense(), reference, rtol=1e-10, what="dense F")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_kl_matched_steps_are_finite_and_hit_their_kl(case):
    model, data, loss = case.make()
    epsilons = torch.tensor([1e-4, 1e-6, 1e-8], dtype=torch.float64)
    steps = natural_gradient.kl_matched_steps(
        model, data, epsilons, loss=loss, methods=["sgd", "natgrad"],
        solve=natural_gradient.SolveSpec(solver="dense", damping=1e-3),
    )  # fmt: skip
    rows = records(steps)
    assert {row["method"] for row in rows} == {"sgd", "natgrad"} and len(rows) == 6
    for row in rows:
        core = ("loss_after", "delta_loss", "kl_step", "kl_ratio", "eta", "direction_norm")
        assert all(math.isfinite(row[column]) for column in core), row
    for method in ("sgd", "natgrad"):
        ratios = [row["kl_ratio"] for row in rows if row["method"] == method]
        # second-order KL matching: the third-order term makes the error O(sqrt(eps))
        errors = [abs(ratio - 1) for ratio in ratios]
        assert errors[-1] < errors[0] and errors[-1] < 1e-3, (case.name, method, ratios)


@pytest.mark.parametrize("case", CASES, ids=str)
def test_directional_derivatives_auto_match_nested(case):
    model, (x, y), loss = case.make()
    x, y = x[:6], y[:6]
    directions = derivatives.sample_unit_directions(
        2, x, generator=torch.Generator().manual_seed(0)
    )
    kwargs = {"max_order": 3, "loss": loss}
    auto = derivatives.directional_derivatives(model, x, y, directions, method="auto", **kwargs)
    nested = derivatives.directional_derivatives(model, x, y, directions, method="nested", **kwargs)
    assert auto.values.shape == nested.values.shape == (3, 2, 6)
    assert_relative_close(auto.values, nested.values, rtol=1e-9, what=f"{case} d^n L/dt^n",
                          per="order", first=1)  # fmt: skip


SMALL = [case for case in CASES if case.small]


@pytest.mark.parametrize("case", SMALL, ids=str)
def test_natural_gradient_is_invariant_in_function_space_and_sgd_is_not(case):
    model, data, loss = case.model(), case.data(200), case.loss  # F well conditioned
    operator = curvature.FisherOperator(model, data, loss=loss)
    parameters = {name: p.detach() for name, p in operator.parameters.items()}
    _, gradient = params.loss_and_gradient(model, data, loss=loss)
    scale = reparam.parameter_scale_vector(
        parameters, reparam.log_uniform_parameter_scales(parameters, 100.0, seed=0)
    )
    ones = torch.ones_like(scale)
    start = params.model_outputs(model, parameters, [data])
    fisher = operator.dense()
    discrepancy = {}
    for method in ("natgrad", "sgd"):
        kwargs = {"method": method, "eta": 1e-3, "fisher_matrix": fisher,
                  "solve": natural_gradient.SolveSpec(solver="dense", rcond=1e-12)}  # fmt: skip
        base, _ = reparam.rescaled_step(operator, gradient, ones, **kwargs)
        moved, _ = reparam.rescaled_step(operator, gradient, scale, **kwargs)
        after = params.model_outputs(model, params.unflatten(
            params.flatten(parameters.values()) + base, parameters), [data])  # fmt: skip
        change = float((after - start).abs().max())
        found = reparam.step_discrepancy(
            model, parameters, moved, base, [data], loss=loss, outputs_start=start
        )
        discrepancy[method] = found.logit_diff / change
    # The outputs move the same way under any scaling to first order in the step (a singular
    # Fisher's null space changes no output to first order), SGD's by O(1).
    assert discrepancy["natgrad"] < 1e-6, discrepancy
    assert discrepancy["sgd"] > 0.1, discrepancy
