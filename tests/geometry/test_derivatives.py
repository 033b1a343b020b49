"""The fast derivative path against the nested-autograd reference (float64), plus λ helpers."""

from __future__ import annotations

import math
import warnings
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.derivatives import (
    PrimitiveLayerNorm,
    SelfCheckError,
    SelfCheckUnavailable,
    check_piecewise_linear,
    check_taylor,
    clear_path_cache,
    directional_derivatives,
    fast_directional_derivatives,
    loss_derivatives_along_tangents,
    nested_directional_derivatives,
    resolve_path,
    sample_unit_directions,
    self_check_errors,
)
from geomlab.geometry.lambda_fit import (
    measure_lambda,
)
from geomlab.geometry.outputs import ModelOutputError
from geomlab.geometry.penalty import class_selective_loss, derivative_penalty
from geomlab.testing.cases import directional_case
from geomlab.testing.compare import assert_relative_close, relative_error

MAX_ORDER = 4
REL_TOL = 1e-10  # max |fast - reference| / max |reference| (norm="max")


class TinyFunctionalCNN(nn.Module):
    """The notebook's CNN shape in miniature, with functional ReLU/max-pool like the notebook."""

    def __init__(self, dropout: float = 0.5) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 3, 3)
        self.conv2 = nn.Conv2d(3, 4, 3)
        self.drop1 = nn.Dropout(dropout)
        self.drop2 = nn.Dropout(dropout)
        self.fc1 = nn.Linear(4 * 3 * 3, 8)
        self.fc2 = nn.Linear(8, 5)

    def forward(self, x):
        x = F.relu(self.conv1(x))
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = self.fc1(torch.flatten(self.drop1(x), 1))
        return self.fc2(self.drop2(F.relu(x)))


def tiny_mlp(activation: type[nn.Module] = nn.ReLU, dropout: float = 0.3) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(10, 7),
        activation(),
        nn.Dropout(dropout),
        nn.Linear(7, 6),
        activation(),
        nn.Linear(6, 4),
    )


class SquaringNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.linear = nn.Linear(10, 3)

    def forward(self, x):
        h = x.flatten(1)
        return self.linear(h * h)


# the file's two models as shared directional cases, weights doubled so that derivatives of
# every order are well away from zero
CASE_OF_KIND = {
    "cnn": partial(directional_case, TinyFunctionalCNN, (1, 10, 10), weight_scale=2.0),
    "mlp": partial(directional_case, tiny_mlp, (1, 10), weight_scale=2.0),
}


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_fast_matches_nested_in_eval_mode(kind):
    model, inputs, labels, directions = CASE_OF_KIND[kind]()
    model.eval()
    reference = nested_directional_derivatives(
        model, inputs, labels, directions, max_order=MAX_ORDER
    )
    fast, logits = fast_directional_derivatives(
        model, inputs, labels, directions, max_order=MAX_ORDER
    )
    assert reference.shape == fast.shape == (MAX_ORDER, 3, 5)
    assert_relative_close(fast, reference, rtol=REL_TOL, norm="max", per="order", first=1)
    assert torch.allclose(logits, model(inputs), rtol=0, atol=1e-12)


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
def test_fast_matches_nested_in_train_mode_with_the_same_dropout_mask(kind):
    model, inputs, labels, directions = CASE_OF_KIND[kind](seed=1)
    model.train()
    torch.manual_seed(7)
    fast, _ = fast_directional_derivatives(model, inputs, labels, directions, max_order=MAX_ORDER)
    # the fast path draws one mask for all directions; replay it for each reference pass
    for k in range(directions.shape[0]):
        torch.manual_seed(7)
        reference = nested_directional_derivatives(
            model, inputs, labels, directions[k : k + 1], max_order=MAX_ORDER
        )
        assert_relative_close(fast[:, k], reference[:, 0], rtol=REL_TOL, norm="max",
                              what=f"direction {k}", per="order", first=1)  # fmt: skip
    # dropout really acted: eval-mode derivatives differ
    model.eval()
    eval_values, _ = fast_directional_derivatives(
        model, inputs, labels, directions, max_order=MAX_ORDER
    )
    assert relative_error(eval_values, fast, norm="max") > 1e-3


