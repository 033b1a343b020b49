"""Taylor mode: truncated Taylor polynomials of every activation along K input directions.

Along ``x(t) = x + t u`` every activation is a power series ``h(t) = h₀ + Σ_{k=1..n} h_k t^k``;
the loss's ``d_n = n! [tⁿ] L(t)``. This module pushes the coefficients ``h_1..h_n`` of all K
directions (stacked on a leading axis, ``[K, *h₀.shape]`` per order) through a network in one pass,
exact to rounding, in the spirit of JAX's ``jet``:

* linear ops act coefficient-wise (``h_k ↦ A h_k``; one batched call for all orders and
  directions, through ``torch.func.vmap``), their constant parts (bias, padding value) only on h₀;
* products of two series are Cauchy products, ``(ab)_k = Σ_i a_i b_{k−i}``;
* an elementwise ``f`` uses its derivatives at h₀ (Faà di Bruno: ``y_k = Σ_j f^{(j)}(h₀)/j! ·
  [t^k] (h(t) − h₀)^j``); GELU (both forms), tanh, sigmoid, SiLU, softplus, exp, log, erf,
  powers; ReLU-like ops keep their active mask;
* normalization layers go through their primitives (mean, variance, rsqrt, products):
  LayerNorm exactly; BatchNorm in eval mode as the affine map it is; train-mode BatchNorm with
  the batch statistics held constant along the direction (the policy of
  :mod:`geomlab.geometry.batch_statistics`);
* the loss's t-derivatives come from the polynomial logits: log-sum-exp as
  ``LSE(z₀) + log E_p[exp(Σ_k z_k t^k)]``, ``p = softmax(z₀)`` (cross-entropy), or a Cauchy
  square (MSE). When the logits are linear in t (piecewise-linear nets) this is the cumulant
  formula of :func:`geomlab.geometry.derivatives.loss_derivatives_along_tangents`.

How it runs: the model's ordinary forward pass runs under a ``TorchDispatchMode``
(:class:`TaylorRecorder`) that records every aten op touching an input-dependent tensor (and
raises :class:`UnsupportedOperation`, naming the op, for one without a rule). The coefficients
are then computed from that tape with ordinary torch ops *above* autograd, reading the primal
values the forward produced, so reverse mode through the result gives the parameter gradient
of a penalty. Each tensor's coefficients keep their true degree in t (a linear layer after the
input has degree 1), so piecewise-linear parts of a network cost one coefficient set per
direction.

Writes are refused conservatively: an op writing into a view (``buf[:, :8] = h``), reading a
tensor that shares memory with an input-dependent in-place write, or reading a tensor changed in
place since its value was recorded raises :class:`UnsupportedOperation` — never a wrong number.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import cache
from typing import Literal

import torch
from torch import nn
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_unflatten

from geomlab.geometry.attention import math_attention
from geomlab.geometry.eligibility import (
    PIECEWISE_CONSTANT_OPS,
    op_name,
    storage_key,
    written_arguments,
)
from geomlab.geometry.outputs import as_logits
from geomlab.geometry.refusal import Refused

Loss = Literal["cross_entropy", "mse"]
Coefficients = list[torch.Tensor]  # [h_1, ..., h_d], each [K, *h₀.shape]; d ≤ max order


class UnsupportedOperation(Refused, ValueError):
    """An op the Taylor pass has no rule for (or a write it cannot follow exactly)."""

    def __init__(self, op: str, detail: str = "") -> None:
        self.op = op
        super().__init__(f"no Taylor-mode rule for {op}{f' ({detail})' if detail else ''}")


class _Poison:
    """Marks an input-dependent tensor whose series is not computed (e.g. a batch-norm op's
    saved statistics); reading it in a later op is refused."""


POISON = _Poison()


# --- series algebra ------------------------------------------------------------------------


def _accumulate(term, a, b, value: float = 1.0):
    """``term + value · a · b``; ``term`` None: a fresh product. ``a`` may be a Python number.

    ``term`` is always a fresh intermediate of the caller's loop that no autograd node saved
    (products save their factors, not their result), so it is updated in place when it already
    has the full broadcast shape: one kernel and no allocation per term."""
    if not isinstance(a, torch.Tensor):
        a, b = b, a
    if not isinstance(b, torch.Tensor):
        if term is None:
            return a * (b * value)
        if term.shape == torch.broadcast_shapes(term.shape, a.shape):
            return term.add_(a, alpha=b * value)
        return torch.add(term, a, alpha=b * value)
    if term is None:
        product = a * b
        return product if value == 1.0 else product.mul_(value)
    if term.shape == torch.broadcast_shapes(term.shape, a.shape, b.shape):
        return term.addcmul_(a, b, value=value)
    return torch.addcmul(term, a, b, value=value)


def series_mul(a0, a: Coefficients | None, b0, b: Coefficients | None, order: int):
    """Coefficients 1..order of ``a(t) b(t)`` (Cauchy product); ``a0``, ``b0`` the primals."""
    if not a and not b:
        return None
    a, b = a or [], b or []
    out = []
    for k in range(1, min(order, len(a) + len(b)) + 1):
        term = None
        for i in range(0, k + 1):
            left = a0 if i == 0 else (a[i - 1] if i <= len(a) else None)
            right = b0 if k - i == 0 else (b[k - i - 1] if k - i <= len(b) else None)
            if left is None or right is None:
                continue
            term = _accumulate(term, left, right)
        out.append(term)
    return out


def _power_series(delta: Coefficients, order: int) -> list[list[torch.Tensor | None]]:
    """``powers[j][k]`` = ``[t^k] δ(t)^j`` for j, k = 1..order (None where zero), δ without a
    constant term."""
    powers: list[list[torch.Tensor | None]] = [[None] * (order + 1) for _ in range(order + 1)]
    for k in range(1, order + 1):
        powers[1][k] = delta[k - 1] if k <= len(delta) else None
    for k in range(2, order + 1):  # δ²: each cross term once, doubled (symmetry)
        term = None
        if k % 2 == 0 and powers[1][k // 2] is not None:
            term = powers[1][k // 2] * powers[1][k // 2]
        for i in range(1, (k + 1) // 2):
            left, right = powers[1][i], powers[1][k - i]
            if left is None or right is None:
                continue
            term = _accumulate(term, left, right, 2.0)
        powers[2][k] = term
    for j in range(3, order + 1):
        for k in range(j, order + 1):
            term = None
            for i in range(1, k - j + 2):  # δ_i · [t^{k−i}] δ^{j−1}
                left = powers[1][i]
                right = powers[j - 1][k - i]
                if left is None or right is None:
                    continue
                term = _accumulate(term, left, right)
            powers[j][k] = term
    return powers


def compose(taylor: Sequence[torch.Tensor], delta: Coefficients, order: int) -> Coefficients:
    """Faà di Bruno: coefficients 1..order of ``f(h₀ + δ(t))`` given ``taylor[j−1] =
    f^{(j)}(h₀)/j!`` for j = 1..order (broadcastable against the coefficients)."""
    powers = _power_series(delta, order)
    out = []
    for k in range(1, order + 1):
        term = None
        for j in range(1, k + 1):
            if powers[j][k] is None:
                continue
            term = _accumulate(term, powers[j][k], taylor[j - 1])
        out.append(term if term is not None else torch.zeros_like(delta[0]))
    return out


@cache
def _ode_polynomials(kind: str, order: int) -> tuple[tuple[float, ...], ...]:
    """Derivatives of tanh / sigmoid as polynomials in their own value:
    ``f^{(j)} = P_j(f)`` with ``P_1 = 1 − y²`` (tanh) or ``y − y²`` (sigmoid),
    ``P_{j+1} = P_j'(y) · P_1(y)``. Coefficients lowest degree first."""
    base = {"tanh": (1.0, 0.0, -1.0), "sigmoid": (0.0, 1.0, -1.0)}[kind]
    polys = [base]
    for _ in range(1, order):
        p = polys[-1]
        dp = [i * p[i] for i in range(1, len(p))]
        product = [0.0] * (len(dp) + len(base) - 1)
        for i, ci in enumerate(dp):
            for j, cj in enumerate(base):
                product[i + j] += ci * cj
        polys.append(tuple(product))
    return tuple(polys)


