"""The notebook CNN: parameter count, shapes, seeded init, fast-path eligibility."""

from __future__ import annotations

import pytest
import torch

from geomlab.geometry.derivatives import check_piecewise_linear
from geomlab.models.mnist_cnn import NUM_PARAMETERS, build_mnist_cnn, count_parameters


def test_parameter_count_and_output_shape():
    model = build_mnist_cnn(seed=0)
    assert count_parameters(model) == NUM_PARAMETERS == 1_199_882
    assert model(torch.zeros(3, 1, 28, 28)).shape == (3, 10)
    assert list(model.state_dict()) == [
        "conv1.weight", "conv1.bias", "conv2.weight", "conv2.bias",
        "fc1.weight", "fc1.bias", "fc2.weight", "fc2.bias",
    ]  # fmt: skip


def test_seeded_init_is_reproducible_and_seed_dependent():
    a, b, c = build_mnist_cnn(seed=3), build_mnist_cnn(seed=3), build_mnist_cnn(seed=4)
    assert torch.equal(a.fc2.weight, b.fc2.weight)
    assert not torch.equal(a.fc2.weight, c.fc2.weight)


def test_fast_path_eligible_in_train_and_eval_mode():
    model = build_mnist_cnn(seed=0)
    x = torch.randn(2, 1, 28, 28)
    for train in (True, False):
        model.train(train)
        assert check_piecewise_linear(model, x).eligible


def test_bad_dropout_is_an_error():
    with pytest.raises(ValueError, match="dropout"):
        build_mnist_cnn(seed=0, dropout=1.0)