@pytest.mark.parametrize("kind", ["cnn", "mlp"])
@pytest.mark.parametrize("train", [False, True])
def test_penalty_parameter_gradients_match(kind, train):
    model, inputs, labels, directions = CASE_OF_KIND[kind](seed=2, directions=1)
    model.train(train)
    params = list(model.parameters())

    torch.manual_seed(11)
    fast, _ = fast_directional_derivatives(model, inputs, labels, directions, max_order=3)
    fast_grads = torch.autograd.grad(derivative_penalty(fast), params)

    torch.manual_seed(11)
    reference = nested_directional_derivatives(
        model, inputs, labels, directions, max_order=3, create_graph=True
    )
    reference_grads = torch.autograd.grad(derivative_penalty(reference), params)

    for fast_grad, reference_grad in zip(fast_grads, reference_grads, strict=True):
        assert relative_error(fast_grad, reference_grad, norm="max") <= REL_TOL


def test_cumulants_hand_derived_two_classes():
    # z = 0: p = (1/2, 1/2); v = (a, -a), so v_C = ±a with equal probability
    a = 0.7
    logits = torch.zeros(1, 2, dtype=torch.float64)
    tangents = torch.tensor([[[a, -a]]], dtype=torch.float64)
    labels = torch.tensor([0])
    d = loss_derivatives_along_tangents(logits, tangents, labels, max_order=4)[:, 0, 0]
    expected = torch.tensor([-a, a**2, 0.0, -2 * a**4], dtype=torch.float64)
    assert torch.allclose(d, expected, atol=1e-15)


def test_cumulants_match_autograd_in_t_up_to_order_six():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, 6, dtype=torch.float64, generator=g)
    tangents = torch.randn(2, 4, 6, dtype=torch.float64, generator=g)
    labels = torch.randint(0, 6, (4,), generator=g)
    fast = loss_derivatives_along_tangents(logits, tangents, labels, max_order=6)
    t = torch.zeros(2, 4, 1, dtype=torch.float64, requires_grad=True)
    value = F.cross_entropy(
        (logits + t * tangents).reshape(-1, 6), labels.repeat(2), reduction="none"
    ).reshape(2, 4)
    for n in range(6):
        (value,) = torch.autograd.grad(value.sum(), t, create_graph=True)
        value = value.squeeze(-1)
        assert relative_error(fast[n], value, norm="max") <= 1e-11, f"order {n + 1}"


def test_eligibility_detects_functional_relu_cnn_and_rejects_tanh():
    cnn, inputs, _, _ = CASE_OF_KIND["cnn"]()
    for train in (True, False):
        cnn.train(train)
        assert check_piecewise_linear(cnn, inputs).eligible
    tanh_net = tiny_mlp(nn.Tanh).double()
    verdict = check_piecewise_linear(tanh_net, torch.randn(2, 1, 10, dtype=torch.float64))
    assert not verdict.eligible
    assert "tanh" in verdict.offending_ops
    squaring = check_piecewise_linear(SquaringNet().double(), torch.randn(2, 10).double())
    assert not squaring.eligible
    assert "product of two input-dependent" in squaring.reason


def test_eligibility_check_leaves_the_random_stream_alone():
    model, inputs, _, _ = CASE_OF_KIND["cnn"]()
    model.train()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    check_piecewise_linear(model, inputs)
    assert torch.equal(torch.rand(3), expected)


