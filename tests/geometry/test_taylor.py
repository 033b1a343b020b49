"""Taylor mode and the eligibility fixes of issue 12, against the nested-autograd reference
(float64): values and penalty parameter gradients, orders 1..5, on smooth networks, normalization
layers, dropout, BatchNorm in both modes, and writes through views."""

from __future__ import annotations

import copy
import math
from functools import partial

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from geomlab.geometry import derivatives as deriv
from geomlab.geometry.attention import math_attention
from geomlab.geometry.derivatives.batch_statistics import BatchStatistics
from geomlab.geometry.derivatives.eligibility import check_piecewise_linear
from geomlab.geometry.derivatives.taylor import UnsupportedOperation
from geomlab.geometry.lambda_fit import measure_lambda
from geomlab.geometry.outputs import ModelOutputError
from geomlab.geometry.penalty import class_selective_loss, derivative_penalty
from geomlab.testing.cases import directional_case
from geomlab.testing.compare import assert_relative_close

MAX_ORDER = 5
REL_TOL = 1e-9


# per order: max |fast − reference| relative to the order's largest |reference|
assert_close = partial(assert_relative_close, rtol=REL_TOL, norm="max", per="order", first=1)


def flat(tensors) -> torch.Tensor:
    """All parameter gradients as one row (compared relative to the largest entry)."""
    return torch.cat([t.reshape(-1) for t in tensors]).unsqueeze(0)


def mlp(activation: nn.Module, *, width: int = 7, classes: int = 4) -> nn.Module:
    return nn.Sequential(
        nn.Flatten(), nn.Linear(10, width), activation, nn.Linear(width, 6), activation,
        nn.Linear(6, classes),
    )  # fmt: skip


class LayerNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 8)
        self.norm = nn.LayerNorm(8)
        self.fc2 = nn.Linear(8, 4)

    def forward(self, x):
        return self.fc2(F.gelu(self.norm(self.fc1(x.flatten(1)))))


class PrimitiveLayerNorm(nn.Module):
    """The same LayerNorm written with mean, var and rsqrt: the nested reference for it.
    (torch 2.13's own ``native_layer_norm`` double backward is not differentiable to order 3:
    nested autograd through ``nn.LayerNorm`` gives wrong third and higher derivatives.)"""

    def __init__(self, norm: nn.LayerNorm) -> None:
        super().__init__()
        self.norm = norm

    def forward(self, x):
        centered = x - x.mean(dim=-1, keepdim=True)
        variance = centered.pow(2).mean(dim=-1, keepdim=True)
        normalized = centered * torch.rsqrt(variance + self.norm.eps)
        return normalized * self.norm.weight + self.norm.bias


def reference_for(model: nn.Module) -> nn.Module:
    """The model itself, or for LayerNormNet a copy whose norm is written in primitives."""
    if isinstance(model, LayerNormNet):
        twin = copy.deepcopy(model)
        twin.norm = PrimitiveLayerNorm(twin.norm)
        return twin
    return model


class BatchNormCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 4 * 4, 5)

    def forward(self, x):
        h = F.max_pool2d(F.silu(self.bn(self.conv(x))), 2)
        return self.fc(h.flatten(1))


class NativeDropoutNet(nn.Module):
    """Calls the CUDA train-mode dropout op directly (the path ``F.dropout`` takes on a GPU)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 9)
        self.fc2 = nn.Linear(9, 4)

    def forward(self, x):
        h, _ = torch.ops.aten.native_dropout(torch.tanh(self.fc1(x.flatten(1))), 0.4, True)
        return self.fc2(h)


class ReluNativeDropoutNet(NativeDropoutNet):
    def forward(self, x):
        h, _ = torch.ops.aten.native_dropout(F.relu(self.fc1(x.flatten(1))), 0.4, True)
        return self.fc2(h)


class BatchNorm1dNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 6)
        self.bn = nn.BatchNorm1d(6)
        self.fc2 = nn.Linear(6, 4)

    def forward(self, x):
        return self.fc2(torch.tanh(self.bn(self.fc1(x.flatten(1)))))


class SliceWriteNet(nn.Module):
    """The issue's trap: input-dependent values written into a zero buffer through views."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(10, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = self.fc1(x.flatten(1))
        buf = torch.zeros_like(h)
        buf[:, :8] = h[:, :8]
        buf[:, 8:] = h[:, 8:]
        return self.fc2(torch.tanh(buf))


