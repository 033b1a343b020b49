"""Random small networks for differential fuzzing of geometry's fast paths.

``random_network(seed)`` draws a network from an op vocabulary (:data:`VOCABULARY`): linear and
convolution layers, every activation with a Taylor-mode rule, LayerNorm and BatchNorm, softmax
and attention (``nn.MultiheadAttention``, ``nn.TransformerEncoderLayer``, hand-written and
``F.scaled_dot_product_attention``), reshapes, slicing, ``cat``/``stack``/``pad``/``where``/
``masked_fill``/index writes with learned *and* buffer constants, residuals, pools and dropout.
Every network maps ``[B, T, D]`` token tensors to ``[B, CLASSES]`` logits (float64), each sample
on its own (no block mixes samples, except train-mode BatchNorm's statistics), and
``str(network)`` (:meth:`FuzzNet.describe`) lists its blocks, so a failing seed can be rebuilt
and read.

Seed ``s`` always contains vocabulary item ``s mod len(VOCABULARY)`` (``forced``), so the seeds
``0 .. len(VOCABULARY) − 1`` reach every item; the other blocks are drawn at random.

Used by ``tests/fuzz`` (the differential fuzzer); other tests import it as
``from geomlab.testing.netgen import random_case, random_network``. It lives in the package
because pytest runs with ``--import-mode=importlib`` (test folders are not importable).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geomlab.models.modes import eval_mode

TOKENS, FEATURES, CLASSES = 4, 4, 3
LOGIT_BOUND = 8.0


class Block(nn.Module):
    """One layer of a fuzz network: ``[B, T, D] → [B, T', D']`` with ``T', D'`` known at build
    time (``self.tokens``, ``self.features``)."""

    label = "block"

    def __init__(self, tokens: int, features: int) -> None:
        super().__init__()
        self.tokens, self.features = tokens, features
        self.detail = ""

    def describe(self) -> str:
        return f"{self.label}({self.detail}) -> [B, {self.tokens}, {self.features}]"


class Fn(Block):
    """A parameter-free map given as a function of the activation."""

    def __init__(self, label: str, fn: Callable, tokens: int, features: int, detail="") -> None:
        super().__init__(tokens, features)
        self.label, self.fn, self.detail = label, fn, detail

    def forward(self, h):
        return self.fn(h)


class Linear(Block):
    label = "linear"

    def __init__(self, rng: random.Random, tokens: int, features: int) -> None:
        out = rng.choice([3, 4, 5, 6])
        super().__init__(tokens, out)
        self.layer = nn.Linear(features, out, bias=rng.random() < 0.8)
        self.detail = f"{features}->{out}, bias={self.layer.bias is not None}"

    def forward(self, h):
        return self.layer(h)


class ConvTokens(Block):
    """Conv1d along the tokens (channels = features)."""

    label = "conv1d"

    def __init__(self, rng: random.Random, tokens: int, features: int) -> None:
        out = rng.choice([3, 4, 5])
        super().__init__(tokens, out)
        self.conv = nn.Conv1d(features, out, 3, padding=1)
        self.detail = f"{features}->{out}, k=3, pad=1"

    def forward(self, h):
        return self.conv(h.transpose(1, 2)).transpose(1, 2)


class Conv2dMap(Block):
    """Conv2d on the [T, D] map as a one-channel image; two channels side by side."""

    label = "conv2d"

    def __init__(self, rng: random.Random, tokens: int, features: int) -> None:
        super().__init__(tokens, 2 * features)
        self.conv = nn.Conv2d(1, 2, 3, padding=1)
        self.detail = "1->2 channels, k=3"

    def forward(self, h):
        y = self.conv(h.unsqueeze(1))  # [B, 2, T, D]
        return y.permute(0, 2, 1, 3).reshape(h.shape[0], self.tokens, self.features)


def _softplus(h):
    return F.softplus(h, beta=1.5, threshold=1.0)  # threshold low: its linear branch is reached


# name -> (function, piecewise linear?)
ACTIVATIONS: dict[str, tuple[Callable, bool]] = {
    "relu": (F.relu, True),
    "relu_inplace": (lambda h: F.relu(h.clone(), inplace=True), True),
    "leaky_relu": (lambda h: F.leaky_relu(h, 0.1), True),
    "hardtanh": (lambda h: F.hardtanh(h, -0.8, 0.9), True),
    "threshold": (lambda h: F.threshold(h, 0.1, -0.2), True),
    "abs": (torch.abs, True),
    "clamp": (lambda h: torch.clamp(h, -0.7, 0.8), True),
    "clamp_min": (lambda h: torch.clamp_min(h, -0.3), True),
    "clamp_max": (lambda h: torch.clamp_max(h, 0.4), True),
    "tanh": (torch.tanh, False),
    "sigmoid": (torch.sigmoid, False),
    "gelu": (F.gelu, False),
    "gelu_tanh": (lambda h: F.gelu(h, approximate="tanh"), False),
    "silu": (F.silu, False),
    "softplus": (_softplus, False),
    # bounded arguments: exp of a large activation makes logits of ~400, and both paths then
    # lose 1e-5 to rounding at order 4 (seeds 3055, 3856 of 5,000)
    "exp": (lambda h: torch.exp(2 * torch.tanh(0.5 * h)), False),
    "expm1": (lambda h: torch.expm1(2 * torch.tanh(0.5 * h)), False),
    "log": (lambda h: torch.log(h * h + 1), False),
    "log1p": (lambda h: torch.log1p(h * h), False),
    "erf": (torch.erf, False),
    "sqrt": (lambda h: torch.sqrt(h * h + 1), False),
    "rsqrt": (lambda h: torch.rsqrt(h * h + 1), False),
    "reciprocal": (lambda h: torch.reciprocal(h * h + 1), False),
    "pow": (lambda h: h**3 / 3, False),
    "sin": (torch.sin, False),
    "cos": (torch.cos, False),
    "div": (lambda h: h / (h * h + 2), False),
    "rsub": (lambda h: 1 - torch.sigmoid(h), False),
    "softmax": (lambda h: torch.softmax(h, dim=-1), False),
    "log_softmax": (lambda h: torch.log_softmax(h, dim=-1), False),
}


class Activation(Block):
    label = "activation"

    def __init__(self, name: str, tokens: int, features: int) -> None:
        super().__init__(tokens, features)
        self.name, self.detail = name, name
        self.fn = ACTIVATIONS[name][0]

    def forward(self, h):
        return self.fn(h)


class LayerNorm(Block):
    label = "layer_norm"

    def __init__(self, rng: random.Random, tokens: int, features: int) -> None:
        super().__init__(tokens, features)
        affine = rng.random() < 0.7
        self.norm = nn.LayerNorm(features, elementwise_affine=affine)
        if affine:
            with torch.no_grad():
                self.norm.weight.uniform_(0.5, 1.5)
                self.norm.bias.uniform_(-0.5, 0.5)
        self.detail = f"{features}, affine={affine}"

    def forward(self, h):
        return self.norm(h)


class BatchNorm(Block):
    """BatchNorm1d over the features (tokens as length), random running statistics; or, with
    ``direct``, aten's ``_native_batch_norm_legit(_no_training)`` called directly (eval form)."""

    label = "batch_norm"

    def __init__(self, rng: random.Random, tokens: int, features: int) -> None:
        super().__init__(tokens, features)
        self.norm = nn.BatchNorm1d(features)
        with torch.no_grad():
            self.norm.running_mean.uniform_(-0.5, 0.5)
            self.norm.running_var.uniform_(0.5, 2.0)
            self.norm.weight.uniform_(0.5, 1.5)
            self.norm.bias.uniform_(-0.5, 0.5)
        self.direct = rng.choice([None, None, "legit", "legit_no_training"])
        self.detail = f"{features}, {self.direct or 'module'}"

    def forward(self, h):
        x = h.transpose(1, 2)
        n = self.norm
        if self.direct == "legit_no_training":
            args = (n.weight, n.bias, n.running_mean, n.running_var, 0.1, 1e-5)
            y = torch.ops.aten._native_batch_norm_legit_no_training(x, *args)[0]
        elif self.direct == "legit":  # training=False: running statistics, no update
            args = (n.weight, n.bias, n.running_mean, n.running_var, False, 0.1, 1e-5)
            y = torch.ops.aten._native_batch_norm_legit(x, *args)[0]
        else:
            y = n(x)
        return y.transpose(1, 2)