def test_tanh_uses_taylor_mode_and_the_cumulant_formula_would_be_wrong():
    # issue 12: a smooth network now takes the exact Taylor path instead of falling back
    torch.manual_seed(0)
    model = tiny_mlp(nn.Tanh, dropout=0.0).double().eval()
    inputs = torch.randn(4, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (4,))
    directions = sample_unit_directions(2, inputs, generator=torch.Generator().manual_seed(0))
    result = directional_derivatives(model, inputs, labels, directions, max_order=3)
    assert (result.method, result.path) == ("fast", "taylor")
    reference = nested_directional_derivatives(model, inputs, labels, directions, max_order=3)
    assert relative_error(result.values, reference, norm="max") <= REL_TOL
    # the cumulant formula really would be wrong here (tanh has curvature)
    wrong, _ = fast_directional_derivatives(
        model, inputs, labels, directions, max_order=3, path="linear"
    )
    assert relative_error(wrong[1:], reference[1:], norm="max") > 1e-3


def test_auto_falls_back_to_nested_only_for_an_op_without_a_rule_and_fast_refuses():
    class CumsumNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(10, 4)

        def forward(self, x):
            return self.fc(torch.tanh(x.flatten(1)).cumsum(dim=1))

    torch.manual_seed(0)
    model = CumsumNet().double().eval()
    inputs = torch.randn(4, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (4,))
    directions = sample_unit_directions(2, inputs, generator=torch.Generator().manual_seed(0))
    result = directional_derivatives(model, inputs, labels, directions, max_order=3)
    assert result.method == "nested"
    reference = nested_directional_derivatives(model, inputs, labels, directions, max_order=3)
    assert torch.equal(result.values, reference)
    with pytest.raises(ValueError, match="cumsum"):
        directional_derivatives(model, inputs, labels, directions, max_order=3, method="fast")
    # the refusal names the op, at every level (moved from test_taylor.py: one cumsum test)
    verdict = check_taylor(model, inputs)
    assert not verdict.eligible and verdict.offending_ops == ("cumsum",)
    with pytest.raises(ValueError, match="cumsum"):
        resolve_path(model, inputs, "fast")
    assert resolve_path(model, inputs, "auto").method == "nested"


def test_auto_uses_fast_for_relu_cnn_and_agrees():
    model, inputs, labels, directions = CASE_OF_KIND["cnn"](seed=4)
    model.eval()
    result = directional_derivatives(model, inputs, labels, directions, max_order=MAX_ORDER)
    assert result.method == "fast"
    reference = directional_derivatives(
        model, inputs, labels, directions, max_order=MAX_ORDER, method="nested"
    )
    assert relative_error(result.values, reference.values, norm="max") <= REL_TOL


def test_unit_directions_are_unit_and_seeded():
    like = torch.zeros(6, 1, 4, 4, dtype=torch.float64)
    first = sample_unit_directions(3, like, generator=torch.Generator().manual_seed(9))
    second = sample_unit_directions(3, like, generator=torch.Generator().manual_seed(9))
    assert first.shape == (3, 6, 1, 4, 4)
    assert torch.equal(first, second)
    norms = first.reshape(3, 6, -1).norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-12)


def test_shape_errors_are_explicit():
    model, inputs, labels, directions = CASE_OF_KIND["mlp"]()
    with pytest.raises(ValueError, match="directions must have shape"):
        nested_directional_derivatives(model, inputs, labels, directions[0], max_order=2)
    with pytest.raises(ValueError, match="max_order"):
        fast_directional_derivatives(model, inputs, labels, directions, max_order=0)
    with pytest.raises(ValueError, match="method"):
        directional_derivatives(model, inputs, labels, directions, max_order=2, method="magic")