# a model (built by the test), inputs (1, 10), labels and 3 unit directions; weights × 1.5 so
# that derivatives of every order are well away from zero
case = partial(directional_case, input_shape=(1, 10), weight_scale=1.5, direction_seed=1)


SMOOTH = {
    "gelu": lambda: mlp(nn.GELU()),
    "gelu_tanh": lambda: mlp(nn.GELU(approximate="tanh")),
    "tanh": lambda: mlp(nn.Tanh()),
    "silu": lambda: mlp(nn.SiLU()),
    "softplus": lambda: mlp(nn.Softplus(beta=1.5)),
    "layer_norm": LayerNormNet,
}


@pytest.mark.parametrize("name", sorted(SMOOTH))
def test_taylor_values_and_penalty_gradients_match_nested(name):
    model, inputs, labels, u = case(SMOOTH[name]())
    model.eval()
    assert not check_piecewise_linear(model, inputs).eligible
    assert deriv.resolve_path(model, inputs, "fast").method == "fast"
    fast, logits = deriv.fast_directional_derivatives(model, inputs, labels, u, max_order=MAX_ORDER)
    reference_model = reference_for(model)
    reference = deriv.nested_directional_derivatives(
        reference_model, inputs, labels, u, max_order=MAX_ORDER, create_graph=True
    )
    assert fast.shape == reference.shape == (MAX_ORDER, 3, 5)
    assert_close(fast, reference)
    assert torch.allclose(logits, model(inputs), rtol=0, atol=1e-12)
    fast_grads = torch.autograd.grad(derivative_penalty(fast[:4]), list(model.parameters()))
    reference_grads = torch.autograd.grad(
        derivative_penalty(reference[:4]), list(reference_model.parameters())
    )
    assert_close(flat(fast_grads), flat(reference_grads), what="penalty gradients", per=None)


def test_mse_loss_series_matches_nested():
    model, inputs, _, u = case(mlp(nn.Tanh(), classes=3), seed=3)
    targets = torch.randn(5, 3, dtype=torch.float64)
    fast, _ = deriv.taylor_directional_derivatives(
        model.eval(), inputs, targets, u, max_order=MAX_ORDER, loss="mse"
    )
    reference = deriv.nested_directional_derivatives(
        model, inputs, targets, u, max_order=MAX_ORDER, loss="mse"
    )
    assert_close(fast, reference)


def test_eval_batch_norm_cnn_is_piecewise_linear_free_and_exact():
    model, inputs, labels, u = case(BatchNormCNN(), input_shape=(1, 8, 8))
    with torch.no_grad():  # non-trivial running statistics
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    model.eval()
    relu_variant = BatchNormCNN().double().eval()
    relu_variant.forward = lambda x: relu_variant.fc(  # type: ignore[method-assign]
        F.max_pool2d(F.relu(relu_variant.bn(relu_variant.conv(x))), 2).flatten(1)
    )
    assert check_piecewise_linear(relu_variant, inputs).eligible  # eval batch norm is affine
    result = deriv.directional_derivatives(model, inputs, labels, u, max_order=MAX_ORDER)
    assert (result.method, result.path) == ("fast", "taylor")
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=MAX_ORDER)
    assert_close(result.values, reference)


@pytest.mark.parametrize("net", [NativeDropoutNet, ReluNativeDropoutNet])
def test_native_dropout_is_accepted_and_uses_one_mask(net):
    model, inputs, labels, u = case(net(), seed=2)
    model.train()
    expected_path = "linear" if net is ReluNativeDropoutNet else "taylor"
    assert check_piecewise_linear(model, inputs).eligible == (expected_path == "linear")
    torch.manual_seed(7)
    result = deriv.directional_derivatives(model, inputs, labels, u, max_order=4, method="fast")
    assert result.path == expected_path
    for k in range(u.shape[0]):  # replay the same mask for each reference pass
        torch.manual_seed(7)
        deriv.check_piecewise_linear(model, inputs)  # the check leaves the stream alone
        reference = deriv.nested_directional_derivatives(
            model, inputs, labels, u[k : k + 1], max_order=4
        )
        assert_close(result.values[:, k : k + 1], reference)


