"""Natural gradient on your own model and data: through the Python API and through the CLI.

    python examples/own_model.py [--out DIR]

The model is a small GELU network with biases; the data a seeded three-class problem. The
script (1) checks the matrix-free Fisher against the dense float64 reference, (2) compares SGD,
exact natural gradient (CG) and K-FAC at matched per-step KL, (3) measures how far each step is
from coordinate invariance, and (4) runs the same model and data through
``geomlab run e1 --set model=own_model:build_model --set data=own_model:load_data``.
Every step asserts what it shows, so the tests run this file.
"""

from __future__ import annotations

from pathlib import Path

import torch
from _e1_cli import main, run_e1
from torch import nn

from geomlab.experiments.e1_pareto import records
from geomlab.geometry import curvature, natural_gradient, reparam
from geomlab.geometry import params as gp


def build_model() -> nn.Module:
    """A user's factory: geomlab calls ``torch.manual_seed(seed)`` first, then this."""
    return nn.Sequential(nn.Linear(10, 24), nn.GELU(), nn.Linear(24, 3))


def load_data() -> tuple[torch.Tensor, torch.Tensor]:
    """A user's data: ``(inputs, integer labels)`` (float targets would mean MSE regression)."""
    g = torch.Generator().manual_seed(0)
    inputs = torch.randn(600, 10, generator=g)
    labels = (inputs[:, 0] + inputs[:, 1] * inputs[:, 2] > 0).long() + (inputs[:, 3] > 1).long()
    return inputs, labels


def python_api() -> None:
    torch.manual_seed(0)
    model = build_model().double()
    inputs, labels = load_data()
    data = (inputs.double(), labels)

    fisher = curvature.FisherOperator(model, data, loss="cross_entropy", batch_size=200)
    reference = curvature.dense_fisher_reference(model, data, loss="cross_entropy")
    error = float((fisher.dense() - reference).abs().max() / reference.abs().max())
    print(f"Fisher operator vs dense J^T H J reference: max relative difference {error:.1e}")
    assert error < 1e-12

    epsilons = torch.tensor([1e-7, 1e-3, 1e-2], dtype=torch.float64)
    pair = natural_gradient.kl_matched_steps(
        model,
        data,
        epsilons,
        loss="cross_entropy",
        methods=["sgd", "natgrad", "kfac"],
        solve=natural_gradient.SolveSpec(solver="cg", damping=1e-4, tolerance=1e-8),
    )
    print(f"{'method':>8} {'epsilon':>8} {'loss drop':>10} {'KL/eps':>7} {'CG its':>6}")
    for row in records(pair):
        print(f"{row['method']:>8} {row['epsilon']:>8.0e} {row['delta_loss']:>10.5f} "
              f"{row['kl_ratio']:>7.4f} {row['cg_iterations']:>6}")  # fmt: skip
        if row["epsilon"] == 1e-7:
            assert abs(row["kl_ratio"] - 1) < 1e-2  # KL-matched for every method
    drops = {r["method"]: r["delta_loss"] for r in records(pair) if r["epsilon"] == 1e-3}
    assert drops["natgrad"] > drops["sgd"]  # more loss reduction for the same KL

    # Invariance: rescale every weight/bias entry (log-uniform, max/min = 100).
    params = {n: p.detach() for n, p in fisher.parameters.items()}
    _, gradient = gp.loss_and_gradient(model, data, loss="cross_entropy")
    scale = reparam.parameter_scale_vector(
        params, reparam.log_uniform_parameter_scales(params, 100.0, seed=0)
    )
    ones = torch.ones_like(scale)
    start = gp.model_outputs(model, params, fisher.batches)
    function_space = {}
    for method in ("sgd", "natgrad"):
        kwargs = {"method": method, "eta": 1e-2, "solve": natural_gradient.SolveSpec(rcond=1e-10)}
        moved, _ = reparam.rescaled_step(fisher, gradient, scale, **kwargs)
        base, _ = reparam.rescaled_step(fisher, gradient, ones, **kwargs)
        d = reparam.step_discrepancy(model, params, moved, base, fisher.batches,
                                           loss="cross_entropy", outputs_start=start)  # fmt: skip
        print(f"{method}: parameter-space rel. discrepancy {d.rel_diff:.1e}, "
              f"function-space (centred logits) {d.logit_diff:.1e}")  # fmt: skip
        function_space[method] = d.logit_diff
    # The pseudo-inverse moves only along directions the predictions do not see: NG's step
    # differs between coordinate systems in parameter space but hardly in function space.
    assert function_space["natgrad"] < 1e-4 * function_space["sgd"]


def command_line(out: Path) -> None:
    run_e1("own_model", out, [
        "n_samples=400", "n_seeds=2", "epsilon_values=[1e-5,1e-3]",
        'methods=["sgd","natgrad","kfac"]', "solver=cg", "damping=1e-4",
    ])  # fmt: skip


if __name__ == "__main__":
    main(__doc__.splitlines()[0], python_api, command_line, "e1-own-model")
