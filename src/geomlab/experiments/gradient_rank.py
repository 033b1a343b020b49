"""Gradient rank at initialization as a function of the spike strength ν (phase diagram).

For every ν on a grid and every seed: draw spiked data with ζ = N^ν, a teacher and a fresh
two-layer net, take the gradient of the MSE with respect to W at initialization, and record its
top singular values and how its leading right singular vectors v1, v2 align with the residue
direction X_Bᵀ(y − f) and the spike q. The paper's claim: for ν < 1/4 one residue-aligned
outlier; for 1/4 ≤ ν < 1/2 about rank two, spanning (residue, spike).
"""

from __future__ import annotations

from typing import Annotated, Any

import pandas as pd
import torch
from pydantic import Field, model_validator

from geomlab.data import spiked
from geomlab.experiments.base import Experiment, ExperimentConfig, RunContext, RunResult, Seed
from geomlab.geometry import gd_tracking, spectral
from geomlab.geometry.gates import (
    GateResult,
    finite_gate,
    topk_converged_gate,
    topk_reference_gate,
)
from geomlab.models import two_layer
from geomlab.models.two_layer import Activation, GammaScale, Parameterization

NonNegativeFloat = Annotated[float, Field(ge=0)]
DEFAULT_NUS = [round(0.05 * i, 2) for i in range(13)]  # 0, 0.05, ..., 0.6


class Config(ExperimentConfig):
    d: int = Field(1000, gt=0, le=100_000, description="input dimension")
    k: int = Field(1250, gt=0, le=100_000, description="hidden width (rows of W)")
    n_train: int = Field(750, gt=0, le=1_000_000, description="data points N (ζ = N^ν)")
    nus: list[NonNegativeFloat] = Field(
        default_factory=lambda: list(DEFAULT_NUS), min_length=1, description="spike exponents"
    )
    n_seeds: int = Field(5, ge=1, le=1000)
    activation: Activation = Activation.RELU
    teacher: Activation = Activation.SIGMOID
    gamma_scale: GammaScale = GammaScale.INV_SQRT_K
    parameterization: Parameterization = Parameterization.STANDARD
    alpha: float = Field(0.0, ge=0, description="bulk covariance diag(j^-alpha)")
    label_noise: float = Field(1.0, ge=0)
    top_k: int = Field(5, ge=3, description="singular values recorded per gradient")
    outlier_ratio: float = Field(
        2.0, gt=1, description="σ_i/σ_(i+1) at or above this counts as a separated outlier"
    )
    svd_oversample: int = Field(10, ge=0, le=1000)
    svd_tol: float = Field(1e-8, gt=0, lt=1)
    svd_max_iter: int = Field(500, gt=0, le=100_000)
    seed: Seed = Field(0, description="seeds used are seed .. seed + n_seeds - 1")

    @model_validator(mode="after")
    def _rank_fits(self) -> Config:
        smallest = min(self.d, self.k, self.n_train)
        if self.top_k > smallest:
            raise ValueError(f"top_k ({self.top_k}) must be <= min(d, k, n_train) = {smallest}")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {
        "d": 400,
        "k": 500,
        "n_train": 300,
        "n_seeds": 3,
        "nus": [0.0, 0.1, 0.2, 0.25, 0.3, 0.4, 0.5, 0.6],
    },  # fmt: skip
}

REGIMES = (("nu < 1/4", 0.0, 0.25), ("1/4 <= nu < 1/2", 0.25, 0.5))


# The table's columns after nu, zeta, seed (grad_sv_1..top_k first); CSV column -> geometry
# function: docs/experiments/alignment.md.
RANK_COLUMNS = [
    "sv_ratio_12", "sv_ratio_23", "sv_ratio_34", "stable_rank", "cos_v1_residue", "cos_v1_spike",
    "cos_v2_residue", "cos_v2_spike", "top2_cos_1", "top2_cos_2", "svd_iterations",
    "svd_converged",
]  # fmt: skip


def gradient_at_init(config: Config, nu: float, seed: int, device: torch.device):
    """The initial gradient, its fast top-k triplets and the problem it was taken on."""
    generator = torch.Generator().manual_seed(seed)
    q, W0, a = spiked.draw_shared_init(
        d=config.d, k=config.k, outer_init=two_layer.default_outer_init(config.parameterization),
        generator=generator, dtype=torch.float64,
    )  # fmt: skip
    data = spiked.draw_teacher_data(
        q, teacher=config.teacher, n_train=config.n_train, n_test=1, nu=nu, alpha=config.alpha,
        label_noise=config.label_noise, generator=generator,
    )  # fmt: skip
    problem = gd_tracking.spiked_problem(data, q=q, W0=W0, a=a, device=device)
    scale = two_layer.output_scale(config.gamma_scale.gamma(config.k), config.parameterization)
    gradient, prediction = two_layer.inner_weight_gradient(
        problem.x, problem.y, problem.W0, problem.a, activation=config.activation, scale=scale
    )
    top = spectral.top_singular_triplets(
        gradient, config.top_k, oversample=config.svd_oversample, tol=config.svd_tol,
        max_iter=config.svd_max_iter, generator=generator,
    )  # fmt: skip
    return gradient, top, prediction, problem


def aggregate_by_nu(table: pd.DataFrame) -> pd.DataFrame:
    metrics = [c for c in table.columns if c not in ("nu", "zeta", "seed")]
    grouped = table.groupby("nu", sort=True)
    means = grouped[metrics].mean().add_suffix("_mean")
    stds = grouped[metrics].std(ddof=0).add_suffix("_std")
    out = pd.concat([means, stds], axis=1).reset_index()
    out.insert(1, "n_seeds", grouped["seed"].nunique().to_numpy())
    return out


