"""Taylor rules of ops linear in the input-dependent arguments: reindexing, sums, adds,
products with a constant (and Cauchy products of two series), writes at constant indices."""

from __future__ import annotations

import torch
from torch.utils._pytree import tree_flatten, tree_unflatten

from geomlab.geometry.derivatives.ops import (
    PIECEWISE_CONSTANT_OPS,
    STRUCTURAL_OPS,
    tensor_leaves,
    written_arguments,
)
from geomlab.geometry.derivatives.taylor.recorder import (
    Context,
    Entry,
    UnsupportedOperation,
    rule,
)
from geomlab.geometry.derivatives.taylor.series import (
    Coefficients,
    broadcast_add,
    compose,
    elementwise_product,
    expand_to,
    lift,
    power_taylor,
)

__all__ = ["is_floating", "structural"]  # and the rules, registered in recorder.RULES


def is_floating(value: object) -> bool:
    return isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())


def structural(ctx: Context, *, zero_constants: bool = False):
    """A linear op with no constant part: apply it to every coefficient (all orders and
    directions at once, through vmap). Tracked args of lower degree count as zero there.

    ``zero_constants``: the op is linear *jointly* in all its floating-point tensor arguments
    (``cat``, ``stack``, ``index_put``, ...), so an untracked floating argument (a learned
    CLS token, a buffer) is part of h₀ only and enters every coefficient as zeros. Without it
    untracked arguments keep their values (the weight of a convolution, the constant factor
    of a matmul). Integer and boolean tensors (indices, masks) always keep their values."""
    leaves, spec = tree_flatten((ctx.entry.args, ctx.entry.kwargs))
    if zero_constants:
        leaves = [
            torch.zeros_like(v) if is_floating(v) and ctx.series(v) is None else v for v in leaves
        ]
    positions = [i for i, v in enumerate(leaves) if ctx.series(v) is not None]
    if not positions:  # tracked, but every tracked argument is constant in t (detached)
        return None
    series = [ctx.series(leaves[i]) for i in positions]
    degree = max(len(c) for c in series)

    def apply(*batched):
        current = list(leaves)
        for i, value in zip(positions, batched, strict=True):
            current[i] = value
        args, kwargs = tree_unflatten(current, spec)
        return func(*args, **kwargs)

    func = ctx.entry.func
    if written_arguments(func, *tree_unflatten(leaves, spec)):
        # an in-place op (index_put_, masked_fill_): its out-of-place twin, so that no
        # coefficient another tensor still uses is overwritten
        func = getattr(getattr(torch.ops.aten, ctx.entry.name), func._overloadname)

    batched_apply = torch.func.vmap(apply)
    per_order = []
    for k in range(degree):  # one call per order, the K directions batched by vmap
        coefficients = [c[k] if k < len(c) else torch.zeros_like(c[0]) for c in series]
        per_order.append(batched_apply(*coefficients))
    if isinstance(per_order[0], torch.Tensor):
        return per_order
    return [
        [r[i] for r in per_order] if isinstance(per_order[0][i], torch.Tensor) else None
        for i in range(len(per_order[0]))
    ]


@rule(*STRUCTURAL_OPS)
def _joint_linear(ctx: Context):
    """Ops linear in all their floating tensor arguments jointly: constants are zeros in h_k."""
    if not any(is_floating(t) for t in tensor_leaves(ctx.out)):
        return None  # e.g. a cast to an integer dtype: constant, as autograd has it
    return structural(ctx, zero_constants=True)


@rule("view", "_unsafe_view", "_reshape_alias")
def _view(ctx: Context):
    """A reshape of the primal: the coefficients, laid out their own way, are reshaped (a
    ``view`` of a coefficient with another memory layout may not exist)."""
    coefficients = ctx.series(ctx.arg(0))
    if coefficients is None:
        return None
    return [c.reshape(c.shape[0], *ctx.out.shape) for c in coefficients]


@rule("as_strided")
def _as_strided(ctx: Context):
    """``as_strided(x, size, stride, offset)`` reads x's memory: map each output element to the
    element of x stored there (refused where it reads memory outside x), then gather."""
    x = ctx.arg(0)
    coefficients = ctx.series(x)
    if coefficients is None:
        return None
    if any(st == 0 and n > 1 for n, st in zip(x.shape, x.stride(), strict=True)):
        raise UnsupportedOperation("as_strided", "of an input that overlaps itself (expanded)")
    size, stride = ctx.arg(1, "size"), ctx.arg(2, "stride")
    offset = ctx.arg(3, "storage_offset")
    offset = x.storage_offset() if offset is None else offset
    length = x.untyped_storage().nbytes() // x.element_size()
    owner = torch.full((length,), -1, dtype=torch.long, device=x.device)
    numel = x.numel()
    owner.as_strided(x.shape, x.stride(), x.storage_offset()).copy_(
        torch.arange(numel, device=x.device).view(x.shape)
    )
    positions = torch.arange(length, device=x.device).as_strided(size, stride, offset)
    logical = owner[positions]
    if (logical < 0).any():
        raise UnsupportedOperation("as_strided", "reads memory outside its input")
    return [c.reshape(c.shape[0], numel)[:, logical.reshape(-1)].reshape(c.shape[0], *size)
            for c in coefficients]  # fmt: skip


