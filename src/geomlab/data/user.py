"""A user's data set from ``"package.module:function"`` returning ``(inputs, labels)``."""

from __future__ import annotations

import torch

from geomlab.models.loading import ImportPathError, resolve_import_path

__all__ = [
    "load_user_data",
]  # fmt: skip


def load_user_data(
    spec: str,
    *,
    n_samples: int | None = None,
    dtype: torch.dtype | None = None,
    device: torch.device | str = "cpu",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Call the function ``spec`` names; check it gave ``(inputs, labels)`` tensors of one length;
    keep the first ``n_samples`` (an error when there are fewer); cast floating inputs to
    ``dtype`` (labels keep theirs) and move both to ``device``."""
    result = resolve_import_path(spec)()
    if not (isinstance(result, tuple | list) and len(result) == 2):
        raise ImportPathError(f"{spec!r} must return (inputs, labels), got {type(result).__name__}")
    inputs, labels = (torch.as_tensor(part) for part in result)
    if inputs.ndim < 1 or labels.ndim < 1 or inputs.shape[0] != labels.shape[0]:
        raise ImportPathError(
            f"{spec!r}: inputs {tuple(inputs.shape)} and labels {tuple(labels.shape)} must have "
            "the same first (sample) dimension"
        )
    if n_samples is not None:
        if n_samples > inputs.shape[0]:
            raise ImportPathError(
                f"n_samples ({n_samples}) exceeds the {inputs.shape[0]} samples {spec!r} returned"
            )
        inputs, labels = inputs[:n_samples], labels[:n_samples]
    if dtype is not None and inputs.is_floating_point():
        inputs = inputs.to(dtype)
    return inputs.to(device), labels.to(device)
