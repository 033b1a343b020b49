"""The exact Fisher of any ``nn.Module`` as a matrix-free operator on curvlinops (its GGN, which
is the Fisher for softmax cross-entropy and Gaussian MSE), with its K-FAC / EK-FAC and the
once-per-model self-check against the ``torch.func`` reference."""

from __future__ import annotations

import copy
import weakref
from collections.abc import Mapping, Sequence

import torch
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.curvature.errors import FisherSelfCheckError, ProgressCallback
from geomlab.geometry.curvature.kfac import check_kfac_eligible
from geomlab.geometry.curvature.reference import (
    check_targets,
    fisher_product_reference,
    ggn_scale,
    jacobian_fisher,
    output_hessian_loss,
)
from geomlab.geometry.gates import fast_vs_reference
from geomlab.geometry.outputs import ModelOutputError, TensorOutput, as_logits
from geomlab.geometry.params import Batch, LossKind, as_batches, trainable_parameters
from geomlab.models.modes import isolated_buffers

__all__ = ["SELF_CHECK_RTOL", "FisherOperator", "fisher_self_check"]


_SELF_CHECKED: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()
SELF_CHECK_RTOL = 1e-8  # float64 products agree to ~1e-14; a wrong path is off by O(1)


def _model_signature(model: nn.Module, loss: LossKind) -> tuple:
    """Structure and parameter identity: what the self-check's verdict depends on."""
    modules = tuple((n, type(m).__qualname__, m.training) for n, m in model.named_modules())
    params = tuple((n, id(p), tuple(p.shape), p.requires_grad) for n, p in model.named_parameters())
    return (loss.value, modules, params)


def fisher_self_check(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    *,
    loss: LossKind,
    n_samples: int = 4,
    n_vectors: int = 2,
    rtol: float = SELF_CHECK_RTOL,
) -> float | None:
    """Check, once per model, that :class:`FisherOperator`'s products are right for it.

    On a float64 copy of the model (its current train/eval mode) and the first ``n_samples``
    inputs, ``F V`` for ``n_vectors`` fixed random vectors from curvlinops is compared with
    :func:`fisher_product_reference`. The verdict is cached per model object, keyed by its
    structure (module names, types, modes) and parameter identity, so later calls cost nothing.
    The global random state is left untouched.

    Returns:
        The relative difference found, or ``None`` when this model was already checked.

    Raises:
        FisherSelfCheckError: relative difference above ``rtol``, naming the model.
    """
    loss = LossKind(loss)
    signature = _model_signature(model, loss)
    checked = _SELF_CHECKED.setdefault(model, set())
    if signature in checked:
        return None
    inputs, targets = as_batches(data)[0]
    inputs, targets = inputs[:n_samples], targets[:n_samples]
    x = inputs.to(torch.float64) if inputs.is_floating_point() else inputs
    y = targets.to(torch.float64) if targets.is_floating_point() else targets
    try:
        reference = copy.deepcopy(model).to(torch.float64)
        operator = FisherOperator(reference, (x, y), loss=loss, self_check=False)
        generator = torch.Generator().manual_seed(0)
        vectors = torch.randn(operator.dim, n_vectors, dtype=torch.float64, generator=generator)
        vectors = vectors.to(x.device)
        fast = operator @ vectors
        expected = fisher_product_reference(reference, x, vectors, loss=loss)
    except ModelOutputError:
        raise
    except Exception as error:  # the check itself could not run: say so, with the way out
        raise FisherSelfCheckError(
            f"Fisher self-check could not run for model {type(model).__name__} (a float64 copy "
            f"on {x.shape[0]} samples): {type(error).__name__}: {error}. Make the model "
            "copyable and dtype-agnostic, or turn the check off (fisher_self_check=false / "
            "self_check=False)"
        ) from error
    difference = fast_vs_reference(fast, expected)
    if not difference <= rtol:
        raise FisherSelfCheckError(
            f"Fisher self-check failed for model {type(model).__name__}: curvlinops' F v "
            f"differs from the torch.func reference by {difference:.3g} (relative, tolerance "
            f"{rtol:g}) on {x.shape[0]} samples in float64, so its Fisher products cannot be "
            "trusted (a module that forward-mode AD or curvlinops handles differently, or a "
            "random forward: call it in eval mode). Turn the check off (fisher_self_check=false "
            "/ self_check=False) only if you know why"
        )
    checked.add(signature)
    return difference


