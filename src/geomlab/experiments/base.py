"""The contract every experiment module fulfils.

An experiment is a validated pydantic config, named presets, and a ``run`` function that
receives the config and a :class:`RunContext` (I/O, progress, device, resume cache) and
returns a :class:`RunResult`. The runner owns directories, manifests and atomic writes.
"""

from __future__ import annotations

import json
import logging
import math
import os
import types
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import (
    TYPE_CHECKING,
    Annotated,
    Any,
    Literal,
    Protocol,
    TypeVar,
    Union,
    get_args,
    get_origin,
)

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from geomlab.config import build_config

if TYPE_CHECKING:  # the registry and `geomlab list` import this module without torch
    import torch

    from geomlab.geometry.gates import GateResult

T = TypeVar("T")


SEED_LIMIT = 2**63  # torch and numpy take seeds as 64-bit integers

Seed = Annotated[int, Field(ge=0, lt=SEED_LIMIT)]
"""A random seed: 0 <= seed < 2**63 (larger ones overflow inside torch/numpy)."""


def unique_seeds(seeds: list[int]) -> list[int]:
    """The one check that seeds are distinct (for seed lists with bounds of their own)."""
    repeated = sorted({seed for seed in seeds if seeds.count(seed) > 1})
    if repeated:
        raise ValueError(
            f"seeds must be unique; {', '.join(map(str, repeated))} listed more than once "
            "(a repeated seed would be counted twice in every mean)"
        )
    return seeds


SeedList = Annotated[list[Seed], AfterValidator(unique_seeds)]
"""A list of distinct :data:`Seed` values."""


def physical_memory_bytes() -> int | None:
    """Total physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - e.g. Windows
        return None


def _non_finite_path(value: Any, path: str) -> str | None:
    """The dotted path of the first non-finite float inside ``value`` (models, lists, dicts)."""
    if isinstance(value, float):
        return None if math.isfinite(value) else path
    if isinstance(value, BaseModel):
        fields = type(value).model_fields
        items: Iterable[tuple[Any, Any]] = ((name, getattr(value, name)) for name in fields)
    elif isinstance(value, dict):
        items = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for key, item in items:
        found = _non_finite_path(item, f"{path}.{key}" if path else str(key))
        if found is not None:
            return found
    return None


def _admits_bool(annotation: Any) -> bool:
    """Does a field of this type take ``true``/``false`` as such (bool, Any, a Literal of
    booleans, a union with one of those)?"""
    if annotation is bool or annotation is Any:
        return True
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _admits_bool(args[0])
    if origin in (Union, types.UnionType):
        return any(_admits_bool(arg) for arg in args)
    if origin is Literal:
        return any(isinstance(arg, bool) for arg in args)
    return False


def _element_types(annotation: Any, length: int) -> list[Any] | None:
    """The annotations of a list/tuple value's elements, None when ``annotation`` takes none."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:
        return _element_types(args[0], length)
    if origin in (Union, types.UnionType):
        for arg in args:
            found = _element_types(arg, length)
            if found is not None:
                return found
        return None
    if origin in (list, set, frozenset) and args:
        return [args[0]] * length
    if origin is tuple and args:
        if len(args) == 2 and args[1] is Ellipsis:
            return [args[0]] * length
        return list(args[:length]) + [Any] * max(0, length - len(args))
    return None


def _bool_for_number(value: Any, annotation: Any, path: str) -> str | None:
    """The dotted path of a ``true``/``false`` given where a number (or text) is expected:
    pydantic would read it as 1/0, so ``n_seeds=true`` would silently mean one seed."""
    if isinstance(value, bool):
        return None if _admits_bool(annotation) else path
    if isinstance(value, list | tuple):
        types_ = _element_types(annotation, len(value))
        if types_ is None:
            return None
        for index, (item, item_type) in enumerate(zip(value, types_, strict=True)):
            found = _bool_for_number(item, item_type, f"{path}.{index}")
            if found is not None:
                return found
    return None