def _horner(coefficients: Sequence[float], y: torch.Tensor) -> torch.Tensor:
    """``Σ_i c_i y^i`` by Horner's rule (no op for zero coefficients; one fill if constant)."""
    coefficients = list(coefficients)
    while len(coefficients) > 1 and coefficients[-1] == 0:
        coefficients.pop()
    if len(coefficients) == 1:
        return torch.full_like(y, coefficients[0])
    return _horner_tail(coefficients, y)


def _horner_tail(coefficients: list[float], y: torch.Tensor) -> torch.Tensor:
    in_place = not torch.is_grad_enabled()  # (with autograd, mul_ would need the old value)
    result = y * coefficients[-1]
    for index in range(len(coefficients) - 2, -1, -1):
        c = coefficients[index]
        if c != 0:
            result = result.add_(c)  # adding a number saves nothing for backward
        if index > 0:
            result = result.mul_(y) if in_place else result * y
    return result


def evaluate_polynomial(coefficients: Sequence[float], x: torch.Tensor, square: torch.Tensor):
    """``Σ_i c_i x^i`` using ``square = x²`` when the polynomial is even or odd (half the
    Horner steps)."""
    coefficients = list(coefficients)
    if all(c == 0 for c in coefficients[1::2]):
        return _horner(coefficients[0::2], square)
    if all(c == 0 for c in coefficients[0::2]):
        return x * _horner(coefficients[1::2], square)
    return _horner(coefficients, x)


def _scaled_polynomials(polys, offset: int = 1) -> list[tuple[float, ...]]:
    """``P_j / j!`` for j = offset, offset + 1, ..."""
    return [tuple(c / math.factorial(j + offset) for c in p) for j, p in enumerate(polys)]