def _causal(tokens: int) -> torch.Tensor:
    return torch.triu(torch.ones(tokens, tokens, dtype=torch.bool), 1)


class MultiheadAttention(Block):
    label = "multihead_attention"

    def __init__(self, rng: random.Random, tokens: int, features: int) -> None:
        super().__init__(tokens, features)
        heads = rng.choice([h for h in (1, 2) if features % h == 0])
        self.attention = nn.MultiheadAttention(features, heads, dropout=0.1, batch_first=True)
        self.mask = rng.choice(["none", "causal", "padding", "float"])
        self.need_weights = rng.random() < 0.3
        self.detail = f"{features}, heads={heads}, mask={self.mask}, weights={self.need_weights}"
        self.register_buffer("float_mask", 0.5 * torch.randn(tokens, tokens))

    def forward(self, h):
        kwargs: dict = {"need_weights": self.need_weights}
        if self.mask == "causal":
            kwargs["attn_mask"] = _causal(h.shape[1])
        elif self.mask == "float":
            kwargs["attn_mask"] = self.float_mask.to(h.dtype)
        elif self.mask == "padding":  # the last sample's last key padded
            padding = torch.zeros(h.shape[0], h.shape[1], dtype=torch.bool)
            padding[-1, -1] = True
            kwargs["key_padding_mask"] = padding
        return self.attention(h, h, h, **kwargs)[0]