class ExperimentConfig(BaseModel):
    """Base class of every experiment config, validated before any work starts:

    - unknown keys are errors, assignment validates;
    - every float is finite, also inside lists and nested models (``inf``/``NaN`` given as
      ``--set x=Infinity`` would only fail deep inside the math);
    - :meth:`memory_estimates` (per field, in bytes) must fit in this machine's memory, so an
      absurd size fails here, naming its field, instead of trying to allocate terabytes.
    """

    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, frozen=False, allow_inf_nan=False
    )

    device: Literal["auto", "cpu", "cuda"] = "auto"

    def hash_payload(self) -> dict[str, Any]:
        """What defines the science of a run: the config's JSON values, device excluded (the
        runner hashes this into the config hash). Configs with fields that only steer how a
        run proceeds (not what it computes) leave them out too."""
        return self.model_dump(mode="json", exclude={"device"})

    def memory_estimates(self) -> dict[str, float]:
        """Bytes the run needs at least, keyed by the config field that drives it (a lower
        bound: the largest arrays). Experiments override this; the base needs none."""
        return {}

    @model_validator(mode="before")
    @classmethod
    def _no_booleans_for_numbers(cls, values: Any) -> Any:
        if isinstance(values, dict):
            for name, value in values.items():
                info = cls.model_fields.get(name)
                if info is None:
                    continue
                path = _bool_for_number(value, info.annotation, name)
                if path is not None:
                    raise ValueError(
                        f"field '{path}' must be a number, not a boolean (got {json.dumps(value)})"
                    )
        return values

    @model_validator(mode="after")
    def _finite_and_fits(self) -> ExperimentConfig:
        if self.model_config.get("allow_inf_nan") is False:
            path = _non_finite_path(self, "")
            if path is not None:
                raise ValueError(f"field '{path}' must be a finite number")
        total = physical_memory_bytes()
        for name, needed in self.memory_estimates().items():
            if total is not None and needed > total:
                raise ValueError(
                    f"field '{name}' = {getattr(self, name, '?')} needs at least "
                    f"{needed / 2**30:.3g} GiB, more than this machine's "
                    f"{total / 2**30:.3g} GiB of memory"
                )
        return self


class RunContext(Protocol):
    """What an experiment may use from the runner (see ``geomlab.runner.Context``)."""

    out_dir: Path
    device: torch.device
    log: logging.Logger

    def progress(
        self, iterable: Iterable[T], *, total: int | None = None, description: str = ""
    ) -> Iterator[T]: ...

    def write_csv(self, name: str, frame: Any) -> Path: ...

    def write_json(self, name: str, obj: Any) -> Path: ...

    def save_figure(self, figure: Any, stem: str) -> list[Path]: ...

    def cached(self, key: str, compute: Callable[[], Any]) -> Any: ...

    def checkpoint_path(self, key: str) -> Path: ...


@dataclass
class RunResult:
    """What an experiment hands back: JSON-able summary, gate outcomes, headline numbers."""

    summary: dict[str, Any]
    gates: list[GateResult] = field(default_factory=list)
    headline: dict[str, float] = field(default_factory=dict)

    @property
    def gates_passed(self) -> bool:
        return all(g.passed for g in self.gates)


@dataclass(frozen=True)
class Experiment:
    """A registered experiment family."""

    name: str
    aliases: tuple[str, ...]
    description: str
    config_cls: type[ExperimentConfig]
    presets: dict[str, dict[str, Any]]
    run: Callable[[Any, RunContext], RunResult]
    default_preset: str = "paper"

    def make_config(
        self, preset: str | None = None, overrides: dict[str, Any] | None = None
    ) -> ExperimentConfig:
        """Preset values, then overrides, validated together (errors name the field)."""
        return build_config(self, preset or self.default_preset, overrides or {})
