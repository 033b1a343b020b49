"""Fisher information of any ``nn.Module``: one operator interface, two backends.

- :class:`FisherOperator` (:mod:`.operator`): matrix-free on curvlinops' GGN (the Fisher for
  softmax cross-entropy and Gaussian MSE), ``F @ v``, ``.shape``, ``.dtype``, ``.dense()``,
  its K-FAC / EK-FAC, and a once-per-model self-check against the ``torch.func`` reference.
- :mod:`.reference`: the dense ``J^T H J`` from a ``torch.func`` Jacobian
  (:func:`dense_fisher_reference` in float64, :func:`jacobian_fisher` as the model is) and
  Fisher-vector products by ``jvp``/``vjp``.
- :mod:`.softmax_regression`: the exact vectorized Fisher of bias-free softmax regression,
  also as an operator (:class:`SoftmaxRegressionFisher`).
- :mod:`.kfac`: which parameters K-FAC covers; :mod:`.errors`: the refusals.

The shared plumbing (batches, flat vectors, outputs, the loss, ``LossKind``) is
:mod:`geomlab.geometry.params`.
"""

from geomlab.geometry.curvature.errors import (
    FisherSelfCheckError,
    NonFiniteOutputError,
    ProgressCallback,
    UnsupportedShapeError,
    check_finite,
)
from geomlab.geometry.curvature.kfac import check_kfac_eligible, kfac_ineligible_parameters
from geomlab.geometry.curvature.operator import (
    SELF_CHECK_RTOL,
    FisherOperator,
    fisher_self_check,
)
from geomlab.geometry.curvature.reference import (
    dense_fisher_reference,
    fisher_product_reference,
    jacobian_fisher,
)
from geomlab.geometry.curvature.softmax_regression import (
    SoftmaxRegressionFisher,
    softmax_regression_fisher,
    softmax_regression_fisher_reference,
    softmax_regression_fisher_vector_product,
    softmax_regression_gather_index,
)

__all__ = [
    "SELF_CHECK_RTOL", "FisherOperator", "FisherSelfCheckError", "NonFiniteOutputError",
    "ProgressCallback", "SoftmaxRegressionFisher", "UnsupportedShapeError", "check_finite",
    "check_kfac_eligible", "dense_fisher_reference", "fisher_product_reference",
    "fisher_self_check", "jacobian_fisher", "kfac_ineligible_parameters",
    "softmax_regression_fisher", "softmax_regression_fisher_reference",
    "softmax_regression_fisher_vector_product", "softmax_regression_gather_index",
]  # fmt: skip