def test_batch_norm_1d_train_mode_one_sample_trace_and_frozen_statistics():
    model, inputs, labels, u = case(BatchNorm1dNet(), seed=4, batch=6)
    model.train()
    # the experiment checks on one training sample: no crash, Taylor mode is eligible
    assert not check_piecewise_linear(model, inputs[:1]).eligible
    assert deriv.resolve_path(model, inputs[:1], "auto").method == "fast"
    running = [b.clone() for b in model.buffers()]
    fast, _ = deriv.fast_directional_derivatives(model, inputs, labels, u, max_order=MAX_ORDER)
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=MAX_ORDER)
    assert_close(fast, reference)
    for before, after in zip(running, model.buffers(), strict=True):
        assert torch.equal(before, after)
    # each derivative is of the sample's own loss: other samples' labels do not matter
    other_labels = labels.clone()
    other_labels[1:] = (labels[1:] + 1) % 4
    moved, _ = deriv.fast_directional_derivatives(
        model, inputs, other_labels, u, max_order=MAX_ORDER
    )
    assert torch.allclose(moved[:, :, 0], fast[:, :, 0], rtol=1e-12, atol=0)
    # and equal the eval-mode network whose running statistics are this batch's
    frozen = BatchNorm1dNet().double()
    frozen.load_state_dict(model.state_dict())
    with torch.no_grad():
        h = frozen.fc1(inputs.flatten(1))
        frozen.bn.running_mean.copy_(h.mean(0))
        frozen.bn.running_var.copy_(h.var(0, correction=0))
    frozen.eval()
    expected = deriv.nested_directional_derivatives(frozen, inputs, labels, u, max_order=MAX_ORDER)
    assert_close(fast, expected)


def test_penalty_passes_leave_running_statistics_to_the_step_forward():
    model, inputs, labels, _ = case(BatchNorm1dNet(), seed=5, batch=8)
    initial = copy.deepcopy(model.state_dict())
    plain = BatchNorm1dNet().double()
    plain.load_state_dict(initial)
    plain.train()(inputs)  # what one plain step does to the running statistics
    for method in ("fast", "nested"):
        for targets in (None, (1, 2)):
            model.load_state_dict(initial)
            model.train()
            loss = class_selective_loss(
                model, inputs, labels, target_classes=targets, scale=2.0, max_order=3,
                num_directions=2, method=method, generator=torch.Generator().manual_seed(0),
            )  # fmt: skip
            loss.total.backward()
            for expected, after in zip(plain.buffers(), model.buffers(), strict=True):
                assert torch.equal(expected, after), (method, targets)


def test_selective_penalty_gradients_agree_across_methods_with_batch_norm():
    model, inputs, labels, _ = case(BatchNorm1dNet(), seed=6, batch=8)
    labels = torch.tensor([1, 2, 0, 3, 1, 0, 2, 3])
    model.train()
    grads = {}
    for method in ("fast", "nested"):
        model.zero_grad()
        loss = class_selective_loss(
            model, inputs, labels, target_classes=(1, 2), scale=2.0, max_order=3,
            num_directions=2, method=method, generator=torch.Generator().manual_seed(0),
        )  # fmt: skip
        loss.total.backward()
        grads[method] = [p.grad.clone() for p in model.parameters()]
    assert_close(flat(grads["fast"]), flat(grads["nested"]), what="penalty gradients", per=None)