def test_measure_lambda_fast_equals_nested_and_reports_too_few_points():
    torch.manual_seed(0)
    model = TinyFunctionalCNN().double()
    inputs = torch.randn(40, 1, 10, 10, dtype=torch.float64)
    labels = torch.randint(0, 5, (40,))
    kwargs = dict(
        classes=(1, 2),
        max_order=4,
        num_directions=2,
        prob_range=(0.0, 1.0),
        max_points=12,
        min_points=3,
        batch_size=5,
    )
    fast = measure_lambda(
        model, inputs, labels, method="fast", generator=torch.Generator().manual_seed(1), **kwargs
    )
    nested = measure_lambda(
        model, inputs, labels, method="nested", generator=torch.Generator().manual_seed(1), **kwargs
    )
    assert fast.method == "fast" and nested.method == "nested"
    assert fast.num_points == nested.num_points == 12
    assert math.isclose(fast.slope, nested.slope, rel_tol=1e-10)
    assert model.training  # restored
    too_few = measure_lambda(model, inputs, labels, classes=(1, 2), prob_range=(0.99, 1.0))
    assert too_few.fit is None and math.isnan(too_few.slope)


# --- issue 17: loss argument, model outputs, attention, self-check before use -----------------


class LinearNet(nn.Module):
    """``f(x) = W x`` on flattened inputs: MSE derivatives by hand."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(10, 3, bias=False)

    def forward(self, x):
        return self.fc(x.flatten(1))


def test_mse_loss_for_float_targets_hand_derived_and_equal_on_every_method():
    torch.manual_seed(0)
    model = LinearNet().double().eval()
    inputs = torch.randn(4, 1, 10, dtype=torch.float64)
    targets = torch.randn(4, 3, dtype=torch.float64)
    directions = sample_unit_directions(2, inputs, generator=torch.Generator().manual_seed(1))
    # per-sample mean over C=3 of (W(x + t u) - y)²: d1 = 2/C Σ e·v, d2 = 2/C Σ v², d3 = 0
    error = model(inputs) - targets
    v = torch.stack([model(u) for u in directions])
    expected = torch.stack([2 / 3 * (error * v).sum(-1), 2 / 3 * (v * v).sum(-1), 0 * v.sum(-1)])
    for method in ("nested", "fast", "auto"):
        result = directional_derivatives(model, inputs, targets, directions, max_order=3,
                                         method=method)  # fmt: skip
        assert (result.values - expected).abs().max() <= 1e-12, method
    # a smooth net on the Taylor path: MSE equal to nested too
    torch.manual_seed(1)
    smooth = tiny_mlp(nn.Tanh, dropout=0.0).double().eval()
    targets = torch.randn(4, 4, dtype=torch.float64)
    fast = directional_derivatives(smooth, inputs, targets, directions, max_order=4,
                                   method="fast")  # fmt: skip
    nested = directional_derivatives(smooth, inputs, targets, directions, max_order=4,
                                     method="nested", loss="mse")  # fmt: skip
    assert fast.path == "taylor"
    assert relative_error(fast.values, nested.values, norm="max") <= REL_TOL


def test_loss_errors_are_explicit():
    model, inputs, labels, directions = CASE_OF_KIND["mlp"]()
    model.eval()
    floats = torch.randn(5, 4, dtype=torch.float64)
    for method in ("nested", "fast", "auto"):
        with pytest.raises(ValueError, match="soft labels"):
            directional_derivatives(model, inputs, floats, directions, max_order=2,
                                    method=method, loss="cross_entropy")  # fmt: skip
        with pytest.raises(ValueError, match="float targets"):
            directional_derivatives(model, inputs, labels, directions, max_order=2,
                                    method=method, loss="mse")  # fmt: skip
        with pytest.raises(ValueError, match=r"outputs' shape \(\d, 4\), got \(\d, 3\)"):
            directional_derivatives(model, inputs, floats[:, :3], directions, max_order=2,
                                    method=method)  # fmt: skip
        with pytest.raises(ValueError, match="'cross_entropy' or 'mse'"):
            directional_derivatives(model, inputs, labels, directions, max_order=2,
                                    method=method, loss="hinge")  # fmt: skip
    with pytest.raises(ValueError, match="cannot infer"):
        directional_derivatives(model, inputs, labels > 1, directions, max_order=2)
    # the lower-level engines refuse float targets under cross-entropy as well
    with pytest.raises(ValueError, match="soft labels"):
        nested_directional_derivatives(model, inputs, floats, directions, max_order=2)
    with pytest.raises(ValueError, match="soft labels"):
        fast_directional_derivatives(model, inputs, floats, directions, max_order=2)


class DictOutput(dict):
    """What a Hugging Face model returns: a mapping with ``logits`` (also as an attribute)."""

    @property
    def logits(self):
        return self["logits"]


class WrappedOutputs(nn.Module):
    def __init__(self, inner: nn.Module, wrap) -> None:
        super().__init__()
        self.inner, self.wrap = inner, wrap

    def forward(self, x):
        return self.wrap(self.inner(x))


@pytest.mark.parametrize("activation", [nn.ReLU, nn.Tanh])
def test_model_output_with_logits_is_accepted_and_others_refused(activation):
    torch.manual_seed(0)
    inner = tiny_mlp(activation, dropout=0.0).double().eval()
    inputs = torch.randn(4, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (4,))
    directions = sample_unit_directions(2, inputs, generator=torch.Generator().manual_seed(0))
    reference = nested_directional_derivatives(inner, inputs, labels, directions, max_order=3)
    wrapped = WrappedOutputs(inner, lambda z: DictOutput(logits=z))
    for method in ("nested", "fast", "auto"):
        result = directional_derivatives(wrapped, inputs, labels, directions, max_order=3,
                                         method=method)  # fmt: skip
        assert relative_error(result.values, reference, norm="max") <= REL_TOL, method
    assert result.path == ("linear" if activation is nn.ReLU else "taylor")
    penalized = class_selective_loss(
        wrapped.train(),
        inputs,
        labels,
        target_classes=None,
        scale=1.0,
        max_order=2,
        num_directions=1,
        method="fast",
    )
    assert torch.isfinite(penalized.total)
    tupled = WrappedOutputs(inner, lambda z: (z,)).eval()
    for method in ("nested", "fast", "auto"):
        with pytest.raises(ModelOutputError, match="tuple"):
            directional_derivatives(tupled, inputs, labels, directions, max_order=2,
                                    method=method)  # fmt: skip


class TinyEncoder(nn.Module):
    """PyTorch's own nn.TransformerEncoder (its eval-mode fast path and SDPA kernels)."""

    def __init__(self, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        layer = nn.TransformerEncoderLayer(width, 2, dim_feedforward=16, dropout=0.0,
                                           batch_first=True)  # fmt: skip
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        return self.head(self.encoder(self.embed(x)).mean(dim=1))


class ClsTokenNet(nn.Module):
    """ViT/BERT pattern: a learned CLS token cat'ed to projected patches, eager softmax
    attention, LayerNorm, the CLS position read out."""

    def __init__(self, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.patch = nn.Linear(4, width)
        self.cls = nn.Parameter(torch.randn(1, 1, width))
        self.qkv = nn.Linear(width, 3 * width)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.patch(x)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1)
        q, k, v = self.qkv(self.norm(h)).chunk(3, dim=-1)
        weights = torch.softmax(q @ k.transpose(1, 2) / q.shape[-1] ** 0.5, dim=-1)
        return self.head(F.gelu((h + weights @ v)[:, 0]))


class SdpaNet(nn.Module):
    """Hugging Face's ``sdpa`` attention pattern: F.scaled_dot_product_attention on heads."""

    def __init__(self, width: int = 8, classes: int = 3) -> None:
        super().__init__()
        self.embed = nn.Linear(4, width)
        self.qkv = nn.Linear(width, 3 * width)
        self.head = nn.Linear(width, classes)

    def forward(self, x):
        h = self.embed(x)
        q, k, v = (t.unflatten(-1, (2, -1)).transpose(1, 2) for t in self.qkv(h).chunk(3, -1))
        attended = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).flatten(2)
        return self.head(torch.tanh(h + attended).mean(dim=1))


