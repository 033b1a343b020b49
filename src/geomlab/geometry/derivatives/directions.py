"""Random unit directions in input space, and the shape contract of every derivative engine."""

from __future__ import annotations

import torch

__all__ = ["DIRECTION_NORM_EPS", "check_shapes", "sample_unit_directions"]

DIRECTION_NORM_EPS = 1e-12


def sample_unit_directions(
    num_directions: int, like: torch.Tensor, *, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Gaussian directions normalized per sample: shape ``[num_directions, *like.shape]``.

    Each ``[k, i]`` slice has unit Euclidean norm (the norm gets a 1e-12 guard, as in the
    notebook). Draws from ``generator`` (on ``like.device``) so runs are reproducible.
    """
    shape = (num_directions, *like.shape)
    raw = torch.randn(shape, generator=generator, device=like.device, dtype=like.dtype)
    flat = raw.reshape(num_directions, like.shape[0], -1)
    flat = flat / (flat.norm(dim=-1, keepdim=True) + DIRECTION_NORM_EPS)
    return flat.reshape(shape)


def check_shapes(
    inputs: torch.Tensor, labels: torch.Tensor, directions: torch.Tensor, max_order: int
) -> None:
    if max_order < 1:
        raise ValueError(f"max_order must be ≥ 1, got {max_order}")
    if labels.shape[:1] != inputs.shape[:1]:
        raise ValueError(f"labels shape {tuple(labels.shape)} != batch {tuple(inputs.shape[:1])}")
    if directions.dim() != inputs.dim() + 1 or directions.shape[1:] != inputs.shape:
        dims = ", ".join(map(str, inputs.shape))
        raise ValueError(
            f"directions must have shape [K, *inputs.shape] = [K, {dims}],"
            f" got {tuple(directions.shape)}"
        )