def test_slice_write_model_is_refused_never_wrong():
    model, inputs, labels, u = case(SliceWriteNet(), seed=8)
    model.eval()
    verdict = check_piecewise_linear(model, inputs)
    assert not verdict.eligible and "tanh" in verdict.offending_ops
    with pytest.raises(UnsupportedOperation, match="copy"):
        deriv.taylor_directional_derivatives(model, inputs, labels, u, max_order=3)
    with pytest.raises(ValueError, match="copy"):
        deriv.directional_derivatives(model, inputs, labels, u, max_order=3, method="fast")
    result = deriv.directional_derivatives(model, inputs, labels, u, max_order=3)
    assert result.method == "nested"


def test_relu_slice_write_is_still_piecewise_linear_and_exact():
    class ReluSliceWrite(SliceWriteNet):
        def forward(self, x):
            h = self.fc1(x.flatten(1))
            buf = torch.zeros_like(h)
            buf[:, :8] = h[:, :8]
            return self.fc2(F.relu(buf))

    model, inputs, labels, u = case(ReluSliceWrite(), seed=9)
    model.eval()
    assert check_piecewise_linear(model, inputs).eligible
    fast, _ = deriv.fast_directional_derivatives(model, inputs, labels, u, max_order=4)
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(fast, reference)


def test_batch_statistics_capture_and_substitute_roundtrip():
    model, inputs, _, _ = case(BatchNorm1dNet(), seed=10, batch=6)
    model.train()
    statistics = BatchStatistics()
    with statistics.capturing():
        expected = model(inputs)
    assert len(statistics.moments) == 1
    with statistics.substituting():
        again = model(inputs)
    assert torch.allclose(again, expected, rtol=0, atol=1e-12)


def test_in_place_activations_are_followed_and_stale_views_refused():
    class InPlace(nn.Module):
        def __init__(self, stale: bool) -> None:
            super().__init__()
            self.fc1, self.fc2, self.stale = nn.Linear(10, 8), nn.Linear(8, 4), stale

        def forward(self, x):
            h = self.fc1(x.flatten(1))
            view = h[:, :4]
            h = nn.functional.relu(h.mul_(2.0).add_(0.1), inplace=True)
            if self.stale:  # the view's values changed with h: its old series is stale
                return self.fc2(torch.cat([view, view], dim=1))
            return self.fc2(nn.functional.gelu(h))

    model, inputs, labels, u = case(InPlace(stale=False), seed=11)
    fast, _ = deriv.taylor_directional_derivatives(model.eval(), inputs, labels, u, max_order=4)
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(fast, reference)
    stale, inputs, labels, u = case(InPlace(stale=True), seed=11)
    with pytest.raises(UnsupportedOperation, match="changed in place"):
        deriv.taylor_directional_derivatives(stale.eval(), inputs, labels, u, max_order=4)


def test_measure_lambda_by_taylor_mode_equals_nested():
    model, _, _, _ = case(mlp(nn.GELU(), classes=5), seed=12)
    inputs = torch.randn(30, 1, 10, dtype=torch.float64)
    labels = torch.randint(0, 5, (30,))
    kwargs = dict(classes=(1, 2), max_order=4, num_directions=2, prob_range=(0.0, 1.0),
                  max_points=10, min_points=3, batch_size=4)  # fmt: skip
    fast, nested = (
        measure_lambda(
            model,
            inputs,
            labels,
            method=method,
            generator=torch.Generator().manual_seed(1),
            **kwargs,
        )  # fmt: skip
        for method in ("fast", "nested")
    )
    assert (fast.method, nested.method) == ("fast", "nested")
    assert fast.num_points == nested.num_points > 3
    assert abs(fast.slope - nested.slope) <= 1e-10 * abs(nested.slope)


def test_nested_reference_is_right_for_layer_norm_from_order_three():
    # torch's fused layer norm gives wrong 3rd+ nested derivatives (pytorch/pytorch#175754);
    # the reference computes it from primitives, so it agrees with an explicit twin
    model, inputs, labels, u = case(LayerNormNet(), seed=13)
    model.eval()
    nested = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    twin = deriv.nested_directional_derivatives(
        reference_for(model), inputs, labels, u, max_order=4
    )
    assert_close(nested, twin, rtol=1e-12)