class FisherOperator:
    """The exact Fisher of an ``nn.Module`` as a matrix-free operator (curvlinops' GGN).

    ``F = (1/N) sum_i J_i^T H_i J_i`` over the data (see :class:`LossKind`), applied with one
    Jacobian-vector and one vector-Jacobian product per batch, never formed. Vectors are flat,
    in :func:`trainable_parameters` order. The model is evaluated as it is (call it inside
    ``geomlab.models.modes.eval_mode`` for dropout/BatchNorm models: the Fisher of a random
    function is not defined). The operator holds the parameters by reference: it describes
    the model at its current weights.

    Args:
        model: any ``nn.Module`` with ``(batch, K)`` outputs.
        data: ``(inputs, targets)`` or a sequence of batches.
        loss: which likelihood.
        batch_size: cut ``(inputs, targets)`` into batches of this size (memory).
        self_check: run :func:`fisher_self_check` (once per model, cached) before trusting
            curvlinops' products for this model.

    Every pass runs inside :func:`~geomlab.geometry.attention.math_attention` (attention
    models work under forward-mode AD); a model returning a Hugging Face-style output is read
    through :func:`~geomlab.geometry.outputs.as_logits`.
    """

    def __init__(
        self,
        model: nn.Module,
        data: Batch | Sequence[Batch],
        *,
        loss: LossKind,
        batch_size: int | None = None,
        self_check: bool = True,
    ) -> None:
        self.model = model
        self.loss = LossKind(loss)
        self.batches = as_batches(data, batch_size=batch_size)
        self.parameters = trainable_parameters(model)
        # One probe on two samples (buffers such as running statistics left untouched): the
        # outputs' shape against the targets, and which parameters the outputs depend on.
        with torch.enable_grad(), math_attention(), isolated_buffers(model):
            first = as_logits(model(self.batches[0][0][:2]))
            grads = torch.autograd.grad(
                first.sum(), list(self.parameters.values()), allow_unused=True
            )
        check_targets(first.detach(), self.batches[0][1][:2], self.loss)
        used = {name: g is not None for name, g in zip(self.parameters, grads, strict=True)}
        self.num_data = sum(int(x.shape[0]) for x, _ in self.batches)
        self.dim = sum(p.numel() for p in self.parameters.values())
        self.scale = ggn_scale(self.loss, self.num_data)
        if self_check:
            fisher_self_check(model, self.batches, loss=self.loss)
        self._network = model if isinstance(model, TensorOutput) else TensorOutput(model)
        # Parameters the outputs do not depend on have zero rows and columns; curvlinops'
        # vmapped products crash on them, so it sees only the others (see __matmul__).
        self._used_rows = None if all(used.values()) else _rows_of(self.parameters, used)
        from curvlinops import GGNLinearOperator  # imported on use: E1/E3 paper never need it

        ggn = GGNLinearOperator(
            self._network,
            output_hessian_loss(self.loss),
            [p for name, p in self.parameters.items() if used[name]],
            self.batches,
            check_deterministic=False,
            num_data=self.num_data,
        )
        self._operator = ggn if self.scale == 1.0 else ggn * self.scale

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.parameters.values())).dtype

    @property
    def shape(self) -> tuple[int, int]:
        return (self.dim, self.dim)

    @property
    def device(self) -> torch.device:
        return _device(self.parameters)

    def __matmul__(self, vector: torch.Tensor) -> torch.Tensor:
        """``F @ v`` for a flat ``(P,)`` vector (or ``F @ M`` for ``(P, k)``), as on a
        curvlinops ``PyTorchLinearOperator``."""
        if vector.shape[0] != self.dim:
            raise ValueError(f"vector has {vector.shape[0]} rows, the Fisher is {self.dim}")
        with math_attention():
            if self._used_rows is None:
                return self._operator @ vector
            product = torch.zeros_like(vector)
            product[self._used_rows] = self._operator @ vector[self._used_rows]
            return product

    def dense(self, *, progress: ProgressCallback | None = None) -> torch.Tensor:
        """The dense ``(P, P)`` matrix (small P only) from one ``torch.func`` Jacobian per batch
        (:func:`~geomlab.geometry.curvature.reference.jacobian_fisher`: ``J^T H J``, many times
        faster than ``P`` Fisher-vector products and equal to them to rounding), in the model's
        dtype; ``progress("Fisher columns", done, P, "")`` after each block of columns."""
        return jacobian_fisher(self.model, self.batches, loss=self.loss, progress=progress)

    def kfac(self, *, eigenvalue_corrected: bool = False):
        """curvlinops' K-FAC (or EK-FAC) of this Fisher: exact output Hessian (type-2), per
        layer ``A (x) G`` for ``nn.Linear`` / ``nn.Conv2d`` with weight and bias in one block
        (inputs in homogeneous coordinates ``[a; 1]``), scaled like the Fisher. Raises
        :class:`UnsupportedShapeError` naming any parameter that is not in such a layer (e.g.
        BatchNorm's)."""
        operator = self.kfac_unscaled(eigenvalue_corrected=eigenvalue_corrected)
        return operator if self.scale == 1.0 else operator * self.scale

    def kfac_unscaled(self, *, eigenvalue_corrected: bool = False):
        """:meth:`kfac` before multiplying by :attr:`scale` (curvlinops' inverse takes this)."""
        check_kfac_eligible(self.model, method="ekfac" if eigenvalue_corrected else "kfac")
        from curvlinops import EKFACLinearOperator, FisherType, KFACLinearOperator

        cls = EKFACLinearOperator if eigenvalue_corrected else KFACLinearOperator
        with math_attention():
            return cls(
                self._network,
                output_hessian_loss(self.loss),
                list(self.parameters.values()),
                self.batches,
                check_deterministic=False,
                fisher_type=FisherType.TYPE2,
                separate_weight_and_bias=False,  # one factor per layer: [W b] on inputs [a; 1]
                num_data=self.num_data,
            )


def _rows_of(parameters: Mapping[str, torch.Tensor], used: Mapping[str, bool]) -> torch.Tensor:
    """Flat indices (in :func:`trainable_parameters` order) of the ``used`` parameters."""
    rows, start = [], 0
    for name, p in parameters.items():
        if used[name]:
            rows.append(torch.arange(start, start + p.numel()))
        start += p.numel()
    return torch.cat(rows).to(_device(parameters))


def _device(tensors: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(tensors.values())).device
