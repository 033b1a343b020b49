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
