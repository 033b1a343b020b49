"""One way for tests to compare a fast result with its reference: relative error in float64,
and an assertion whose failure message says by how much, where, and against what.

    from geomlab.testing.compare import assert_relative_close, relative_error

    assert_relative_close(operator @ v, dense @ v, rtol=1e-12, what="Fisher product")
    assert_relative_close(fast, nested, rtol=1e-10, what="derivatives", per="order", first=1)

``per="order"`` compares each slice along the first axis on its own (derivatives of different
orders differ by orders of magnitude: one relative error over all of them would hide a wrong
low order) and names the failing slice ("order 2: relative error 3.1e-07 > 1e-10 ...").

Two norms: ``norm="fro"`` (the default) is ``‖a − e‖_F / ‖e‖_F``; ``norm="max"`` is
``max |a − e| / max |e|``, what ``torch.testing.assert_close(a, e, rtol=0,
atol=rtol * e.abs().max())`` checks, and the scale in which every entry, large or small, must be
right to ``rtol`` of the largest. ``floor`` bounds the scale from below: where the reference
vanishes (a saturated softmax's derivatives), the comparison becomes an absolute one,
``difference / floor``.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["Norm", "assert_relative_close", "relative_error", "relative_errors"]

Norm = Literal["fro", "max"]


def _float64(value: torch.Tensor | float) -> torch.Tensor:
    return torch.as_tensor(value).detach().to("cpu", torch.float64)


def _size(t: torch.Tensor, norm: Norm) -> float:
    if norm == "fro":
        return float(t.norm())
    if norm == "max":
        return float(t.abs().max()) if t.numel() else 0.0
    raise ValueError(f"norm must be 'fro' or 'max', got {norm!r}")


def relative_error(
    actual: torch.Tensor | float,
    expected: torch.Tensor | float,
    *,
    norm: Norm = "fro",
    floor: float = 0.0,
) -> float:
    """``‖actual − expected‖ / max(‖expected‖, floor)`` in float64 (``norm``: ``"fro"``
    Frobenius, ``"max"`` the largest absolute entry); the absolute error ``‖actual −
    expected‖`` when that scale is zero, and ``inf`` when anything is not finite or the shapes
    differ."""
    a, e = _float64(actual), _float64(expected)
    if a.shape != e.shape or not bool(torch.isfinite(a).all() and torch.isfinite(e).all()):
        return float("inf")
    scale = max(_size(e, norm), floor)
    difference = _size(a - e, norm)
    return difference / scale if scale > 0 else difference


def relative_errors(
    actual: torch.Tensor, expected: torch.Tensor, *, norm: Norm = "fro", floor: float = 0.0
) -> list[float]:
    """:func:`relative_error` of each slice along the first axis."""
    a, e = _float64(actual), _float64(expected)
    if a.shape != e.shape:
        return [float("inf")]
    return [relative_error(x, y, norm=norm, floor=floor) for x, y in zip(a, e, strict=True)]


def _describe(actual: torch.Tensor, expected: torch.Tensor) -> str:
    a, e = _float64(actual), _float64(expected)
    if a.shape != e.shape:
        return f"shapes differ: {tuple(a.shape)} vs expected {tuple(e.shape)}"
    if not bool(torch.isfinite(a).all()):
        bad = (~torch.isfinite(a)).nonzero()[0].tolist()
        return f"actual is not finite (first at index {tuple(bad)})"
    if not bool(torch.isfinite(e).all()):
        return "expected is not finite"
    if a.numel() == 0:
        return "empty"
    difference = (a - e).abs()
    where = tuple(int(i) for i in torch.unravel_index(difference.argmax(), difference.shape))
    return (
        f"max |difference| {float(difference.max()):.3g} at index {where} "
        f"(actual {float(a[where]):.6g}, expected {float(e[where]):.6g}), "
        f"‖expected‖ {float(e.norm()):.3g}, shape {tuple(e.shape)}"
    )


def assert_relative_close(
    actual: torch.Tensor | float,
    expected: torch.Tensor | float,
    *,
    rtol: float,
    what: str = "values",
    per: str | None = None,
    first: int = 0,
    norm: Norm = "fro",
    floor: float = 0.0,
) -> None:
    """Assert ``relative_error(actual, expected) <= rtol``, with a message that names ``what``,
    the error, the tolerance and the largest entry-wise difference.

    Args:
        per: compare each slice along the first axis on its own and call it ``per`` in the
            message (e.g. ``"order"``); slices are numbered from ``first``.
        norm, floor: as in :func:`relative_error`.
    """
    a, e = _float64(actual), _float64(expected)
    if per is None or a.shape != e.shape or a.dim() == 0:
        error = relative_error(a, e, norm=norm, floor=floor)
        if not error <= rtol:
            raise AssertionError(
                f"{what}: relative error {error:.3g} > rtol {rtol:.3g}; {_describe(a, e)}"
            )
        return
    failures = [
        f"{per} {index}: relative error {error:.3g} > rtol {rtol:.3g}; {_describe(x, y)}"
        for index, (x, y, error) in enumerate(
            zip(a, e, relative_errors(a, e, norm=norm, floor=floor), strict=True), start=first
        )
        if not error <= rtol
    ]
    if failures:
        raise AssertionError(f"{what}: " + "\n  ".join(failures))