def test_attention_like_model_with_softmax_log_softmax_rsub_and_where():
    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.q, self.k, self.v = nn.Linear(2, 3), nn.Linear(2, 3), nn.Linear(2, 3)
            self.out = nn.Linear(15, 4)

        def forward(self, x):
            tokens = x.reshape(x.shape[0], 5, 2)
            scores = self.q(tokens) @ self.k(tokens).transpose(1, 2) / 3**0.5
            mixed = torch.softmax(scores, dim=-1) @ self.v(tokens)
            gated = torch.where(mixed > 0, mixed, 1 - torch.sigmoid(mixed))
            return torch.log_softmax(self.out(gated.flatten(1)), dim=1)

    model, inputs, labels, u = case(Attention(), seed=14)
    fast, _ = deriv.taylor_directional_derivatives(model.eval(), inputs, labels, u, max_order=4)
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(fast, reference)


class JoinedConstant(nn.Module):
    """A learned (or buffer) constant joined to input-dependent tokens: the CLS-token pattern of
    ViT/BERT, by ``cat`` or ``stack`` (issue 17, item 1: every coefficient got the constant's
    value instead of zeros)."""

    def __init__(self, join: str, buffer: bool = False) -> None:
        super().__init__()
        self.join = join
        self.embed, self.out = nn.Linear(2, 4), nn.Linear(4, 3)
        token = torch.randn(1, 1, 4)
        if buffer:
            self.register_buffer("cls", token)
        else:
            self.cls = nn.Parameter(token)

    def forward(self, x):
        tokens = self.embed(x.reshape(x.shape[0], 5, 2))
        cls = self.cls.expand(x.shape[0], 1, 4)
        if self.join == "cat":
            tokens = torch.cat([cls, tokens], dim=1)
        else:  # stack along a new axis, then flatten it into the token axis
            tokens = torch.stack([cls.expand(-1, 5, -1), tokens], dim=1).flatten(1, 2)
        mixed = torch.tanh(tokens).mean(dim=1) * tokens[:, 0]
        return self.out(mixed)


@pytest.mark.parametrize("join", ["cat", "stack"])
@pytest.mark.parametrize("buffer", [False, True], ids=["parameter", "buffer"])
def test_constant_joined_to_the_input_enters_only_the_primal(join, buffer):
    model, inputs, labels, u = case(JoinedConstant(join, buffer), seed=15)
    with torch.no_grad():
        model.cls.mul_(3.0)  # far from zero: the bug scaled with the constant
    fast, _ = deriv.taylor_directional_derivatives(model.eval(), inputs, labels, u, max_order=4)
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(fast, reference)
    result = deriv.directional_derivatives(model, inputs, labels, u, max_order=4, method="fast")
    assert result.path == "taylor"
    assert_close(result.values, reference)


