"""Fisher information: of any ``nn.Module`` (on curvlinops), and an exact vectorized fast path
for bias-free softmax regression.

Any model: :class:`FisherOperator` (matrix-free, curvlinops' GGN, which is the Fisher for softmax
cross-entropy and Gaussian MSE), its K-FAC / EK-FAC, and the dense float64 reference
:func:`dense_fisher_reference` (``J^T H J`` from ``torch.func``) that tests compare them with.

Softmax-regression fast path:
Scope of this fast path: the model ``z = W x`` with ``W`` of shape (C, D), no bias, softmax
cross-entropy. Parameters are ``W`` flattened row-major, so parameter index ``c * D + d`` is
``W[c, d]``. Per sample the Fisher is ``kron(diag(p) - p p^T, x x^T)``; the model Fisher is its
mean over samples:

    F = (1/N) sum_i kron(H_i, x_i x_i^T),   H_i = diag(p_i) - p_i p_i^T.

Its reference, the per-sample Kronecker loop, sits beside it; tests compare both in float64.
Inputs that are not this model's (wrong ranks, mismatched sample counts, a different parameter
layout) raise :class:`UnsupportedShapeError` rather than return a matrix of the wrong size.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev

from geomlab.geometry.attention import math_attention
from geomlab.geometry.outputs import ModelOutputError, TensorOutput, as_logits
from geomlab.geometry.params import (  # noqa: F401 - shared names, used here
    Batch,
    LossKind,
    as_batches,
    flatten,
    loss_and_gradient,
    loss_value,
    model_outputs,
    trainable_parameters,
    unflatten,
)
from geomlab.geometry.refusal import Refused

ProgressCallback = Callable[[str, int, "int | None", str], None]
"""``progress(stage, done, total, note)``: called by long geometry passes after each step
(CG iterations, blocks of dense Fisher columns). Geometry does no I/O; the experiment decides
what to show (see ``geomlab.experiments.softmax_common.progress_logger``)."""

SAMPLE_CHUNK_ELEMENTS = 1 << 21  # ~16 MB of float64 per chunk of packed x x^T rows


class UnsupportedShapeError(Refused, ValueError):
    """A fast path was given tensors outside the model family it is exact for."""


class NonFiniteOutputError(Refused, ValueError):
    """The model's outputs (or loss, or gradient) are NaN/inf before any step was taken."""


class FisherSelfCheckError(Refused, RuntimeError):
    """curvlinops' Fisher-vector products disagree with the independent float64 reference."""


def check_finite(tensor: torch.Tensor, *, what: str) -> None:
    """Raise :class:`NonFiniteOutputError` naming ``what`` and how many entries are NaN/inf."""
    bad = ~torch.isfinite(tensor)
    count = int(bad.sum())
    if count:
        n_nan = int(torch.isnan(tensor).sum())
        raise NonFiniteOutputError(
            f"{what} are not finite: {count} of {tensor.numel()} entries ({n_nan} NaN, "
            f"{count - n_nan} inf); no Fisher, step or KL of such a model means anything "
            "(check the model's weights and inputs)"
        )


def _check_softmax_regression(
    probs: torch.Tensor, inputs: torch.Tensor, vector: torch.Tensor | None = None
) -> tuple[int, int, int]:
    op = "softmax_regression_fisher"
    if probs.ndim != 2 or inputs.ndim != 2:
        raise UnsupportedShapeError(
            f"{op} covers bias-free softmax regression z = W x only: probs must be (N, C) and "
            f"inputs (N, D), got probs {tuple(probs.shape)} and inputs {tuple(inputs.shape)}; "
            "for any other model use geomlab.geometry.curvature.FisherOperator"
        )
    if probs.shape[0] != inputs.shape[0]:
        raise UnsupportedShapeError(
            f"{op}: probs has {probs.shape[0]} samples but inputs has {inputs.shape[0]}"
        )
    if not (probs.is_floating_point() and inputs.is_floating_point()):
        raise UnsupportedShapeError(f"{op}: probs and inputs must be floating point")
    n_samples, n_classes = probs.shape
    n_features = inputs.shape[1]
    if n_samples < 1:
        raise UnsupportedShapeError(f"{op}: need at least one sample")
    if vector is not None and vector.shape != (n_classes * n_features,):
        raise UnsupportedShapeError(
            f"{op}: the vector must have C*D = {n_classes * n_features} entries (W flattened "
            f"row-major), got shape {tuple(vector.shape)}"
        )
    return n_samples, n_classes, n_features


