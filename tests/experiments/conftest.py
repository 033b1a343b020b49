"""Fixtures for experiment tests that call ``run(config, ctx)`` directly."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import matplotlib.pyplot as plt
import pytest
import torch


@pytest.fixture(autouse=True)
def one_thread():
    """Tiny matrices gain nothing from threads, and on a busy 2-core machine OpenMP barriers
    between two threads make many tiny ops crawl; restore the setting afterwards."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


class FakeContext:
    """The RunContext surface, writing plain files (the runner's atomic writes are its own)."""

    def __init__(self, out_dir: Path):
        self.out_dir = out_dir
        self.device = torch.device("cpu")
        self.log = logging.getLogger("test-experiments")
        self.cache: dict[str, object] = {}

    def progress(self, iterable, *, total=None, description=""):
        yield from iterable

    def write_csv(self, name, frame):
        frame.to_csv(self.out_dir / name, index=False)
        return self.out_dir / name

    def write_json(self, name, obj):
        (self.out_dir / name).write_text(json.dumps(obj, default=float))
        return self.out_dir / name

    def save_figure(self, figure, stem):
        paths = [self.out_dir / f"{stem}.{fmt}" for fmt in ("png", "pdf")]
        for path in paths:
            figure.savefig(path, dpi=50)
        plt.close(figure)
        return paths

    def cached(self, key, compute):
        if key not in self.cache:
            self.cache[key] = json.loads(json.dumps(compute()))
        return self.cache[key]

    def checkpoint_path(self, key):
        return self.out_dir / key


@pytest.fixture
def fake_context():
    return FakeContext