class EncoderLayer(Block):
    label = "transformer_encoder_layer"

    def __init__(self, rng: random.Random, tokens: int, features: int) -> None:
        super().__init__(tokens, features)
        heads = rng.choice([h for h in (1, 2) if features % h == 0])
        activation = rng.choice(["relu", "gelu"])
        norm_first, self.causal = rng.random() < 0.5, rng.random() < 0.3
        self.encoder = nn.TransformerEncoder(
            nn.TransformerEncoderLayer(
                features, heads, 6, dropout=0.1, activation=activation, batch_first=True,
                norm_first=norm_first,
            ),
            1,
            enable_nested_tensor=False,
        )  # fmt: skip
        self.detail = (
            f"{features}, heads={heads}, ff=6, {activation}, norm_first={norm_first},"
            f" causal={self.causal}"
        )

    def forward(self, h):
        if self.causal:
            return self.encoder(h, mask=_causal(h.shape[1]), is_causal=True)
        return self.encoder(h)


class HandAttention(Block):
    """HF-style attention written out: ``softmax(q kᵀ/√d) v`` (optionally causal by
    ``masked_fill(−inf)``), ``baddbmm`` scores with a learned bias, or SDPA."""

    label = "hand_attention"

    def __init__(self, rng: random.Random, tokens: int, features: int) -> None:
        super().__init__(tokens, features)
        self.qkv = nn.Linear(features, 3 * features)
        self.form = rng.choice(["softmax", "masked_fill", "baddbmm", "sdpa", "sdpa_causal"])
        if self.form == "baddbmm":  # (every parameter is used: curvlinops needs that)
            self.bias = nn.Parameter(0.3 * torch.randn(1, tokens, tokens))
        self.detail = f"{features}, {self.form}"

    def forward(self, h):
        q, k, v = self.qkv(h).chunk(3, dim=-1)
        scale = 1 / math.sqrt(self.features)
        if self.form.startswith("sdpa"):
            return F.scaled_dot_product_attention(q, k, v, is_causal=self.form == "sdpa_causal")
        if self.form == "baddbmm":
            bias = self.bias.expand(h.shape[0], -1, -1)
            scores = torch.baddbmm(bias, q, k.transpose(1, 2), beta=0.5, alpha=scale)
        else:
            scores = q @ k.transpose(-1, -2) * scale
        if self.form == "masked_fill":
            scores = scores.masked_fill(_causal(h.shape[1]), float("-inf"))
        return torch.softmax(scores, dim=-1) @ v