def independent_derivatives(model, inputs, labels, direction, max_order):
    """d_1..d_n of t ↦ CE(f(x + t u)) by forward mode nested in forward mode (torch.func.jvp),
    LayerNorm from primitives (torch's fused LayerNorm is wrong under forward-over-forward too)."""

    def loss_along(t):
        return F.cross_entropy(model(inputs + t * direction), labels, reduction="none")

    functions = [loss_along]
    for _ in range(max_order):
        functions.append(
            lambda t, f=functions[-1]: torch.func.jvp(f, (t,), (torch.ones_like(t),))[1]
        )
    t0 = torch.zeros((), dtype=inputs.dtype)
    with math_attention(), PrimitiveLayerNorm(), torch.no_grad():
        return torch.stack([functions[n](t0) for n in range(1, max_order + 1)])


def finite_difference_derivatives(model, inputs, labels, direction, step=1e-4):
    """d_1, d_2 by central differences of the loss itself (no autograd at all)."""
    with torch.no_grad():
        values = [F.cross_entropy(model(inputs + s * step * direction), labels, reduction="none")
                  for s in (-1, 0, 1)]  # fmt: skip
    return torch.stack([(values[2] - values[0]) / (2 * step),
                        (values[2] - 2 * values[1] + values[0]) / step**2])  # fmt: skip


