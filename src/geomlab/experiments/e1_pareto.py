"""E1: natural gradient vs SGD loss reduction at matched per-step KL (softmax regression)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field

from geomlab.experiments.base import Experiment, RunContext, RunResult
from geomlab.experiments.softmax_common import (
    ClusterSoftmaxConfig,
    PositiveFloat,
    load_cluster_data,
)
from geomlab.geometry import fisher as fisher_ops
from geomlab.geometry.gates import GateResult, finite_gate, psd_gate_from_eigenvalues
from geomlab.models import softmax_regression as model

NOTEBOOK_EPSILONS = [1e-5, 3e-5, 1e-4, 3e-4, 1e-3, 3e-3, 1e-2, 3e-2, 1e-1]


class Config(ClusterSoftmaxConfig):
    epsilon_values: list[PositiveFloat] = Field(
        default_factory=lambda: list(NOTEBOOK_EPSILONS),
        min_length=1,
        description="target per-step KLs (each > 0)",
    )
    gate_rel_tol: float = Field(1e-7, gt=0, lt=1, description="Gate A: min eig >= -tol * max eig")
    kl_measurement: Literal["exact", "notebook"] = Field(
        "exact",
        description="exact: KL(p_before || p_after); notebook: the notebook's post-step self-KL",
    )


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {"n_samples": 2000, "n_seeds": 3, "epsilon_values": [1e-5, 1e-4, 1e-3, 1e-2, 1e-1]},
}


def notebook_self_kl(logits_after: torch.Tensor) -> torch.Tensor:
    """The notebook's 'measured KL': both distributions taken *after* the step (its defect),
    with its 1e-10 guards. Kept only to reproduce the notebook's numbers."""
    probs = torch.softmax(logits_after, dim=-1)
    return -(probs * torch.log(probs / (probs + 1e-10) + 1e-10)).sum(-1).mean(-1)


def kl_matched_steps(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epsilons: torch.Tensor,
    *,
    rcond: float,
    gate_rel_tol: float,
    kl_measurement: str = "exact",
) -> tuple[list[dict[str, Any]], GateResult]:
    """SGD and NG steps from ``weight`` at every target KL; one Fisher and one eigh per call."""
    n_classes, n_features = weight.shape
    loss_before, gradient, probs = model.loss_and_gradient(weight, inputs, labels)
    fisher = fisher_ops.softmax_fisher(probs, inputs)
    pinv = fisher_ops.symmetric_pseudo_inverse(fisher, rcond=rcond)
    gate = psd_gate_from_eigenvalues(
        pinv.eigenvalues, name="gate_a_fisher_psd", rel_tol=gate_rel_tol
    )
    gate.details["fisher_rank"] = pinv.rank
    natural = pinv.apply(gradient)
    cos_g_v = float(gradient @ natural / (gradient.norm() * natural.norm()))
    logits_before = model.logits(weight, inputs)

    rows: list[dict[str, Any]] = []
    for method, direction in (("sgd", gradient), ("natgrad", natural)):
        eta = fisher_ops.kl_matched_step_size(direction, fisher, epsilons)  # (E,)
        weights_after = weight - eta[:, None, None] * direction.reshape(n_classes, n_features)
        logits_after = model.logits(weights_after, inputs)  # (E, N, C)
        losses_after = torch.stack(
            [torch.nn.functional.cross_entropy(z, labels) for z in logits_after]
        )
        if kl_measurement == "exact":
            kl_step = fisher_ops.categorical_kl(logits_before, logits_after)
        else:
            kl_step = notebook_self_kl(logits_after)
        for i, eps in enumerate(epsilons.tolist()):
            rows.append(
                {
                    "epsilon": eps,
                    "method": method,
                    "loss_before": float(loss_before),
                    "loss_after": float(losses_after[i]),
                    "delta_loss": float(loss_before - losses_after[i]),
                    "kl_step": float(kl_step[i]),
                    "kl_target": eps,
                    "kl_ratio": float(kl_step[i]) / eps,
                    "eta": float(eta[i]),
                    "grad_norm": float(gradient.norm()),
                    "direction_norm": float(direction.norm()),
                    "cos_g_v": cos_g_v if method == "natgrad" else float("nan"),
                }
            )
    return rows, gate


RAW_COLUMNS = [
    "seed", "epsilon", "method", "loss_before", "loss_after", "delta_loss", "kl_step",
    "kl_target", "kl_ratio", "eta", "grad_norm", "direction_norm", "cos_g_v",
]  # fmt: skip


def aggregate(raw: pd.DataFrame) -> pd.DataFrame:
    """Mean and std over seeds per (epsilon, method), the notebook's columns plus n_seeds."""
    grouped = raw.groupby(["epsilon", "method"], sort=True)
    agg = grouped.agg(
        delta_loss_mean=("delta_loss", "mean"),
        delta_loss_std=("delta_loss", "std"),
        kl_step_mean=("kl_step", "mean"),
        kl_step_std=("kl_step", "std"),
        kl_ratio_mean=("kl_ratio", "mean"),
        kl_ratio_std=("kl_ratio", "std"),
        n_seeds=("seed", "nunique"),
    ).reset_index()
    return agg