class Residual(Block):
    label = "residual"

    def __init__(self, inner: Block) -> None:
        super().__init__(inner.tokens, inner.features)
        self.inner = inner

    def describe(self) -> str:
        return f"residual[{self.inner.describe()}]"

    def forward(self, h):
        return h + self.inner(h)


class JoinConstant(Block):
    """A constant joined to (or written into) the activation: a learned parameter or a buffer
    (issue 17, item 1)."""

    label = "join_constant"
    FORMS = ("cat_token", "stack", "pad", "pad_tokens", "where", "masked_fill",
             "masked_fill_tensor", "masked_fill_", "index_put_", "index_copy", "index_add",
             "index_fill", "scatter", "scatter_value", "scatter_add", "masked_scatter",
             "add", "mul")  # fmt: skip
    USES_VALUE = frozenset(FORMS) - {"pad", "pad_tokens", "masked_fill", "masked_fill_",
                                     "index_fill", "scatter_value"}  # fmt: skip

    def __init__(self, rng: random.Random, tokens: int, features: int, form=None) -> None:
        self.form = form or rng.choice(self.FORMS)
        self.learned = rng.random() < 0.5
        grows = {"cat_token": (1, 0), "pad_tokens": (1, 0), "pad": (0, 1)}.get(self.form, (0, 0))
        out_features = 2 * features if self.form == "stack" else features + grows[1]
        super().__init__(tokens + grows[0], out_features)
        value = 2 * torch.randn(tokens, features)
        self.learned = self.learned and self.form in self.USES_VALUE  # no unused parameters
        if self.learned:
            self.value = nn.Parameter(value)
        else:
            self.register_buffer("value", value)
        self.register_buffer("mask", torch.rand(tokens, features) < 0.4)
        self.register_buffer("index", torch.tensor([0, features - 1]))
        self.fill = round(rng.uniform(-2, 2), 2)
        self.detail = f"{self.form}, {'parameter' if self.learned else 'buffer'}"

    def forward(self, h):  # noqa: C901 - one branch per form
        b, t, d = h.shape
        c = self.value.to(h.dtype).expand(b, t, d)
        index, source = self.index, c[..., :2].contiguous()
        form = self.form
        if form == "cat_token":
            return torch.cat([c[:, :1], h], dim=1)
        if form == "stack":
            return torch.stack([h, c], dim=-1).flatten(-2)
        if form == "pad":
            return F.pad(h, (1, 0), value=self.fill)
        if form == "pad_tokens":
            return F.pad(h, (0, 0, 0, 1), value=self.fill)
        if form == "where":
            return torch.where(self.mask, c, h)
        if form == "masked_fill":
            return h.masked_fill(self.mask, self.fill)
        if form == "masked_fill_tensor":
            return h.masked_fill(self.mask, self.value[0, 0])
        if form == "masked_fill_":
            return h.clone().masked_fill_(self.mask, self.fill)
        if form == "index_put_":
            g = h.clone()
            g[:, :, index] = source
            return g
        if form == "index_copy":
            return h.index_copy(2, index, source)
        if form == "index_add":
            return h.index_add(2, index, source)
        if form == "index_fill":
            return h.index_fill(2, index, self.fill)
        if form == "scatter":
            return h.scatter(2, index.expand(b, t, 2), source)
        if form == "scatter_value":
            return h.scatter(2, index.expand(b, t, 2), self.fill)
        if form == "scatter_add":
            return h.scatter_add(2, index.expand(b, t, 2), source)
        if form == "masked_scatter":
            return h.masked_scatter(self.mask, c.contiguous())
        if form == "add":
            return h + self.value.to(h.dtype) - 0.5 * c
        if form == "mul":
            return h * self.value.to(h.dtype)
        raise AssertionError(form)


