"""Data sets by name: ``load_data(spec, ...)`` (:mod:`geomlab.data.registry`) loads every data set
an experiment can name (loaded on first use, so importing a light submodule stays light)."""

from __future__ import annotations

from importlib import import_module
from typing import Any

__all__ = ["BUILTIN_DATA", "LoadedData", "load_data"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(import_module("geomlab.data.registry"), name)
    raise AttributeError(f"module 'geomlab.data' has no attribute {name!r}")
