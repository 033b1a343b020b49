"""The contract every experiment module fulfils.

An experiment is a validated pydantic config, named presets, and a ``run`` function that
receives the config and a :class:`RunContext` (I/O, progress, device, resume cache) and
returns a :class:`RunResult`. The runner owns directories, manifests and atomic writes.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeVar

from pydantic import BaseModel, ConfigDict

from geomlab.config import build_config

if TYPE_CHECKING:  # the registry and `geomlab list` import this module without torch
    import torch

    from geomlab.geometry.gates import GateResult

T = TypeVar("T")


class ExperimentConfig(BaseModel):
    """Base class of every experiment config: unknown keys are errors, assignment validates."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True, frozen=False)

    device: Literal["auto", "cpu", "cuda"] = "auto"


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
