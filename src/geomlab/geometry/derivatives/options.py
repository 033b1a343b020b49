"""The derivative stack's options as string Enums (their values are what users type)."""

from __future__ import annotations

from enum import StrEnum

from geomlab.geometry.params import LossKind

__all__ = ["FAST_PATHS", "LossKind", "Method", "Path", "parse_method", "parse_request"]


class Method(StrEnum):
    """What the caller asks for: ``auto`` (fast when exact and checked, else nested), ``fast``
    (the cumulant or Taylor path, or an error saying why not) or ``nested`` (the reference)."""

    AUTO = "auto"
    FAST = "fast"
    NESTED = "nested"


class Path(StrEnum):
    """The engine a request resolves to: ``linear`` (cumulants of one JVP, piecewise-linear
    models), ``taylor`` (Taylor mode) or ``nested`` (repeated autograd)."""

    LINEAR = "linear"
    TAYLOR = "taylor"
    NESTED = "nested"

    @property
    def method(self) -> Method:
        """``fast`` for the cumulant and Taylor paths, ``nested`` for the reference."""
        return Method.NESTED if self is Path.NESTED else Method.FAST


FAST_PATHS = (Path.LINEAR, Path.TAYLOR)


def parse_method(method: Method | str) -> Method:
    """``method`` as a :class:`Method`; anything else is a ``ValueError`` saying what was given."""
    try:
        return Method(method)
    except ValueError:
        raise ValueError(f"method must be 'auto', 'fast' or 'nested', got {method!r}") from None


def parse_request(method: Method | Path | str) -> Method | Path:
    """A :class:`Method`, or a fast :class:`Path` named to have it checked and used."""
    try:
        return Method(method)
    except ValueError:
        pass
    if method in FAST_PATHS:
        return Path(method)
    raise ValueError(f"method must be 'auto', 'fast' or 'nested', got {method!r}")