class WriteIntoConstant(Block):
    """The activation written into a constant: a fresh buffer copy (``copy_``, ``index_put_``),
    ``zeros_like``, or an input-dependent source at fixed indices of a learned tensor."""

    label = "write_into_constant"
    FORMS = ("copy_", "index_put_", "zeros_like_add", "scatter_into_parameter")

    def __init__(self, rng: random.Random, tokens: int, features: int, form=None) -> None:
        super().__init__(tokens, features)
        self.form = form or rng.choice(self.FORMS)
        self.base = nn.Parameter(torch.randn(tokens, features))
        self.register_buffer("index", torch.tensor([0, features - 1]))
        self.detail = self.form

    def forward(self, h):
        b, t, d = h.shape
        base = self.base.expand(b, t, d)
        if self.form == "copy_":
            return torch.empty_like(h).copy_(h) + base
        if self.form == "index_put_":
            g = base.clone()
            g[:, :, self.index] = h[..., :2]
            return g + h
        if self.form == "zeros_like_add":
            return torch.zeros_like(h) + base + h
        return base.scatter(2, self.index.expand(b, t, 2), h[..., 1:3]) * 0.5 + h


def _shuffle_forms(tokens: int, features: int) -> dict[str, Callable]:
    """Shape-preserving (or -reducing) structural maps; only those valid for (T, D)."""
    perm = torch.randperm(features, generator=torch.Generator().manual_seed(tokens * 31 + features))
    forms: dict[str, Callable] = {
        "flip": lambda h: h.flip(1),
        "roll": lambda h: h.roll(1, dims=1),
        "transpose_roundtrip": lambda h: h.transpose(1, 2).contiguous().transpose(1, 2),
        "permute_reshape": lambda h: (
            h.permute(0, 2, 1)
            .reshape(h.shape[0], -1)
            .view(h.shape[0], h.shape[2], h.shape[1])
            .movedim(1, 2)
        ),
        "flatten_unflatten": lambda h: h.flatten(1).unflatten(1, (h.shape[1], h.shape[2])),
        "unbind_stack": lambda h: torch.stack(list(reversed(h.unbind(1))), dim=1),
        "index_select": lambda h: h.index_select(-1, perm),
        "gather": lambda h: h.gather(-1, perm.expand(*h.shape[:-1], -1)),
        "advanced_index": lambda h: h[:, :, perm],
        "repeat_slice": lambda h: h.repeat(1, 1, 2)[..., 1 : 1 + h.shape[-1]],
        "tril": lambda h: h.tril() + 0.5 * h.triu(1),
        "select_cat": lambda h: torch.cat([h[:, 1:], h.select(1, 0).unsqueeze(1)], dim=1),
        "to_copy": lambda h: h.to(torch.float64, copy=True),
        "alias": lambda h: torch.ops.aten.alias(h),
        "as_strided": lambda h: h.contiguous().as_strided(h.shape, h.contiguous().stride()),
        "reshape_alias": lambda h: torch.ops.aten._reshape_alias(
            h.contiguous(), list(h.shape), list(h.contiguous().stride())
        ),
        "detach_mix": lambda h: h + 0.5 * h.detach(),
        "fill": lambda h: h * h.clone().fill_(0.5),
        "zero": lambda h: h + h.clone().zero_(),
        "neg_sub": lambda h: -h - 0.3 * h.mean(dim=-1, keepdim=True),
        "sum_broadcast": lambda h: h * h.sum(dim=1, keepdim=True) / h.shape[1],
        "square_mix": lambda h: (h + 1) * h.mean(dim=(1, 2), keepdim=True),
        "diagonal": lambda h: h + h.diagonal(0, 1, 2).sum(-1).view(-1, 1, 1),
    }
    if features % 2 == 0:
        forms["chunk_swap"] = lambda h: torch.cat(list(reversed(h.chunk(2, dim=-1))), dim=-1)
        forms["split_sizes"] = lambda h: torch.cat(
            list(reversed(h.split_with_sizes([1, features - 1], dim=-1))), dim=-1
        )
    if tokens % 4 == 0:
        forms["pixel_shuffle"] = lambda h: F.pixel_shuffle(
            h.reshape(h.shape[0], 4, -1, 1), 2
        ).reshape(h.shape)
    return forms