def regime_verdicts(table: pd.DataFrame, threshold: float) -> dict[str, Any]:
    """The paper's two statements checked on the seeds' means; each says what it measured."""
    verdicts: dict[str, Any] = {}
    for name, low, high in REGIMES:
        part = table[(table["nu"] >= low) & (table["nu"] < high)]
        if part.empty:
            verdicts[name] = {"evaluated": False, "reason": "no nu in this range"}
            continue
        stats = {
            c: float(part[c].mean())
            for c in ("sv_ratio_12", "sv_ratio_23", "cos_v1_residue", "cos_v1_spike", "top2_cos_2")
        }
        if high <= 0.25:
            claim = "one residue-aligned outlier: σ1/σ2 >= t, σ2/σ3 < t, |cos(v1, residue)| >= 0.9"
            holds = (
                stats["sv_ratio_12"] >= threshold
                and stats["sv_ratio_23"] < threshold
                and stats["cos_v1_residue"] >= 0.9
            )
        else:
            claim = "about rank two: σ2/σ3 >= t and span(v1, v2) ≈ span(residue, q) (cos >= 0.8)"
            holds = stats["sv_ratio_23"] >= threshold and stats["top2_cos_2"] >= 0.8
        per_nu = part.groupby("nu")[["sv_ratio_12", "sv_ratio_23"]].mean()
        verdicts[name] = {
            "evaluated": True,
            "claim": claim,
            "threshold": threshold,
            "holds_on_average": bool(holds),
            "means": stats,
            "nus": sorted(float(v) for v in part["nu"].unique()),
            "sv_ratio_12_by_nu": {str(k): float(v) for k, v in per_nu["sv_ratio_12"].items()},
            "sv_ratio_23_by_nu": {str(k): float(v) for k, v in per_nu["sv_ratio_23"].items()},
        }
    return verdicts


def run(config: Config, ctx: RunContext) -> RunResult:
    seeds = list(range(config.seed, config.seed + config.n_seeds))
    cases = [(nu, seed) for nu in config.nus for seed in seeds]
    rows: list[dict[str, Any]] = []
    gates: list[GateResult] = []
    for index, (nu, seed) in enumerate(
        ctx.progress(cases, total=len(cases), description="ν × seed")
    ):
        gradient, top, prediction, problem = gradient_at_init(config, nu, seed, ctx.device)
        if index == 0:  # validate the fast path against the full SVD on a real case
            gates.append(
                topk_reference_gate(
                    gradient, top, solver_tol=config.svd_tol, scope=f"nu={nu}, seed={seed}"
                )
            )
        residue = spectral.residue_direction(problem.bulk, problem.y, prediction)
        metrics = spectral.gradient_alignment_metrics(
            gradient, top, residue=residue, spike=problem.q, gaps=3
        )
        sv_columns = [f"grad_sv_{i + 1}" for i in range(config.top_k)]
        rows.append(
            {"nu": nu, "zeta": problem.zeta, "seed": seed,
             **{c: metrics[c] for c in sv_columns + RANK_COLUMNS}}
        )  # fmt: skip
    table = pd.DataFrame(rows)
    by_nu = aggregate_by_nu(table)
    # sv_ratio_34 is NaN by construction when only three singular values are recorded.
    skipped = ["sv_ratio_34"] if config.top_k < 4 else []
    numeric = table.drop(columns=skipped).select_dtypes("number")
    finite = finite_gate(
        {c: torch.tensor(numeric[c].to_numpy(dtype=float)) for c in numeric.columns},
        name="finite_metrics",
    )
    gates.append(finite)
    gates.append(topk_converged_gate(int((table["svd_converged"] == 0).sum())))
    ctx.write_csv("gradient_rank.csv", table)
    ctx.write_csv("gradient_rank_by_nu.csv", by_nu)
    verdicts = regime_verdicts(table, config.outlier_ratio)
    data = {
        "kind": "spiked Gaussian, X = X_B + zeta z q^T, single-index teacher",
        "d": config.d,
        "n_train": config.n_train,
        "alpha": config.alpha,
        "label_noise_std": config.label_noise,
        "teacher": config.teacher,
        "nus": list(config.nus),
    }
    summary = {
        "regimes": verdicts,
        "by_nu": by_nu.to_dict("records"),
        "cases": len(table),
        "data": data,
    }
    ctx.write_json("summary.json", summary)
    if finite.passed:
        from geomlab.plots.alignment import gradient_rank_figure

        ctx.save_figure(
            gradient_rank_figure(by_nu, threshold=config.outlier_ratio), "gradient_rank"
        )
    else:
        ctx.log.warning("non-finite metrics: figure skipped (%s)", finite.message)
    headline = {}
    for name, key in (("nu < 1/4", "below_quarter"), ("1/4 <= nu < 1/2", "quarter_to_half")):
        if verdicts[name]["evaluated"]:
            headline[f"{key}_sv_ratio_12"] = verdicts[name]["means"]["sv_ratio_12"]
            headline[f"{key}_sv_ratio_23"] = verdicts[name]["means"]["sv_ratio_23"]
    return RunResult(summary=summary, gates=gates, headline=headline)


EXPERIMENT = Experiment(
    name="gradient-rank",
    aliases=("gradient-rank-phase", "spike-phase-diagram"),
    description="Initial gradient rank vs spike strength ν: one outlier, then rank two",
    config_cls=Config,
    presets=PRESETS,
    run=run,
)
