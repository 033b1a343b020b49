"""Registry of experiment families: ``get("e1")`` or an alias such as ``get("ng-pareto")``."""

from __future__ import annotations

from importlib import import_module

from geomlab.experiments.base import Experiment

# name -> (module, aliases). Names live here too so that `geomlab run e3` imports only E3's
# module (the others pull in more of torch and numpy: ~50 MB RSS). A test keeps this table and
# each module's EXPERIMENT in agreement.
REGISTRY: dict[str, tuple[str, tuple[str, ...]]] = {
    "e1": ("geomlab.experiments.e1_pareto", ("ng-pareto",)),
    "e3": ("geomlab.experiments.e3_invariance", ("ng-invariance",)),
    "alignment": (
        "geomlab.experiments.alignment",
        ("low-rank-gradients", "eigenvector-alignment"),
    ),
    "gradient-rank": (
        "geomlab.experiments.gradient_rank",
        ("gradient-rank-phase", "spike-phase-diagram"),
    ),
    "lambda-control": (
        "geomlab.experiments.lambda_control",
        ("lambda", "class-selective-lambda", "e4"),
    ),
}


def all_experiments() -> list[Experiment]:
    return [import_module(module).EXPERIMENT for module, _ in REGISTRY.values()]


def get(name: str) -> Experiment:
    wanted = name.strip().lower()
    for key, (module, aliases) in REGISTRY.items():
        if wanted == key or wanted in aliases:
            return import_module(module).EXPERIMENT
    known = ", ".join(
        f"{key} ({', '.join(aliases)})" if aliases else key
        for key, (_, aliases) in REGISTRY.items()
    )
    raise KeyError(f"unknown experiment {name!r}; known: {known}")