def softmax_regression_fisher_reference(probs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Reference: explicit per-sample Kronecker products summed in a Python loop.

    Args:
        probs: ``(N, C)`` softmax probabilities ``p_i``.
        inputs: ``(N, D)`` inputs ``x_i``.

    Returns:
        ``(C*D, C*D)`` symmetric ``F = (1/N) sum_i kron(diag(p_i) - p_i p_i^T, x_i x_i^T)``.
    """
    n_samples, n_classes, n_features = _check_softmax_regression(probs, inputs)
    size = n_classes * n_features
    fisher = torch.zeros(size, size, dtype=inputs.dtype, device=inputs.device)
    for p, x in zip(probs, inputs, strict=True):
        output_cov = torch.diag(p) - torch.outer(p, p)
        fisher += torch.kron(output_cov, torch.outer(x, x))
    fisher /= n_samples
    return (fisher + fisher.T) / 2


def softmax_regression_gather_index(
    n_classes: int, n_features: int, device: torch.device | str = "cpu"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each Fisher entry sits in the packed matrix ``G`` (see
    :func:`softmax_regression_fisher`): ``F[(c,d),(c',d')] = G[pos_C(c,c'), pos_D(d,d')]``.

    Depends only on (C, D); build it once and pass it as ``index=`` when computing many Fishers
    of one shape (costs ~1 ms at C*D = 160, ~25 ms at 640, against a few ms to 0.35 s for F).

    Returns:
        ``(rows, cols)``, two ``(C*D, C*D)`` int64 tensors.
    """
    class_pos = _packed_position(n_classes, torch.device(device))  # (C, C)
    feature_pos = _packed_position(n_features, torch.device(device))  # (D, D)
    size = n_classes * n_features
    rows = class_pos[:, None, :, None].expand(n_classes, n_features, n_classes, n_features)
    cols = feature_pos[None, :, None, :].expand(n_classes, n_features, n_classes, n_features)
    return rows.reshape(size, size), cols.reshape(size, size)


def softmax_regression_fisher(
    probs: torch.Tensor,
    inputs: torch.Tensor,
    *,
    index: tuple[torch.Tensor, torch.Tensor] | None = None,
    chunk_elements: int = SAMPLE_CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Exact Fisher of bias-free softmax regression by one GEMM over packed upper triangles.

    ``F[(c,d),(c',d')] = mean_i H_i[c,c'] x_id x_id'``, so the distinct entries are
    ``G = vech(H)^T vech(x x^T) / N`` (a (C(C+1)/2) x (D(D+1)/2) matrix) and ``F`` is a gather
    of ``G``: half the work twice over a dense ``A^T A``, no loop over samples. Samples are
    processed in chunks of about ``chunk_elements`` packed ``x x^T`` entries (bounded memory).

    Args:
        probs: ``(N, C)`` softmax probabilities.
        inputs: ``(N, D)`` inputs.
        index: ``softmax_regression_gather_index(C, D, device)`` if already built.
        chunk_elements: packed entries per sample chunk (>= 1).

    Returns:
        ``(C*D, C*D)`` Fisher, exactly symmetric, equal to
        :func:`softmax_regression_fisher_reference` to rounding.

    Raises:
        UnsupportedShapeError: for tensors that are not this model's (e.g. 4-D image inputs).
    """
    n_samples, n_classes, n_features = _check_softmax_regression(probs, inputs)
    if chunk_elements < 1:
        raise ValueError(f"chunk_elements must be >= 1, got {chunk_elements}")
    # Samples in chunks: the packed x x^T rows (N x D(D+1)/2) would otherwise dominate memory.
    chunk = max(1, chunk_elements // (n_features * (n_features + 1) // 2))
    packed = sum(
        _packed_output_covariance(probs[i : i + chunk]).T @ _upper_products(inputs[i : i + chunk])
        for i in range(0, n_samples, chunk)
    )
    packed = packed / n_samples
    rows, cols = (
        index
        if index is not None
        else softmax_regression_gather_index(n_classes, n_features, probs.device)
    )
    if rows.shape != (n_classes * n_features,) * 2:
        raise UnsupportedShapeError(
            f"softmax_regression_fisher: index is for a {tuple(rows.shape)} Fisher, "
            f"this one is {(n_classes * n_features,) * 2}"
        )
    return packed[rows, cols]


def softmax_regression_fisher_vector_product(
    probs: torch.Tensor, inputs: torch.Tensor, vector: torch.Tensor
) -> torch.Tensor:
    """``F v`` without forming ``F``, in O(N C D): ``(1/N) sum_i x_i (H_i (V x_i))^T``.

    Args:
        probs: ``(N, C)`` softmax probabilities.
        inputs: ``(N, D)`` inputs.
        vector: ``(C*D,)`` (``V`` flattened row-major).

    Returns:
        ``(C*D,)`` the product ``F v``.
    """
    _, n_classes, n_features = _check_softmax_regression(probs, inputs, vector)
    v = vector.reshape(n_classes, n_features)
    logit_change = inputs @ v.T  # (N, C): J_i v
    centred = probs * (logit_change - (probs * logit_change).sum(1, keepdim=True))
    return (centred.T @ inputs / inputs.shape[0]).reshape(-1)


def psd_tolerance(
    rel_tol: float | None, *, dtype: torch.dtype, size: int, default: float = 1e-7
) -> float:
    """Relative tolerance of a PSD check on a ``size x size`` matrix computed in ``dtype``.

    An explicit ``rel_tol`` is used as given. ``None`` means the default scaled to the dtype:
    ``max(default, size * eps(dtype))``, the order of an eigensolver's backward error, so that
    float32 round-off (eigenvalues of -4e-7 x max at size 160) is not read as indefiniteness,
    while float64 keeps ``default``.
    """
    if rel_tol is not None:
        return rel_tol
    return max(default, size * torch.finfo(dtype).eps)


def _upper_products(matrix: torch.Tensor) -> torch.Tensor:
    """Row-wise products ``m[:, a] * m[:, b]`` for ``a <= b`` (row-major packed order)."""
    k = matrix.shape[1]
    return torch.cat([matrix[:, a : a + 1] * matrix[:, a:] for a in range(k)], dim=1)


def _packed_output_covariance(probs: torch.Tensor) -> torch.Tensor:
    """Packed upper triangles of ``diag(p) - p p^T`` per row: entries ``p_a (delta_ab - p_b)``."""
    k = probs.shape[1]
    identity = torch.eye(k, dtype=probs.dtype, device=probs.device)
    return torch.cat(
        [probs[:, a : a + 1] * (identity[a, a:] - probs[:, a:]) for a in range(k)], dim=1
    )


def _packed_position(k: int, device: torch.device) -> torch.Tensor:
    """``pos[a, b]``: where the pair (min, max) of (a, b) sits in the packed upper triangle."""
    a = torch.arange(k, device=device)
    low, high = torch.minimum(a[:, None], a[None, :]), torch.maximum(a[:, None], a[None, :])
    return low * k - low * (low - 1) // 2 + (high - low)


# --- The Fisher of any nn.Module (GGN = Fisher for softmax CE and Gaussian MSE) ---------------


def _output_hessian_loss(loss: LossKind) -> nn.Module:
    """The curvlinops loss whose GGN, after :func:`_ggn_scale`, is the Fisher."""
    if loss is LossKind.CROSS_ENTROPY:
        return nn.CrossEntropyLoss(reduction="mean")
    return nn.MSELoss(reduction="sum")  # Hessian 2 I per sample, scaled by 1 / (2 N) below


def _ggn_scale(loss: LossKind, num_data: int) -> float:
    return 1.0 if loss is LossKind.CROSS_ENTROPY else 1.0 / (2 * num_data)


def _check_targets(outputs: torch.Tensor, targets: torch.Tensor, loss: LossKind) -> None:
    if outputs.ndim != 2:
        raise UnsupportedShapeError(
            f"the model's outputs must be (batch, outputs), got {tuple(outputs.shape)}"
        )
    if loss is LossKind.CROSS_ENTROPY and (targets.ndim != 1 or targets.is_floating_point()):
        raise UnsupportedShapeError(
            f"cross_entropy needs integer class labels of shape (batch,), got "
            f"{targets.dtype} {tuple(targets.shape)}"
        )
    if loss is LossKind.MSE and targets.shape != outputs.shape:
        raise UnsupportedShapeError(
            f"mse needs targets shaped like the outputs {tuple(outputs.shape)}, got "
            f"{tuple(targets.shape)}"
        )


def dense_fisher_reference(
    model: nn.Module, data: Batch | Sequence[Batch], *, loss: LossKind
) -> torch.Tensor:
    """Reference: the dense Fisher ``F = (1/N) sum_i J_i^T H_i J_i`` in float64 via torch.func.

    ``J_i = d f(x_i) / d theta`` (``K x P``) from ``torch.func.jacrev`` of
    ``torch.func.functional_call`` on a float64 copy of the model, in its current train/eval
    mode; ``H_i`` as in :class:`LossKind`. Memory ``N K P``: for tests and small models.

    Args:
        model: any ``nn.Module`` mapping a batch of inputs to ``(batch, K)`` outputs.
        data: ``(inputs, targets)`` or a sequence of such batches.
        loss: which likelihood.

    Returns:
        ``(P, P)`` float64 Fisher over :func:`trainable_parameters`.
    """
    loss = LossKind(loss)
    with math_attention():
        return _dense_fisher_reference(model, data, loss=loss)


def _dense_fisher_reference(model: nn.Module, data, *, loss: LossKind) -> torch.Tensor:
    reference = copy.deepcopy(model).to(torch.float64)
    params = {n: p.detach() for n, p in trainable_parameters(reference).items()}
    names = list(params)
    total = torch.zeros(sum(p.numel() for p in params.values()), sum(
        p.numel() for p in params.values()), dtype=torch.float64)  # fmt: skip
    n_total = 0
    for inputs, targets in as_batches(data):
        x = inputs.to(torch.float64) if inputs.is_floating_point() else inputs

        def outputs(*values, x=x):
            return as_logits(
                functional_call(reference, dict(zip(names, values, strict=True)), (x,))
            )

        f = outputs(*params.values())
        _check_targets(f, targets, loss)
        jac = jacrev(outputs, argnums=tuple(range(len(names))))(*params.values())
        J = torch.cat([j.reshape(f.shape[0], f.shape[1], -1) for j in jac], dim=2)  # (B, K, P)
        if loss is LossKind.CROSS_ENTROPY:
            p = torch.softmax(f, dim=1)
            H = torch.diag_embed(p) - p[:, :, None] * p[:, None, :]
            HJ = torch.bmm(H, J)  # (B, K, P); never a (B, K, P, P) intermediate
        else:
            HJ = J
        total += J.reshape(-1, J.shape[2]).T @ HJ.reshape(-1, J.shape[2])
        n_total += f.shape[0]
    total /= n_total
    return (total + total.T) / 2


def kfac_ineligible_parameters(model: nn.Module) -> list[str]:
    """Names of trainable parameters that are not a weight/bias of an ``nn.Linear`` or
    ``nn.Conv2d`` (K-FAC has no Kronecker factors for them: LayerNorm, BatchNorm, attention
    in-projections, embeddings, free ``nn.Parameter`` such as a CLS token). The ``out_proj``
    of an ``nn.MultiheadAttention`` counts as ineligible too: attention uses its weight
    directly, never calling it as a module, so K-FAC's hooks would never see its inputs."""
    inside_attention = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.MultiheadAttention)
        for p in m.parameters()
    }
    supported = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.Linear | nn.Conv2d)
        for p in m.parameters(recurse=False)
        if id(p) not in inside_attention
    }
    return [n for n, p in trainable_parameters(model).items() if id(p) not in supported]


