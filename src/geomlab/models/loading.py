"""Built-in and user models by name: ``"mnist-cnn"`` or ``"package.module:function"``.

A user's factory is called with no arguments after ``torch.manual_seed(seed)`` (as the
notebooks seed their models), so the same seed gives the same initial weights; geomlab then
casts the model to the requested dtype and device.
"""

from __future__ import annotations

import importlib
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

__all__ = [
    "ImportPathError", "build_user_model", "is_import_path", "resolve_import_path",
]  # fmt: skip

_IMPORT_PATH = re.compile(r"^[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*:[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*$")


class ImportPathError(ValueError):
    """An import path is malformed, its module is missing, or it does not name a callable."""


def is_import_path(text: str) -> bool:
    """True for ``package.module:function`` (dotted module, colon, dotted attribute)."""
    return bool(_IMPORT_PATH.match(str(text)))


def resolve_import_path(spec: str) -> Callable[..., Any]:
    """The callable that ``package.module:function`` names (attributes may be dotted)."""
    if not is_import_path(spec):
        raise ImportPathError(f"{spec!r} is not an import path of the form package.module:function")
    module_name, _, attribute = spec.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as error:
        raise ImportPathError(
            f"cannot import module {module_name!r} of {spec!r}: {error}"
        ) from None
    for part in attribute.split("."):
        if not hasattr(obj, part):
            raise ImportPathError(f"module {module_name!r} has no attribute {attribute!r}")
        obj = getattr(obj, part)
    if not callable(obj):
        raise ImportPathError(f"{spec!r} names a {type(obj).__name__}, not a callable")
    return obj


def build_user_model(
    spec: str,
    *,
    seed: int,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> nn.Module:
    """``torch.manual_seed(seed)``, then the factory ``spec`` names, then cast and move."""
    factory = resolve_import_path(spec)
    torch.manual_seed(seed)
    model = factory()
    if not isinstance(model, nn.Module):
        raise ImportPathError(f"{spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    if dtype is not None:
        model = model.to(dtype=dtype)
    return model.to(device)
