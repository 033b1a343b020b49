"""Natural-gradient directions, KL-matched steps and the KL between two models.

- :mod:`.kl`: KL measures, the curvature ``v^T F v`` and the step size for a target KL.
- :mod:`.solve`: methods, solvers and the frozen :class:`SolveSpec` every solve takes.
- :mod:`.inverses`: inverses as operators with diagnostics (pseudo-inverse, CG, K-FAC/EK-FAC).
- :mod:`.direction`: the natural-gradient direction of any model and its diagnostics.
- :mod:`.steps`: KL-matched steps of any model; :mod:`.softmax_regression`: the notebook-exact
  backend for bias-free softmax regression, returning the same :class:`StepPair`.

Notation: ``g`` the loss gradient, ``F`` the Fisher, ``v`` a step direction (``g`` for SGD,
``F^+ g`` for the natural gradient).
"""

from geomlab.geometry.natural_gradient.direction import NaturalGradient, natural_gradient
from geomlab.geometry.natural_gradient.inverses import (
    CGInverse,
    KFACInverse,
    PseudoInverse,
    inverse,
    pseudo_inverse,
)
from geomlab.geometry.natural_gradient.kl import (
    KLMeasurement,
    categorical_kl,
    fisher_curvature,
    notebook_self_kl,
    output_kl,
    second_order_kl,
    step_size_for_kl,
)
from geomlab.geometry.natural_gradient.softmax_regression import (
    softmax_regression_kl_matched_steps,
)
from geomlab.geometry.natural_gradient.solve import (
    CG_RESIDUAL_SLACK,
    Solver,
    SolveSpec,
    StepMethod,
)
from geomlab.geometry.natural_gradient.steps import MatchedSteps, StepPair, kl_matched_steps

__all__ = [
    "CG_RESIDUAL_SLACK", "CGInverse", "KFACInverse", "KLMeasurement", "MatchedSteps",
    "NaturalGradient", "PseudoInverse", "SolveSpec", "Solver", "StepMethod", "StepPair",
    "categorical_kl", "fisher_curvature", "inverse", "kl_matched_steps", "natural_gradient",
    "notebook_self_kl", "output_kl", "pseudo_inverse", "second_order_kl",
    "softmax_regression_kl_matched_steps", "step_size_for_kl",
]  # fmt: skip