class Shuffle(Fn):
    label = "structural"

    def __init__(self, rng: random.Random, tokens: int, features: int, form=None) -> None:
        forms = _shuffle_forms(tokens, features)
        name = form or rng.choice(sorted(forms))
        super().__init__("structural", forms[name], tokens, features, name)


_PRODUCTS = ("square_mix", "sum_broadcast", "fill")  # structural forms that multiply h by h


def _shuffle(form):
    return lambda rng, t, d: Shuffle(rng, t, d, form) if form in _shuffle_forms(t, d) else None


class Reduce(Block):
    """Token-axis pools, unfold and slicing: fewer tokens or features."""

    label = "reduce"
    FORMS = ("avg_pool", "max_pool", "adaptive_avg_pool", "max_pool3d", "avg_pool3d", "unfold",
             "slice_features", "narrow")  # fmt: skip

    def __init__(self, rng: random.Random, tokens: int, features: int, form=None) -> None:
        self.form = form or rng.choice(self.FORMS)
        if self.form == "slice_features" and features <= 3:
            self.form = "avg_pool"
        drop = {"slice_features": (0, 1), "narrow": (1, 0), "adaptive_avg_pool": (1, 0)}
        dt, df = drop.get(self.form, (1, 0))
        super().__init__(tokens - dt, features - df)
        self.detail = self.form

    def forward(self, h):
        b, t, d = h.shape
        if self.form == "avg_pool":
            return F.avg_pool1d(h.transpose(1, 2), 2, stride=1).transpose(1, 2)
        if self.form == "max_pool":
            return F.max_pool1d(h.transpose(1, 2), 2, stride=1).transpose(1, 2)
        if self.form == "adaptive_avg_pool":
            return F.adaptive_avg_pool2d(h.unsqueeze(1), (t - 1, d)).squeeze(1)
        if self.form == "max_pool3d":
            y = F.max_pool3d(h.reshape(b, 1, 1, t, d), (1, 2, 1), stride=1)
            return y.reshape(b, t - 1, d)
        if self.form == "avg_pool3d":
            y = F.avg_pool3d(h.reshape(b, 1, 1, t, d), (1, 2, 1), stride=1)
            return y.reshape(b, t - 1, d)
        if self.form == "unfold":
            return h.unfold(1, 2, 1).mean(-1)
        if self.form == "slice_features":
            return h[:, :, 1:]
        return h.narrow(1, 1, t - 1)


class Dropout(Block):
    """``nn.Dropout`` (identity in eval), ``torch.native_dropout``, or a fixed mask buffer."""

    label = "dropout"
    FORMS = ("module", "native", "fixed_mask")

    def __init__(self, rng: random.Random, tokens: int, features: int, form=None) -> None:
        super().__init__(tokens, features)
        self.form = form or rng.choice(self.FORMS)
        self.dropout = nn.Dropout(0.3)
        self.register_buffer("keep", (torch.rand(tokens, features) > 0.3).double() / 0.7)
        self.detail = self.form

    def forward(self, h):
        if self.form == "module":
            return self.dropout(h)
        if self.form == "native":
            return torch.native_dropout(h, 0.3, self.training)[0]
        return h * self.keep.to(h.dtype)


class Bilinear(Block):
    """Products of two input-dependent tensors: ``h hᵀ h`` (bmm), per-sample mm, addmm with an
    input-dependent bias."""

    label = "bilinear"
    FORMS = ("bmm", "mm", "addmm_bias", "baddbmm_tracked")

    def __init__(self, rng: random.Random, tokens: int, features: int, form=None) -> None:
        super().__init__(tokens, features)
        self.form = form or rng.choice(self.FORMS)
        if self.form == "addmm_bias":
            self.weight = nn.Parameter(torch.randn(features, features) / features)
        self.detail = self.form

    def forward(self, h):
        b, t, d = h.shape
        if self.form == "bmm":
            return (h @ h.transpose(1, 2)) @ h / (t * d)
        if self.form == "mm":  # per sample: samples must not mix (the derivatives are per sample)
            return torch.stack([s @ (s.t() @ s) / (t * d) for s in h.unbind(0)])
        if self.form == "addmm_bias":
            flat = h.reshape(b * t, d)
            return torch.addmm(flat, flat, self.weight, beta=0.5).reshape(b, t, d)
        scores = torch.baddbmm(h[..., :1].expand(b, t, t), h, h.transpose(1, 2), alpha=0.1)
        return scores @ h / t


