"""The Fisher of any nn.Module (curvlinops GGN), CG / dense / K-FAC natural-gradient solves, and
KL-matched steps, each against the dense float64 J^T H J reference built with torch.func."""

import pytest
import torch
from torch import nn

from geomlab.experiments.e1_pareto import records
from geomlab.geometry import curvature as cv
from geomlab.geometry import natural_gradient as ng
from geomlab.geometry import params as gp
from geomlab.models.mlp import build_mlp


def _mlp_classifier():
    torch.manual_seed(0)
    model = build_mlp(4, 3, hidden=(5,), activation="tanh").double()
    g = torch.Generator().manual_seed(1)
    x = torch.randn(30, 4, dtype=torch.float64, generator=g)
    y = torch.randint(0, 3, (30,), generator=g)
    return model, (x, y), gp.LossKind.CROSS_ENTROPY


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
    return model, (x, y), gp.LossKind.CROSS_ENTROPY


def _gelu_regressor():
    torch.manual_seed(4)
    model = nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2)).double()
    g = torch.Generator().manual_seed(5)
    x = torch.randn(25, 4, dtype=torch.float64, generator=g)
    y = torch.randn(25, 2, dtype=torch.float64, generator=g)
    return model, (x, y), gp.LossKind.MSE


class TinyTransformer(nn.Module):
    """PyTorch's own nn.TransformerEncoder (fast path in eval mode) on 4 tokens of 4 features."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Linear(4, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.1,
                                           batch_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x.reshape(-1, 4, 4))).mean(1))


class ClsTokenModel(nn.Module):
    """A learned CLS token (an nn.Parameter torch.cat'ed before the projected inputs), one
    nn.MultiheadAttention, LayerNorm, and a head reading the CLS position."""

    def __init__(self):
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, 6) * 0.5)
        self.proj = nn.Linear(4, 6)
        self.attention = nn.MultiheadAttention(6, 2, batch_first=True)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x):
        tokens = self.proj(x.reshape(-1, 4, 4))
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        mixed, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.head(self.norm(tokens + mixed)[:, 0])


class HFStyleOutput:
    """What a Hugging Face model returns: an object carrying ``.logits``."""

    def __init__(self, logits):
        self.logits = logits
        self.hidden_states = None


class SdpaClassifier(nn.Module):
    """HF-style: attention through F.scaled_dot_product_attention, output an object."""

    def __init__(self):
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(4, 3)

    def forward(self, x):
        q, k, v = self.qkv(x.reshape(-1, 4, 4)).chunk(3, dim=-1)
        mixed = nn.functional.scaled_dot_product_attention(q, k, v)
        return HFStyleOutput(self.head(torch.tanh(mixed).mean(1)))


def _sequence_data(model, seed, n=14, classes=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 16, dtype=torch.float64, generator=g)
    return model.double().eval(), (x, torch.randint(0, classes, (n,), generator=g))


def _transformer():
    torch.manual_seed(6)
    model, data = _sequence_data(TinyTransformer(), 7)
    return model, data, gp.LossKind.CROSS_ENTROPY


def _cls_token():
    torch.manual_seed(8)
    model, data = _sequence_data(ClsTokenModel(), 9)
    return model, data, gp.LossKind.CROSS_ENTROPY


def _hf_sdpa():
    torch.manual_seed(10)
    model, data = _sequence_data(SdpaClassifier(), 11)
    return model, data, gp.LossKind.CROSS_ENTROPY


def _layernorm_mlp():
    torch.manual_seed(12)
    model = nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.SiLU(), nn.Linear(6, 3)).double()
    g = torch.Generator().manual_seed(13)
    x = torch.randn(20, 4, dtype=torch.float64, generator=g)
    return model, (x, torch.randint(0, 3, (20,), generator=g)), gp.LossKind.CROSS_ENTROPY


CASES = {"mlp": _mlp_classifier, "cnn_bn": _cnn_with_eval_batchnorm, "gelu": _gelu_regressor,
         "transformer": _transformer, "cls_token": _cls_token, "hf_sdpa": _hf_sdpa,
         "layernorm": _layernorm_mlp}  # fmt: skip


@pytest.mark.parametrize("case", CASES)
def test_operator_matches_dense_reference(case):
    model, data, loss = CASES[case]()
    reference = cv.dense_fisher_reference(model, data, loss=loss)
    operator = cv.FisherOperator(model, data, loss=loss, batch_size=7)  # ragged batches
    assert operator.dim == sum(p.numel() for p in model.parameters()) == reference.shape[0]
    scale = reference.abs().max()
    torch.testing.assert_close(operator.dense(), reference, rtol=0, atol=1e-12 * scale)
    v = torch.randn(operator.dim, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(operator @ v, reference @ v, rtol=0, atol=1e-12 * scale)


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
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    reference = cv.dense_fisher_reference(model, data, loss=loss)
    shifted = reference + damping * torch.eye(len(reference), dtype=torch.float64)
    expected = torch.linalg.pinv(shifted, hermitian=True, rtol=1e-10) @ gradient
    dense = ng.natural_gradient(
        operator, gradient, solve=ng.SolveSpec(solver="dense", damping=damping, rcond=1e-10)
    )
    rel = (dense.direction - expected).norm() / expected.norm()
    assert rel < 1e-7
    if damping > 0:  # CG on a well-posed system: to its tolerance
        cg = ng.natural_gradient(
            operator,
            gradient,
            solve=ng.SolveSpec(
                solver="cg", damping=damping, tolerance=1e-10, max_iterations=10 * operator.dim
            ),
        )
        assert cg.relative_residual < 1e-8  # true residual; CG stops on its recurrence
        assert (cg.direction - expected).norm() / expected.norm() < 1e-6
        assert 0 < cg.cg_iterations <= 10 * operator.dim


def test_dense_diagnostics_null_space_share_and_rank():
    model, data, loss = _mlp_classifier()
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
    model, data, loss = _mlp_classifier()
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
    model, data, loss = _mlp_classifier()
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
    _, gradient = gp.loss_and_gradient(model, data, loss=loss)
    with pytest.raises(ValueError, match="needs damping > 0"):
        ng.natural_gradient(operator, gradient, solve=ng.SolveSpec(solver="kfac", damping=0.0))


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


# --- Attention models, HF-style outputs, self-check, honest solves, progress -----------------


@pytest.mark.parametrize("case", CASES)
def test_torch_func_product_reference_matches_dense_reference(case):
    model, (x, y), loss = CASES[case]()
    vectors = torch.randn(sum(p.numel() for p in model.parameters()), 2, dtype=torch.float64,
                          generator=torch.Generator().manual_seed(1))  # fmt: skip
    from geomlab.models.modes import eval_mode

    with eval_mode(model):
        reference = cv.dense_fisher_reference(model, (x, y), loss=loss)
        product = cv.fisher_product_reference(model, x, vectors, loss=loss)
    scale = reference.abs().max() * vectors.abs().max()
    torch.testing.assert_close(product, reference @ vectors, rtol=0, atol=1e-12 * scale)


def test_self_check_runs_once_per_model_and_again_for_new_parameters():
    model, data, loss = _transformer()
    first = cv.fisher_self_check(model, data, loss=loss)
    assert first is not None and first < 1e-12
    assert cv.fisher_self_check(model, data, loss=loss) is None  # cached: nothing recomputed
    model.head.weight = nn.Parameter(model.head.weight.detach().clone())  # new parameter object
    assert cv.fisher_self_check(model, data, loss=loss) is not None


def test_self_check_mismatch_raises_naming_the_model(monkeypatch):
    model, data, loss = _cls_token()
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


@pytest.mark.parametrize("case", ["transformer", "cls_token", "hf_sdpa"])
def test_kl_matched_steps_on_attention_models_match_an_independent_recomputation(case):
    from torch.func import functional_call

    from geomlab.geometry.attention import math_attention
    from geomlab.geometry.outputs import as_logits

    model, (x, y), loss = CASES[case]()
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


def test_nan_outputs_are_named_not_called_non_positive_curvature():
    model, data, loss = _mlp_classifier()
    with torch.no_grad():
        next(model.parameters())[0, 0] = float("nan")
    with pytest.raises(cv.NonFiniteOutputError, match=r"outputs of model Sequential are not fin"):
        ng.kl_matched_steps(model, data, torch.tensor([1e-3]), loss=loss)
    with pytest.raises(cv.NonFiniteOutputError, match="not finite"):
        ng.step_size_for_kl(torch.tensor(float("nan")), 1e-3)


def test_kfac_eligibility_is_checked_before_any_work_and_freezing_works(monkeypatch):
    model, data, loss = _layernorm_mlp()

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


def test_progress_reports_cg_iterations_with_residuals_and_dense_columns():
    model, data, loss = _transformer()
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
    model, data, loss = _mlp_classifier()
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


def test_kfac_eligibility_leaves_out_attention_projections_it_cannot_hook():
    # nn.MultiheadAttention uses out_proj.weight directly (never calls the nn.Linear), so K-FAC
    # would see no inputs for it: refused by name instead of curvlinops' KeyError.
    model, _, _ = _cls_token()
    ineligible = cv.kfac_ineligible_parameters(model)
    assert ineligible == ["cls", "attention.in_proj_weight", "attention.in_proj_bias",
                          "attention.out_proj.weight", "attention.out_proj.bias",
                          "norm.weight", "norm.bias"]  # fmt: skip
    with pytest.raises(cv.UnsupportedShapeError, match="out_proj.*requires_grad_"):
        cv.check_kfac_eligible(model)


def test_progress_brackets_the_kfac_factors():
    model, data, loss = _mlp_classifier()
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
    model, data, loss = _cnn_with_eval_batchnorm()
    operator = cv.FisherOperator(model, data, loss=loss, batch_size=5)
    assert operator.shape == (operator.dim, operator.dim) and operator.dtype == torch.float64
    eye = torch.eye(operator.dim, dtype=torch.float64)
    by_products = operator @ eye
    scale = float(by_products.abs().max())
    torch.testing.assert_close(operator.dense(), (by_products + by_products.T) / 2, rtol=0,
                               atol=1e-12 * scale)  # fmt: skip


def test_softmax_regression_backend_is_the_same_operator():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 5, dtype=torch.float64, generator=g)
    probs = torch.softmax(torch.randn(40, 3, dtype=torch.float64, generator=g), dim=1)
    operator = cv.SoftmaxRegressionFisher(probs, x)
    dense = cv.softmax_regression_fisher(probs, x)
    assert operator.shape == dense.shape and operator.dtype == torch.float64
    v = torch.randn(15, 2, dtype=torch.float64, generator=g)
    torch.testing.assert_close(operator @ v, dense @ v, rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(operator @ v[:, 0], dense @ v[:, 0], rtol=1e-12, atol=1e-14)
    assert torch.equal(operator.dense(), dense)
