"""E3: one NG step is invariant to rescaling the parameter coordinates; SGD is not."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any, Literal

import pandas as pd
import torch
from pydantic import Field

from geomlab.experiments.base import Experiment, RunContext, RunResult, Seed
from geomlab.experiments.softmax_common import (
    ClusterSoftmaxConfig,
    PositiveFloat,
    load_cluster_data,
    progress_logger,
)
from geomlab.geometry import reparam
from geomlab.geometry.attention import math_attention
from geomlab.geometry.gates import GateResult, finite_gate
from geomlab.geometry.natural_gradient import SolveSpec
from geomlab.geometry.params import (
    as_batches,
)
from geomlab.models import softmax_regression as model
from geomlab.models.modes import eval_mode
from geomlab.threads import limited_threads, threads_for_dense_size

__all__ = [
    "Config", "EXPERIMENT", "METHODS", "PRESETS", "RESULT_COLUMNS", "cutoff_columns",
    "cutoff_summary", "cutoff_warning", "invariance_for_seed", "run", "summarize",
]  # fmt: skip

METHODS = reparam.INVARIANCE_METHODS


class Config(ClusterSoftmaxConfig):
    n_seeds: int = Field(3, ge=1, le=10_000, description="model seeds 0..n_seeds-1")
    kappa_values: list[PositiveFloat] = Field(
        default_factory=lambda: [1.0, 10.0, 100.0, 1000.0],
        min_length=1,
        description="condition numbers of the rescaling (each > 0); compared with kappa = 1",
    )
    eta: float = Field(1e-3, gt=0, le=1e3, description="step size in the rescaled coordinates")
    scalings: list[reparam.Scaling] = Field(
        default_factory=lambda: [reparam.Scaling.TWO_BLOCK, reparam.Scaling.LOG_UNIFORM],
        min_length=1,
        description="two_block: the notebook's family; log_uniform: random per coordinate",
    )
    scaling_seed: Seed = Field(0, description="seed of the log_uniform patterns")
    gate_rel_tol: float | None = Field(
        None, gt=0, lt=1, description="Gate A relative tolerance; none: max(1e-8, P * eps(dtype))"
    )
    gate_c_tol: float = Field(1e-5, gt=0, description="Gate C: max |logit difference| at start")
    solver: Literal["dense", "cg"] = Field(
        "dense", description="NG solve in each coordinate system"
    )
    damping: float = Field(0.0, ge=0, le=1e6, description="absolute damping of the NG solve")
    cg_tol: float = Field(1e-10, gt=0, lt=1, description="CG relative residual target")

    @property
    def solve(self) -> SolveSpec:
        """The NG solve in every coordinate system, in one frozen spec."""
        return SolveSpec(solver=self.solver, damping=self.damping, rcond=self.rcond,
                         tolerance=self.cg_tol)  # fmt: skip

    @property
    def notebook_path(self) -> bool:
        return self.notebook_setting and self.solver == "dense" and self.damping == 0


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {"n_samples": 1000, "n_seeds": 2},
}

RESULT_COLUMNS = [
    "seed", "scaling", "kappa", "method", "max_diff", "rel_diff", "logit_diff",
    "logit_diff_raw", "kl_between_steps", "step_norm",
    # the NG solve's pseudo-inverse in these coordinates (NaN / -1 for SGD and CG):
    "rank", "cutoff", "dropped_directions", "dropped_above_floor", "dropped_share",
]  # fmt: skip


def cutoff_columns(cutoff: reparam.SolveCutoff) -> dict[str, Any]:
    """The E3 table's pseudo-inverse columns of a :class:`reparam.SolveCutoff`."""
    return {"rank": cutoff.rank, "cutoff": cutoff.cutoff, "dropped_directions": cutoff.dropped,
            "dropped_above_floor": cutoff.dropped_above_floor,
            "dropped_share": cutoff.dropped_share}  # fmt: skip


