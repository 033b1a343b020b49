"""Every model an experiment can name, built one way: ``build_model(spec, ...)``.

A spec is a built-in name (:data:`KNOWN_MODELS`) or ``package.module:function`` (a user's
factory, see :mod:`geomlab.models.loading`); :func:`check_spec` is the one check every Config's
validator (E1, E3, lambda-control, ``measure-lambda``) runs on it, given the built-ins that
caller accepts (and on a data spec, see :mod:`geomlab.data.registry`):
:data:`BUILTIN_MODELS` for E1 and E3, :data:`MNIST_CLASSIFIERS` for lambda-control.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from geomlab.models.loading import ImportPathError, is_import_path, resolve_import_path
from geomlab.models.mlp import Activation

__all__ = ["BUILTIN_MODELS", "KNOWN_MODELS", "MNIST_CLASSIFIERS", "build_model", "check_spec"]

# the notebook CNN by its activation; "mnist-cnn-gelu" has the same layers and seeded weights
_MNIST_CNN_ACTIVATIONS = {"mnist-cnn": "relu", "mnist-cnn-gelu": "gelu"}
# E1 and E3's choices. Not "mnist-cnn-gelu": nothing there has been run or tested with it.
BUILTIN_MODELS = ("softmax-regression", "mlp", "mnist-cnn")
# lambda-control's (and measure-lambda's) choices: classifiers of [B, 1, 28, 28] images
MNIST_CLASSIFIERS = tuple(_MNIST_CNN_ACTIVATIONS)
# every name build_model builds
KNOWN_MODELS = ("softmax-regression", "mlp", *MNIST_CLASSIFIERS)


def check_spec(value: str, builtin: Sequence[str]) -> str:
    """``value`` if it is one of ``builtin`` or an import path that resolves to a callable;
    else a ValueError naming the choices."""
    if value in builtin:
        return value
    if not is_import_path(value):
        raise ValueError(
            f"must be one of {', '.join(builtin)} or an import path package.module:function, "
            f"got {value!r}"
        )
    try:
        resolve_import_path(value)
    except ImportPathError as error:
        raise ValueError(str(error)) from None
    return value


def build_model(
    spec: str,
    *,
    seed: int,
    inputs: torch.Tensor,
    n_outputs: int,
    dtype: torch.dtype = torch.float64,
    mlp_hidden: Sequence[int] = (32,),
    mlp_activation: Activation = Activation.TANH,
    dropout: float = 0.5,
    check_outputs: bool = False,
) -> nn.Module:
    """The model ``spec`` names for one seed, in ``dtype``, on the inputs' device.

    ``softmax-regression``: ``Flatten -> Linear(bias=False)`` with the notebooks' initial
    weights; ``mlp``: :func:`geomlab.models.mlp.build_mlp` after ``torch.manual_seed(seed)``;
    ``mnist-cnn``: the notebook CNN (needs 1x28x28 inputs; seeded, built on the CPU, then
    cast and moved); ``mnist-cnn-gelu``: the same with GELU in place of ReLU; an import path:
    the user's factory after ``torch.manual_seed(seed)``.

    Args:
        spec: a built-in name or ``package.module:function``.
        seed: the model seed.
        inputs: the data's inputs (their per-sample size and device).
        n_outputs: classes (or regression outputs).
        dtype: the model's dtype.
        mlp_hidden, mlp_activation: ``mlp``'s widths and nonlinearity.
        dropout: the CNNs' dropout probability.
        check_outputs: a user's model must map one input (``inputs[:1]``, eval mode, no
            gradients) to ``(1, n_outputs)`` outputs; else a ValueError naming the shapes.
    """
    from geomlab.models import softmax_regression as sr

    device = inputs.device
    n_features = int(inputs[0].numel())
    if spec == "softmax-regression":
        linear = nn.Linear(n_features, n_outputs, bias=False, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(sr.init_weights(n_outputs, n_features, seed=seed, dtype=dtype))
        model: nn.Module = nn.Sequential(nn.Flatten(), linear)
    elif spec == "mlp":
        from geomlab.models.mlp import build_mlp

        torch.manual_seed(seed)
        model = build_mlp(n_features, n_outputs, hidden=list(mlp_hidden),
                          activation=mlp_activation).to(dtype)  # fmt: skip
    elif spec in _MNIST_CNN_ACTIVATIONS:
        from geomlab.models.mnist_cnn import build_mnist_cnn

        if tuple(inputs.shape[1:]) != (1, 28, 28) or n_outputs > 10:
            raise ValueError(
                f"model {spec!r} needs (N, 1, 28, 28) inputs and <= 10 classes (data=mnist), "
                f"got inputs {tuple(inputs.shape)} and {n_outputs} outputs"
            )
        model = build_mnist_cnn(
            seed=seed, dropout=dropout, activation=_MNIST_CNN_ACTIVATIONS[spec]
        ).to(dtype)
    else:
        from geomlab.models.loading import build_user_model
        from geomlab.models.modes import eval_mode

        model = build_user_model(spec, seed=seed, dtype=dtype, device=device)
        if check_outputs:
            with torch.no_grad(), eval_mode(model):
                shape = tuple(model(inputs[:1]).shape)
            if shape != (1, n_outputs):
                raise ValueError(
                    f"model {spec!r} maps {[1, *inputs.shape[1:]]} inputs to {list(shape)}, "
                    f"not [1, {n_outputs}] outputs"
                )
    return model.to(device)
