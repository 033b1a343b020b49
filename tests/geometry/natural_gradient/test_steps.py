"""KL-matched steps of any nn.Module: measured KL / target -> 1 for every solver, the
softmax-regression fast path, an independent recomputation on attention models, and the
refusals, on the shared case zoo (:mod:`geomlab.testing.cases`)."""

import pytest
import torch
from torch import nn

from geomlab.experiments.e1_pareto import records
from geomlab.geometry import curvature as cv
from geomlab.geometry import natural_gradient as ng
from geomlab.geometry import params as gp
from geomlab.testing.cases import case_named


@pytest.mark.parametrize(
    ("case", "method", "solver"),
    [("mlp_tanh", "natgrad", "dense"), ("mlp_tanh", "natgrad", "cg"),
     ("mlp_tanh", "kfac", "dense"), ("mlp_tanh", "ekfac", "dense"), ("mlp_tanh", "sgd", "dense"),
     ("regression_mlp", "natgrad", "cg"), ("cnn_bn_eval", "natgrad", "dense")],
)  # fmt: skip
def test_measured_kl_over_target_tends_to_one_for_every_solver(case, method, solver):
    model, data, loss = case_named(case).make()
    epsilons = torch.tensor([1e-3, 1e-5, 1e-7], dtype=torch.float64)
    pair = ng.kl_matched_steps(
        model,
        data,
        epsilons,
        loss=loss,
        methods=[method],
        solve=ng.SolveSpec(solver=solver, damping=1e-3, kfac_damping=1e-2),
    )
    errors = [abs(row["kl_ratio"] - 1) for row in records(pair)]
    # O(sqrt(eps)) from the third-order term; a ReLU kink crossed by a step can add noise,
    # so the approach is checked end to end rather than step by step.
    assert errors[2] < errors[0] and errors[2] < 1e-3


def test_model_steps_of_softmax_regression_equal_the_fast_path():
    from geomlab.data.synthetic import gaussian_clusters
    from geomlab.models import softmax_regression as sr

    x, y = gaussian_clusters(n_samples=300, n_features=6, n_classes=4, seed=0)
    weight = sr.init_weights(4, 6, seed=0)
    eps = torch.tensor([1e-4, 1e-2], dtype=torch.float64)
    fast = records(ng.softmax_regression_kl_matched_steps(weight, x, y, eps))
    linear = nn.Linear(6, 4, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(weight)
    generic = records(ng.kl_matched_steps(linear, (x, y), eps, loss="cross_entropy"))
    for a, b in zip(fast, generic, strict=True):
        assert a["method"] == b["method"]
        for column in ("loss_before", "loss_after", "eta", "kl_step", "direction_norm"):
            assert b[column] == pytest.approx(a[column], rel=1e-6), column
    assert [p.detach() for p in linear.parameters()][0].equal(weight)  # model left untouched


@pytest.mark.parametrize("case", ["transformer_encoder", "cls_token_cat", "hf_logits_sdpa"])
def test_kl_matched_steps_on_attention_models_match_an_independent_recomputation(case):
    from torch.func import functional_call

    from geomlab.geometry.attention import math_attention
    from geomlab.geometry.outputs import as_logits

    model, (x, y), loss = case_named(case).make()
    eps = torch.tensor([1e-4, 1e-2], dtype=torch.float64)
    pair = ng.kl_matched_steps(
        model, (x, y), eps, loss=loss, solve=ng.SolveSpec(solver="dense", rcond=1e-10)
    )
    # Independent: dense float64 F by jacrev, own pseudo-inverse, step size, forward, KL.
    params = {n: p.detach().clone() for n, p in model.named_parameters()}
    with math_attention():

        def logits(values):
            return as_logits(functional_call(model, values, (x,)))

        def total_loss(*values):
            out = logits(dict(zip(params, values, strict=True)))
            return nn.functional.cross_entropy(out, y)

        grads = torch.func.grad(total_loss, argnums=tuple(range(len(params))))(*params.values())
        g = torch.cat([t.reshape(-1) for t in grads])
        fisher = cv.dense_fisher_reference(model, (x, y), loss=loss)
        v = torch.linalg.pinv(fisher, hermitian=True, rtol=1e-10) @ g
        before = logits(params)
        rows = [r for r in records(pair) if r["method"] == "natgrad"]
        for row, target in zip(rows, eps.tolist(), strict=True):
            eta = (2 * target / (v @ fisher @ v)).sqrt()
            theta = torch.cat([t.reshape(-1) for t in params.values()]) - eta * v
            after = logits(gp.unflatten(theta, params))
            kl = ng.categorical_kl(before, after)
            assert row["eta"] == pytest.approx(float(eta), rel=1e-9)
            assert row["kl_step"] == pytest.approx(float(kl), rel=1e-7)
            assert row["loss_after"] == pytest.approx(
                float(nn.functional.cross_entropy(after, y)), rel=1e-9
            )
    assert len(rows) == 2


def test_nan_outputs_are_named_not_called_non_positive_curvature():
    model, data, loss = case_named("mlp_tanh").make()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(cv.NonFiniteOutputError, match=r"outputs of model Sequential are not fin"):
        ng.kl_matched_steps(model, data, torch.tensor([1e-3]), loss=loss)
    with pytest.raises(cv.NonFiniteOutputError, match="not finite"):
        ng.step_size_for_kl(torch.tensor(float("nan")), 1e-3)


def test_kfac_eligibility_is_checked_before_any_work_and_freezing_works(monkeypatch):
    model, data, loss = case_named("layernorm_mlp").make()

    def no_work(*args, **kwargs):
        raise AssertionError("work started before the K-FAC eligibility check")

    with monkeypatch.context() as patch:
        patch.setattr(ng.steps, "FisherOperator", no_work)
        patch.setattr(ng.steps, "loss_and_gradient", no_work)
        for methods in (["sgd", "natgrad", "kfac"], ["ekfac"]):
            with pytest.raises(cv.UnsupportedShapeError, match=r"1\.weight, 1\.bias.*"
                               r"requires_grad_\(False\)"):  # fmt: skip
                ng.kl_matched_steps(
                    model,
                    data,
                    torch.tensor([1e-3]),
                    loss=loss,
                    methods=methods,
                    solve=ng.SolveSpec(solver="cg"),
                )
    for p in model[1].parameters():
        p.requires_grad_(False)
    assert cv.kfac_ineligible_parameters(model) == []
    pair = ng.kl_matched_steps(
        model,
        data,
        torch.tensor([1e-6]),
        loss=loss,
        methods=["kfac", "natgrad"],
        solve=ng.SolveSpec(solver="cg", damping=1e-3, kfac_damping=1e-2),
    )
    assert pair.gradient.numel() == 4 * 6 + 6 + 6 * 3 + 3  # LayerNorm's 12 left out
    for row in records(pair):
        assert abs(row["kl_ratio"] - 1) < 1e-2
    # The frozen model's K-FAC direction is curvlinops' K-FAC of the remaining layers.
    operator = cv.FisherOperator(model, data, loss=loss)
    dense_kfac = operator.kfac() @ torch.eye(operator.dim, dtype=torch.float64)
    expected = torch.linalg.solve(dense_kfac + 1e-2 * torch.eye(operator.dim).double(),
                                  pair.gradient)  # fmt: skip
    result = ng.natural_gradient(
        operator,
        pair.gradient,
        solve=ng.SolveSpec(solver="kfac", damping=1e-2, kfac_exact_damping=True),
    )
    torch.testing.assert_close(result.direction, expected, rtol=1e-8, atol=1e-10)
