"""Leave a model as it was: train/eval mode as a context manager (every submodule restored on
exit), and private buffers for passes that must not move running statistics."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = [
    "eval_mode", "isolated_buffers", "module_mode", "train_mode",
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


@contextmanager
def isolated_buffers(model: nn.Module) -> Iterator[None]:
    """Inside the block every buffer of ``model`` is a private copy: running statistics and
    counters written by the passes in the block are discarded afterwards."""
    saved = []
    for module in model.modules():
        for name, buffer in list(module.named_buffers(recurse=False)):
            saved.append((module, name, buffer))
            setattr(module, name, buffer.clone())
    try:
        yield
    finally:
        for module, name, buffer in saved:
            setattr(module, name, buffer)
