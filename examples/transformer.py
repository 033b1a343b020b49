"""A small vision-transformer-style classifier: natural gradient (CG) and λ, exact or refused.

    python examples/transformer.py [--out DIR]

The model is what researchers train today, in miniature: tokens projected by a linear layer, a
learned CLS token joined by ``torch.cat``, learned positions, PyTorch's own
``nn.TransformerEncoder`` (multi-head attention, LayerNorm, GELU) in eval mode, and a linear head
on the CLS token. Nothing in it is written for geomlab. The script

1. checks the matrix-free Fisher (curvlinops, forward-mode AD through attention) against the
   dense float64 ``torch.func`` reference,
2. compares SGD and natural gradient by conjugate gradients at matched per-step KL and checks
   that the CG solve converged,
3. trains the model a little, checks Taylor mode against nested autograd on its input
   derivatives (orders 1–4, float64) and measures λ at a class-pair decision boundary,
4. runs E1 on the same model and data from the command line
   (``geomlab run e1 --set model=transformer:build_model --set data=transformer:load_data``).

Every step asserts what it shows, so the tests run this file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from _e1_cli import main, run_e1
from torch import nn

from geomlab.experiments.e1_pareto import records
from geomlab.geometry import curvature, derivatives, natural_gradient
from geomlab.geometry.lambda_fit import measure_lambda

TOKENS, FEATURES, CLASSES = 6, 4, 3


class TinyViT(nn.Module):
    """Tokens ``(B, TOKENS, FEATURES)`` → logits ``(B, CLASSES)``."""

    def __init__(self, dim: int = 16, heads: int = 2, layers: int = 2) -> None:
        super().__init__()
        self.embed = nn.Linear(FEATURES, dim)
        self.cls = nn.Parameter(0.5 * torch.randn(1, 1, dim))
        self.pos = nn.Parameter(0.1 * torch.randn(1, TOKENS + 1, dim))
        layer = nn.TransformerEncoderLayer(
            dim, heads, 2 * dim, dropout=0.0, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        h = self.embed(tokens)
        h = torch.cat([self.cls.expand(h.shape[0], -1, -1), h], dim=1) + self.pos
        h = self.encoder(h)
        return self.head(self.norm(h[:, 0]))


def build_model() -> nn.Module:
    """A user's factory: geomlab calls ``torch.manual_seed(seed)`` first, then this."""
    return TinyViT().eval()


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """600 token sequences; the class depends on interactions between tokens."""
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(600, TOKENS, FEATURES, generator=g)
    score = (tokens[:, 0] * tokens[:, -1]).sum(-1) + tokens[:, 1:3, 0].sum(-1)
    labels = torch.bucketize(score, torch.tensor([-0.7, 0.7]))
    return tokens, labels


def python_api() -> None:
    torch.manual_seed(0)
    model = build_model().double()
    tokens, labels = load_data()
    data = (tokens.double(), labels)

    # 1. The Fisher of a transformer, matrix-free, against the dense float64 reference.
    subset = (data[0][:64], data[1][:64])
    fisher = curvature.FisherOperator(model, subset, loss="cross_entropy")
    reference = curvature.dense_fisher_reference(model, subset, loss="cross_entropy")
    error = float((fisher.dense() - reference).abs().max() / reference.abs().max())
    print(f"Fisher operator vs dense J^T H J reference ({fisher.dim} parameters): "
          f"max relative difference {error:.1e}")  # fmt: skip
    assert error < 1e-10

    # 2. SGD vs natural gradient by CG at matched KL; the solve must have converged.
    epsilons = torch.tensor([1e-8, 1e-3], dtype=torch.float64)
    pair = natural_gradient.kl_matched_steps(
        model,
        data,
        epsilons,
        loss="cross_entropy",
        methods=["sgd", "natgrad"],
        solve=natural_gradient.SolveSpec(solver="cg", damping=1e-4, tolerance=1e-8),
    )
    print(f"{'method':>8} {'epsilon':>8} {'loss drop':>10} {'KL/eps':>7} {'CG its':>6} "
          f"{'residual':>9}")  # fmt: skip
    for row in records(pair):
        print(f"{row['method']:>8} {row['epsilon']:>8.0e} {row['delta_loss']:>10.5f} "
              f"{row['kl_ratio']:>7.4f} {row['cg_iterations']:>6} "
              f"{row['relative_residual']:>9.1e}")  # fmt: skip
        if row["epsilon"] == 1e-8:
            assert abs(row["kl_ratio"] - 1) < 1e-2  # matched KL for both methods
        if row["method"] == "natgrad":
            assert row["relative_residual"] <= 1e-8  # an exact solve, not a truncated one
    drops = {r["method"]: r["delta_loss"] for r in records(pair) if r["epsilon"] == 1e-3}
    assert drops["natgrad"] > drops["sgd"]

    # 3. Train a little, then input derivatives: Taylor mode against nested autograd, and λ.
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(data[0]), labels).backward()
        optimizer.step()
    model.eval()
    x, y = data[0][:8], labels[:8]
    generator = torch.Generator().manual_seed(1)
    directions = derivatives.sample_unit_directions(2, x, generator=generator)
    fast = derivatives.directional_derivatives(model, x, y, directions, max_order=4, method="fast")
    nested = derivatives.directional_derivatives(
        model, x, y, directions, max_order=4, method="nested"
    )
    rel = float(((fast.values - nested.values).abs() / nested.values.abs().clamp_min(1e-30)).max())
    print(f"Taylor mode ({fast.path}) vs nested autograd, orders 1-4: max relative difference "
          f"{rel:.1e}")  # fmt: skip
    assert fast.path == "taylor" and rel < 1e-8

    accuracy = float((model(data[0]).argmax(1) == labels).double().mean())
    measurement = measure_lambda(
        model, data[0], labels, (0, 1), max_order=4, num_directions=2, max_points=64,
        min_points=5, method="fast", boundary="pairwise",
        generator=torch.Generator().manual_seed(2),
    )  # fmt: skip
    print(f"train accuracy {accuracy:.2f}; λ at the 0/1 boundary: {measurement.slope:.3f} "
          f"from {measurement.num_points} points ({measurement.method} path)")  # fmt: skip
    assert measurement.fit is not None and measurement.method == "fast"
    assert torch.isfinite(torch.tensor(measurement.slope))


def command_line(out: Path) -> None:
    run_e1("transformer", out, [
        "n_samples=300", "n_seeds=2", "epsilon_values=[1e-6,1e-4]",
        'methods=["sgd","natgrad"]', "solver=cg", "damping=1e-3",
    ])  # fmt: skip


if __name__ == "__main__":
    main(__doc__.splitlines()[0], python_api, command_line, "e1-transformer")
