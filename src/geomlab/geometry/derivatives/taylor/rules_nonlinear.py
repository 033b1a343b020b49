"""Taylor rules of nonlinear ops: masks of piecewise-linear ops, dropout, smooth elementwise
functions (Faà di Bruno), softmax, GELU/SiLU/softplus, LayerNorm and BatchNorm."""

from __future__ import annotations

import math

import torch

from geomlab.geometry.derivatives.taylor.recorder import (
    POISON,
    RULES,
    Context,
    UnsupportedOperation,
    rule,
)
from geomlab.geometry.derivatives.taylor.series import (
    compose,
    erf_taylor,
    exp_taylor,
    gelu_erf_taylor,
    lift,
    log_taylor,
    padded,
    power_taylor,
    series_mul,
    sigmoid_taylor,
    silu_taylor,
    tanh_taylor,
)

__all__: list[str] = []  # rules register themselves in RULES


def _log_normalizer(ctx: Context, probs: torch.Tensor):
    """``δ`` and the series of ``log E_p[exp δ]`` along the softmax dim (kept)."""
    x, dim = ctx.arg(0), ctx.arg(1)
    delta = [lift(c, x.dim() + 1) for c in ctx.series(x)]
    coefficient_dim = dim if dim < 0 else dim + 1
    exp_delta = compose([1.0 / math.factorial(j) for j in range(1, ctx.order + 1)], delta,
                        ctx.order)  # fmt: skip
    moments = [(probs * e).sum(dim=coefficient_dim, keepdim=True) for e in exp_delta]
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return delta, compose(log_taylor(one, ctx.order), moments, ctx.order)


@rule("_log_softmax")
def _log_softmax(ctx: Context):  # log_softmax(x)(t) = log p + δ − log E_p[exp δ]
    probs = torch.softmax(ctx.arg(0), dim=ctx.arg(1))
    delta, log_m = _log_normalizer(ctx, probs)
    return [d - m for d, m in zip(padded(delta, ctx.order), log_m, strict=True)]


@rule("_softmax", "_safe_softmax")
def _softmax(ctx: Context):  # softmax(x)(t) = p · exp(δ − log E_p[exp δ])
    # p is the op's own output: for ``_safe_softmax`` (SDPA's math form) a row masked entirely
    # with −inf is zero there, and so are all its coefficients (its moments are 0, log m = 0)
    probs = ctx.out
    delta, log_m = _log_normalizer(ctx, probs)
    shift = [d - m for d, m in zip(padded(delta, ctx.order), log_m, strict=True)]
    exp_shift = compose([1.0 / math.factorial(j) for j in range(1, ctx.order + 1)], shift,
                        ctx.order)  # fmt: skip
    return [probs * e for e in exp_shift]


def _masked(ctx: Context, mask: torch.Tensor, index: int = 0, scale=None):
    coefficients = ctx.series(ctx.arg(index))
    weight = mask.to(ctx.out.dtype if isinstance(ctx.out, torch.Tensor) else mask.dtype)
    if scale is not None:
        weight = weight * scale
    return [c * weight for c in coefficients]


@rule("relu")
def _relu(ctx: Context):
    return _masked(ctx, ctx.arg(0) > 0)


@rule("threshold")
def _threshold(ctx: Context):
    return _masked(ctx, ctx.arg(0) > ctx.arg(1))


@rule("leaky_relu")
def _leaky_relu(ctx: Context):
    x, slope = ctx.arg(0), ctx.arg(1, "negative_slope", 0.01)
    positive = (x > 0).to(x.dtype)
    return [c * (positive + slope * (1 - positive)) for c in ctx.series(x)]


@rule("hardtanh")
def _hardtanh(ctx: Context):
    x = ctx.arg(0)
    low, high = ctx.arg(1, "min_val", -1.0), ctx.arg(2, "max_val", 1.0)
    return _masked(ctx, (x > low) & (x < high))


@rule("clamp_min")
def _clamp_min(ctx: Context):
    if ctx.series(ctx.arg(1)) is not None:
        raise UnsupportedOperation("clamp_min", "input-dependent bound")
    return _masked(ctx, ctx.arg(0) >= ctx.arg(1))


@rule("clamp")
def _clamp(ctx: Context):  # clamp(x, min, max) with constant (or absent) bounds
    x, low, high = ctx.arg(0), ctx.arg(1, "min"), ctx.arg(2, "max")
    if ctx.series(low) is not None or ctx.series(high) is not None:
        raise UnsupportedOperation("clamp", "input-dependent bound")
    inside = torch.ones_like(x, dtype=torch.bool)
    if low is not None:
        inside = inside & (x >= low)
    if high is not None:
        inside = inside & (x <= high)
    return _masked(ctx, inside)