@rule("detach")
def _detach(ctx: Context):
    return None  # as in autograd: no derivative flows through detach


@rule("zero", *PIECEWISE_CONSTANT_OPS)
def _constant(ctx: Context):
    return None  # overwritten with a constant, or piecewise constant in x


@rule("fill")
def _fill(ctx: Context):  # fill_(self, value): every element now holds value's series
    value = ctx.series(ctx.arg(1))
    if value is None:
        return None  # a number or a constant tensor
    return [expand_to(c, ctx.out).clone() for c in value]


@rule("copy")
def _copy(ctx: Context):  # copy_(self, src): self now holds src
    src = ctx.series(ctx.arg(1))
    if src is None:
        return None
    target_shape = ctx.out.shape
    return [c.expand(c.shape[0], *target_shape).to(ctx.out.dtype).clone() for c in src]


@rule("add", "sub")
def _add(ctx: Context):
    a, b = ctx.arg(0), ctx.arg(1)
    alpha = ctx.arg(2, "alpha", 1)
    if ctx.entry.name == "sub":
        alpha = -alpha
    sa, sb = ctx.series(a), ctx.series(b)
    out = []
    for k in range(max(len(sa or []), len(sb or []))):
        term = None
        if sa and k < len(sa):
            term = sa[k]
        if sb and k < len(sb):
            scaled = sb[k] if alpha == 1 else alpha * sb[k]
            term = scaled if term is None else broadcast_add(term, scaled)
        out.append(expand_to(term, ctx.out))
    return out


@rule("mul")
def _mul(ctx: Context):
    a, b = ctx.arg(0), ctx.arg(1)
    return elementwise_product(a, ctx.series(a), b, ctx.series(b), ctx.order, ctx.out)


def _reciprocal_series(x0: torch.Tensor, sx: Coefficients, order: int, ndim: int):
    return compose(power_taylor(x0, -1.0, order), [lift(c, ndim) for c in sx], order)


@rule("rsub")
def _rsub(ctx: Context):  # other − alpha · self
    a, b, alpha = ctx.arg(0), ctx.arg(1), ctx.arg(2, "alpha", 1)
    sa, sb = ctx.series(a), ctx.series(b)
    out = []
    for k in range(max(len(sa or []), len(sb or []))):
        term = -alpha * sa[k] if sa and k < len(sa) else None
        if sb and k < len(sb):
            term = sb[k] if term is None else broadcast_add(term, sb[k])
        out.append(expand_to(term, ctx.out))
    return out


@rule("where")
def _where(ctx: Context):  # where(condition, self, other)
    condition, a, b = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    if ctx.series(condition) is not None:
        raise UnsupportedOperation("where", "input-dependent condition tensor")
    sa, sb = ctx.series(a), ctx.series(b)
    out = []
    for k in range(max(len(sa or []), len(sb or []))):
        left = sa[k] if sa and k < len(sa) else None
        right = sb[k] if sb and k < len(sb) else None
        like = left if left is not None else right
        left = left if left is not None else torch.zeros_like(like)
        right = right if right is not None else torch.zeros_like(like)
        ndim = ctx.out.dim() + 1
        out.append(expand_to(torch.where(condition, lift(left, ndim), lift(right, ndim)),
                              ctx.out))  # fmt: skip
    return out


@rule("div")
def _div(ctx: Context):
    a, b = ctx.arg(0), ctx.arg(1)
    sa, sb = ctx.series(a), ctx.series(b)
    if ctx.arg(2, "rounding_mode") is not None:
        raise UnsupportedOperation("div", "rounding mode")
    if sb is None:  # a / c: linear
        return [expand_to(lift(c, ctx.out.dim() + 1) / b, ctx.out) for c in sa]
    ndim = ctx.out.dim() + 1
    inverse = _reciprocal_series(b, sb, ctx.order, ndim)
    a0 = a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=ctx.out.dtype)
    return elementwise_product(a0, sa, 1 / b, inverse, ctx.order, ctx.out)


@rule("mm", "bmm", "matmul")
def _matmul(ctx: Context):
    a, b = ctx.arg(0), ctx.arg(1)
    sa, sb = ctx.series(a), ctx.series(b)
    if sa is not None and sb is not None:
        func = ctx.entry.func
        return _bilinear_cauchy(lambda x, y: func(x, y), a, sa, b, sb, ctx.order)
    return structural(ctx)