def check_kfac_eligible(model: nn.Module, *, method: str = "kfac") -> None:
    """Raise :class:`UnsupportedShapeError` before any work when K-FAC cannot cover ``model``,
    naming the parameters and how to freeze them."""
    others = kfac_ineligible_parameters(model)
    if others:
        shown = ", ".join(others[:8]) + (f" and {len(others) - 8} more" if len(others) > 8 else "")
        raise UnsupportedShapeError(
            f"{method}: K-FAC (curvlinops) covers parameters of nn.Linear and nn.Conv2d layers "
            "called as modules only (not attention's, norms', embeddings' or free ones); not "
            f"{shown}. Freeze them (param.requires_grad_(False), e.g. in your model factory) to "
            "take K-FAC steps on the remaining layers, or use natgrad with solver cg/dense"
        )


_SELF_CHECKED: weakref.WeakKeyDictionary[nn.Module, set] = weakref.WeakKeyDictionary()
SELF_CHECK_RTOL = 1e-8  # float64 products agree to ~1e-14; a wrong path is off by O(1)


def _model_signature(model: nn.Module, loss: LossKind) -> tuple:
    """Structure and parameter identity: what the self-check's verdict depends on."""
    modules = tuple((n, type(m).__qualname__, m.training) for n, m in model.named_modules())
    params = tuple((n, id(p), tuple(p.shape), p.requires_grad) for n, p in model.named_parameters())
    return (loss.value, modules, params)


