"""The Fisher of any nn.Module (curvlinops GGN), CG / dense / K-FAC natural-gradient solves, and
KL-matched steps, each against the dense float64 J^T H J reference built with torch.func."""

import pytest
import torch
from torch import nn

from geomlab.geometry import curvature as cv
from geomlab.geometry import natural_gradient as ng
from geomlab.models.mlp import build_mlp


def _mlp_classifier():
    torch.manual_seed(0)
    model = build_mlp(4, 3, hidden=(5,), activation="tanh").double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    return model, (x, y), cv.LossKind.CROSS_ENTROPY


def _cnn_with_eval_batchnorm():
    torch.manual_seed(2)
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    ).double()
    bn = model[1]
    with torch.no_grad():  # running statistics unlike the identity, so eval mode matters
        bn.running_mean.copy_(torch.tensor([0.3, -0.2]))
        bn.running_var.copy_(torch.tensor([2.0, 0.5]))
        bn.weight.copy_(torch.tensor([1.5, 0.7]))
    model.eval()
    g = torch.Generator().manual_seed(3)
    x = torch.randn(12, 1, 6, 6, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (12,), generator=g)
    return model, (x, y), cv.LossKind.CROSS_ENTROPY


def _gelu_regressor():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2)).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(25, 4, dtype=torch.float64, generator=g)
    y = torch.randn(25, 2, dtype=torch.float64, generator=g)
    return model, (x, y), cv.LossKind.MSE


CASES = {"mlp": _mlp_classifier, "cnn_bn": _cnn_with_eval_batchnorm, "gelu": _gelu_regressor}