@rule("clamp_max")
def _clamp_max(ctx: Context):
    if ctx.series(ctx.arg(1)) is not None:
        raise UnsupportedOperation("clamp_max", "input-dependent bound")
    return _masked(ctx, ctx.arg(0) <= ctx.arg(1))


@rule("abs")
def _abs(ctx: Context):
    return _masked(ctx, torch.ones(()), scale=torch.sign(ctx.arg(0)))


@rule("max_pool2d_with_indices", "max_pool3d_with_indices", "max_pool1d_with_indices")
def _max_pool(ctx: Context):
    values, indices = ctx.out
    coefficients = ctx.series(ctx.arg(0))
    spatial = ctx.arg(0).dim() - (2 if ctx.entry.name != "max_pool1d_with_indices" else 1)
    out = []
    flat_index = indices.flatten(-spatial) if spatial > 1 else indices
    for c in coefficients:
        flat = c.flatten(-spatial) if spatial > 1 else c
        index = flat_index.unsqueeze(0).expand(c.shape[0], *flat_index.shape)
        out.append(flat.gather(-1, index).reshape(c.shape[0], *values.shape))
    return out, None


@rule("native_dropout")
def _native_dropout(ctx: Context):  # (input, p, train) -> (output, mask)
    p, train = ctx.arg(1), ctx.arg(2)
    coefficients = ctx.series(ctx.arg(0))
    if train is False:
        return list(coefficients), None
    mask = ctx.out[1]
    scale = 0.0 if p >= 1 else 1.0 / (1.0 - p)
    weight = mask.to(ctx.out[0].dtype) * scale
    return [c * weight for c in coefficients], None


def _nonlinear(taylor_fn):
    """Rule for an elementwise op from ``taylor_fn(ctx) -> [f^{(j)}(x₀)/j!]``."""

    def apply(ctx: Context):
        x = ctx.arg(0)
        delta = [lift(c, x.dim() + 1) for c in ctx.series(x)]
        return compose(taylor_fn(ctx), delta, ctx.order)

    return apply


RULES["tanh"] = _nonlinear(lambda ctx: tanh_taylor(ctx.out, ctx.order))
RULES["sigmoid"] = _nonlinear(lambda ctx: sigmoid_taylor(ctx.out, ctx.order))
RULES["exp"] = _nonlinear(lambda ctx: exp_taylor(ctx.out, ctx.order))
RULES["log"] = _nonlinear(lambda ctx: log_taylor(ctx.arg(0), ctx.order))
RULES["expm1"] = _nonlinear(lambda ctx: exp_taylor(ctx.out + 1, ctx.order))
RULES["log1p"] = _nonlinear(lambda ctx: log_taylor(ctx.arg(0) + 1, ctx.order))
RULES["erf"] = _nonlinear(lambda ctx: erf_taylor(ctx.arg(0), ctx.order))
RULES["sqrt"] = _nonlinear(lambda ctx: power_taylor(ctx.arg(0), 0.5, ctx.order))
RULES["rsqrt"] = _nonlinear(lambda ctx: power_taylor(ctx.arg(0), -0.5, ctx.order))
RULES["reciprocal"] = _nonlinear(lambda ctx: power_taylor(ctx.arg(0), -1.0, ctx.order))
RULES["sin"] = _nonlinear(
    lambda ctx: [
        (torch.sin, torch.cos)[j % 2](ctx.arg(0)) * (1, 1, -1, -1)[j % 4] / math.factorial(j)
        for j in range(1, ctx.order + 1)
    ]
)
RULES["cos"] = _nonlinear(
    lambda ctx: [
        (torch.cos, torch.sin)[j % 2](ctx.arg(0)) * (1, -1, -1, 1)[j % 4] / math.factorial(j)
        for j in range(1, ctx.order + 1)
    ]
)


@rule("pow")
def _pow(ctx: Context):
    base, exponent = ctx.arg(0), ctx.arg(1)
    if ctx.series(exponent) is not None or isinstance(exponent, torch.Tensor):
        raise UnsupportedOperation("pow", "tensor exponent")
    if not isinstance(base, torch.Tensor):
        raise UnsupportedOperation("pow", "scalar base")
    return _nonlinear(lambda c: power_taylor(base, float(exponent), c.order))(ctx)


@rule("gelu")
def _gelu(ctx: Context):
    x = ctx.arg(0)
    delta = [lift(c, x.dim() + 1) for c in ctx.series(x)]
    if ctx.entry.kwargs.get("approximate", "none") == "none":
        return compose(gelu_erf_taylor(x, ctx.order), delta, ctx.order)
    # tanh form: 0.5 x (1 + tanh(c (x + 0.044715 x³))), composed from series
    c = math.sqrt(2 / math.pi)
    cube = series_mul(x * x, series_mul(x, delta, x, delta, ctx.order), x, delta, ctx.order)
    inner0 = c * (x + 0.044715 * x**3)
    inner = [
        c * (d + 0.044715 * q)
        for d, q in zip(padded(delta, ctx.order), padded(cube, ctx.order), strict=True)
    ]
    tanh0 = torch.tanh(inner0)
    outer = compose(tanh_taylor(tanh0, ctx.order), inner, ctx.order)
    product = series_mul(x, delta, tanh0, outer, ctx.order)
    return [0.5 * (d + p) for d, p in zip(padded(delta, len(product)), product, strict=True)]