def _bilinear_cauchy(product, a0, sa, b0, sb, order):
    out = []
    for k in range(1, min(order, len(sa) + len(sb)) + 1):
        term = None
        for i in range(0, k + 1):
            left = a0 if i == 0 else (sa[i - 1] if i <= len(sa) else None)
            right = b0 if i == k else (sb[k - i - 1] if k - i <= len(sb) else None)
            if left is None or right is None:
                continue
            if i == 0:
                value = torch.func.vmap(product, in_dims=(None, 0))(left, right)
            elif i == k:
                value = torch.func.vmap(product, in_dims=(0, None))(left, right)
            else:
                value = torch.func.vmap(product)(left, right)
            term = value if term is None else term + value
        out.append(term)
    return out


@rule("addmm", "baddbmm")
def _addmm(ctx: Context):  # beta * bias + alpha * (m1 @ m2); baddbmm batched
    bias, m1, m2 = ctx.arg(0), ctx.arg(1), ctx.arg(2)
    beta, alpha = ctx.arg(3, "beta", 1), ctx.arg(4, "alpha", 1)
    product = torch.mm if ctx.entry.name == "addmm" else torch.bmm
    s1, s2 = ctx.series(m1), ctx.series(m2)
    if s1 is not None and s2 is not None:
        result = _bilinear_cauchy(product, m1, s1, m2, s2, ctx.order)
    elif s1 is not None:
        result = [torch.func.vmap(lambda c: product(c, m2))(c) for c in s1]
    elif s2 is not None:
        result = [torch.func.vmap(lambda c: product(m1, c))(c) for c in s2]
    else:
        result = []
    result = [alpha * c for c in result] if alpha != 1 else result
    sb = ctx.series(bias) if beta != 0 else None  # beta = 0 ignores the bias (even NaN)
    if sb:
        ndim = ctx.out.dim() + 1
        result = [
            expand_to(
                broadcast_add(result[k], beta * sb[k])
                if k < len(result) and k < len(sb)
                else (result[k] if k < len(result) else lift(beta * sb[k], ndim)),
                ctx.out,
            )
            for k in range(max(len(result), len(sb)))
        ]
    return result or None


@rule("convolution", "_convolution")
def _convolution(ctx: Context):
    if ctx.series(ctx.arg(1)) is not None or ctx.series(ctx.arg(2)) is not None:
        raise UnsupportedOperation(ctx.entry.name, "input-dependent weight or bias")
    args = list(ctx.entry.args)
    args[2] = None
    entry = Entry(ctx.entry.func, ctx.entry.name, tuple(args), ctx.entry.kwargs, ctx.out, [])
    return structural(Context(entry, ctx.order, ctx.table))


@rule("index_put", "index_copy", "index_add", "scatter_add", "masked_scatter")
def _joint_write(ctx: Context):
    """Ops that place (or add) a source into a copy of ``self`` at integer indices or a boolean
    mask: linear jointly in self and the source, so a constant source or self enters as zeros
    (an index_put of a buffer into the input's tokens, a fresh ``zeros`` written in place)."""
    return structural(ctx, zero_constants=True)


@rule("masked_fill", "index_fill", "scatter")
def _fill_value(ctx: Context):
    """``masked_fill(self, mask, value)``, ``index_fill(self, dim, index, value)``,
    ``scatter(self, dim, index, src | value)``: the filled positions hold the value's series
    (zeros for a constant value, e.g. −inf in an attention mask), the rest self's."""
    if ctx.arg(4, "reduce") is not None:
        raise UnsupportedOperation(ctx.entry.name, "with a reduction")
    args, func = list(ctx.entry.args), ctx.entry.func
    value_index = 2 if ctx.entry.name == "masked_fill" else 3
    if not isinstance(args[value_index], torch.Tensor):
        args[value_index] = 0.0  # a number: constant along t
    elif ctx.entry.name == "masked_fill" and ctx.series(args[value_index]) is None:
        args[value_index], func = 0.0, torch.ops.aten.masked_fill.Scalar  # (vmap has a rule)
    entry = Entry(func, ctx.entry.name, tuple(args), ctx.entry.kwargs, ctx.out, [])
    return structural(Context(entry, ctx.order, ctx.table), zero_constants=True)


@rule("constant_pad_nd")
def _pad_rule(ctx: Context):
    args = list(ctx.entry.args)
    if len(args) > 2:
        args[2] = 0.0
    entry = Entry(ctx.entry.func, ctx.entry.name, tuple(args), ctx.entry.kwargs, ctx.out, [])
    return structural(Context(entry, ctx.order, ctx.table))