def fisher_product_reference(
    model: nn.Module, inputs: torch.Tensor, vectors: torch.Tensor, *, loss: LossKind
) -> torch.Tensor:
    """Reference for ``F V`` on one batch, independent of curvlinops: per column
    ``(1/N) J^T H (J v)`` with ``J v`` from ``torch.func.jvp``, the output Hessian ``H`` of
    :class:`LossKind` applied in closed form, and ``J^T`` from ``torch.func.vjp``.

    Args:
        model: the network (its own dtype; call on a float64 copy for a reference).
        inputs: one batch of inputs.
        vectors: ``(P,)`` or ``(P, k)`` in :func:`trainable_parameters` order.
        loss: which likelihood.

    Returns:
        ``F V`` with the shape of ``vectors``.
    """
    loss = LossKind(loss)
    params = {n: p.detach() for n, p in trainable_parameters(model).items()}
    names = list(params)

    def outputs(*values):
        return as_logits(functional_call(model, dict(zip(names, values, strict=True)), (inputs,)))

    primals = tuple(params.values())
    columns = vectors[:, None] if vectors.ndim == 1 else vectors
    results = []
    with math_attention():
        f, vjp_fn = torch.func.vjp(outputs, *primals)
        for column in columns.T:
            tangents = tuple(unflatten(column, params).values())
            _, jv = torch.func.jvp(outputs, primals, tangents)
            if loss is LossKind.CROSS_ENTROPY:
                p = torch.softmax(f, dim=1)
                hjv = p * (jv - (p * jv).sum(1, keepdim=True))
            else:
                hjv = jv
            results.append(flatten(vjp_fn(hjv / f.shape[0])))
    product = torch.stack(results, dim=1)
    return product[:, 0] if vectors.ndim == 1 else product


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
        fast = operator.matvec(vectors)
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
    scale = max(float(expected.abs().max()), 1e-300)
    difference = float((fast - expected).abs().max()) / scale
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
        with torch.no_grad(), math_attention():
            first = as_logits(model(self.batches[0][0][:2]))
        _check_targets(first, self.batches[0][1][:2], self.loss)
        self.parameters = trainable_parameters(model)
        self.num_data = sum(int(x.shape[0]) for x, _ in self.batches)
        self.dim = sum(p.numel() for p in self.parameters.values())
        self.scale = _ggn_scale(self.loss, self.num_data)
        if self_check:
            fisher_self_check(model, self.batches, loss=self.loss)
        self._network = model if isinstance(model, TensorOutput) else TensorOutput(model)
        from curvlinops import GGNLinearOperator  # imported on use: E1/E3 paper never need it

        ggn = GGNLinearOperator(
            self._network,
            _output_hessian_loss(self.loss),
            list(self.parameters.values()),
            self.batches,
            check_deterministic=False,
            num_data=self.num_data,
        )
        self._operator = ggn if self.scale == 1.0 else ggn * self.scale

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self.parameters.values())).dtype

    def matvec(self, vector: torch.Tensor) -> torch.Tensor:
        """``F v`` for a flat ``(P,)`` vector (or ``F M`` for ``(P, k)``)."""
        if vector.shape[0] != self.dim:
            raise ValueError(f"vector has {vector.shape[0]} rows, the Fisher is {self.dim}")
        with math_attention():
            return self._operator @ vector

    def dense(self, *, progress: ProgressCallback | None = None) -> torch.Tensor:
        """The dense ``(P, P)`` matrix, ``F I`` in column blocks (small P only);
        ``progress("Fisher columns", done, P, "")`` after each block."""
        eye = torch.eye(self.dim, dtype=self.dtype, device=_device(self.parameters))
        columns, done = [], 0
        for block in eye.split(256, dim=1):
            columns.append(self.matvec(block))
            done += block.shape[1]
            if progress is not None:
                progress("Fisher columns", done, self.dim, "")
        dense = torch.cat(columns, dim=1)
        return (dense + dense.T) / 2

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
                _output_hessian_loss(self.loss),
                list(self.parameters.values()),
                self.batches,
                check_deterministic=False,
                fisher_type=FisherType.TYPE2,
                separate_weight_and_bias=False,  # one factor per layer: [W b] on inputs [a; 1]
                num_data=self.num_data,
            )


def _device(tensors: Mapping[str, torch.Tensor]) -> torch.device:
    return next(iter(tensors.values())).device