@rule("silu")
def _silu(ctx: Context):
    x = ctx.arg(0)
    delta = [lift(c, x.dim() + 1) for c in ctx.series(x)]
    return compose(silu_taylor(x, torch.sigmoid(x), ctx.order), delta, ctx.order)


@rule("softplus")
def _softplus(ctx: Context):
    x, beta, threshold = ctx.arg(0), ctx.arg(1, "beta", 1), ctx.arg(2, "threshold", 20)
    delta = [lift(c, x.dim() + 1) for c in ctx.series(x)]
    s = torch.sigmoid(beta * x)
    # f^{(j)}(x) = β^{j−1} σ^{(j−1)}(βx): shift the sigmoid's tower by one order
    sig = sigmoid_taylor(s, ctx.order - 1) if ctx.order > 1 else []
    taylor = [s] + [
        beta ** (j - 1) * sig[j - 2] * math.factorial(j - 1) / math.factorial(j)
        for j in range(2, ctx.order + 1)
    ]
    smooth = compose(taylor, delta, ctx.order)
    linear = beta * x > threshold  # softplus returns x there
    return [
        torch.where(linear, d, y) for d, y in zip(padded(delta, ctx.order), smooth, strict=True)
    ]


@rule("native_layer_norm")
def _layer_norm(ctx: Context):  # (input, normalized_shape, weight, bias, eps)
    x, shape, weight, eps = ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(4)
    if ctx.series(weight) is not None or ctx.series(ctx.arg(3)) is not None:
        raise UnsupportedOperation("native_layer_norm", "input-dependent weight or bias")
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    coefficient_dims = tuple(d + 1 for d in dims)
    delta = [lift(c, x.dim() + 1) for c in ctx.series(x)]
    mean0 = x.mean(dim=dims, keepdim=True)
    centered0 = x - mean0
    centered = [c - c.mean(dim=coefficient_dims, keepdim=True) for c in delta]
    square = series_mul(centered0, centered, centered0, centered, ctx.order)
    var0 = (centered0 * centered0).mean(dim=dims, keepdim=True)
    var = [s.mean(dim=coefficient_dims, keepdim=True) for s in square]
    inv0 = torch.rsqrt(var0 + eps)
    inv = compose(power_taylor(var0 + eps, -0.5, ctx.order), var, ctx.order)
    normalized = series_mul(centered0, centered, inv0, inv, ctx.order)
    if weight is not None:
        normalized = [c * weight for c in normalized]
    return normalized, POISON, POISON


def _channel_view(v: torch.Tensor, ndim: int) -> torch.Tensor:
    return v.view(1, -1, *([1] * (ndim - 2)))


def _batch_norm_affine(ctx: Context, *, training: bool, running_var, weight, eps):
    """Coefficients of batch norm: ``h_k · weight · rsqrt(var + eps)`` per channel, with the
    running variance (eval) or the batch's biased variance held constant along t (train)."""
    x = ctx.arg(0)
    for value in (weight, ctx.arg(2), running_var, ctx.arg(3)):
        if ctx.series(value) is not None:
            raise UnsupportedOperation(ctx.entry.name, "input-dependent statistics or affine")
    if training:
        dims = [0, *range(2, x.dim())]
        var = x.var(dim=dims, correction=0)
    else:
        var = running_var
    scale = torch.rsqrt(var + eps)
    if weight is not None:
        scale = scale * weight
    scale = _channel_view(scale, x.dim())
    outputs = [[c * scale for c in ctx.series(x)]]
    extra = len(ctx.out) - 1
    return tuple(outputs + [POISON if training else None] * extra)


@rule("native_batch_norm", "_native_batch_norm_legit", "cudnn_batch_norm", "miopen_batch_norm")
def _batch_norm(
    ctx: Context,
):  # (input, weight, bias, running_mean, running_var, training, m, eps)
    return _batch_norm_affine(
        ctx, training=bool(ctx.arg(5)), running_var=ctx.arg(4), weight=ctx.arg(1), eps=ctx.arg(7)
    )


@rule("_native_batch_norm_legit_no_training")
def _batch_norm_eval(ctx: Context):  # (input, weight, bias, running_mean, running_var, m, eps)
    return _batch_norm_affine(
        ctx, training=False, running_var=ctx.arg(4), weight=ctx.arg(1), eps=ctx.arg(6)
    )
