"""The shared case zoo: small float64 models every geometry path is tested on.

curvlinops' ``cases.py`` habit: a case is a model factory, the shape of one input, a loss and a
mode; tests loop over :data:`CASES` (``@pytest.mark.parametrize("case", CASES, ids=str)``)
instead of each writing its own models. Each case is seeded, so ``case.model()`` and
``case.data()`` give the same numbers on every call::

    from geomlab.testing.cases import CASES, case_named

    case = case_named("cnn_bn_eval")
    model, (x, y) = case.model(), case.data()   # float64, the model in eval mode
    case.loss                                    # "cross_entropy" or "mse"

The zoo covers what users bring (docs/your-model.md): a tanh and a GELU MLP classifier, a CNN
with BatchNorm in eval mode (running statistics unlike the identity, so the mode matters), a
LayerNorm MLP, PyTorch's own ``nn.TransformerEncoder``, a learned CLS token joined by
``torch.cat`` before ``nn.MultiheadAttention``, a Hugging-Face-style model whose output is an
object carrying ``.logits`` (attention through ``F.scaled_dot_product_attention``), and an MLP
regressor under MSE. Sequence models read a flat input of 16 features as 4 tokens of 4.

Two builders for the paths the zoo's (model, data, loss) triple does not describe:

* :func:`directional_case`: a float64 model, inputs, labels and unit input directions for the
  derivative paths (``dⁿ/dtⁿ L(f(x + t u))``), for models a test file writes itself;
* :func:`softmax_regression_case`: softmax probabilities and inputs for the closed-form
  softmax-regression Fisher, which takes no model.

Only torch at import: no geomlab module is imported at module level, so any geometry test can
use the zoo (:func:`directional_case` imports the direction sampler when called).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

__all__ = [
    "CASES",
    "Case",
    "ClsTokenModel",
    "HFStyleOutput",
    "SdpaClassifier",
    "TinyTransformer",
    "case_named",
    "directional_case",
    "softmax_regression_case",
]

LossName = Literal["cross_entropy", "mse"]
Mode = Literal["eval", "train"]


@dataclass(frozen=True)
class Case:
    """One zoo entry.

    Attributes:
        name: the id tests show (``str(case)``).
        factory: builds the model (float32 or float64); :meth:`model` seeds the global RNG with
            ``model_seed`` first, casts to float64 and sets ``mode``.
        input_shape: one sample's shape (the batch dimension comes first in :meth:`data`).
        loss: ``cross_entropy`` (integer labels in ``range(outputs)``) or ``mse`` (float targets
            shaped like the outputs).
        mode: the mode the model is measured in.
        outputs: classes (cross-entropy) or regression outputs (MSE).
        batch: samples in :meth:`data`.
        model_seed, data_seed: seeds of the parameters and of the data.
        small: few parameters (tens): for the expensive checks (dense solves per scaling).
    """

    name: str
    factory: Callable[[], nn.Module]
    input_shape: tuple[int, ...]
    loss: LossName
    mode: Mode = "eval"
    outputs: int = 3
    batch: int = 20
    model_seed: int = 0
    data_seed: int = 1
    small: bool = False

    def __str__(self) -> str:
        return self.name

    def model(self) -> nn.Module:
        """A fresh float64 model, seeded and in the case's mode."""
        torch.manual_seed(self.model_seed)
        model = self.factory().double()
        return model.train(self.mode == "train")

    def data(self, batch: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``(inputs, targets)`` in float64, drawn from ``data_seed`` (``batch`` rows)."""
        n = self.batch if batch is None else batch
        generator = torch.Generator().manual_seed(self.data_seed)
        x = torch.randn(n, *self.input_shape, dtype=torch.float64, generator=generator)
        if self.loss == "cross_entropy":
            y = torch.randint(0, self.outputs, (n,), generator=generator)
        else:
            y = torch.randn(n, self.outputs, dtype=torch.float64, generator=generator)
        return x, y

    def make(self) -> tuple[nn.Module, tuple[torch.Tensor, torch.Tensor], LossName]:
        """``(model, (inputs, targets), loss)`` in one call."""
        return self.model(), self.data(), self.loss


# --- models the zoo builds -----------------------------------------------------------------


def _mlp_classifier(activation: type[nn.Module]) -> Callable[[], nn.Module]:
    return lambda: nn.Sequential(nn.Flatten(), nn.Linear(4, 5), activation(), nn.Linear(5, 3))


def _mlp_regressor() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.GELU(), nn.Linear(6, 2))


def _cnn_with_batchnorm() -> nn.Module:
    model = nn.Sequential(
        nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU(), nn.Flatten(), nn.Linear(32, 3)
    ).double()  # the statistics below are float64 numbers
    batchnorm = model[1]
    with torch.no_grad():  # running statistics unlike the identity: eval mode matters
        batchnorm.running_mean.copy_(torch.tensor([0.3, -0.2]))
        batchnorm.running_var.copy_(torch.tensor([2.0, 0.5]))
        batchnorm.weight.copy_(torch.tensor([1.5, 0.7]))
    return model


def _layernorm_mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(4, 6), nn.LayerNorm(6), nn.SiLU(), nn.Linear(6, 3))


class TinyTransformer(nn.Module):
    """PyTorch's own ``nn.TransformerEncoder`` (its fast path in eval mode) on 4 tokens of 4
    features, mean-pooled into 3 logits."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Linear(4, 8)
        layer = nn.TransformerEncoderLayer(8, 2, dim_feedforward=12, dropout=0.1, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.embed(x.reshape(-1, 4, 4))).mean(1))