@pytest.mark.parametrize("architecture", [TinyEncoder, ClsTokenNet, SdpaNet])
def test_attention_models_nested_is_right_and_fast_agrees_or_refuses(architecture):
    torch.manual_seed(0)
    model = architecture().double().eval()
    inputs = torch.randn(3, 5, 4, dtype=torch.float64)
    labels = torch.tensor([0, 2, 1])
    directions = sample_unit_directions(2, inputs, generator=torch.Generator().manual_seed(1))
    fastpath_before = torch.backends.mha.get_fastpath_enabled()
    nested = directional_derivatives(model, inputs, labels, directions, max_order=3,
                                     method="nested").values  # fmt: skip
    for k, direction in enumerate(directions):
        exact = independent_derivatives(model, inputs, labels, direction, 3)
        assert relative_error(nested[:, k], exact, norm="max") <= 1e-12
        rough = finite_difference_derivatives(model, inputs, labels, direction)
        assert relative_error(nested[:2, k], rough, norm="max") <= 1e-5
    # fast: exact (rules and self-check pass) or a refusal naming an op / the failed check
    try:
        fast = directional_derivatives(model, inputs, labels, directions, max_order=3,
                                       method="fast")  # fmt: skip
    except SelfCheckError as error:
        assert architecture.__name__ in str(error) and error.order >= 1
    except ValueError as error:
        assert "no Taylor-mode rule for" in str(error)
    else:
        assert relative_error(fast.values, nested, norm="max") <= REL_TOL
    # auto never crashes and is exact, whichever path it takes
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        auto = directional_derivatives(model, inputs, labels, directions, max_order=3)
    assert relative_error(auto.values, nested, norm="max") <= REL_TOL
    assert torch.backends.mha.get_fastpath_enabled() == fastpath_before


def test_transformer_encoder_in_float32_eval_mode_runs_nested_and_auto():
    # the float32 model on the default path: the MHA fast path and flash attention would have
    # no double backward; geomlab's passes run attention in its math form
    torch.manual_seed(0)
    model = TinyEncoder().eval()
    inputs = torch.randn(3, 5, 4)
    labels = torch.tensor([0, 2, 1])
    directions = sample_unit_directions(1, inputs, generator=torch.Generator().manual_seed(1))
    auto = directional_derivatives(model, inputs, labels, directions, max_order=3)
    reference = nested_directional_derivatives(model.double(), inputs.double(), labels,
                                               directions.double(), max_order=3)  # fmt: skip
    assert relative_error(auto.values.double(), reference, norm="max") <= 1e-4


