"""Coordinate rescalings theta = S * phi and how one optimizer step transforms under them.

In coordinates phi with theta = diag(S) phi, the gradient is S * g and the Fisher is
diag(S) F diag(S). A step taken in phi and mapped back is S * delta_phi. SGD's step becomes
-eta S^2 g (coordinate dependent); the natural-gradient step S (S F S)^+ S g equals F^+ g up
to a component in the Fisher null space, which does not change the model's predictions.

Modules: :mod:`.scaling` (families as the :class:`Scaling` Enum, transformed gradient and
Fisher), :mod:`.steps` (a step in rescaled coordinates and its pseudo-inverse cutoff),
:mod:`.discrepancy` (parameter- and function-space discrepancy, Gate C) and :mod:`.protocol`
(the invariance protocol, one loop for any model).
"""

from geomlab.geometry.reparam.discrepancy import (
    StepDiscrepancy,
    centre_classes,
    centred_logit_change,
    gate_c_equivalence,
    linear_logit_change,
    max_abs_difference,
    round_trip_logit_difference,
    softmax_regression_step_discrepancy,
    step_discrepancy,
)
from geomlab.geometry.reparam.protocol import (
    INVARIANCE_METHODS,
    InvarianceCase,
    InvarianceResult,
    invariance,
    model_case,
    softmax_regression_case,
)
from geomlab.geometry.reparam.scaling import (
    Scaling,
    log_uniform_parameter_scales,
    log_uniform_pattern,
    log_uniform_scaling,
    parameter_scale_vector,
    transform_fisher,
    transform_fisher_reference,
    transform_gradient,
    two_block_parameter_scales,
    two_block_scaling,
)
from geomlab.geometry.reparam.steps import (
    SolveCutoff,
    rescaled_step,
    solve_cutoff,
)

__all__ = [
    "INVARIANCE_METHODS", "InvarianceCase", "InvarianceResult", "Scaling", "SolveCutoff",
    "StepDiscrepancy", "centre_classes", "centred_logit_change", "gate_c_equivalence",
    "invariance", "linear_logit_change", "log_uniform_parameter_scales", "log_uniform_pattern",
    "log_uniform_scaling", "max_abs_difference", "model_case",
    "parameter_scale_vector", "rescaled_step", "round_trip_logit_difference",
    "softmax_regression_case", "softmax_regression_step_discrepancy", "solve_cutoff",
    "step_discrepancy", "transform_fisher", "transform_fisher_reference", "transform_gradient",
    "two_block_parameter_scales", "two_block_scaling",
]  # fmt: skip