class Resize(Block):
    """Back to [B, TOKENS, FEATURES]: a linear map of the features, adaptive pooling of the
    tokens (both linear)."""

    label = "resize"

    def __init__(self, tokens: int, features: int) -> None:
        super().__init__(TOKENS, FEATURES)
        self.layer = nn.Linear(features, FEATURES)
        self.detail = f"[{tokens}, {features}] -> [{TOKENS}, {FEATURES}]"

    def forward(self, h):
        h = self.layer(h)
        if h.shape[1] != TOKENS:
            h = F.adaptive_avg_pool1d(h.transpose(1, 2), TOKENS).transpose(1, 2)
        return h


@dataclass(frozen=True)
class Item:
    """A vocabulary item: builds a block for (T, D), or None when it does not fit there."""

    name: str
    build: Callable[[random.Random, int, int], Block | None]
    piecewise_linear: bool
    attention: bool = False


def _activation(name):
    return lambda rng, t, d: Activation(name, t, d)


def _reduce(form):
    return lambda rng, t, d: Reduce(rng, t, d, form) if t >= 3 and d >= 3 else None


def _join(form):
    return lambda rng, t, d: JoinConstant(rng, t, d, form) if t <= 5 and d <= 6 else None


def _with_form(cls, form):
    return lambda rng, t, d: cls(rng, t, d, form)


def _residual(builder):
    def build(rng, t, d):
        inner = builder(rng, t, d)
        if inner is None or (inner.tokens, inner.features) != (t, d):
            return None
        return Residual(inner)

    return build


VOCABULARY: list[Item] = [
    Item("linear", Linear, True),
    Item("conv1d", ConvTokens, True),
    Item("conv2d", lambda rng, t, d: Conv2dMap(rng, t, d) if d <= 4 else None, True),
    *[Item(f"act:{name}", _activation(name), pl) for name, (_, pl) in ACTIVATIONS.items()],
    Item("layer_norm", LayerNorm, False),
    Item("batch_norm", BatchNorm, True),  # eval: affine; train: batch statistics (smooth)
    Item("multihead_attention", _residual(MultiheadAttention), False, True),
    Item("transformer_encoder_layer", EncoderLayer, False, True),
    Item("hand_attention", _residual(HandAttention), False, True),
    *[Item(f"join:{form}", _join(form), True) for form in JoinConstant.FORMS],
    *[
        Item(f"write_into_constant:{form}", _with_form(WriteIntoConstant, form), True)
        for form in WriteIntoConstant.FORMS
    ],
    *[
        Item(f"structural:{form}", _shuffle(form), form not in _PRODUCTS)
        for form in sorted(_shuffle_forms(4, 4))
    ],
    *[Item(f"reduce:{form}", _reduce(form), True) for form in Reduce.FORMS],
    # (torch.native_dropout(train=False) is kept off the cumulant path: vmapped JVPs fail on it)
    *[
        Item(f"dropout:{form}", _with_form(Dropout, form), form != "native")
        for form in Dropout.FORMS
    ],
    *[Item(f"bilinear:{form}", _with_form(Bilinear, form), False) for form in Bilinear.FORMS],
    Item("residual_linear", _residual(lambda rng, t, d: Linear(rng, t, d)), True),
]
_BY_NAME = {item.name: item for item in VOCABULARY}