@pytest.mark.parametrize("case", CASES)
def test_operator_matches_dense_reference(case):
    model, data, loss = CASES[case]()
    reference = cv.dense_fisher_reference(model, data, loss=loss)
    operator = cv.FisherOperator(model, data, loss=loss, batch_size=7)  # ragged batches
    assert operator.dim == sum(p.numel() for p in model.parameters()) == reference.shape[0]
    scale = reference.abs().max()
    torch.testing.assert_close(operator.dense(), reference, rtol=0, atol=1e-12 * scale)
    v = torch.randn(operator.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(operator.matvec(v), reference @ v, rtol=0, atol=1e-12 * scale)


def test_reference_is_the_expected_outer_product_of_scores_for_a_classifier():
    # Independent oracle: F = E_x E_{y~p}[s s^T], s = grad log p(y|x), by plain autograd.
    model, (x, _), loss = _mlp_classifier()
    params = list(model.parameters())
    expected = torch.zeros(sum(p.numel() for p in params), sum(p.numel() for p in params),
                           dtype=torch.float64)  # fmt: skip
    for i in range(6):
        logp = torch.log_softmax(model(x[i : i + 1]), dim=1)[0]
        for c in range(3):
            grads = torch.autograd.grad(logp[c], params, retain_graph=True)
            score = torch.cat([g.reshape(-1) for g in grads])
            expected += logp[c].exp().detach() * torch.outer(score, score) / 6
    reference = cv.dense_fisher_reference(model, (x[:6], torch.zeros(6, dtype=torch.long)),
                                          loss=loss)  # fmt: skip
    torch.testing.assert_close(reference, expected, rtol=1e-10, atol=1e-13)


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("damping", [1e-3, 0.0])
def test_dense_and_cg_directions_match_the_reference_solve(case, damping):
    model, data, loss = CASES[case]()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = cv.loss_and_gradient(model, data, loss=loss)
    reference = cv.dense_fisher_reference(model, data, loss=loss)
    shifted = reference + damping * torch.eye(len(reference), dtype=torch.float64)
    expected = torch.linalg.pinv(shifted, hermitian=True, rtol=1e-10) @ gradient
    dense = ng.natural_gradient(operator, gradient, solver="dense", damping=damping, rcond=1e-10)
    rel = (dense.direction - expected).norm() / expected.norm()
    assert rel < 1e-7
    if damping > 0:  # CG on a well-posed system: to its tolerance
        cg = ng.natural_gradient(operator, gradient, solver="cg", damping=damping, cg_tol=1e-10,
                                 cg_max_iterations=10 * operator.dim)  # fmt: skip
        assert cg.relative_residual < 1e-8  # true residual; CG stops on its recurrence
        assert (cg.direction - expected).norm() / expected.norm() < 1e-6
        assert 0 < cg.cg_iterations <= 10 * operator.dim


def test_dense_diagnostics_null_space_share_and_rank():
    model, data, loss = _mlp_classifier()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = cv.loss_and_gradient(model, data, loss=loss)
    result = ng.natural_gradient(operator, gradient, solver="dense", rcond=1e-8)
    # Softmax: shifting every output bias equally changes nothing, so F has a null space ...
    assert result.rank < operator.dim
    # ... and the gradient has no component in it (sum_c (p_c - y_c) = 0).
    assert result.null_space_share < 1e-20
    assert result.relative_residual < 1e-8 and 0 < result.cos_g_v <= 1


@pytest.mark.parametrize("eigenvalue_corrected", [False, True])
def test_kfac_direction_matches_curvlinops_dense_kfac(eigenvalue_corrected):
    model, data, loss = _mlp_classifier()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = cv.loss_and_gradient(model, data, loss=loss)
    approximation = operator.kfac(eigenvalue_corrected=eigenvalue_corrected)
    dense_kfac = approximation @ torch.eye(operator.dim, dtype=torch.float64)
    damping = 1e-2
    expected = torch.linalg.solve(dense_kfac + damping * torch.eye(operator.dim).double(),
                                  gradient)  # fmt: skip
    solver = "ekfac" if eigenvalue_corrected else "kfac"
    result = ng.natural_gradient(operator, gradient, solver=solver, damping=damping,
                                 kfac_exact_damping=True)  # fmt: skip
    torch.testing.assert_close(result.direction, expected, rtol=1e-8, atol=1e-10)


def test_kfac_factored_damping_is_close_to_exact_damping_for_small_damping():
    model, data, loss = _mlp_classifier()
    operator = cv.FisherOperator(model, data, loss=loss)
    _, gradient = cv.loss_and_gradient(model, data, loss=loss)
    exact = ng.natural_gradient(operator, gradient, solver="kfac", damping=1e-2,
                                kfac_exact_damping=True).direction  # fmt: skip
    factored = ng.natural_gradient(operator, gradient, solver="kfac", damping=1e-2).direction
    cosine = float(exact @ factored / (exact.norm() * factored.norm()))
    assert 0.9 < cosine < 1 - 1e-8  # a different damping, the same approximation


def test_kfac_is_exact_for_one_linear_layer_under_mse():
    # One affine layer, Gaussian likelihood: F = E[x x^T] (x) I exactly, so K-FAC is F.
    torch.manual_seed(0)
    model = nn.Linear(3, 2).double()
    x = torch.randn(40, 3, dtype=torch.float64)
    data = (x, torch.randn(40, 2, dtype=torch.float64))
    operator = cv.FisherOperator(model, data, loss="mse")
    kfac = operator.kfac() @ torch.eye(operator.dim, dtype=torch.float64)
    torch.testing.assert_close(kfac, cv.dense_fisher_reference(model, data, loss="mse"),
                               rtol=1e-12, atol=1e-14)  # fmt: skip


def test_kfac_refuses_parameters_outside_linear_and_conv_layers():
    model, data, loss = _cnn_with_eval_batchnorm()
    operator = cv.FisherOperator(model, data, loss=loss)
    with pytest.raises(cv.UnsupportedShapeError, match=r"not 1\.weight, 1\.bias"):
        operator.kfac()
    _, gradient = cv.loss_and_gradient(model, data, loss=loss)
    with pytest.raises(ValueError, match="needs damping > 0"):
        ng.natural_gradient(operator, gradient, solver="kfac", damping=0.0)


def test_wrong_targets_are_named():
    model, (x, y), _ = _mlp_classifier()
    with pytest.raises(cv.UnsupportedShapeError, match="integer class labels"):
        cv.FisherOperator(model, (x, y.double()), loss="cross_entropy")
    with pytest.raises(cv.UnsupportedShapeError, match="targets shaped like the outputs"):
        cv.FisherOperator(model, (x, y), loss="mse")


@pytest.mark.parametrize(
    ("case", "method", "solver"),
    [("mlp", "natgrad", "dense"), ("mlp", "natgrad", "cg"), ("mlp", "kfac", "dense"),
     ("mlp", "ekfac", "dense"), ("mlp", "sgd", "dense"), ("gelu", "natgrad", "cg"),
     ("cnn_bn", "natgrad", "dense")],
)  # fmt: skip
def test_measured_kl_over_target_tends_to_one_for_every_solver(case, method, solver):
    model, data, loss = CASES[case]()
    epsilons = torch.tensor([1e-3, 1e-5, 1e-7], dtype=torch.float64)
    pair = ng.model_kl_matched_steps(model, data, epsilons, loss=loss, methods=[method],
                                     solver=solver, damping=1e-3, kfac_damping=1e-2)  # fmt: skip
    errors = [abs(row["kl_ratio"] - 1) for row in pair.records()]
    # O(sqrt(eps)) from the third-order term; a ReLU kink crossed by a step can add noise,
    # so the approach is checked end to end rather than step by step.
    assert errors[2] < errors[0] and errors[2] < 1e-3


def test_model_steps_of_softmax_regression_equal_the_fast_path():
    from geomlab.data.synthetic import gaussian_clusters
    from geomlab.models import softmax_regression as sr

    x, y = gaussian_clusters(n_samples=300, n_features=6, n_classes=4, seed=0)
    weight = sr.init_weights(4, 6, seed=0)
    eps = torch.tensor([1e-4, 1e-2], dtype=torch.float64)
    fast = ng.kl_matched_steps(weight, x, y, eps, rcond=1e-8).records()
    linear = nn.Linear(6, 4, bias=False).double()
    with torch.no_grad():
        linear.weight.copy_(weight)
    generic = ng.model_kl_matched_steps(linear, (x, y), eps, loss="cross_entropy").records()
    for a, b in zip(fast, generic, strict=True):
        assert a["method"] == b["method"]
        for column in ("loss_before", "loss_after", "eta", "kl_step", "direction_norm"):
            assert b[column] == pytest.approx(a[column], rel=1e-6), column
    assert [p.detach() for p in linear.parameters()][0].equal(weight)  # model left untouched
