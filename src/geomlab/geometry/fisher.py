"""Deprecated module: the former names, kept so existing imports keep working.

The softmax-regression Fisher now lives in :mod:`geomlab.geometry.curvature` (named for its
scope); pseudo-inverse, KL-matched step size and KL in :mod:`geomlab.geometry.natural_gradient`.
"""

from geomlab.geometry.curvature import (
    softmax_regression_fisher as softmax_fisher,
)
from geomlab.geometry.curvature import (
    softmax_regression_fisher_reference as softmax_fisher_reference,
)
from geomlab.geometry.curvature import (
    softmax_regression_fisher_vector_product as softmax_fisher_vector_product,
)
from geomlab.geometry.natural_gradient import (
    SymmetricPseudoInverse,
    categorical_kl,
    kl_matched_step_size,
    second_order_kl,
    symmetric_pseudo_inverse,
)

__all__ = [
    "SymmetricPseudoInverse",
    "categorical_kl",
    "kl_matched_step_size",
    "second_order_kl",
    "softmax_fisher",
    "softmax_fisher_reference",
    "softmax_fisher_vector_product",
    "symmetric_pseudo_inverse",
]
