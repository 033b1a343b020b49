"""Registry of experiment families: ``get("e1")`` or an alias such as ``get("ng-pareto")``."""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:
    from geomlab.experiments.base import Experiment


class Entry(NamedTuple):
    """What `geomlab list` shows of an experiment, without importing its module."""

    module: str
    aliases: tuple[str, ...]
    description: str
    presets: tuple[str, ...]


# Names, aliases, descriptions and preset names live here too, so that `geomlab list` imports
# no experiment and `geomlab run e3` imports only E3's module (each pulls in torch; the others
# more of numpy and pandas: ~50 MB RSS). A test keeps this table and each module's EXPERIMENT
# in agreement.
REGISTRY: dict[str, Entry] = {
    "e1": Entry(
        "geomlab.experiments.e1_pareto",
        ("ng-pareto",),
        "NG (exact, K-FAC, EK-FAC) vs SGD loss reduction at matched per-step KL, any model",
        ("paper", "quick", "mnist-cnn"),
    ),
    "e3": Entry(
        "geomlab.experiments.e3_invariance",
        ("ng-invariance",),
        "One NG step is invariant to rescaling parameter coordinates; SGD is not",
        ("paper", "quick"),
    ),
    "alignment": Entry(
        "geomlab.experiments.alignment",
        ("low-rank-gradients", "eigenvector-alignment"),
        "Two-layer nets on spiked data: gradients align with spike and residue",
        ("paper", "quick"),
    ),
    "gradient-rank": Entry(
        "geomlab.experiments.gradient_rank",
        ("gradient-rank-phase", "spike-phase-diagram"),
        "Initial gradient rank vs spike strength ν: one outlier, then rank two",
        ("paper", "quick"),
    ),
    "lambda-control": Entry(
        "geomlab.experiments.lambda_control.experiment",
        ("lambda", "class-selective-lambda", "e4"),
        "Class-selective λ control on MNIST: derivative penalty on chosen classes, "
        "λ measured at class-pair decision boundaries (exact fast derivative engine).",
        ("paper", "quick"),
    ),
}


def all_experiments() -> list[Experiment]:
    return [import_module(entry.module).EXPERIMENT for entry in REGISTRY.values()]


def lookup(name: str) -> tuple[str, Entry]:
    """The registry row of a name or alias, without importing the experiment."""
    wanted = name.strip().lower()
    for key, entry in REGISTRY.items():
        if wanted == key or wanted in entry.aliases:
            return key, entry
    known = ", ".join(
        f"{key} ({', '.join(entry.aliases)})" if entry.aliases else key
        for key, entry in REGISTRY.items()
    )
    raise KeyError(f"unknown experiment {name!r}; known: {known}")


def get(name: str) -> Experiment:
    return import_module(lookup(name)[1].module).EXPERIMENT
