"""Models by name: ``build_model(spec, ...)`` (:mod:`geomlab.models.registry`) builds every model
an experiment can name (loaded on first use, so importing a light submodule stays light)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["BUILTIN_MODELS", "KNOWN_MODELS", "MNIST_CLASSIFIERS", "build_model", "check_spec"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("geomlab.models.registry"), name)
    raise AttributeError(f"module 'geomlab.models' has no attribute {name!r}")
