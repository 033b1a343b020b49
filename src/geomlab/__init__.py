"""geomlab: learning-geometry experiments on PyTorch models.

The functions users call directly are re-exported here; everything else lives in
``geomlab.geometry`` (the science), ``geomlab.models``, ``geomlab.data`` and
``geomlab.experiments``.
"""

__version__ = "0.1.0"

from geomlab.geometry.curvature import softmax_regression_fisher
from geomlab.geometry.derivatives import directional_derivatives, fit_lambda, measure_lambda
from geomlab.geometry.natural_gradient import (
    categorical_kl,
    kl_matched_step_size,
    symmetric_pseudo_inverse,
)
from geomlab.geometry.reparam import rescaled_step
from geomlab.geometry.spectral import principal_angles, top_singular_triplets

softmax_fisher = softmax_regression_fisher  # former name

__all__ = [
    "__version__",
    "categorical_kl",
    "directional_derivatives",
    "fit_lambda",
    "kl_matched_step_size",
    "measure_lambda",
    "principal_angles",
    "rescaled_step",
    "softmax_fisher",
    "softmax_regression_fisher",
    "symmetric_pseudo_inverse",
    "top_singular_triplets",
]
