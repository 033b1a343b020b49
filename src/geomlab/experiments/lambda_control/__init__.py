"""Class-selective λ control on MNIST (the notebook's experiment), as one family:

* ``types``: the typed options (training conditions, class pairs) and their CLI syntax;
* ``experiment``: the Config, presets and ``run`` (data → model → training → λ → tables →
  figures), registered as ``lambda-control``;

``geomlab measure-lambda`` (λ re-measured from a finished run's checkpoints) reads received run
directories and runs through the runner: it lives at the edge, in :mod:`geomlab.remeasure`.
"""

from geomlab.experiments.lambda_control.experiment import (
    EXPERIMENT,
    FIT_COLUMNS,
    NOTEBOOK_CONDITIONS,
    NOTEBOOK_PAIRS,
    PRESETS,
    Config,
    load_data,
    run,
    train_model,
)
from geomlab.experiments.lambda_control.types import ClassPair, Condition

__all__ = [
    "EXPERIMENT",
    "FIT_COLUMNS",
    "NOTEBOOK_CONDITIONS",
    "NOTEBOOK_PAIRS",
    "PRESETS",
    "ClassPair",
    "Condition",
    "Config",
    "load_data",
    "run",
    "train_model",
]