class ConstantWrites(nn.Module):
    """Structural and multi-input ops given a constant operand (a parameter, a buffer, a number):
    the constant may only enter h₀ (issue 17, item 1's audit)."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc, self.out = nn.Linear(10, 6), nn.Linear(6, 3)
        self.c = nn.Parameter(3 * torch.randn(6))
        self.register_buffer("b", 3 * torch.randn(6))
        self.register_buffer("mask", torch.tensor([True, False, True, False, False, True]))
        self.register_buffer("index", torch.tensor([0, 3]))

    def forward(self, x):  # noqa: C901 - one branch per op under test
        h, kind = torch.tanh(self.fc(x.flatten(1))), self.kind
        rows, source = h.shape[0], self.c[:2].expand(h.shape[0], 2).contiguous()
        if kind == "pad":
            g = F.pad(h, (1, 1), value=2.5)[:, 1:-1] * F.pad(h, (2, 0), value=-1.0)[:, :6]
        elif kind == "where":
            g = torch.where(self.mask, self.c, h)
        elif kind == "masked_fill":
            g = h.masked_fill(self.mask, 3.0)
        elif kind == "masked_fill_tensor":
            g = h.masked_fill(self.mask, self.c[0])
        elif kind == "masked_fill_":
            g = h.clone().masked_fill_(self.mask, 3.0)
        elif kind == "index_put_":
            g = h.clone()
            g[:, self.index] = self.c[:2]
        elif kind == "index_put_into_buffer":
            g = self.b.expand(rows, 6).clone()
            g[:, self.index] = h[:, :2]
            g = g + h
        elif kind == "index_copy":
            g = h.index_copy(1, self.index, source)
        elif kind == "index_add":
            g = h.index_add(1, self.index, source)
        elif kind == "index_fill":
            g = h.index_fill(1, self.index, 2.0)
        elif kind == "scatter":
            g = h.scatter(1, self.index.expand(rows, 2), source)
        elif kind == "scatter_value":
            g = h.scatter(1, self.index.expand(rows, 2), 4.0)
        elif kind == "scatter_add":
            g = h.scatter_add(1, self.index.expand(rows, 2), source)
        elif kind == "masked_scatter":
            g = h.masked_scatter(self.mask, self.c.expand(rows, 6).contiguous())
        elif kind == "copy_into_fresh":
            g = torch.empty(rows, 6, dtype=h.dtype).copy_(h) + self.b
        elif kind == "zeros_like_buffer":
            g = (torch.zeros_like(h) + self.b) + h
        elif kind == "add_buffer_and_parameter":
            g = (h + self.b) * (h - self.c)
        elif kind == "expand":
            g = h[:, :1].expand(rows, 6) + self.c
        else:
            raise AssertionError(kind)
        return self.out(g * h)


CONSTANT_WRITES = ["pad", "where", "masked_fill", "masked_fill_tensor", "masked_fill_",
                   "index_put_", "index_put_into_buffer", "index_copy", "index_add", "index_fill",
                   "scatter", "scatter_value", "scatter_add", "masked_scatter", "copy_into_fresh",
                   "zeros_like_buffer", "add_buffer_and_parameter", "expand"]  # fmt: skip


@pytest.mark.parametrize("kind", CONSTANT_WRITES)
def test_constant_operands_of_structural_and_index_ops_enter_only_the_primal(kind):
    model, inputs, labels, u = case(ConstantWrites(kind), seed=16)
    fast, _ = deriv.taylor_directional_derivatives(model.eval(), inputs, labels, u, max_order=4)
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(fast, reference)


def test_scatter_with_a_reduction_is_refused_by_name():
    class ScatterMultiply(ConstantWrites):
        def forward(self, x):
            h = torch.tanh(self.fc(x.flatten(1)))
            index = self.index.expand(h.shape[0], 2)
            return self.out(h.scatter(1, index, h[:, :2], reduce="multiply"))

    model, inputs, labels, u = case(ScatterMultiply("scatter"), seed=17)
    with pytest.raises(UnsupportedOperation, match="scatter.*reduction"):
        deriv.taylor_directional_derivatives(model.eval(), inputs, labels, u, max_order=2)


class AttentionNet(nn.Module):
    """Tokens → attention → tanh → mean → logits, the attention one of torch's modules, SDPA, or
    HF-style hand-written (``softmax(q kᵀ/√d)``) with a learned CLS token."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.embed, self.out = nn.Linear(2, 8), nn.Linear(8, 3)
        self.mha = nn.MultiheadAttention(8, 2, batch_first=True, dropout=0.1)
        layer = nn.TransformerEncoderLayer(8, 2, 16, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.default_encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(8, 2, 16, batch_first=True), 1
        )
        self.cls = nn.Parameter(torch.randn(1, 1, 8))
        self.qkv = nn.Linear(8, 24)
        self.register_buffer("causal", torch.triu(torch.ones(5, 5, dtype=torch.bool), 1))

    def forward(self, x):
        t = self.embed(x.reshape(x.shape[0], 5, 2))
        if self.kind == "mha":
            t = t + self.mha(t, t, t, need_weights=False)[0]
        elif self.kind == "mha_weights_mask":
            t = t + self.mha(t, t, t, attn_mask=self.causal)[0]
        elif self.kind == "mha_padding":  # the last sample's keys all padded: a zero row
            padding = torch.zeros(x.shape[0], 5, dtype=torch.bool)
            padding[-1] = True
            t = t + self.mha(t, t, t, key_padding_mask=padding, need_weights=False)[0]
        elif self.kind == "encoder":
            t = self.encoder(t)
        elif self.kind == "encoder_causal":
            t = self.encoder(t, mask=self.causal, is_causal=True)
        elif self.kind == "encoder_nested_tensor_padding":  # torch's defaults, padded keys
            padding = torch.zeros(x.shape[0], 5, dtype=torch.bool)
            padding[:, -1] = True
            t = self.default_encoder(t, src_key_padding_mask=padding)
        elif self.kind == "sdpa":
            q, k, v = self.qkv(t).view(-1, 5, 3, 2, 4).permute(2, 0, 3, 1, 4)
            t = F.scaled_dot_product_attention(q, k, v, attn_mask=self.causal)
            t = t.transpose(1, 2).reshape(-1, 5, 8)
        elif self.kind == "hf_cls":
            t = torch.cat([self.cls.expand(t.shape[0], 1, 8), t], dim=1)
            q, k, v = self.qkv(t).chunk(3, dim=-1)
            scores = q @ k.transpose(-1, -2) / math.sqrt(8)
            t = t + torch.softmax(scores, dim=-1) @ v
        return self.out(torch.tanh(t).mean(dim=1))


