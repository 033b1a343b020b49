"""Shared fixtures: seeded float64 random cases (dense references are the oracle)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture
def rng() -> torch.Generator:
    return torch.Generator().manual_seed(1234)


def random_softmax_case(n: int, c: int, d: int, seed: int = 0):
    """Random inputs and softmax probabilities in float64."""
    g = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, dtype=torch.float64, generator=g)
    probs = torch.softmax(2 * torch.randn(n, c, dtype=torch.float64, generator=g), dim=1)
    return probs, inputs