def test_self_check_catches_a_wrong_path_and_names_model_and_order():
    torch.manual_seed(0)
    model = tiny_mlp(nn.Tanh, dropout=0.0).double().eval()
    inputs = torch.randn(4, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (4,))
    # the cumulant path is exact at order 1 only for a tanh net (curvature from order 2 on)
    with pytest.raises(SelfCheckError, match=r"linear .* on Sequential at order 2") as caught:
        resolve_path(model, inputs, "linear", max_order=3, labels=labels)
    assert caught.value.order == 2 and caught.value.relative_error > 1e-3
    assert resolve_path(model, inputs, "linear", max_order=1, labels=labels) == "linear"
    errors = self_check_errors(model, inputs, labels, "linear", max_order=3)
    assert float(errors[0]) <= 1e-12 and float(errors[1]) > 1e-3
    # the penalty refuses it too, unless the check is turned off
    kwargs = dict(target_classes=None, scale=1.0, max_order=3, num_directions=1, method="linear")
    with pytest.raises(SelfCheckError):
        class_selective_loss(model, inputs, labels, **kwargs)
    unchecked = class_selective_loss(model, inputs, labels, self_check=False, **kwargs)
    assert torch.isfinite(unchecked.total)
    clear_path_cache()


def test_self_check_runs_once_per_model_and_structure(monkeypatch):
    from geomlab.geometry.derivatives import dispatch, self_check

    calls = {"check": 0, "choose": 0}
    real_check, real_choose = self_check.self_check_errors, dispatch.choose_fast_path

    def counting_check(*args, **kwargs):
        calls["check"] += 1
        return real_check(*args, **kwargs)

    def counting_choose(*args, **kwargs):
        calls["choose"] += 1
        return real_choose(*args, **kwargs)

    monkeypatch.setattr(self_check, "self_check_errors", counting_check)
    monkeypatch.setattr(dispatch, "choose_fast_path", counting_choose)
    model, inputs, labels, directions = CASE_OF_KIND["cnn"](seed=3)
    model.eval()

    def call(**kwargs):
        return directional_derivatives(model, inputs, labels, directions, **kwargs)

    first = call(max_order=3)
    assert calls == {"check": 1, "choose": 1}
    assert torch.equal(call(max_order=3).values, first.values)
    call(max_order=2, method="fast")  # covered by the order-3 check
    assert calls == {"check": 1, "choose": 1}
    call(max_order=4)  # a higher order is checked once more
    assert calls == {"check": 2, "choose": 1}
    model.train()  # another structure (train flags): resolved and checked again
    call(max_order=4)
    call(max_order=4)
    assert calls == {"check": 3, "choose": 2}
    call(max_order=4, self_check=False, method="fast")
    other = TinyFunctionalCNN().double().eval()  # another model: its own entry
    directional_derivatives(other, inputs, labels, directions, max_order=2)
    assert calls == {"check": 4, "choose": 3}
    clear_path_cache(model)
    call(max_order=4)
    assert calls == {"check": 5, "choose": 4}
    clear_path_cache()
    call(max_order=4, self_check=False)
    assert calls == {"check": 5, "choose": 5}


def test_self_check_leaves_modes_buffers_and_random_stream_alone():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(10, 6), nn.BatchNorm1d(6), nn.Tanh(),
                          nn.Dropout(0.3), nn.Linear(6, 4)).double().train()  # fmt: skip
    model[4].eval()  # a mixed-mode model keeps its mixed modes
    inputs = torch.randn(5, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (5,))
    buffers = [b.clone() for b in model.buffers()]
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    assert resolve_path(model, inputs, "fast", max_order=3, labels=labels) == "taylor"
    assert torch.equal(torch.rand(3), expected)
    assert [m.training for m in model.modules()] == [True, True, True, True, True, False, True]
    assert all(torch.equal(a, b) for a, b in zip(buffers, model.buffers(), strict=True))
    assert next(model.parameters()).dtype == torch.float64
    # train-mode dropout: both passes of the check draw the same mask, so it passes
    model[4].train()
    assert float(self_check_errors(model, inputs, labels, "taylor", max_order=3).max()) < 1e-10