def relative_advantage(raw: pd.DataFrame) -> pd.DataFrame:
    """NG advantage over SGD in % per epsilon: of the seed means (the notebook's number) and
    the spread of the per-seed advantages."""
    wide = raw.pivot_table(index=["epsilon", "seed"], columns="method", values="delta_loss")
    per_seed = (wide["natgrad"] - wide["sgd"]) / wide["sgd"] * 100
    means = wide.groupby(level="epsilon").mean()
    table = pd.DataFrame(
        {
            "advantage_pct": (means["natgrad"] - means["sgd"]) / means["sgd"] * 100,
            "advantage_pct_seed_std": per_seed.groupby(level="epsilon").std(),
        }
    )
    return table.reset_index()


def run(config: Config, ctx: RunContext) -> RunResult:
    dtype = config.torch_dtype
    inputs, labels = load_cluster_data(config, ctx.device)
    epsilons = torch.tensor(config.epsilon_values, dtype=dtype, device=ctx.device)
    ctx.log.info(
        "data: %d x %d, %d classes; %d seeds x %d target KLs",
        *inputs.shape, config.n_classes, len(config.seed_list), len(epsilons),
    )  # fmt: skip

    def one_seed(seed: int) -> dict[str, Any]:
        weight = model.init_weights(config.n_classes, config.n_features, seed=seed, dtype=dtype)
        rows, gate = kl_matched_steps(
            weight.to(ctx.device),
            inputs,
            labels,
            epsilons,
            rcond=config.rcond,
            gate_rel_tol=config.gate_rel_tol,
            kl_measurement=config.kl_measurement,
        )
        gate.scope = f"seed={seed}"
        return {"rows": [{"seed": seed, **row} for row in rows], "gate": asdict(gate)}

    per_seed = [
        ctx.cached(f"seed_{seed}", lambda seed=seed: one_seed(seed))
        for seed in ctx.progress(config.seed_list, description="E1 seeds")
    ]
    raw = pd.DataFrame([row for item in per_seed for row in item["rows"]], columns=RAW_COLUMNS)
    gates = [GateResult(**item["gate"]) for item in per_seed]
    gate_rows = pd.DataFrame([gate.as_row() for gate in gates])
    gate_rows.insert(0, "seed", config.seed_list)
    gate_rows = gate_rows.rename(columns={"passed": "gate_a_passed"})
    numeric = raw[["loss_before", "loss_after", "delta_loss", "kl_step", "eta"]]
    finite = finite_gate({"raw results": torch.tensor(numeric.to_numpy())}, name="finite_results")
    gates.append(finite)

    agg = aggregate(raw)
    advantage = relative_advantage(raw)
    ctx.write_csv("E1_results_raw.csv", raw)
    ctx.write_csv("E1_results_aggregated.csv", agg)
    ctx.write_csv("E1_gate_validation.csv", gate_rows)

    smallest = agg[agg["epsilon"] == agg["epsilon"].min()]
    summary = {
        "experiment": "E1",
        "config": config.model_dump(mode="json"),
        "n_runs": len(raw),
        "gate_a_pass_rate": float(gate_rows["gate_a_passed"].mean()),
        "gate_a_failed_seeds": gate_rows.loc[~gate_rows["gate_a_passed"], "seed"].tolist(),
        "results_finite": finite.passed,
        "mean_relative_advantage_pct": float(advantage["advantage_pct"].mean()),
        "min_advantage_pct": float(advantage["advantage_pct"].min()),
        "max_advantage_pct": float(advantage["advantage_pct"].max()),
        "relative_advantage_by_epsilon": advantage.to_dict(orient="records"),
        "kl_ratio_at_smallest_epsilon": {
            row["method"]: row["kl_ratio_mean"] for row in smallest.to_dict(orient="records")
        },
        "kl_measurement": config.kl_measurement,
    }
    ctx.write_json("E1_summary.json", summary)

    if finite.passed:
        from geomlab.plots.e1 import pareto_figure

        ctx.save_figure(pareto_figure(agg, advantage), "E1_figure")
    else:
        ctx.log.error("non-finite results: %s; figure not drawn", finite.message)

    headline = {
        "mean_relative_advantage_pct": summary["mean_relative_advantage_pct"],
        "min_advantage_pct": summary["min_advantage_pct"],
        "max_advantage_pct": summary["max_advantage_pct"],
        "gate_a_pass_rate": summary["gate_a_pass_rate"],
        **{f"kl_ratio_min_eps_{k}": v for k, v in summary["kl_ratio_at_smallest_epsilon"].items()},
    }
    return RunResult(summary=summary, gates=gates, headline=headline)


EXPERIMENT = Experiment(
    name="e1",
    aliases=("ng-pareto",),
    description="Natural gradient vs SGD loss reduction at matched per-step KL (softmax reg.)",
    config_cls=Config,
    presets=PRESETS,
    run=run,
)
