"""Registry of experiment families: ``get("e1")`` or an alias such as ``get("ng-pareto")``."""

from __future__ import annotations

from importlib import import_module

from geomlab.experiments.base import Experiment

# Module names, imported lazily so that `geomlab list` stays fast.
_MODULES = [
    "geomlab.experiments.e1_pareto",
    "geomlab.experiments.e3_invariance",
    "geomlab.experiments.lambda_control",
    "geomlab.experiments.alignment",
    "geomlab.experiments.gradient_rank",
]


def all_experiments() -> list[Experiment]:
    return [import_module(name).EXPERIMENT for name in _MODULES]


def get(name: str) -> Experiment:
    wanted = name.strip().lower()
    for experiment in all_experiments():
        if wanted == experiment.name or wanted in experiment.aliases:
            return experiment
    known = ", ".join(
        f"{e.name} ({', '.join(e.aliases)})" if e.aliases else e.name for e in all_experiments()
    )
    raise KeyError(f"unknown experiment {name!r}; known: {known}")
