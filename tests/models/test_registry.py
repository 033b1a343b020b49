"""One model/data registry: specs checked once, models and data built by name."""

import pytest
import torch

from geomlab import data as datasets
from geomlab import models


def test_specs_are_checked_once_for_models_and_data():
    assert models.check_spec("mlp", models.BUILTIN_MODELS) == "mlp"
    assert models.check_spec("synthetic", datasets.BUILTIN_DATA) == "synthetic"
    with pytest.raises(ValueError, match="one of softmax-regression, mlp, mnist-cnn"):
        models.check_spec("resnet", models.BUILTIN_MODELS)
    with pytest.raises(ValueError, match="cannot import module"):
        models.check_spec("no_such_module_xyz:f", models.BUILTIN_MODELS)


def test_build_model_and_load_data_by_name():
    data = datasets.load_data("synthetic", n_samples=42, n_features=6, n_classes=3, seed=0)
    assert data.loss == "cross_entropy" and data.n_outputs == 3
    assert data.inputs.shape == (42, 6) and data.inputs.dtype == torch.float64
    linear = models.build_model("softmax-regression", seed=1, inputs=data.inputs, n_outputs=3)
    mlp = models.build_model("mlp", seed=1, inputs=data.inputs, n_outputs=3, mlp_hidden=[5])
    assert linear(data.inputs).shape == mlp(data.inputs).shape == (42, 3)
    again = models.build_model("mlp", seed=1, inputs=data.inputs, n_outputs=3, mlp_hidden=[5])
    assert all(torch.equal(a, b) for a, b in zip(mlp.parameters(), again.parameters(), strict=True))
    with pytest.raises(ValueError, match="mnist-cnn"):
        models.build_model("mnist-cnn", seed=0, inputs=data.inputs, n_outputs=3)


def test_the_mnist_cnns_and_who_accepts_them():
    # one registry builds both CNNs; each caller passes the built-ins it accepts
    assert set(models.MNIST_CLASSIFIERS) <= set(models.KNOWN_MODELS)
    assert models.check_spec("mnist-cnn-gelu", models.MNIST_CLASSIFIERS) == "mnist-cnn-gelu"
    with pytest.raises(ValueError, match="one of softmax-regression, mlp, mnist-cnn or"):
        models.check_spec("mnist-cnn-gelu", models.BUILTIN_MODELS)  # not E1's or E3's
    with pytest.raises(ValueError, match="one of mnist-cnn, mnist-cnn-gelu or"):
        models.check_spec("mlp", models.MNIST_CLASSIFIERS)
    from geomlab.models.mnist_cnn import build_mnist_cnn

    images = torch.zeros(2, 1, 28, 28)
    for spec, activation in (("mnist-cnn", "relu"), ("mnist-cnn-gelu", "gelu")):
        built = models.build_model(spec, seed=3, inputs=images, n_outputs=10,
                                   dtype=torch.float32, dropout=0.25)  # fmt: skip
        reference = build_mnist_cnn(seed=3, dropout=0.25, activation=activation)
        assert built.activation == activation and built.dropout1.p == 0.25
        assert all(torch.equal(a, b) for a, b in
                   zip(built.parameters(), reference.parameters(), strict=True))  # fmt: skip
        assert next(built.parameters()).dtype == torch.float32


def wide_classifier() -> torch.nn.Module:
    """A user's factory with 5 outputs (named by import path below)."""
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(784, 5))


def test_a_users_model_is_seeded_and_its_outputs_checked_on_request():
    images = torch.zeros(2, 1, 28, 28)
    spec = f"{__name__}:wide_classifier"
    built = models.build_model(spec, seed=4, inputs=images, n_outputs=10, dtype=torch.float32)
    torch.manual_seed(4)
    assert torch.equal(built[1].weight, wide_classifier()[1].weight)
    with pytest.raises(
        ValueError, match=r"maps \[1, 1, 28, 28\] inputs to \[1, 5\], not \[1, 10\]"
    ):
        models.build_model(spec, seed=4, inputs=images, n_outputs=10, dtype=torch.float32,
                           check_outputs=True)  # fmt: skip
