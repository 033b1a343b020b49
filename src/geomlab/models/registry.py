"""Every model an experiment can name, built one way: ``build_model(spec, ...)``.

A spec is a built-in name (:data:`BUILTIN_MODELS`) or ``package.module:function`` (a user's
factory, see :mod:`geomlab.models.loading`); :func:`check_spec` is the one check a Config's
validator runs on it (and on a data spec, see :mod:`geomlab.data.registry`).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from geomlab.models.loading import ImportPathError, is_import_path, resolve_import_path
from geomlab.models.mlp import Activation

__all__ = ["BUILTIN_MODELS", "build_model", "check_spec"]

BUILTIN_MODELS = ("softmax-regression", "mlp", "mnist-cnn")


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
) -> nn.Module:
    """The model ``spec`` names for one seed, in ``dtype``, on the inputs' device.

    ``softmax-regression``: ``Flatten -> Linear(bias=False)`` with the notebooks' initial
    weights; ``mlp``: :func:`geomlab.models.mlp.build_mlp` after ``torch.manual_seed(seed)``;
    ``mnist-cnn``: the notebook CNN (needs 1x28x28 inputs); an import path: the user's
    factory after ``torch.manual_seed(seed)``.

    Args:
        spec: a built-in name or ``package.module:function``.
        seed: the model seed.
        inputs: the data's inputs (their per-sample size and device).
        n_outputs: classes (or regression outputs).
        dtype: the model's dtype.
        mlp_hidden, mlp_activation: ``mlp``'s widths and nonlinearity.
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
    elif spec == "mnist-cnn":
        from geomlab.models.mnist_cnn import build_mnist_cnn

        if tuple(inputs.shape[1:]) != (1, 28, 28) or n_outputs > 10:
            raise ValueError(
                f"model 'mnist-cnn' needs (N, 1, 28, 28) inputs and <= 10 classes (data=mnist), "
                f"got inputs {tuple(inputs.shape)} and {n_outputs} outputs"
            )
        model = build_mnist_cnn(seed=seed).to(dtype)
    else:
        from geomlab.models.loading import build_user_model

        model = build_user_model(spec, seed=seed, dtype=dtype, device=device)
    return model.to(device)