ATTENTION = ["mha", "mha_weights_mask", "mha_padding", "encoder", "encoder_causal",
             "encoder_nested_tensor_padding", "sdpa", "hf_cls"]  # fmt: skip


@pytest.mark.parametrize("kind", ATTENTION)
def test_attention_in_taylor_mode_matches_nested(kind):
    model, inputs, labels, u = case(AttentionNet(kind), seed=18)
    model.eval()
    fastpath = torch.backends.mha.get_fastpath_enabled()
    fast, logits = deriv.taylor_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert torch.backends.mha.get_fastpath_enabled() == fastpath  # restored afterwards
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(fast, reference)
    with torch.no_grad(), math_attention():  # (torch's fast path differs on a padded row)
        assert torch.allclose(logits, model(inputs), rtol=0, atol=1e-12)


def test_hf_style_output_with_logits_is_accepted_and_others_refused():
    class Output(dict):
        @property
        def logits(self):
            return self["logits"]

    class Wrapped(nn.Module):
        def __init__(self, net: nn.Module, returns: str) -> None:
            super().__init__()
            self.net, self.returns = net, returns

        def forward(self, x):
            logits = self.net(x)
            return Output(logits=logits) if self.returns == "output" else (logits,)

    net, inputs, labels, u = case(mlp(nn.GELU()), seed=19)
    model = Wrapped(net, "output").eval()
    fast, _ = deriv.taylor_directional_derivatives(model, inputs, labels, u, max_order=3)
    reference = deriv.nested_directional_derivatives(net, inputs, labels, u, max_order=3)
    assert_close(fast, reference)
    tupled = Wrapped(net, "tuple").eval()
    with pytest.raises(ModelOutputError, match="tuple"):
        deriv.taylor_directional_derivatives(tupled, inputs, labels, u, max_order=3)


class ReluWrites(ConstantWrites):
    """The same writes in a ReLU network: jointly affine, so the cumulant path is exact."""

    def forward(self, x):
        h = F.relu(self.fc(x.flatten(1)))
        rows = h.shape[0]
        g = h.masked_fill(self.mask, 3.0).index_add(1, self.index, h[:, :2])
        g = torch.where(self.mask, self.c, g).scatter_add(1, self.index.expand(rows, 2), h[:, 3:5])
        g = torch.cat([self.b.expand(rows, 6), g], dim=1)
        return self.out(F.relu(g[:, 3:9]))


def test_jointly_affine_writes_keep_a_relu_net_on_the_cumulant_path():
    model, inputs, labels, u = case(ReluWrites("relu"), seed=20)
    model.eval()
    assert check_piecewise_linear(model, inputs).eligible
    fast, _ = deriv.fast_directional_derivatives(model, inputs, labels, u, max_order=4)
    taylor, _ = deriv.taylor_directional_derivatives(model, inputs, labels, u, max_order=4)
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(fast, reference)
    assert_close(taylor, reference)


