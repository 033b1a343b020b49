"""Train/eval mode as a context manager: set on entry, every submodule restored on exit."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = [
    "eval_mode", "module_mode", "train_mode",
]  # fmt: skip


@contextmanager
def module_mode(model: nn.Module, *, training: bool) -> Iterator[nn.Module]:
    """``with module_mode(model, training=False): ...`` runs in eval mode and restores each
    submodule's own ``training`` flag afterwards (also on error), so mixed modes survive."""
    saved = [(module, module.training) for module in model.modules()]
    model.train(training)
    try:
        yield model
    finally:
        for module, flag in saved:
            module.training = flag


def eval_mode(model: nn.Module):
    return module_mode(model, training=False)


def train_mode(model: nn.Module):
    return module_mode(model, training=True)
