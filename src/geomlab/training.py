"""Training and evaluating classifiers: the epoch loop, test metrics, atomic checkpoints.

Experiments wire these to their data and loss; nothing here knows about a particular model.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import nn

from geomlab import io
from geomlab.data.mnist import batch_indices
from geomlab.geometry.outputs import as_logits
from geomlab.models.modes import eval_mode


class StepLoss(Protocol):
    """What a training loss returns: ``total`` is optimized; the parts are logged."""

    total: torch.Tensor
    cross_entropy: torch.Tensor
    penalty: torch.Tensor
    num_penalized: int


LossFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], StepLoss]


@torch.no_grad()
def evaluate_classifier(
    model: nn.Module, images: torch.Tensor, labels: torch.Tensor, *, batch_size: int
) -> tuple[float, float]:
    """Accuracy and mean cross-entropy in eval mode (each submodule's mode restored after). The
    model may return a tensor or an object with ``.logits`` (``geometry.outputs.as_logits``)."""
    correct, loss_sum = 0, 0.0
    with eval_mode(model):
        for start in range(0, images.shape[0], batch_size):
            logits = as_logits(model(images[start : start + batch_size]))
            target = labels[start : start + batch_size]
            loss_sum += float(F.cross_entropy(logits, target, reduction="sum"))
            correct += int((logits.argmax(1) == target).sum())
    return correct / images.shape[0], loss_sum / images.shape[0]


@dataclass
class TrainingRecord:
    """Per-epoch rows (batch-mean losses, penalized fraction, test metrics, seconds) and the
    penalty's share of the summed training loss over all steps."""

    history: list[dict[str, Any]] = field(default_factory=list)
    penalty_share: float = 0.0
    seconds: float = 0.0


def train_classifier(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    images: torch.Tensor,
    labels: torch.Tensor,
    *,
    loss_fn: LossFn,
    epochs: int,
    batch_size: int,
    batch_generator: torch.Generator,
    evaluate: Callable[[nn.Module], tuple[float, float]],
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainingRecord:
    """Minibatch training in train mode: per epoch a seeded permutation of ``images`` in
    batches of ``batch_size``; per batch ``loss_fn(model, x, y).total`` is minimized by one
    optimizer step; after each epoch ``evaluate(model)`` gives (test accuracy, test loss)."""
    record = TrainingRecord()
    total_sum = penalty_sum = 0.0
    start = time.perf_counter()
    num_examples = labels.numel()
    for epoch in range(1, epochs + 1):
        epoch_start = time.perf_counter()
        sums = {"loss": 0.0, "ce": 0.0, "penalty": 0.0, "penalized": 0}
        batches = 0
        model.train()
        for index in batch_indices(
            num_examples, batch_size, generator=batch_generator, device=labels.device
        ):
            parts = loss_fn(model, images[index], labels[index])
            optimizer.zero_grad(set_to_none=True)
            parts.total.backward()
            optimizer.step()
            sums["loss"] += parts.total.item()
            sums["ce"] += parts.cross_entropy.item()
            sums["penalty"] += parts.penalty.item()
            sums["penalized"] += parts.num_penalized
            batches += 1
        test_acc, test_loss = evaluate(model)
        total_sum += sums["loss"]
        penalty_sum += sums["penalty"]
        row = {
            "epoch": epoch,
            "train_loss": sums["loss"] / batches,
            "train_ce": sums["ce"] / batches,
            "train_penalty": sums["penalty"] / batches,
            "penalized_fraction": sums["penalized"] / num_examples,
            "test_acc": test_acc,
            "test_loss": test_loss,
            "epoch_time_s": time.perf_counter() - epoch_start,
        }
        record.history.append(row)
        if on_epoch is not None:
            on_epoch(row)
    record.penalty_share = penalty_sum / total_sum if total_sum else 0.0
    record.seconds = time.perf_counter() - start
    return record


def save_checkpoint(model: nn.Module, path: Path) -> Path:
    """The model's state_dict, written atomically under a unique temporary name (two writers
    of the same checkpoint never share a temporary file)."""
    state = model.state_dict()
    return io.atomic_write(Path(path), lambda tmp: torch.save(state, tmp))


def load_checkpoint(model: nn.Module, path: Path, *, device: torch.device | str) -> nn.Module:
    """Load a state_dict written by :func:`save_checkpoint` into ``model``; eval mode."""
    model.load_state_dict(torch.load(path, map_location=device, weights_only=True))
    return model.eval()