class FuzzNet(nn.Module):
    """Blocks in sequence, then the mean over tokens and a linear head to CLASSES logits."""

    def __init__(self, seed: int, blocks: list[Block], features: int) -> None:
        super().__init__()
        self.seed = seed
        self.blocks = nn.ModuleList(blocks)
        self.head = nn.Linear(features, CLASSES)

    def forward(self, x):
        h = x
        for block in self.blocks:
            h = block(h)
        return self.head(h.mean(dim=1))

    @property
    def has_attention(self) -> bool:
        attention = (MultiheadAttention, EncoderLayer, HandAttention)
        return any(isinstance(m, attention) for m in self.modules())

    def describe(self) -> str:
        lines = [f"FuzzNet(seed={self.seed}, {'train' if self.training else 'eval'} mode)",
                 f"  input [B, {TOKENS}, {FEATURES}]"]  # fmt: skip
        lines += [f"  {i}: {block.describe()}" for i, block in enumerate(self.blocks)]
        lines.append(f"  head: mean over tokens, linear -> {CLASSES}")
        return "\n".join(lines)

    def __str__(self) -> str:
        return self.describe()


def random_network(
    seed: int,
    *,
    piecewise_linear: bool = False,
    attention: bool = True,
    forced: str | None = "auto",
    blocks: int | None = None,
    exclude: tuple[str, ...] = (),
) -> FuzzNet:
    """A float64 network for ``seed`` (same seed, same network and weights).

    ``piecewise_linear``: only piecewise-linear items (the cumulant path is exact);
    ``attention=False``: no attention items; ``exclude``: item names left out; ``forced``: an
    item name the network contains (``"auto"``: item ``seed mod len`` of the allowed
    vocabulary, None: no forced item)."""
    rng = random.Random(seed)
    torch.manual_seed(seed)
    allowed = [
        item
        for item in VOCABULARY
        if (item.piecewise_linear or not piecewise_linear)
        and (attention or not item.attention)
        and item.name not in exclude
    ]
    if forced == "auto":
        forced = allowed[seed % len(allowed)].name
    count = blocks if blocks is not None else rng.randint(2, 4)
    position = rng.randrange(count) if forced else -1
    tokens, features, built = TOKENS, FEATURES, []
    for i in range(count):
        block = None
        for _ in range(50):
            item = _BY_NAME[forced] if i == position else rng.choice(allowed)
            block = item.build(rng, tokens, features)
            if block is not None:
                break
            if i == position:  # the forced item does not fit here: back to (T, D) first
                built.append(Resize(tokens, features))
                tokens, features = TOKENS, FEATURES
        if block is None:
            raise RuntimeError(f"seed {seed}: no vocabulary item fits [{tokens}, {features}]")
        built.append(block)
        tokens, features = block.tokens, block.features
    model = FuzzNet(seed, built, features).double()
    with torch.no_grad():  # weights of order one: derivatives of every order away from zero
        for module in model.modules():
            if isinstance(module, nn.Linear | nn.Conv1d | nn.Conv2d):
                module.weight.mul_(1.5)
    return model


def random_case(
    seed: int, *, batch: int = 3, directions: int = 2, **network_kwargs
) -> tuple[FuzzNet, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(model, inputs [B, T, D], labels [B], unit directions [K, B, T, D])``, float64.

    The head is scaled so that the eval-mode logits on ``inputs`` stay within ±LOGIT_BOUND: a
    saturated softmax (logits of ~10³ after exp and cubic blocks) makes every float64
    reference lose digits to cancellation (seeds 3055, 3856, 240 of 5,000) — conditioning, not
    the paths under test."""
    model = random_network(seed, **network_kwargs)
    g = torch.Generator().manual_seed(10_000 + seed)
    inputs = torch.randn(batch, TOKENS, FEATURES, dtype=torch.float64, generator=g)
    with torch.no_grad(), eval_mode(model):
        largest = model(inputs).abs().max().item()
        if largest > LOGIT_BOUND:
            model.head.weight.mul_(LOGIT_BOUND / largest)
            model.head.bias.mul_(LOGIT_BOUND / largest)
    labels = torch.randint(0, CLASSES, (batch,), generator=g)
    u = torch.randn(directions, *inputs.shape, dtype=torch.float64, generator=g)
    u = u / u.flatten(2).norm(dim=-1).view(directions, batch, 1, 1)
    return model, inputs, labels, u
