"""What a model returns, as the tensor every geometry pass works on.

A model may return a tensor, or a Hugging Face-style output object (``ModelOutput``, or anything
with a tensor ``.logits`` attribute or ``"logits"`` key). Everything else is refused by name, never
guessed: a tuple's first element is not always the logits.
"""

from __future__ import annotations

import torch
from torch import nn

from geomlab.geometry.refusal import Refused

__all__ = ["ModelOutputError", "TensorOutput", "as_logits"]


class ModelOutputError(Refused, TypeError):
    """The model's output is neither a tensor nor an object carrying ``logits``."""


def as_logits(output: object) -> torch.Tensor:
    """``output`` itself if it is a tensor, else its ``.logits`` (or ``["logits"]``) tensor.

    Raises :class:`ModelOutputError` naming the type for anything else.
    """
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if logits is None and isinstance(output, dict):
        logits = output.get("logits")
    if isinstance(logits, torch.Tensor):
        return logits
    raise ModelOutputError(
        f"the model returned a {type(output).__name__}; geomlab needs a tensor of outputs "
        "(batch, K) or an object with a tensor `.logits` (Hugging Face-style). Wrap the model "
        "so that forward returns the logits tensor."
    )


class TensorOutput(nn.Module):
    """``model`` with its output mapped through :func:`as_logits` (for libraries such as
    curvlinops that call ``model(x)`` and need a tensor). Holds the same parameter objects."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return as_logits(self.model(*args, **kwargs))