def tanh_taylor(y: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``f^{(j)}(x)/j!`` for tanh, from ``y = tanh(x)`` (polynomials in y, 1/j! folded in)."""
    square = y * y
    polys = _scaled_polynomials(_ode_polynomials("tanh", order))
    return [evaluate_polynomial(p, y, square) for p in polys]


def sigmoid_taylor(s: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``f^{(j)}(x)/j!`` for the logistic sigmoid, from ``s = σ(x)``."""
    return [_horner(p, s) for p in _scaled_polynomials(_ode_polynomials("sigmoid", order))]


def silu_taylor(x: torch.Tensor, s: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``f^{(j)}(x)/j!`` for ``x σ(x)``: ``f^{(j)} = x σ^{(j)} + j σ^{(j−1)}`` (σ^{(0)} = σ)."""
    sig = [_horner(p, s) for p in _ode_polynomials("sigmoid", order)]  # σ^{(1..order)}
    lower = [s, *sig[:-1]]  # σ^{(0..order−1)}
    return [(x * sig[j - 1] + j * lower[j - 1]) / math.factorial(j) for j in range(1, order + 1)]


@cache
def _gelu_polynomials(order: int) -> tuple[tuple[float, ...], ...]:
    """For j = 2..order: ``Q_j`` with ``f^{(j)}(x)/j! = Q_j(x) e^{−x²/2}`` for ``f = x Φ(x)``;
    from ``f^{(j)} = x φ^{(j−1)} + j φ^{(j−2)}``, ``φ^{(m)} = (−1)^m He_m φ``."""
    hermite = [[1.0], [0.0, 1.0]]  # probabilists' He_m, lowest degree first
    for m in range(1, order):
        a = [0.0, *hermite[m]]  # x He_m
        b = [m * c for c in hermite[m - 1]] + [0.0] * (len(a) - len(hermite[m - 1]))
        hermite.append([ai - bi for ai, bi in zip(a, b, strict=True)])
    norm = 1 / math.sqrt(2 * math.pi)
    out = []
    for j in range(2, order + 1):
        first = [0.0, *[(-1) ** (j - 1) * c for c in hermite[j - 1]]]  # x φ^{(j−1)} / φ
        second = [j * (-1) ** (j - 2) * c for c in hermite[j - 2]]
        second += [0.0] * (len(first) - len(second))
        scale = norm / math.factorial(j)
        out.append(tuple(scale * (f + g) for f, g in zip(first, second, strict=True)))
    return tuple(out)


def gelu_erf_taylor(x: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``f^{(j)}(x)/j!`` for GELU ``x Φ(x)``: ``f' = Φ + x φ``; for j ≥ 2 a polynomial in x times
    ``e^{−x²/2}`` (:func:`_gelu_polynomials`)."""
    square = x * x
    gauss = torch.exp(square * -0.5)
    cdf = torch.erf(x * (1 / math.sqrt(2))) * 0.5 + 0.5
    out = [cdf + x * gauss * (1 / math.sqrt(2 * math.pi))]
    for poly in _gelu_polynomials(order):
        out.append(evaluate_polynomial(poly, x, square) * gauss)
    return out


def _hermite_prob(m: int, x: torch.Tensor) -> torch.Tensor:
    """Probabilists' Hermite polynomial He_m(x)."""
    previous, current = torch.ones_like(x), x
    if m == 0:
        return previous
    for k in range(1, m):
        previous, current = current, x * current - k * previous
    return current


def power_taylor(x: torch.Tensor, exponent: float, order: int) -> list[torch.Tensor]:
    """``f^{(j)}(x)/j!`` for ``x^p``: ``C(p, j) x^{p−j}``."""
    out, falling = [], 1.0
    for j in range(1, order + 1):
        falling *= (exponent - j + 1) / j
        out.append(falling * x ** (exponent - j))
    return out


def log_taylor(x: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``f^{(j)}(x)/j!`` for log: ``(−1)^{j−1} / (j x^j)``."""
    return [(-1) ** (j - 1) / (j * x**j) for j in range(1, order + 1)]


def exp_taylor(y: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``f^{(j)}(x)/j!`` for exp, from ``y = exp(x)``."""
    return [y / math.factorial(j) for j in range(1, order + 1)]


def erf_taylor(x: torch.Tensor, order: int) -> list[torch.Tensor]:
    """``f^{(j)}(x)/j!`` for erf: ``2/√π (−1)^{j−1} H_{j−1}(x) e^{−x²}`` (physicists' H)."""
    gauss = 2 / math.sqrt(math.pi) * torch.exp(-x * x)
    out = []
    for j in range(1, order + 1):
        m = j - 1  # H_m(x) = 2^{m/2} He_m(√2 x)
        hermite = 2 ** (m / 2) * _hermite_prob(m, math.sqrt(2) * x)
        out.append((-1) ** m * hermite * gauss / math.factorial(j))
    return out


# --- the tape --------------------------------------------------------------------------------


@dataclass
class _Entry:
    func: Callable
    name: str
    args: tuple
    kwargs: dict
    out: object
    versions: list[tuple[torch.Tensor, int]]


def _tensor_leaves(value) -> list[torch.Tensor]:
    return [v for v in tree_flatten(value)[0] if isinstance(v, torch.Tensor)]


class TaylorRecorder(TorchDispatchMode):
    """Records the aten ops of a forward pass that touch a tensor depending on ``inputs``.

    Raises :class:`UnsupportedOperation` during the pass for an op without a rule."""

    def __init__(self, inputs: torch.Tensor) -> None:
        super().__init__()
        self.tape: list[_Entry] = []
        self._tracked: dict[int, torch.Tensor] = {id(inputs): inputs}
        self._versions: dict[int, int] = {id(inputs): inputs._version}
        self._written_storages: set[int] = set()
        # tensors written in place by the last op: autograd bumps their version counter only
        # after the op returns, so their versions are read at the next op (or at the end)
        self._refresh: list[tuple[_Entry, torch.Tensor]] = []
        self._fresh: list[tuple[_Entry | None, torch.Tensor]] = []

    def is_tracked(self, value: object) -> bool:
        return isinstance(value, torch.Tensor) and id(value) in self._tracked

    def settle(self) -> None:
        """Record the versions of tensors the last op wrote in place (call after the pass)."""
        for entry, tensor in self._refresh:
            if entry.name not in _PRIMAL_FREE and entry.name not in _BILINEAR:
                entry.versions.append((tensor, tensor._version))
            if id(tensor) in self._tracked:
                self._versions[id(tensor)] = tensor._version
        self._refresh = []
        for entry, tensor in self._fresh:
            if entry is not None:
                entry.versions.append((tensor, tensor._version))
            self._versions[id(tensor)] = tensor._version
        self._fresh = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        self.settle()
        leaves = _tensor_leaves((args, kwargs))
        tracked = [t for t in leaves if id(t) in self._tracked]
        name = op_name(func)
        for tensor in tracked:  # a view of a tensor changed in place since: stale series
            if tensor._version != self._versions[id(tensor)]:
                raise UnsupportedOperation(name, "reads a tensor changed in place through an alias")
        if self._written_storages:
            for tensor in leaves:
                written_before = storage_key(tensor) in self._written_storages
                if written_before and id(tensor) not in self._tracked:
                    raise UnsupportedOperation(
                        name, "reads memory written in place with input-dependent values"
                    )
        if not tracked:
            return func(*args, **kwargs)
        if name in _VALUE_FREE or (
            name in PIECEWISE_CONSTANT_OPS and not written_arguments(func, args, kwargs)
        ):
            return func(*args, **kwargs)
        if name not in RULES:
            raise UnsupportedOperation(name)
        written = written_arguments(func, args, kwargs)
        if written:
            self._check_write(name, func, args, written)
        written_ids = {id(t) for t in written}
        # the values a rule reads must not change before the replay: constants always, and
        # input-dependent arguments unless the rule is linear in them
        primal_free = name in _PRIMAL_FREE or (
            name in _BILINEAR
            and len(tracked) == 1
            and not (name == "div" and len(args) > 1 and self.is_tracked(args[1]))
        )
        versions = [
            (t, t._version)
            for t in leaves
            if id(t) not in written_ids and not (primal_free and id(t) in self._tracked)
        ]
        out = func(*args, **kwargs)
        for tensor in written:
            key = storage_key(tensor)
            if key != 0 and tensor is not out:
                self._written_storages.add(key)  # e.g. running statistics: never read back
        outputs = [t for t in _tensor_leaves(out) if id(t) not in written_ids]
        entry = _Entry(func, name, args, kwargs, out, versions)
        self.tape.append(entry)
        self._refresh += [(entry, t) for t in written]
        # a view's output shares its base's version counter only once autograd's view layer
        # (above this mode) has wrapped it: its version is read at the next op, too
        self._fresh += [(entry if name in _READS_OUTPUT else None, t) for t in outputs]
        for tensor in _tensor_leaves(out):
            self._tracked[id(tensor)] = tensor
            self._versions[id(tensor)] = tensor._version
        return out

    def _check_write(self, name: str, func, args, written: list[torch.Tensor]) -> None:
        """In-place ops are followed only where exact: into a tensor that is not a view, by an
        op whose rule does not need the overwritten value (batch norm may write its running
        statistics, which are then never read as input-dependent)."""
        for tensor in written:
            if tensor._base is not None:
                raise UnsupportedOperation(name, "writes into a view of another tensor")
        if name in _BATCH_NORM_RULES:
            return
        if name not in _INPLACE_SAFE or len(written) != 1 or written[0] is not args[0]:
            raise UnsupportedOperation(name, "in place")
        if name == "leaky_relu" and not (len(args) > 1 and args[1] > 0) and len(args) > 1:
            raise UnsupportedOperation(name, "in place with a non-positive slope")
        if name in ("mul", "div") and (
            not self.is_tracked(args[0]) or self.is_tracked(args[1] if len(args) > 1 else None)
        ):
            raise UnsupportedOperation(name, "in place with an input-dependent factor")


_BILINEAR = frozenset({"mul", "div", "mm", "bmm", "matmul", "addmm"})
_PRIMAL_FREE = frozenset(  # linear rules: they never read an input-dependent primal
    {*("add", "sub", "copy", "detach", "fill", "zero", "convolution", "_convolution",
       "index_put", "index_copy", "index_add", "scatter_add", "masked_scatter", "masked_fill",
       "index_fill", "scatter",
       "constant_pad_nd", "native_dropout")}
)  # fmt: skip
# rules that read the op's primal output (so it must not change in place afterwards)
_READS_OUTPUT = frozenset({"tanh", "sigmoid", "exp", "expm1", "native_dropout", "_softmax",
                           "_safe_softmax", "max_pool1d_with_indices", "max_pool2d_with_indices",
                           "max_pool3d_with_indices"})  # fmt: skip
# in place, the rule reads only the series and post-op values that determine the same result
_INPLACE_SAFE = frozenset({"relu", "leaky_relu", "hardtanh", "add", "sub", "mul", "div", "copy",
                           "index_put", "index_copy", "index_add", "scatter_add", "masked_scatter",
                           "masked_fill", "index_fill", "scatter",
                           "fill", "zero", "native_dropout"})  # fmt: skip
_BATCH_NORM_RULES = frozenset({"native_batch_norm", "_native_batch_norm_legit", "cudnn_batch_norm",
                               "miopen_batch_norm"})  # fmt: skip


_VALUE_FREE = frozenset(
    {"empty_like", "zeros_like", "ones_like", "full_like", "rand_like", "randn_like",
     "new_empty", "new_zeros", "new_ones", "new_full", "sym_size", "sym_stride", "sym_numel",
     "size", "stride", "is_same_size"}
)  # fmt: skip


@dataclass
class _Context:
    """What a rule sees: the op's primal args/outputs and the coefficients of tracked args."""

    entry: _Entry
    order: int
    table: dict[int, Coefficients | _Poison | None] = field(repr=False)

    @property
    def args(self) -> tuple:
        return self.entry.args

    @property
    def out(self):
        return self.entry.out

    def arg(self, index: int, name: str | None = None, default=None):
        if index < len(self.entry.args):
            return self.entry.args[index]
        return self.entry.kwargs.get(name, default) if name else default

    def series(self, value) -> Coefficients | None:
        if not isinstance(value, torch.Tensor):
            return None
        coefficients = self.table.get(id(value))
        if isinstance(coefficients, _Poison):
            raise UnsupportedOperation(self.entry.name, "reads a tensor whose series is unknown")
        return coefficients


def replay(recorder: TaylorRecorder, inputs: torch.Tensor, directions: torch.Tensor, order: int):
    """Coefficients of every tracked tensor, by the rules, from the recorded tape: a dict
    ``id(tensor) → [h_1..h_d]`` (``None`` for tensors constant in t)."""
    table: dict[int, Coefficients | _Poison | None] = {id(inputs): [directions]}
    for entry in recorder.tape:
        for tensor, version in entry.versions:
            if tensor._version != version:
                raise UnsupportedOperation(
                    entry.name, "an argument was changed in place after the op read it"
                )
        result = RULES[entry.name](_Context(entry, order, table))
        outputs = _tensor_leaves(entry.out)
        if isinstance(entry.out, torch.Tensor):
            result = [result]
        for tensor, coefficients in zip(outputs, result, strict=False):
            if coefficients is not None and not isinstance(coefficients, _Poison):
                coefficients = [c for c in coefficients]
                if not coefficients:
                    coefficients = None
            table[id(tensor)] = coefficients
    return table


# --- rules ------------------------------------------------------------------------------------

RULES: dict[str, Callable[[_Context], object]] = {}


def rule(*names: str):
    def register(fn):
        for name in names:
            RULES[name] = fn
        return fn

    return register


def _is_floating(value: object) -> bool:
    return isinstance(value, torch.Tensor) and (value.is_floating_point() or value.is_complex())


def _structural(ctx: _Context, *, zero_constants: bool = False):
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
            torch.zeros_like(v) if _is_floating(v) and ctx.series(v) is None else v for v in leaves
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


STRUCTURAL_OPS = (  # also listed in _PRIMAL_FREE below
    "view", "_unsafe_view", "reshape", "t", "transpose", "permute", "expand", "clone",
    "contiguous", "slice", "select", "cat", "stack", "squeeze", "unsqueeze", "flatten",
    "alias", "sum", "mean", "avg_pool1d", "avg_pool2d", "avg_pool3d", "adaptive_avg_pool1d",
    "adaptive_avg_pool2d", "_adaptive_avg_pool2d", "split", "split_with_sizes", "unbind",
    "index_select", "_to_copy", "neg", "gather", "unfold", "flip", "roll", "repeat",
    "pixel_shuffle", "narrow", "movedim", "diagonal", "tril", "triu", "unflatten",
    "lift_fresh", "index",
)  # fmt: skip


@rule(*STRUCTURAL_OPS)
def _joint_linear(ctx: _Context):
    """Ops linear in all their floating tensor arguments jointly: constants are zeros in h_k."""
    if not any(_is_floating(t) for t in _tensor_leaves(ctx.out)):
        return None  # e.g. a cast to an integer dtype: constant, as autograd has it
    return _structural(ctx, zero_constants=True)


_PRIMAL_FREE = _PRIMAL_FREE | frozenset(STRUCTURAL_OPS) | {"view", "_unsafe_view", "_reshape_alias"}


@rule("view", "_unsafe_view", "_reshape_alias")
def _view(ctx: _Context):
    """A reshape of the primal: the coefficients, laid out their own way, are reshaped (a
    ``view`` of a coefficient with another memory layout may not exist)."""
    coefficients = ctx.series(ctx.arg(0))
    if coefficients is None:
        return None
    return [c.reshape(c.shape[0], *ctx.out.shape) for c in coefficients]


@rule("as_strided")
def _as_strided(ctx: _Context):
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
def _detach(ctx: _Context):
    return None  # as in autograd: no derivative flows through detach


@rule("zero", *PIECEWISE_CONSTANT_OPS)
def _constant(ctx: _Context):
    return None  # overwritten with a constant, or piecewise constant in x


@rule("fill")
def _fill(ctx: _Context):  # fill_(self, value): every element now holds value's series
    value = ctx.series(ctx.arg(1))
    if value is None:
        return None  # a number or a constant tensor
    return [_expand_to(c, ctx.out).clone() for c in value]


@rule("copy")
def _copy(ctx: _Context):  # copy_(self, src): self now holds src
    src = ctx.series(ctx.arg(1))
    if src is None:
        return None
    target_shape = ctx.out.shape
    return [c.expand(c.shape[0], *target_shape).to(ctx.out.dtype).clone() for c in src]


@rule("add", "sub")
def _add(ctx: _Context):
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
            term = scaled if term is None else _broadcast_add(term, scaled)
        out.append(_expand_to(term, ctx.out))
    return out


def _broadcast_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ndim = max(a.dim(), b.dim())
    return _lift(a, ndim) + _lift(b, ndim)


def _lift(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """A coefficient ``[K, *shape]`` with singleton dims inserted after K up to ``ndim`` dims, so
    that it broadcasts like its primal would."""
    missing = ndim - c.dim()
    if missing <= 0:
        return c
    return c.reshape(c.shape[0], *([1] * missing), *c.shape[1:])


def _expand_to(c: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    c = _lift(c, out.dim() + 1)
    return c.expand(c.shape[0], *out.shape)


def _coefficient_view(c: torch.Tensor, primal_ndim: int) -> torch.Tensor:
    return _lift(c, primal_ndim + 1)


def _elementwise_product(a0, sa, b0, sb, order: int, out: torch.Tensor):
    ndim = out.dim() + 1
    sa = [_lift(c, ndim) for c in sa] if sa else None
    sb = [_lift(c, ndim) for c in sb] if sb else None
    result = series_mul(a0, sa, b0, sb, order)
    return [_expand_to(c, out) for c in result] if result else None


@rule("mul")
def _mul(ctx: _Context):
    a, b = ctx.arg(0), ctx.arg(1)
    return _elementwise_product(a, ctx.series(a), b, ctx.series(b), ctx.order, ctx.out)


def _reciprocal_series(x0: torch.Tensor, sx: Coefficients, order: int, ndim: int):
    return compose(power_taylor(x0, -1.0, order), [_lift(c, ndim) for c in sx], order)


@rule("rsub")
def _rsub(ctx: _Context):  # other − alpha · self
    a, b, alpha = ctx.arg(0), ctx.arg(1), ctx.arg(2, "alpha", 1)
    sa, sb = ctx.series(a), ctx.series(b)
    out = []
    for k in range(max(len(sa or []), len(sb or []))):
        term = -alpha * sa[k] if sa and k < len(sa) else None
        if sb and k < len(sb):
            term = sb[k] if term is None else _broadcast_add(term, sb[k])
        out.append(_expand_to(term, ctx.out))
    return out


@rule("where")
def _where(ctx: _Context):  # where(condition, self, other)
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
        out.append(_expand_to(torch.where(condition, _lift(left, ndim), _lift(right, ndim)),
                              ctx.out))  # fmt: skip
    return out


def _log_normalizer(ctx: _Context, probs: torch.Tensor):
    """``δ`` and the series of ``log E_p[exp δ]`` along the softmax dim (kept)."""
    x, dim = ctx.arg(0), ctx.arg(1)
    delta = [_lift(c, x.dim() + 1) for c in ctx.series(x)]
    coefficient_dim = dim if dim < 0 else dim + 1
    exp_delta = compose([1.0 / math.factorial(j) for j in range(1, ctx.order + 1)], delta,
                        ctx.order)  # fmt: skip
    moments = [(probs * e).sum(dim=coefficient_dim, keepdim=True) for e in exp_delta]
    one = torch.ones((), dtype=x.dtype, device=x.device)
    return delta, compose(log_taylor(one, ctx.order), moments, ctx.order)


@rule("_log_softmax")
def _log_softmax(ctx: _Context):  # log_softmax(x)(t) = log p + δ − log E_p[exp δ]
    probs = torch.softmax(ctx.arg(0), dim=ctx.arg(1))
    delta, log_m = _log_normalizer(ctx, probs)
    return [d - m for d, m in zip(_padded(delta, ctx.order), log_m, strict=True)]


@rule("_softmax", "_safe_softmax")
def _softmax(ctx: _Context):  # softmax(x)(t) = p · exp(δ − log E_p[exp δ])
    # p is the op's own output: for ``_safe_softmax`` (SDPA's math form) a row masked entirely
    # with −inf is zero there, and so are all its coefficients (its moments are 0, log m = 0)
    probs = ctx.out
    delta, log_m = _log_normalizer(ctx, probs)
    shift = [d - m for d, m in zip(_padded(delta, ctx.order), log_m, strict=True)]
    exp_shift = compose([1.0 / math.factorial(j) for j in range(1, ctx.order + 1)], shift,
                        ctx.order)  # fmt: skip
    return [probs * e for e in exp_shift]


@rule("div")
def _div(ctx: _Context):
    a, b = ctx.arg(0), ctx.arg(1)
    sa, sb = ctx.series(a), ctx.series(b)
    if ctx.arg(2, "rounding_mode") is not None:
        raise UnsupportedOperation("div", "rounding mode")
    if sb is None:  # a / c: linear
        return [_expand_to(_lift(c, ctx.out.dim() + 1) / b, ctx.out) for c in sa]
    ndim = ctx.out.dim() + 1
    inverse = _reciprocal_series(b, sb, ctx.order, ndim)
    a0 = a if isinstance(a, torch.Tensor) else torch.as_tensor(a, dtype=ctx.out.dtype)
    return _elementwise_product(a0, sa, 1 / b, inverse, ctx.order, ctx.out)


@rule("mm", "bmm", "matmul")
def _matmul(ctx: _Context):
    a, b = ctx.arg(0), ctx.arg(1)
    sa, sb = ctx.series(a), ctx.series(b)
    if sa is not None and sb is not None:
        func = ctx.entry.func
        return _bilinear_cauchy(lambda x, y: func(x, y), a, sa, b, sb, ctx.order)
    return _structural(ctx)


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
def _addmm(ctx: _Context):  # beta * bias + alpha * (m1 @ m2); baddbmm batched
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
            _expand_to(
                _broadcast_add(result[k], beta * sb[k])
                if k < len(result) and k < len(sb)
                else (result[k] if k < len(result) else _lift(beta * sb[k], ndim)),
                ctx.out,
            )
            for k in range(max(len(result), len(sb)))
        ]
    return result or None


@rule("convolution", "_convolution")
def _convolution(ctx: _Context):
    if ctx.series(ctx.arg(1)) is not None or ctx.series(ctx.arg(2)) is not None:
        raise UnsupportedOperation(ctx.entry.name, "input-dependent weight or bias")
    args = list(ctx.entry.args)
    args[2] = None
    entry = _Entry(ctx.entry.func, ctx.entry.name, tuple(args), ctx.entry.kwargs, ctx.out, [])
    return _structural(_Context(entry, ctx.order, ctx.table))


@rule("index_put", "index_copy", "index_add", "scatter_add", "masked_scatter")
def _joint_write(ctx: _Context):
    """Ops that place (or add) a source into a copy of ``self`` at integer indices or a boolean
    mask: linear jointly in self and the source, so a constant source or self enters as zeros
    (an index_put of a buffer into the input's tokens, a fresh ``zeros`` written in place)."""
    return _structural(ctx, zero_constants=True)


@rule("masked_fill", "index_fill", "scatter")
def _fill_value(ctx: _Context):
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
    entry = _Entry(func, ctx.entry.name, tuple(args), ctx.entry.kwargs, ctx.out, [])
    return _structural(_Context(entry, ctx.order, ctx.table), zero_constants=True)


@rule("constant_pad_nd")
def _pad_rule(ctx: _Context):
    args = list(ctx.entry.args)
    if len(args) > 2:
        args[2] = 0.0
    entry = _Entry(ctx.entry.func, ctx.entry.name, tuple(args), ctx.entry.kwargs, ctx.out, [])
    return _structural(_Context(entry, ctx.order, ctx.table))


def _masked(ctx: _Context, mask: torch.Tensor, index: int = 0, scale=None):
    coefficients = ctx.series(ctx.arg(index))
    weight = mask.to(ctx.out.dtype if isinstance(ctx.out, torch.Tensor) else mask.dtype)
    if scale is not None:
        weight = weight * scale
    return [c * weight for c in coefficients]


@rule("relu")
def _relu(ctx: _Context):
    return _masked(ctx, ctx.arg(0) > 0)


@rule("threshold")
def _threshold(ctx: _Context):
    return _masked(ctx, ctx.arg(0) > ctx.arg(1))


@rule("leaky_relu")
def _leaky_relu(ctx: _Context):
    x, slope = ctx.arg(0), ctx.arg(1, "negative_slope", 0.01)
    positive = (x > 0).to(x.dtype)
    return [c * (positive + slope * (1 - positive)) for c in ctx.series(x)]


@rule("hardtanh")
def _hardtanh(ctx: _Context):
    x = ctx.arg(0)
    low, high = ctx.arg(1, "min_val", -1.0), ctx.arg(2, "max_val", 1.0)
    return _masked(ctx, (x > low) & (x < high))


@rule("clamp_min")
def _clamp_min(ctx: _Context):
    if ctx.series(ctx.arg(1)) is not None:
        raise UnsupportedOperation("clamp_min", "input-dependent bound")
    return _masked(ctx, ctx.arg(0) >= ctx.arg(1))


@rule("clamp")
def _clamp(ctx: _Context):  # clamp(x, min, max) with constant (or absent) bounds
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
def _clamp_max(ctx: _Context):
    if ctx.series(ctx.arg(1)) is not None:
        raise UnsupportedOperation("clamp_max", "input-dependent bound")
    return _masked(ctx, ctx.arg(0) <= ctx.arg(1))


@rule("abs")
def _abs(ctx: _Context):
    return _masked(ctx, torch.ones(()), scale=torch.sign(ctx.arg(0)))


@rule("max_pool2d_with_indices", "max_pool3d_with_indices", "max_pool1d_with_indices")
def _max_pool(ctx: _Context):
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
def _native_dropout(ctx: _Context):  # (input, p, train) -> (output, mask)
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

    def apply(ctx: _Context):
        x = ctx.arg(0)
        delta = [_lift(c, x.dim() + 1) for c in ctx.series(x)]
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
def _pow(ctx: _Context):
    base, exponent = ctx.arg(0), ctx.arg(1)
    if ctx.series(exponent) is not None or isinstance(exponent, torch.Tensor):
        raise UnsupportedOperation("pow", "tensor exponent")
    if not isinstance(base, torch.Tensor):
        raise UnsupportedOperation("pow", "scalar base")
    return _nonlinear(lambda c: power_taylor(base, float(exponent), c.order))(ctx)


@rule("gelu")
def _gelu(ctx: _Context):
    x = ctx.arg(0)
    delta = [_lift(c, x.dim() + 1) for c in ctx.series(x)]
    if ctx.entry.kwargs.get("approximate", "none") == "none":
        return compose(gelu_erf_taylor(x, ctx.order), delta, ctx.order)
    # tanh form: 0.5 x (1 + tanh(c (x + 0.044715 x³))), composed from series
    c = math.sqrt(2 / math.pi)
    cube = series_mul(x * x, series_mul(x, delta, x, delta, ctx.order), x, delta, ctx.order)
    inner0 = c * (x + 0.044715 * x**3)
    inner = [
        c * (d + 0.044715 * q)
        for d, q in zip(_padded(delta, ctx.order), _padded(cube, ctx.order), strict=True)
    ]
    tanh0 = torch.tanh(inner0)
    outer = compose(tanh_taylor(tanh0, ctx.order), inner, ctx.order)
    product = series_mul(x, delta, tanh0, outer, ctx.order)
    return [0.5 * (d + p) for d, p in zip(_padded(delta, len(product)), product, strict=True)]


def _padded(coefficients: Coefficients, length: int) -> Coefficients:
    out = list(coefficients[:length])
    while len(out) < length:
        out.append(torch.zeros_like(coefficients[0]))
    return out


@rule("silu")
def _silu(ctx: _Context):
    x = ctx.arg(0)
    delta = [_lift(c, x.dim() + 1) for c in ctx.series(x)]
    return compose(silu_taylor(x, torch.sigmoid(x), ctx.order), delta, ctx.order)


@rule("softplus")
def _softplus(ctx: _Context):
    x, beta, threshold = ctx.arg(0), ctx.arg(1, "beta", 1), ctx.arg(2, "threshold", 20)
    delta = [_lift(c, x.dim() + 1) for c in ctx.series(x)]
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
        torch.where(linear, d, y) for d, y in zip(_padded(delta, ctx.order), smooth, strict=True)
    ]


@rule("native_layer_norm")
def _layer_norm(ctx: _Context):  # (input, normalized_shape, weight, bias, eps)
    x, shape, weight, eps = ctx.arg(0), ctx.arg(1), ctx.arg(2), ctx.arg(4)
    if ctx.series(weight) is not None or ctx.series(ctx.arg(3)) is not None:
        raise UnsupportedOperation("native_layer_norm", "input-dependent weight or bias")
    dims = tuple(range(x.dim() - len(shape), x.dim()))
    coefficient_dims = tuple(d + 1 for d in dims)
    delta = [_lift(c, x.dim() + 1) for c in ctx.series(x)]
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


def _batch_norm_affine(ctx: _Context, *, training: bool, running_var, weight, eps):
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
    ctx: _Context,
):  # (input, weight, bias, running_mean, running_var, training, m, eps)
    return _batch_norm_affine(
        ctx, training=bool(ctx.arg(5)), running_var=ctx.arg(4), weight=ctx.arg(1), eps=ctx.arg(7)
    )


@rule("_native_batch_norm_legit_no_training")
def _batch_norm_eval(ctx: _Context):  # (input, weight, bias, running_mean, running_var, m, eps)
    return _batch_norm_affine(
        ctx, training=False, running_var=ctx.arg(4), weight=ctx.arg(1), eps=ctx.arg(6)
    )


# --- loss series and the driver --------------------------------------------------------------


def cross_entropy_series(
    logits: torch.Tensor, coefficients: Coefficients, labels: torch.Tensor, order: int
) -> Coefficients:
    """Coefficients 1..order of ``CE(z(t), y) = LSE(z(t)) − z_y(t)`` per (direction, sample):
    ``LSE(z(t)) = LSE(z₀) + log E_p[exp(δ_C(t))]``, ``δ = Σ_k z_k t^k``, ``p = softmax(z₀)``."""
    probs = torch.softmax(logits, dim=-1)
    exp_delta = compose([1.0 / math.factorial(j) for j in range(1, order + 1)], coefficients, order)
    moments = [(probs * e).sum(dim=-1) for e in exp_delta]  # [K, B] each; m₀ = 1
    one = torch.ones((), dtype=logits.dtype, device=logits.device)
    log_m = compose(log_taylor(one, order), moments, order)
    index = labels.expand(coefficients[0].shape[0], -1).unsqueeze(-1)
    out = []
    for k in range(order):
        label_term = coefficients[k].gather(-1, index).squeeze(-1) if k < len(coefficients) else 0
        out.append(log_m[k] - label_term)
    return out


def mse_series(
    outputs: torch.Tensor, coefficients: Coefficients, targets: torch.Tensor, order: int
) -> Coefficients:
    """Coefficients 1..order of the per-sample mean squared error ``mean_j (z_j(t) − y_j)²``."""
    error0 = outputs - targets
    square = series_mul(error0, coefficients, error0, coefficients, order)
    square = _padded(square, order)
    return [s.flatten(2).mean(dim=-1) for s in square]


def taylor_forward(
    model: nn.Module, inputs: torch.Tensor, directions: torch.Tensor, *, max_order: int
) -> tuple[torch.Tensor, Coefficients]:
    """The model's outputs and their Taylor coefficients 1..d along each direction
    (``[K, *outputs.shape]`` per order; ``d`` ≤ ``max_order`` is the output's degree in t)."""
    x = inputs.detach() if not inputs.requires_grad else inputs
    recorder = TaylorRecorder(x)
    # attention's fused kernels (MHA fast path, flash SDPA) have no rule; their math forms do
    with math_attention(), recorder:
        outputs = model(x)
    recorder.settle()
    outputs = as_logits(outputs)  # a tensor, or an HF-style output's .logits; else refused
    table = replay(recorder, x, directions, max_order)
    coefficients = table.get(id(outputs))
    if isinstance(coefficients, _Poison):
        raise UnsupportedOperation("model output", "its series is unknown")
    if not coefficients:
        coefficients = [torch.zeros(directions.shape[0], *outputs.shape, dtype=outputs.dtype,
                                    device=outputs.device)]  # fmt: skip
    return outputs, [_expand_to(c, outputs) for c in coefficients]


def loss_derivatives_from_series(
    outputs: torch.Tensor,
    coefficients: Coefficients,
    labels: torch.Tensor,
    *,
    max_order: int,
    loss: Loss = "cross_entropy",
) -> torch.Tensor:
    """``d_n = n! [tⁿ] L(t)``, n = 1..max_order: ``[max_order, K, B]``."""
    if loss == "cross_entropy":
        series = cross_entropy_series(outputs, coefficients, labels, max_order)
    elif loss == "mse":
        series = mse_series(outputs, coefficients, labels, max_order)
    else:
        raise ValueError(f"loss must be 'cross_entropy' or 'mse', got {loss!r}")
    return torch.stack([math.factorial(n + 1) * s for n, s in enumerate(series)])
