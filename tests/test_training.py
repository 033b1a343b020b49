"""The training module: evaluation in eval mode, the epoch loop, atomic checkpoints."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from geomlab.training import (
    evaluate_classifier,
    load_checkpoint,
    save_checkpoint,
    train_classifier,
)


def tiny_classifier(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Dropout(0.5), nn.Linear(8, 3))


def tiny_data(n: int = 40):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 4, generator=g)
    return x, (x[:, 0] > 0).long() + (x[:, 1] > 0).long()


def test_evaluate_matches_a_hand_count_and_restores_mixed_modes():
    model = tiny_classifier()
    x, y = tiny_data()
    model.train()
    model[2].eval()  # mixed modes survive evaluation
    acc, loss = evaluate_classifier(model, x, y, batch_size=7)
    with torch.no_grad():
        model.eval()
        logits = model(x)
    assert acc == int((logits.argmax(1) == y).sum()) / len(y)
    assert abs(loss - float(F.cross_entropy(logits, y))) < 1e-6
    model.train()
    model[2].eval()
    evaluate_classifier(model, x, y, batch_size=7)
    assert [m.training for m in model] == [True, True, False, True]


@dataclass
class Parts:
    total: torch.Tensor
    cross_entropy: torch.Tensor
    penalty: torch.Tensor
    num_penalized: int


def half_penalized(model, x, y):
    ce = F.cross_entropy(model(x), y)
    penalty = 0.1 * sum(p.square().sum() for p in model.parameters())
    return Parts(ce + penalty, ce, penalty, x.shape[0] // 2)


def test_training_loop_records_epochs_and_is_seeded():
    x, y = tiny_data()
    records, weights = [], []
    for _ in range(2):
        model = tiny_classifier()
        record = train_classifier(
            model, torch.optim.SGD(model.parameters(), lr=0.1), x, y, loss_fn=half_penalized,
            epochs=3, batch_size=16, batch_generator=torch.Generator().manual_seed(5),
            evaluate=lambda m: evaluate_classifier(m, x, y, batch_size=100),
        )  # fmt: skip
        records.append(record)
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])
    history = records[0].history
    assert [row["epoch"] for row in history] == [1, 2, 3]
    for row in history:
        assert abs(row["train_loss"] - row["train_ce"] - row["train_penalty"]) < 1e-6
        assert row["penalized_fraction"] == (8 + 8 + 4) / 40  # three batches: 16, 16, 8
    share = sum(r["train_penalty"] for r in history) / sum(r["train_loss"] for r in history)
    assert abs(records[0].penalty_share - share) < 1e-9


def test_checkpoints_round_trip_and_concurrent_writers_never_collide(tmp_path):
    """Two runs writing the same checkpoint at once (issue 13, item 8): each write has its own
    temporary file, so neither fails and the result is one complete checkpoint."""
    path = tmp_path / "checkpoints" / "global_seed0.pt"
    models = []
    for seed in (0, 1):  # big enough (256 KB) for the writes to overlap
        torch.manual_seed(seed)
        models.append(nn.Linear(256, 256))
    errors: list[BaseException] = []

    def writer(model):
        try:
            for _ in range(25):
                save_checkpoint(model, path)
        except BaseException as error:  # noqa: BLE001 - reported below
            errors.append(error)

    threads = [threading.Thread(target=writer, args=(m,)) for m in models]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary files left
    loaded = load_checkpoint(nn.Linear(256, 256).train(), path, device="cpu")
    assert not loaded.training
    state = loaded.state_dict()
    assert any(all(torch.equal(state[k], v) for k, v in m.state_dict().items()) for m in models)
