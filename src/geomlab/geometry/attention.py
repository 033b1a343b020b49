"""Attention inside geometry's own passes: the MHA fast path off, SDPA's math backend.

PyTorch runs ``nn.MultiheadAttention`` / ``nn.TransformerEncoderLayer`` in eval mode through
fused kernels (``_transformer_encoder_layer_fwd``, ``_native_multi_head_attention``) and
``F.scaled_dot_product_attention`` through flash or memory-efficient kernels. None of them
supports forward-mode AD (curvlinops' products) or double backward (nested input derivatives),
and Taylor mode can only write rules for primitive ops. The math forms compute the same function
from matmul, softmax and friends, which every pass supports.

:func:`math_attention` switches both for the duration of a pass and restores the caller's
settings afterwards (also on error). It changes no model, only which kernels torch picks, so a
model written against ``nn.TransformerEncoder``, ``nn.MultiheadAttention`` or a Hugging Face
attention module with ``sdpa`` runs unchanged.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

__all__ = ["math_attention"]


@contextlib.contextmanager
def math_attention() -> Iterator[None]:
    """Inside: MHA/TransformerEncoder fast path disabled and SDPA restricted to its math backend.

    Reentrant; restores the previous fast-path flag and SDPA backends on exit.
    """
    from torch.nn.attention import SDPBackend, sdpa_kernel

    previous = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with sdpa_kernel([SDPBackend.MATH]):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(previous)
