"""The notebook CNN: parameter count, shapes, seeded init, fast-path eligibility."""

from __future__ import annotations

import pytest
import torch

from geomlab.geometry import derivatives as deriv
from geomlab.geometry.derivatives import check_piecewise_linear
from geomlab.geometry.penalty import derivative_penalty
from geomlab.models.mnist_cnn import (
    NUM_PARAMETERS,
    MNISTConvNet,
    build_mnist_cnn,
    count_parameters,
)
from geomlab.testing.compare import relative_error


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


def float64_case(seed: int = 0):
    """The notebook CNN itself (1.2M parameters, 28×28 inputs: too large for the shared zoo,
    whose every case runs dense Fisher checks), in float64 with 3 inputs, fixed labels and 2
    unit directions drawn from one generator after the inputs."""
    model = build_mnist_cnn(seed=seed).double()
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(3, 1, 28, 28, dtype=torch.float64, generator=g)
    labels = torch.tensor([4, 9, 3])
    directions = deriv.sample_unit_directions(2, x, generator=g)
    return model, x, labels, directions


@pytest.mark.parametrize("train", [False, True])
def test_hand_linearization_equals_generic_jvp_and_nested(train):
    model, x, labels, directions = float64_case()
    model.train(train)
    assert deriv.provided_linearization(model) is not None
    torch.manual_seed(1)
    logits, tangents = model.logits_and_tangents(x, directions)
    torch.manual_seed(1)
    jvp_logits, jvp_tangents = deriv.jvp_logits_and_tangents(model, x, directions)
    assert relative_error(logits, jvp_logits, norm="max") < 1e-13
    assert relative_error(tangents, jvp_tangents, norm="max") < 1e-13

    torch.manual_seed(2)
    fast, _ = deriv.fast_directional_derivatives(model, x, labels, directions, max_order=3)
    fast_grads = torch.autograd.grad(derivative_penalty(fast), list(model.parameters()))
    for k in range(2):
        torch.manual_seed(2)  # replay the shared dropout mask for each reference pass
        nested = deriv.nested_directional_derivatives(
            model, x, labels, directions[k : k + 1], max_order=3, create_graph=True
        )
        for n in range(3):
            assert relative_error(fast[n, k].detach(), nested[n, 0].detach(), norm="max") < 1e-10
    if not train:  # one reference for all directions (no dropout to replay)
        nested = deriv.nested_directional_derivatives(
            model, x, labels, directions, max_order=3, create_graph=True
        )
        nested_grads = torch.autograd.grad(derivative_penalty(nested), list(model.parameters()))
        for a, b in zip(fast_grads, nested_grads, strict=True):
            assert relative_error(a, b, norm="max") < 1e-10


def test_subclass_with_another_forward_does_not_reuse_the_linearization():
    class Changed(MNISTConvNet):
        def forward(self, x):
            return torch.tanh(super().forward(x))

    assert deriv.provided_linearization(Changed()) is None
    assert deriv.provided_linearization(MNISTConvNet()) is not None


def test_gelu_variant_has_the_notebook_layers_and_seeded_weights():
    relu, gelu = build_mnist_cnn(seed=3), build_mnist_cnn(seed=3, activation="gelu")
    assert gelu.activation == "gelu" and relu.activation == "relu"
    assert count_parameters(gelu) == NUM_PARAMETERS
    for (name, a), (other, b) in zip(
        relu.state_dict().items(), gelu.state_dict().items(), strict=True
    ):
        assert name == other and torch.equal(a, b)
    x = torch.randn(2, 1, 28, 28)
    relu.eval(), gelu.eval()
    assert not torch.allclose(relu(x), gelu(x))
    with pytest.raises(ValueError, match="activation"):
        build_mnist_cnn(seed=0, activation="tanh")


def test_gelu_variant_is_not_linearized_by_hand():
    model = build_mnist_cnn(seed=0, activation="gelu")
    x = torch.randn(2, 1, 28, 28)
    verdict = check_piecewise_linear(model, x)
    assert not verdict.eligible and "gelu" in verdict.reason
    with pytest.raises(ValueError, match="ReLU"):
        model.logits_and_tangents(x, torch.randn(1, 2, 1, 28, 28))


def test_gelu_variant_derivatives_equal_the_nested_reference():
    model, x, labels, directions = float64_case()
    gelu = build_mnist_cnn(seed=0, activation="gelu").double().eval()
    gelu.load_state_dict(model.state_dict())
    auto = deriv.directional_derivatives(gelu, x, labels, directions, max_order=3)
    nested = deriv.nested_directional_derivatives(gelu, x, labels, directions, max_order=3)
    for n in range(3):
        assert relative_error(auto.values[n], nested[n], norm="max") < 1e-10
