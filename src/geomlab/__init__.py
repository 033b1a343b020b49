"""geomlab: learning-geometry experiments on PyTorch models.

The functions users call directly are re-exported here; everything else lives in
``geomlab.geometry`` (the science), ``geomlab.models``, ``geomlab.data`` and
``geomlab.experiments``. The re-exports load on first use (PEP 562), so importing a light
part of geomlab (``geomlab.cli`` for ``geomlab --help``) does not import torch.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "directional_derivatives": "geomlab.geometry.derivatives",
    "fit_lambda": "geomlab.geometry.lambda_fit",
    "measure_lambda": "geomlab.geometry.lambda_fit",
    "categorical_kl": "geomlab.geometry.natural_gradient",
    "step_size_for_kl": "geomlab.geometry.natural_gradient",
    "pseudo_inverse": "geomlab.geometry.natural_gradient",
    "SolveSpec": "geomlab.geometry.natural_gradient",
    "softmax_regression_fisher": "geomlab.geometry.curvature",
    "FisherOperator": "geomlab.geometry.curvature",
    "dense_fisher_reference": "geomlab.geometry.curvature",
    "natural_gradient": "geomlab.geometry.natural_gradient",
    "kl_matched_steps": "geomlab.geometry.natural_gradient",
    "rescaled_step": "geomlab.geometry.reparam",
    "principal_angles": "geomlab.geometry.spectral",
    "top_singular_triplets": "geomlab.geometry.spectral",
}

if TYPE_CHECKING:
    from geomlab.geometry.curvature import (
        FisherOperator,
        dense_fisher_reference,
        softmax_regression_fisher,
    )
    from geomlab.geometry.derivatives import directional_derivatives
    from geomlab.geometry.lambda_fit import fit_lambda, measure_lambda
    from geomlab.geometry.natural_gradient import (
        SolveSpec,
        categorical_kl,
        kl_matched_steps,
        natural_gradient,
        pseudo_inverse,
        step_size_for_kl,
    )
    from geomlab.geometry.reparam import rescaled_step
    from geomlab.geometry.spectral import principal_angles, top_singular_triplets

__all__ = [
    "FisherOperator",
    "SolveSpec",
    "__version__",
    "categorical_kl",
    "dense_fisher_reference",
    "directional_derivatives",
    "fit_lambda",
    "kl_matched_steps",
    "measure_lambda",
    "natural_gradient",
    "principal_angles",
    "pseudo_inverse",
    "rescaled_step",
    "softmax_regression_fisher",
    "step_size_for_kl",
    "top_singular_triplets",
]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'geomlab' has no attribute {name!r}")
    value = getattr(import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_EXPORTS})
