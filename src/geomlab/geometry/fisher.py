"""Fisher information of softmax regression, natural-gradient directions and KL quantities.

Parameters of a bias-free softmax regression are the weight matrix ``W`` (C x D) flattened
row-major, so parameter index ``c * D + d`` is ``W[c, d]``. Per sample the Fisher is
``kron(diag(p) - p p^T, x x^T)``; the model Fisher is its mean over samples.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from geomlab.geometry import linalg

SAMPLE_CHUNK_ELEMENTS = 1 << 21  # ~16 MB of float64 per chunk of packed x x^T rows


def softmax_fisher_reference(probs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Reference: explicit per-sample Kronecker products summed in a Python loop."""
    n_samples, n_classes = probs.shape
    n_features = inputs.shape[1]
    size = n_classes * n_features
    fisher = torch.zeros(size, size, dtype=inputs.dtype, device=inputs.device)
    for p, x in zip(probs, inputs, strict=True):
        output_cov = torch.diag(p) - torch.outer(p, p)
        fisher += torch.kron(output_cov, torch.outer(x, x))
    fisher /= n_samples
    return (fisher + fisher.T) / 2


def softmax_fisher(probs: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Fast exact Fisher: one GEMM over the packed upper triangles of ``H_i`` and ``x_i x_i^T``.

    ``F[(c,d),(c',d')] = mean_i H_i[c,c'] x_id x_id'``, so the distinct entries are
    ``G = vech(H)^T vech(x x^T) / N`` (a (C(C+1)/2) x (D(D+1)/2) matrix); ``F`` is a gather of
    ``G``. This halves the work twice over a dense ``A^T A`` and never loops over samples.
    """
    n_samples, n_classes = probs.shape
    n_features = inputs.shape[1]
    # Samples in chunks: the packed x x^T rows (N x D(D+1)/2) would otherwise dominate memory.
    chunk = max(1, SAMPLE_CHUNK_ELEMENTS // (n_features * (n_features + 1) // 2))
    packed = sum(
        _packed_output_covariance(probs[i : i + chunk]).T @ _upper_products(inputs[i : i + chunk])
        for i in range(0, n_samples, chunk)
    )
    packed = packed / n_samples
    rows, cols = _fisher_gather_index(n_classes, n_features, probs.device)
    return packed[rows, cols]


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


@functools.lru_cache(maxsize=32)
def _fisher_gather_index(
    n_classes: int, n_features: int, device: torch.device
) -> tuple[torch.Tensor, torch.Tensor]:
    class_pos = _packed_position(n_classes, device)  # (C, C)
    feature_pos = _packed_position(n_features, device)  # (D, D)
    size = n_classes * n_features
    rows = class_pos[:, None, :, None].expand(n_classes, n_features, n_classes, n_features)
    cols = feature_pos[None, :, None, :].expand(n_classes, n_features, n_classes, n_features)
    return rows.reshape(size, size), cols.reshape(size, size)


def softmax_fisher_vector_product(
    probs: torch.Tensor, inputs: torch.Tensor, vector: torch.Tensor
) -> torch.Tensor:
    """``F v`` without forming ``F``: O(N C D) via the model's Jacobian structure."""
    n_classes, n_features = probs.shape[1], inputs.shape[1]
    v = vector.reshape(n_classes, n_features)
    logit_change = inputs @ v.T  # (N, C): J_i v
    centred = probs * (logit_change - (probs * logit_change).sum(1, keepdim=True))
    return (centred.T @ inputs / inputs.shape[0]).reshape(-1)


@dataclass(frozen=True)
class SymmetricPseudoInverse:
    """Eigen-decomposition of a PSD matrix kept once and applied as ``A^+ v`` many times."""

    eigenvalues: torch.Tensor
    eigenvectors: torch.Tensor
    inverse_eigenvalues: torch.Tensor
    rank: int
    cutoff: float

    def apply(self, vector: torch.Tensor) -> torch.Tensor:
        coords = self.eigenvectors.T @ vector
        return self.eigenvectors @ (self.inverse_eigenvalues * coords)

    def matrix(self) -> torch.Tensor:
        return (self.eigenvectors * self.inverse_eigenvalues) @ self.eigenvectors.T


def symmetric_pseudo_inverse(matrix: torch.Tensor, *, rcond: float) -> SymmetricPseudoInverse:
    """PSD pseudo-inverse: eigenvalues below ``rcond * max eigenvalue`` count as zero."""
    if rcond < 0:
        raise ValueError(f"rcond must be >= 0, got {rcond}")
    eigenvalues, eigenvectors = linalg.eigh((matrix + matrix.T) / 2)
    cutoff = rcond * float(eigenvalues.abs().max())
    keep = eigenvalues > cutoff
    inverse = torch.where(keep, 1.0 / torch.where(keep, eigenvalues, 1.0), 0.0)
    return SymmetricPseudoInverse(eigenvalues, eigenvectors, inverse, int(keep.sum()), cutoff)


def kl_matched_step_size(direction: torch.Tensor, fisher: torch.Tensor, epsilon: torch.Tensor):
    """Step size(s) ``eta`` whose second-order KL ``eta^2 d^T F d / 2`` equals ``epsilon``."""
    curvature = direction @ (fisher @ direction)
    if float(curvature) <= 0:
        raise ValueError(f"direction has non-positive Fisher curvature d^T F d = {curvature}")
    return torch.sqrt(
        2 * torch.as_tensor(epsilon, dtype=fisher.dtype, device=fisher.device) / curvature
    )


def second_order_kl(direction: torch.Tensor, fisher: torch.Tensor, eta: torch.Tensor):
    """Quadratic model of the KL for a step ``-eta * d``: ``eta^2 d^T F d / 2``."""
    return eta**2 * (direction @ (fisher @ direction)) / 2


def categorical_kl(logits_p: torch.Tensor, logits_q: torch.Tensor) -> torch.Tensor:
    """Mean over samples (last dim = classes) of KL(softmax(p) || softmax(q)), via log-softmax."""
    log_p = torch.log_softmax(logits_p, dim=-1)
    log_q = torch.log_softmax(logits_q, dim=-1)
    return (log_p.exp() * (log_p - log_q)).sum(-1).mean(-1)