class FuzzFound(nn.Module):
    """Models the differential fuzzer (tests/fuzz) refused or broke before their fixes."""

    def __init__(self, kind: str) -> None:
        super().__init__()
        self.kind = kind
        self.fc, self.out = nn.Linear(10, 8), nn.Linear(8, 3)
        self.mha = nn.MultiheadAttention(4, 2, batch_first=True)
        self.fc2 = nn.Linear(4, 4)

    def forward(self, x):
        h = self.fc(x.flatten(1))
        if self.kind == "view_after_in_place":  # a view's version is its base's, read late
            h = F.relu(h.clone(), inplace=True)[:, 1:]
            return self.out(torch.cat([h, h[:, :1]], dim=1).reshape(-1, 2, 4).flatten(1))
        if self.kind == "view_of_strided_coefficient":  # a linear layer after attention
            t = h.reshape(-1, 2, 4)
            t = self.fc2(t + self.mha(t, t, t, need_weights=False)[0])
            return self.out(torch.tanh(t).flatten(1))
        if self.kind == "as_strided":  # a transposed input's memory read back as rows
            t = torch.tanh(h).reshape(-1, 2, 4).transpose(1, 2)
            return self.out(t.as_strided((t.shape[0], 8), (8, 1)) * t.flatten(1))
        raise AssertionError(self.kind)


@pytest.mark.parametrize(
    "kind", ["view_after_in_place", "view_of_strided_coefficient", "as_strided"]
)
def test_models_the_fuzzer_found(kind):
    model, inputs, labels, u = case(FuzzFound(kind), seed=21)
    fast, _ = deriv.taylor_directional_derivatives(model.eval(), inputs, labels, u, max_order=4)
    with math_attention():
        reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(fast, reference)


def test_eval_native_dropout_is_routed_to_taylor_mode_not_a_crashing_jvp():
    class EvalNativeDropout(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.fc2 = nn.Linear(10, 8), nn.Linear(8, 4)

        def forward(self, x):
            return self.fc2(F.relu(torch.native_dropout(self.fc1(x.flatten(1)), 0.3, False)[0]))

    model, inputs, labels, u = case(EvalNativeDropout(), seed=22)
    verdict = check_piecewise_linear(model.eval(), inputs)
    assert not verdict.eligible and "native_dropout" in verdict.reason
    result = deriv.directional_derivatives(model, inputs, labels, u, max_order=4, method="fast")
    assert result.path == "taylor"
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(result.values, reference)


def test_as_strided_of_an_expanded_tensor_is_refused():
    class ExpandedStrided(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(10, 3)

        def forward(self, x):
            h = torch.tanh(self.fc(x.flatten(1)))[:, :1].expand(-1, 3)
            return h.as_strided(h.shape, (h.stride(0), 0)) * h

    model, inputs, labels, u = case(ExpandedStrided(), seed=23)
    with pytest.raises(UnsupportedOperation, match="as_strided.*overlaps"):
        deriv.taylor_directional_derivatives(model.eval(), inputs, labels, u, max_order=2)


def test_fill_with_an_input_dependent_value_carries_its_series():
    class FillTensor(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc, self.out = nn.Linear(10, 6), nn.Linear(6, 3)

        def forward(self, x):
            h = torch.tanh(self.fc(x.flatten(1)))
            filled = torch.empty(h.shape[1], dtype=h.dtype).fill_(h[0, 0])  # fill_.Tensor
            constant = torch.empty_like(h).fill_(0.5)
            return self.out(h * filled + h.clone().fill_(2.0) * h * constant)

    model, inputs, labels, u = case(FillTensor(), seed=24, batch=1)  # (fill_ mixes samples)
    fast, _ = deriv.taylor_directional_derivatives(model.eval(), inputs, labels, u, max_order=4)
    reference = deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=4)
    assert_close(fast, reference)