class ClsTokenModel(nn.Module):
    """A learned CLS token (an ``nn.Parameter`` joined by ``torch.cat`` before the projected
    inputs), one ``nn.MultiheadAttention``, LayerNorm, and a head reading the CLS position."""

    def __init__(self) -> None:
        super().__init__()
        self.cls = nn.Parameter(torch.randn(1, 1, 6) * 0.5)
        self.proj = nn.Linear(4, 6)
        self.attention = nn.MultiheadAttention(6, 2, batch_first=True)
        self.norm = nn.LayerNorm(6)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.proj(x.reshape(-1, 4, 4))
        tokens = torch.cat([self.cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        mixed, _ = self.attention(tokens, tokens, tokens, need_weights=False)
        return self.head(self.norm(tokens + mixed)[:, 0])


class HFStyleOutput:
    """What a Hugging Face model returns: an object carrying ``.logits``."""

    def __init__(self, logits: torch.Tensor) -> None:
        self.logits = logits
        self.hidden_states = None


class SdpaClassifier(nn.Module):
    """Hugging-Face style: attention through ``F.scaled_dot_product_attention``, the output an
    object with ``.logits``."""

    def __init__(self) -> None:
        super().__init__()
        self.qkv = nn.Linear(4, 12)
        self.head = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> HFStyleOutput:
        q, k, v = self.qkv(x.reshape(-1, 4, 4)).chunk(3, dim=-1)
        mixed = nn.functional.scaled_dot_product_attention(q, k, v)
        return HFStyleOutput(self.head(torch.tanh(mixed).mean(1)))


CASES: list[Case] = [
    Case("mlp_tanh", _mlp_classifier(nn.Tanh), (4,), "cross_entropy", batch=30, small=True),
    Case("mlp_gelu", _mlp_classifier(nn.GELU), (4,), "cross_entropy", batch=30, model_seed=14,
         data_seed=15),
    Case("cnn_bn_eval", _cnn_with_batchnorm, (1, 6, 6), "cross_entropy", batch=12,
         model_seed=2, data_seed=3),
    Case("layernorm_mlp", _layernorm_mlp, (4,), "cross_entropy", model_seed=12, data_seed=13),
    Case("transformer_encoder", TinyTransformer, (16,), "cross_entropy", batch=14,
         model_seed=6, data_seed=7),
    Case("cls_token_cat", ClsTokenModel, (16,), "cross_entropy", batch=14, model_seed=8,
         data_seed=9),
    Case("hf_logits_sdpa", SdpaClassifier, (16,), "cross_entropy", batch=14, model_seed=10,
         data_seed=11),
    Case("regression_mlp", _mlp_regressor, (4,), "mse", outputs=2, batch=25,
         model_seed=4, data_seed=5, small=True),
]  # fmt: skip


def case_named(name: str) -> Case:
    """The zoo case called ``name`` (:class:`KeyError` listing the names otherwise)."""
    for case in CASES:
        if case.name == name:
            return case
    raise KeyError(f"no zoo case {name!r}; cases: {', '.join(c.name for c in CASES)}")


# --- builders for the derivative paths and the closed-form softmax-regression Fisher --------


def directional_case(
    model: nn.Module | Callable[[], nn.Module],
    input_shape: tuple[int, ...],
    *,
    seed: int = 0,
    batch: int = 5,
    directions: int = 3,
    weight_scale: float = 1.0,
    direction_seed: int | None = None,
) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(model, inputs, labels, directions)`` for the directional-derivative paths, float64.

    Seeds the global RNG with ``seed``, then builds the model when given a factory (so its
    parameters are seeded too; a model passed built keeps its parameters), casts it to float64,
    draws ``batch`` standard normal inputs of ``input_shape`` and multiplies every parameter by
    ``weight_scale`` (larger weights keep derivatives of every order well away from zero).
    Labels are drawn in ``range(C)``, ``C`` the model's output width in eval mode; the model is
    returned in eval mode. ``directions`` unit directions (one per sample, as
    :func:`geomlab.geometry.derivatives.sample_unit_directions` draws them) come from their own
    generator seeded with ``direction_seed`` (``seed + 100`` if not given).
    """
    from geomlab.geometry.derivatives import sample_unit_directions

    torch.manual_seed(seed)
    built = model if isinstance(model, nn.Module) else model()
    built = built.double()
    inputs = torch.randn(batch, *input_shape, dtype=torch.float64)
    with torch.no_grad():
        for parameter in built.parameters():
            parameter.mul_(weight_scale)
        classes = built.eval()(inputs).shape[1]
    labels = torch.randint(0, classes, (batch,))
    generator = torch.Generator().manual_seed(
        seed + 100 if direction_seed is None else direction_seed
    )
    return built, inputs, labels, sample_unit_directions(directions, inputs, generator=generator)


def softmax_regression_case(
    n: int, c: int, d: int, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(probs, inputs)`` for the softmax-regression Fisher: ``n`` float64 standard normal
    inputs of ``d`` features and ``n`` softmax distributions over ``c`` classes (logits of
    standard deviation 2, so far from uniform), drawn from ``seed``."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(n, d, dtype=torch.float64, generator=generator)
    logits = 2 * torch.randn(n, c, dtype=torch.float64, generator=generator)
    return torch.softmax(logits, dim=1), inputs
