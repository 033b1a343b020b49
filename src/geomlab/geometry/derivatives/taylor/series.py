"""Taylor-series algebra: truncated power series of activations along K directions.

A series is ``h(t) = h₀ + Σ_{k=1..d} h_k t^k``; its :data:`Coefficients` ``[h_1..h_d]`` are
``[K, *h₀.shape]`` each (one row per direction). Products are Cauchy products
(:func:`series_mul`); an elementwise ``f`` composes by Faà di Bruno (:func:`compose`) from its
Taylor table ``f^{(j)}(h₀)/j!`` (``*_taylor`` below); the layout helpers broadcast a coefficient
like its primal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from functools import cache

import torch

__all__ = [
    "Coefficients", "broadcast_add", "compose", "elementwise_product", "erf_taylor",
    "evaluate_polynomial", "exp_taylor", "expand_to", "gelu_erf_taylor", "lift", "log_taylor",
    "padded", "power_taylor", "series_mul", "sigmoid_taylor", "silu_taylor", "tanh_taylor",
]  # fmt: skip

Coefficients = list[torch.Tensor]  # [h_1, ..., h_d], each [K, *h₀.shape]; d ≤ max order


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


# --- layout of coefficients ----------------------------------------------------------------


def broadcast_add(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    ndim = max(a.dim(), b.dim())
    return lift(a, ndim) + lift(b, ndim)


def lift(c: torch.Tensor, ndim: int) -> torch.Tensor:
    """A coefficient ``[K, *shape]`` with singleton dims inserted after K up to ``ndim`` dims, so
    that it broadcasts like its primal would."""
    missing = ndim - c.dim()
    if missing <= 0:
        return c
    return c.reshape(c.shape[0], *([1] * missing), *c.shape[1:])


def expand_to(c: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    c = lift(c, out.dim() + 1)
    return c.expand(c.shape[0], *out.shape)


def elementwise_product(a0, sa, b0, sb, order: int, out: torch.Tensor):
    ndim = out.dim() + 1
    sa = [lift(c, ndim) for c in sa] if sa else None
    sb = [lift(c, ndim) for c in sb] if sb else None
    result = series_mul(a0, sa, b0, sb, order)
    return [expand_to(c, out) for c in result] if result else None


def padded(coefficients: Coefficients, length: int) -> Coefficients:
    out = list(coefficients[:length])
    while len(out) < length:
        out.append(torch.zeros_like(coefficients[0]))
    return out
