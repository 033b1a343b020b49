"""The Fisher of any nn.Module (curvlinops GGN) against the dense float64 J^T H J reference built
with torch.func, on the shared case zoo (:mod:`geomlab.testing.cases`): products, dense form,
K-FAC, the self-check, and the refusals. The natural-gradient solves and KL-matched steps built
on it are tested in tests/geometry/natural_gradient/."""

import pytest
import torch
from torch import nn

from geomlab.geometry import curvature as cv
from geomlab.geometry import natural_gradient as ng
from geomlab.geometry import params as gp
from geomlab.testing.cases import CASES, case_named


@pytest.mark.parametrize("case", CASES, ids=str)
def test_operator_matches_dense_reference(case):
    model, data, loss = case.make()
    reference = cv.dense_fisher_reference(model, data, loss=loss)
    operator = cv.FisherOperator(model, data, loss=loss, batch_size=7)  # ragged batches
    assert operator.dim == sum(p.numel() for p in model.parameters()) == reference.shape[0]
    scale = reference.abs().max()
    torch.testing.assert_close(operator.dense(), reference, rtol=0, atol=1e-12 * scale)
    v = torch.randn(operator.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(operator @ v, reference @ v, rtol=0, atol=1e-12 * scale)


def test_reference_is_the_expected_outer_product_of_scores_for_a_classifier():
    # Independent oracle: F = E_x E_{y~p}[s s^T], s = grad log p(y|x), by plain autograd.
    model, (x, _), loss = case_named("mlp_tanh").make()
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
    model, data, loss = case_named("cnn_bn_eval").make()
    operator = cv.FisherOperator(model, data, loss=loss)
    with pytest.raises(cv.UnsupportedShapeError, match=r"not 1\.weight, 1\.bias"):
        operator.kfac()
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    with pytest.raises(ValueError, match="needs damping > 0"):
        ng.natural_gradient(operator, gradient, solve=ng.SolveSpec(solver="kfac", damping=0.0))


def test_wrong_targets_are_named():
    model, (x, y), _ = case_named("mlp_tanh").make()
    with pytest.raises(cv.UnsupportedShapeError, match="integer class labels"):
        cv.FisherOperator(model, (x, y.double()), loss="cross_entropy")
    with pytest.raises(cv.UnsupportedShapeError, match="targets shaped like the outputs"):
        cv.FisherOperator(model, (x, y), loss="mse")


@pytest.mark.parametrize("case", CASES, ids=str)
def test_torch_func_product_reference_matches_dense_reference(case):
    model, (x, y), loss = case.make()
    vectors = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
    from geomlab.models.modes import eval_mode

    with eval_mode(model):
        reference = cv.dense_fisher_reference(model, (x, y), loss=loss)
        product = cv.fisher_product_reference(model, x, vectors, loss=loss)
    scale = reference.abs().max() * vectors.abs().max()
    torch.testing.assert_close(product, reference @ vectors, rtol=0, atol=1e-12 * scale)


def test_self_check_runs_once_per_model_and_again_for_new_parameters():
    model, data, loss = case_named("transformer_encoder").make()
    first = cv.fisher_self_check(model, data, loss=loss)
    assert first is not None and first < 1e-12
    assert cv.fisher_self_check(model, data, loss=loss) is None  # cached: nothing recomputed
    model.head.weight = nn.Parameter(model.head.weight.detach().clone())  # new parameter object
    assert cv.fisher_self_check(model, data, loss=loss) is not None


def test_self_check_mismatch_raises_naming_the_model(monkeypatch):
    model, data, loss = case_named("cls_token_cat").make()
    real = cv.fisher_product_reference
    monkeypatch.setattr(
        cv.operator, "fisher_product_reference", lambda *a, **k: 1.5 * real(*a, **k)
    )
    with pytest.raises(cv.FisherSelfCheckError, match="ClsTokenModel.*differs"):
        cv.FisherOperator(model, data, loss=loss)
    cv.FisherOperator(model, data, loss=loss, self_check=False)  # the flag turns it off


def test_self_check_refuses_a_random_forward():
    # Dropout left in training mode: F of a random function is undefined; curvlinops' and the
    # reference's forwards draw different masks.
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 16), nn.Dropout(0.5), nn.Linear(16, 3)).double().train()
    x = torch.randn(8, 4, dtype=torch.float64)
    with pytest.raises(cv.FisherSelfCheckError, match="Sequential"):
        cv.FisherOperator(model, (x, torch.zeros(8, dtype=torch.long)), loss="cross_entropy")


def test_outputs_that_are_not_tensors_or_logits_are_refused_by_name():
    from geomlab.geometry.outputs import ModelOutputError

    class TupleModel(nn.Module):
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3).double()

        def forward(self, x):
            return self.linear(x), x

    x = torch.randn(6, 4, dtype=torch.float64)
    data = (x, torch.zeros(6, dtype=torch.long))
    with pytest.raises(ModelOutputError, match="returned a tuple"):
        cv.FisherOperator(TupleModel(), data, loss="cross_entropy")
    with pytest.raises(ModelOutputError, match="returned a tuple"):
        ng.kl_matched_steps(TupleModel(), data, torch.tensor([1e-3]), loss="cross_entropy")


def test_kfac_eligibility_leaves_out_attention_projections_it_cannot_hook():
    # nn.MultiheadAttention uses out_proj.weight directly (never calls the nn.Linear), so K-FAC
    # would see no inputs for it: refused by name instead of curvlinops' KeyError.
    model, _, _ = case_named("cls_token_cat").make()
    ineligible = cv.kfac_ineligible_parameters(model)
    assert ineligible == ["cls", "attention.in_proj_weight", "attention.in_proj_bias",
                          "attention.out_proj.weight", "attention.out_proj.bias",
                          "norm.weight", "norm.bias"]  # fmt: skip
    with pytest.raises(cv.UnsupportedShapeError, match="out_proj.*requires_grad_"):
        cv.check_kfac_eligible(model)


def test_a_self_check_that_cannot_run_says_so_and_names_the_flag():
    class Float32Only(nn.Module):  # hard-codes its dtype: no float64 copy can run it
        def __init__(self):
            super().__init__()
            self.linear = nn.Linear(4, 3)

        def forward(self, x):
            return self.linear(x.to(torch.float32))

    x = torch.randn(6, 4)
    data = (x, torch.zeros(6, dtype=torch.long))
    with pytest.raises(cv.FisherSelfCheckError, match="could not run for model Float32Only.*"
                       "fisher_self_check=false"):  # fmt: skip
        cv.FisherOperator(Float32Only(), data, loss="cross_entropy")
    operator = cv.FisherOperator(Float32Only(), data, loss="cross_entropy", self_check=False)
    assert operator.dim == 15


def test_operator_interface_and_dense_from_the_jacobian_equal_products():
    model, data, loss = case_named("cnn_bn_eval").make()
    operator = cv.FisherOperator(model, data, loss=loss, batch_size=5)
    assert operator.shape == (operator.dim, operator.dim) and operator.dtype == torch.float64
    eye = torch.eye(operator.dim, dtype=torch.float64)
    by_products = operator @ eye
    scale = float(by_products.abs().max())
    torch.testing.assert_close(operator.dense(), (by_products + by_products.T) / 2, rtol=0,
                               atol=1e-12 * scale)  # fmt: skip