def test_measure_lambda_self_checks_its_path_once(monkeypatch):
    from geomlab.geometry.derivatives import dispatch, self_check

    real_fast = dispatch.fast_directional_derivatives

    def wrong_fast(*args, **kwargs):  # a fast path 1 % off at order 3 only
        values, logits = real_fast(*args, **kwargs)
        return torch.cat([values[:2], 1.01 * values[2:3], values[3:]]), logits

    monkeypatch.setattr(dispatch, "fast_directional_derivatives", wrong_fast)
    monkeypatch.setattr(self_check, "fast_directional_derivatives", wrong_fast)
    torch.manual_seed(0)
    model = TinyFunctionalCNN().double()
    inputs = torch.randn(20, 1, 10, 10, dtype=torch.float64)
    labels = torch.randint(0, 5, (20,))
    kwargs = dict(classes=(1, 2), max_order=4, num_directions=2, prob_range=(0.0, 1.0),
                  max_points=8, min_points=3, batch_size=4)  # fmt: skip
    with pytest.raises(SelfCheckError, match="TinyFunctionalCNN at order 3") as caught:
        measure_lambda(model, inputs, labels, method="fast", **kwargs)
    assert 0.009 < caught.value.relative_error < 0.011
    nested = measure_lambda(model, inputs, labels, method="nested",
                            generator=torch.Generator().manual_seed(1), **kwargs)  # fmt: skip
    with pytest.warns(RuntimeWarning, match="Falling back to the nested reference"):
        auto = measure_lambda(model, inputs, labels, method="auto",
                              generator=torch.Generator().manual_seed(1), **kwargs)  # fmt: skip
    assert auto.method == "nested" and auto.slope == nested.slope
    # lower orders passed the check: a measurement to order 2 may use the fast path
    low = measure_lambda(model, inputs, labels, method="fast", **{**kwargs, "max_order": 2})
    assert low.method == "fast"
    # and with the check off the (here wrong) fast path is used as asked
    unchecked = measure_lambda(model, inputs, labels, method="fast", self_check=False,
                               generator=torch.Generator().manual_seed(1), **kwargs)  # fmt: skip
    assert unchecked.method == "fast" and unchecked.slope != nested.slope
    clear_path_cache()


def test_a_model_that_cannot_be_copied_is_refused_by_fast_and_nested_under_auto():
    class Uncopyable(nn.Sequential):
        def __deepcopy__(self, memo):
            raise TypeError("holds a file handle")

    torch.manual_seed(0)
    model = Uncopyable(nn.Flatten(), nn.Linear(10, 6), nn.Tanh(), nn.Linear(6, 4)).double()
    inputs = torch.randn(4, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 4, (4,))
    directions = sample_unit_directions(2, inputs, generator=torch.Generator().manual_seed(0))
    call = dict(max_order=3)
    with pytest.raises(SelfCheckUnavailable, match="Uncopyable.*holds a file handle"):
        directional_derivatives(model, inputs, labels, directions, method="fast", **call)
    with pytest.warns(RuntimeWarning, match="self_check=False"):
        auto = directional_derivatives(model, inputs, labels, directions, **call)
    reference = nested_directional_derivatives(model, inputs, labels, directions, **call)
    assert auto.method == "nested" and torch.equal(auto.values, reference)
    unchecked = directional_derivatives(model, inputs, labels, directions, method="fast",
                                        self_check=False, **call)  # fmt: skip
    assert unchecked.path == "taylor"
    assert relative_error(unchecked.values, reference, norm="max") <= REL_TOL