def cutoff_warning(seed: int, config: Config, cutoffs: list[reparam.SolveCutoff]) -> list[str]:
    """A warning when ``rcond`` dropped eigenvalues above the round-off floor (real curvature
    of the Fisher, e.g. of a full-rank one): those NG discrepancies then measure the cutoff,
    not the invariance."""
    lost = [c for c in cutoffs if c.dropped_above_floor > 0]
    if not lost:
        return []
    worst = max(lost, key=lambda c: c.dropped_above_floor)
    return [
        f"seed {seed}: rcond={config.rcond:g} dropped up to {worst.dropped_above_floor} "
        f"eigenvalues of the Fisher above its round-off floor (P eps max|w| = "
        f"{worst.round_off_floor:.3g}; cutoff {worst.cutoff:.3g}) in {len(lost)} of "
        f"{len(cutoffs)} NG solves, carrying up to {max(c.dropped_share for c in lost):.3g} of "
        "the gradient: NG's discrepancy there measures the cutoff, not invariance (a smaller "
        "rcond, e.g. 0 for a full-rank Fisher, keeps them)"
    ]


def invariance_for_seed(config: Config, seed: int, data: Any, progress=None) -> dict[str, Any]:
    """All (scaling, kappa, method) discrepancies of one seed, plus its gates: the notebook's
    softmax regression (``data`` = ``(inputs, labels)``) or the configured model and data
    (``LoadedData``; generic Fisher operator, outputs through functional_call, inside
    ``math_attention``, outputs may be HF-style), both by :func:`reparam.invariance`."""
    pattern_seed = config.scaling_seed * 1_000_003 + seed
    options = {"scalings": config.scalings, "kappas": config.kappa_values, "eta": config.eta,
               "solve": config.solve, "gate_rel_tol": config.gate_rel_tol,
               "gate_c_tol": config.gate_c_tol, "scope": f"seed={seed}"}  # fmt: skip
    if isinstance(data, tuple):
        inputs, labels = data
        c, d = config.n_classes, config.n_features
        weight = model.init_weights(c, d, seed=seed, dtype=config.torch_dtype).to(inputs.device)
        case = reparam.softmax_regression_case(weight, inputs, labels, pattern_seed=pattern_seed)
        result = reparam.invariance(case, **options)
    else:
        network = config.build_model(seed, data)
        batches = as_batches((data.inputs, data.targets), batch_size=config.batch_size)
        with eval_mode(network), math_attention():
            case = reparam.model_case(
                network, batches, loss=data.loss, pattern_seed=pattern_seed,
                dense=config.solver == "dense", self_check=config.fisher_self_check,
                progress=progress,
            )  # fmt: skip
            result = reparam.invariance(case, progress=progress, **options)
    rows = [{"seed": seed, **{k: v for k, v in row.items() if k != "cutoff"},
             **cutoff_columns(row["cutoff"])} for row in result.rows]  # fmt: skip
    return {"rows": rows, "gates": [asdict(g) for g in result.gates],
            "cutoffs": [asdict(c) for c in result.cutoffs],
            "warnings": cutoff_warning(seed, config, result.cutoffs)}  # fmt: skip


def summarize(results: pd.DataFrame, config: Config) -> dict[str, Any]:
    means = results.groupby(["scaling", "method", "kappa"])[
        ["max_diff", "logit_diff", "kl_between_steps"]
    ].mean()
    summary: dict[str, Any] = {}
    if "two_block" in config.scalings:
        block = means.loc["two_block"]
        for key, method in (("ng_consistency", "natgrad"), ("sgd_degradation", "sgd")):
            summary[key] = {
                f"kappa_{k:g}": float(v) for k, v in block.loc[method]["max_diff"].items()
            }
    largest = max((k for k in config.kappa_values if k != 1.0), default=None)
    if largest is not None:
        for scaling in config.scalings:
            at = means.loc[scaling].xs(largest, level="kappa")
            ratio = float(at.loc["sgd", "max_diff"] / at.loc["natgrad", "max_diff"])
            suffix = "" if scaling == config.scalings[0] else f"_{scaling}"
            summary[f"ratio_at_{largest:g}{suffix}"] = ratio
            summary[f"at_kappa_{largest:g}_{scaling}"] = {
                method: {col: float(at.loc[method, col]) for col in at.columns}
                for method in (m.value for m in METHODS)
            }
    return summary


def run(config: Config, ctx: RunContext) -> RunResult:
    if config.notebook_path:
        inputs, labels = load_cluster_data(config, ctx.device)
        threads = threads_for_dense_size(config.n_classes * config.n_features, ctx.device)

        def compute(seed: int) -> dict[str, Any]:
            return invariance_for_seed(config, seed, (inputs, labels))
    else:
        data = config.load_data(ctx.device)
        ctx.log.info("data: %s; model %s; NG by %s", data.description, config.model,
                     config.solver)  # fmt: skip
        threads = None

        def compute(seed: int) -> dict[str, Any]:
            progress = progress_logger(ctx.log, f"seed {seed}:")
            return invariance_for_seed(config, seed, data, progress=progress)

    with limited_threads(threads):  # small dense eigensolves: one thread (see geomlab.threads)
        per_seed = [
            ctx.cached(f"seed_{seed}", lambda seed=seed: compute(seed))
            for seed in ctx.progress(config.seed_list, description="E3 seeds")
        ]
    results = pd.DataFrame([r for item in per_seed for r in item["rows"]], columns=RESULT_COLUMNS)
    gates = [GateResult(**g) for item in per_seed for g in item["gates"]]
    warnings = [w for item in per_seed for w in item["warnings"]]
    for warning in warnings:
        ctx.log.warning("%s", warning)
    numeric = results[["max_diff", "logit_diff", "kl_between_steps"]].to_numpy()
    finite = finite_gate({"E3 results": torch.tensor(numeric)}, name="finite_results")
    ctx.write_csv("E3_results.csv", results)
    summary = {
        "experiment": "E3",
        "config": config.model_dump(mode="json"),
        "gate_a_pass_rate": _pass_rate(gates, "gate_a_fisher_psd"),
        "gate_c_pass_rate": _pass_rate(gates, "gate_c_equivalence"),
        "results_finite": finite.passed,
        **(summarize(results, config) if len(results) else {}),
        **cutoff_summary([c for item in per_seed for c in item["cutoffs"]], config),
        "rcond_warnings": warnings,
    }
    ctx.write_json("E3_summary.json", summary)
    if finite.passed and len(results):
        from geomlab.plots.e3 import invariance_figure

        ctx.save_figure(invariance_figure(results), "E3_figure")
    else:
        ctx.log.error("no finite results to plot: %s", finite.message)
    headline = {k: v for k, v in summary.items() if k.startswith("ratio_at_")}
    headline |= {"gate_a_pass_rate": summary["gate_a_pass_rate"],
                 "gate_c_pass_rate": summary["gate_c_pass_rate"]}  # fmt: skip
    return RunResult(summary=summary, gates=[*gates, finite], headline=headline)


def cutoff_summary(cutoffs: list[dict[str, Any]], config: Config) -> dict[str, Any]:
    """Rank, cutoff and dropped share of every NG pseudo-inverse of the run (empty for CG)."""
    if not cutoffs:
        return {"ng_rcond": config.rcond}
    return {
        "ng_rcond": config.rcond,
        "ng_rank_min": min(c["rank"] for c in cutoffs),
        "ng_rank_max": max(c["rank"] for c in cutoffs),
        "ng_cutoff_max": max(c["cutoff"] for c in cutoffs),
        "ng_dropped_directions_max": max(c["dropped"] for c in cutoffs),
        "ng_dropped_above_floor_max": max(c["dropped_above_floor"] for c in cutoffs),
        "ng_dropped_share_max": max(c["dropped_share"] for c in cutoffs),
    }


def _pass_rate(gates: list[GateResult], name: str) -> float:
    chosen = [g.passed for g in gates if g.name == name]
    return sum(chosen) / len(chosen) if chosen else float("nan")


EXPERIMENT = Experiment(
    name="e3",
    aliases=("ng-invariance",),
    description="One NG step is invariant to rescaling parameter coordinates; SGD is not",
    config_cls=Config,
    presets=PRESETS,
    run=run,
)
