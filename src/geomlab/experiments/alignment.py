"""Low-rank gradient alignment: two-layer nets trained by GD on spiked data (Sonthalia et al.).

Trains f(x) = γ aᵀσ(Wx) by full-batch GD with row renormalization and tracks, every epoch, the
gradient's top singular triplets (fast randomized path), its alignment with the spike q and
with the residue direction X_Bᵀ(y − f), the weights' energy in span(Xᵀy, q), and at checkpoint
epochs the principal angles between the compared runs' top right singular subspaces.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
import pandas as pd
import torch
from pydantic import BaseModel, ConfigDict, Field, model_validator

from geomlab.data.spiked import (
    random_unit_vector,
    sample_spiked_gaussian,
    single_index_targets,
    spike_strength,
)
from geomlab.experiments.base import Experiment, ExperimentConfig, RunContext, RunResult, Seed
from geomlab.geometry import spectral
from geomlab.geometry.gates import GateResult, allclose_gate, finite_gate
from geomlab.models import two_layer

Activation = Literal["relu", "sigmoid", "tanh"]
Family = Literal["relu-vs-sigmoid", "ntk-vs-mf"]
GammaScale = Literal["1", "1/sqrt(k)", "1/k"]
LrScale = Literal["1", "sqrt(k)"]
DTYPES = {"float32": torch.float32, "float64": torch.float64}


def gamma_value(scale: str, width: int) -> float:
    return {"1": 1.0, "1/sqrt(k)": width**-0.5, "1/k": 1.0 / width}[scale]


def lr_value(lr: float, scale: str, width: int) -> float:
    return lr * (math.sqrt(width) if scale == "sqrt(k)" else 1.0)


class TrainingSetting(BaseModel):
    """One notebook cell of the ReLU-vs-Sigmoid family: a teacher and an (lr, γ, epochs)."""

    model_config = ConfigDict(extra="forbid")

    teacher: Activation = Field(description="teacher activation σ* in y = σ*(βᵀx) + noise")
    lr: float = Field(gt=0, description="learning-rate coefficient (times lr_scale)")
    lr_scale: LrScale = "1"
    gamma_scale: GammaScale = Field(description="output scale γ as a power of the width k")
    epochs: int = Field(gt=0, le=1_000_000)


def _setting(teacher: str, lr_scale: str, gamma_scale: str, epochs: int) -> dict[str, Any]:
    return {
        "teacher": teacher,
        "lr": 2.0,
        "lr_scale": lr_scale,
        "gamma_scale": gamma_scale,
        "epochs": epochs,
    }


# The notebook's cells in order. `epochs = 1000` set for the γ = 1/k cell stays in force for
# every later ReLU-teacher cell, so those run 1000 epochs too.
NOTEBOOK_RELU_VS_SIGMOID = [
    _setting("sigmoid", "sqrt(k)", "1/sqrt(k)", 100),
    _setting("sigmoid", "sqrt(k)", "1", 100),
    _setting("sigmoid", "1", "1/sqrt(k)", 100),
    _setting("sigmoid", "sqrt(k)", "1/k", 1000),
    _setting("relu", "1", "1/sqrt(k)", 1000),
    _setting("relu", "1", "1", 1000),
    _setting("relu", "sqrt(k)", "1/sqrt(k)", 1000),
    _setting("relu", "sqrt(k)", "1", 1000),
]


class Config(ExperimentConfig):
    families: list[Family] = Field(
        default_factory=lambda: ["relu-vs-sigmoid", "ntk-vs-mf"], min_length=1
    )
    parameterization: two_layer.Parameterization = Field(
        "standard",
        description="standard: output γ·aᵀσ(Wx), a = ±1/√k; notebook: γ², a ∈ {−1/√k, 0}",
    )
    d: int = Field(1000, gt=0, le=100_000, description="input dimension")
    k: int = Field(1250, gt=0, le=100_000, description="hidden width (rows of W)")
    n_train: int = Field(750, gt=0, le=1_000_000, description="training points (full batch)")
    n_test: int = Field(750, gt=0, le=1_000_000, description="test points")
    alpha: float = Field(0.0, ge=0, description="bulk covariance diag(j^-alpha)")
    label_noise: float = Field(1.0, ge=0, description="std of the label noise (notebook: 1)")
    nu_relu_vs_sigmoid: float = Field(0.125, ge=0, description="spike exponent, ζ = N^ν")
    relu_vs_sigmoid_settings: list[TrainingSetting] = Field(
        default_factory=lambda: [TrainingSetting(**s) for s in NOTEBOOK_RELU_VS_SIGMOID],
        min_length=1,
    )
    nu_ntk_vs_mf: float = Field(0.0, ge=0, description="spike exponent of the NTK-vs-MF family")
    ntk_vs_mf_teacher: Activation = "sigmoid"
    ntk_vs_mf_activation: Activation = "sigmoid"
    ntk_vs_mf_lr: float = Field(0.5, gt=0, description="lr coefficient (notebook: √k/2)")
    ntk_vs_mf_lr_scale: LrScale = "sqrt(k)"
    ntk_vs_mf_epochs: int = Field(50, gt=0, le=1_000_000)
    epoch_cap: int | None = Field(None, gt=0, description="cap every run's epochs (quick runs)")
    top_k: int = Field(10, gt=0, description="gradient singular values tracked per epoch")
    angle_rank: int = Field(5, gt=0, description="r of the top-r subspaces compared between runs")
    angle_checkpoints: int = Field(16, ge=2, le=10_000, description="epochs with angle checks")
    svd_oversample: int = Field(30, ge=0, le=1000, description="extra block vectors in top-k")
    svd_tol: float = Field(1e-5, gt=0, lt=1, description="top-k stop: Ritz change / sigma_1")
    svd_max_iter: int = Field(300, gt=0, le=100_000)
    dtype: Literal["float32", "float64"] = Field("float32", description="training dtype")
    seed: Seed = 42

    @model_validator(mode="after")
    def _ranks_fit(self) -> Config:
        smallest = min(self.d, self.k, self.n_train)
        for name in ("top_k", "angle_rank"):
            if getattr(self, name) > smallest:
                raise ValueError(
                    f"{name} ({getattr(self, name)}) must be <= min(d, k, n_train) = {smallest}"
                )
        if self.top_k < 3:
            raise ValueError(f"top_k ({self.top_k}) must be >= 3 to report σ2/σ3")
        return self


PRESETS: dict[str, dict[str, Any]] = {
    "paper": {},
    "quick": {"d": 200, "k": 250, "n_train": 150, "n_test": 150, "epoch_cap": 100},
}


# --------------------------------------------------------------------------------------------
# Science: pure tensor functions (no I/O).


@dataclass
class Problem:
    """Data, teacher and initialization shared by the runs that are compared with each other."""

    x: torch.Tensor
    bulk: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    q: torch.Tensor
    W0: torch.Tensor
    a: torch.Tensor
    target_span: torch.Tensor  # d×2 orthonormal basis of span(Xᵀy, q)


@dataclass
class TrackingOptions:
    top_k: int
    angle_rank: int
    checkpoints: frozenset[int]
    oversample: int
    tol: float
    max_iter: int


@dataclass
class TrackedRun:
    rows: list[dict[str, float]]
    weight_bases: dict[int, torch.Tensor] = field(default_factory=dict)
    update_bases: dict[int, torch.Tensor] = field(default_factory=dict)
    unconverged: int = 0  # gradient top-k and ‖W‖₂ solves that hit max_iter
    unconverged_angles: int = 0  # checkpoint subspace solves that hit max_iter


def draw_shared_init(
    *, d: int, k: int, outer_init: str, generator: torch.Generator, dtype: torch.dtype
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Spike q, inner weights W0 and outer weights a, in the notebook's order."""
    q = random_unit_vector(d, generator=generator, dtype=dtype)
    W0 = two_layer.init_inner_weights(k, d, generator=generator, dtype=dtype)
    a = two_layer.init_outer_weights(k, kind=outer_init, generator=generator, dtype=dtype)
    return q, W0, a


def draw_problem(
    *,
    q: torch.Tensor,
    W0: torch.Tensor,
    a: torch.Tensor,
    teacher: str,
    n_train: int,
    n_test: int,
    nu: float,
    alpha: float,
    label_noise: float,
    generator: torch.Generator,
    device: torch.device,
) -> Problem:
    """Teacher β, then train data and labels, then test data and labels (notebook order)."""
    beta = random_unit_vector(q.shape[0], generator=generator, dtype=q.dtype)
    zeta = spike_strength(n_train, nu)
    train = sample_spiked_gaussian(n_train, q=q, zeta=zeta, alpha=alpha, generator=generator)
    y = single_index_targets(
        train.x, beta, activation=teacher, noise_std=label_noise, generator=generator
    )
    test = sample_spiked_gaussian(n_test, q=q, zeta=zeta, alpha=alpha, generator=generator)
    y_test = single_index_targets(
        test.x, beta, activation=teacher, noise_std=label_noise, generator=generator
    )
    span = spectral.orthonormal_basis(torch.stack([train.x.mT @ y, q], dim=1).double())
    return Problem(
        x=train.x.to(device),
        bulk=train.bulk.to(device),
        y=y.to(device),
        x_test=test.x.to(device),
        y_test=y_test.to(device),
        q=q.to(device),
        W0=W0.to(device),
        a=a.to(device),
        target_span=span.to(device),
    )


def checkpoint_epochs(epochs: int, count: int) -> frozenset[int]:
    """About ``count`` log-spaced epochs in [1, epochs] plus 0 and the last one."""
    spaced = np.unique(np.round(np.geomspace(1, max(epochs, 1), num=count)).astype(int))
    return frozenset({0, epochs, *(int(e) for e in spaced if e <= epochs)})


def epoch_metrics(
    problem: Problem,
    W: torch.Tensor,
    gradient: torch.Tensor,
    prediction: torch.Tensor,
    test_prediction: torch.Tensor,
    top: spectral.SingularTriplets,
) -> dict[str, float]:
    """Every per-epoch quantity at the weights W the gradient was taken at."""
    residue = problem.bulk.mT @ (problem.y - prediction)  # X_Bᵀ(y − f) at the same weights
    residue64 = residue.double()
    q64 = problem.q.double()
    V = top.V.double()
    S = top.S.double()
    grad_fro = float(torch.linalg.matrix_norm(gradient.double()))
    sigma = S.tolist()
    top2 = spectral.subspace_alignment_cosines(V[:, :2], torch.stack([residue64, q64], dim=1))
    top2 = torch.cat([top2, top2.new_zeros(2 - top2.numel())])
    row = {
        "train_mse": float(two_layer.mean_squared_error(prediction, problem.y)),
        "test_mse": float(two_layer.mean_squared_error(test_prediction, problem.y_test)),
        "grad_fro_norm": grad_fro,
        **{f"grad_sv_{i + 1}": s for i, s in enumerate(sigma)},
        "sv_ratio_12": sigma[0] / sigma[1] if sigma[1] > 0 else math.inf,
        "sv_ratio_23": sigma[1] / sigma[2] if sigma[2] > 0 else math.inf,
        "stable_rank": spectral.stable_rank(grad_fro, sigma[0]),
        "cos_v1_spike": spectral.abs_cos(V[:, 0], q64),
        "cos_v1_residue": spectral.abs_cos(V[:, 0], residue64),
        "cos_v2_spike": spectral.abs_cos(V[:, 1], q64),
        "cos_v2_residue": spectral.abs_cos(V[:, 1], residue64),
        "top2_cos_1": float(top2[0]),
        "top2_cos_2": float(top2[1]),
        "energy_fraction": spectral.energy_fraction_in_span(W, problem.target_span.to(W.dtype)),
        "svd_iterations": float(top.iterations),
    }
    return row


def _epochs_with_progress(count: int, progress, parts: int = 20):
    """range(count), advancing ``progress`` once per ~1/parts of it (a run.log line per step,
    not per epoch)."""
    if progress is None:
        yield from range(count)
        return
    bounds = np.linspace(0, count, min(parts, count) + 1).round().astype(int).tolist()
    for start, stop in progress(list(zip(bounds[:-1], bounds[1:], strict=True))):
        yield from range(start, stop)


def train_and_track(
    problem: Problem,
    *,
    activation: str,
    gamma: float,
    scale: float,
    lr: float,
    epochs: int,
    options: TrackingOptions,
    generator: torch.Generator,
    w0_top: torch.Tensor | None = None,
    w0_basis: torch.Tensor | None = None,
    progress=None,
) -> TrackedRun:
    """Full-batch GD for ``epochs`` steps; metrics at every W_t, t = 0..epochs.

    Row t describes the weights after t updates (t = epochs: the final weights), the gradient at
    those weights, and the residue at those weights. Spectral solves run in the training dtype
    (the gradient carries no more precision than that) and are warm-started: the gradient's
    top-k from the previous epoch, ‖W‖₂ from the previous epoch, W's top-r subspace from the
    previous checkpoint (``w0_top`` / ``w0_basis``: precomputed for W_0, shared by the runs).
    """
    tracked = TrackedRun(rows=[])
    W = problem.W0.clone()
    previous_v: torch.Tensor | None = None
    previous_w = w0_top
    fast = {"oversample": options.oversample, "tol": options.tol, "max_iter": options.max_iter}
    for epoch in _epochs_with_progress(epochs + 1, progress):
        gradient, prediction = two_layer.inner_weight_gradient(
            problem.x, problem.y, W, problem.a, activation=activation, scale=scale
        )
        test_prediction = two_layer.forward(
            problem.x_test, W, problem.a, activation=activation, scale=scale
        )
        top = spectral.top_singular_triplets(
            gradient, options.top_k, init=previous_v, generator=generator, **fast
        )
        previous_v = top.right_basis
        w_top = spectral.top_singular_triplets(
            W, 1, init=previous_w, generator=generator, **{**fast, "oversample": 4}
        )
        previous_w = w_top.right_basis
        tracked.unconverged += int(not top.converged) + int(not w_top.converged)
        row = epoch_metrics(problem, W, gradient, prediction, test_prediction, top)
        row["epoch"] = epoch
        row["w_spectral_norm"] = float(w_top.S[0])
        row["svd_converged"] = float(top.converged)
        tracked.rows.append(row)
        if epoch in options.checkpoints:
            rank = options.angle_rank
            latest = max(tracked.weight_bases, default=None)
            start = w0_basis if latest is None else tracked.weight_bases[latest]
            weights = spectral.top_singular_triplets(
                W, rank, init=start, generator=generator, **fast
            )
            tracked.weight_bases[epoch] = weights.V.double()
            tracked.unconverged_angles += int(not weights.converged)
            if epoch > 0:
                latest = max(tracked.update_bases, default=None)
                start = None if latest is None else tracked.update_bases[latest]
                update = spectral.top_singular_triplets(
                    W - problem.W0, rank, init=start, generator=generator, **fast
                )
                tracked.update_bases[epoch] = update.V.double()
                tracked.unconverged_angles += int(not update.converged)
        if epoch < epochs:
            W = two_layer.gradient_step(W, gradient, lr=lr, gamma=gamma)
    return tracked


def angles_between_runs(first: TrackedRun, second: TrackedRun) -> list[dict[str, float | str]]:
    """Principal angles between the two runs' top-r right singular subspaces (of W_t and of
    W_t − W_0) at every shared checkpoint epoch."""
    rows: list[dict[str, float | str]] = []
    for subspace, bases_a, bases_b in (
        ("weights", first.weight_bases, second.weight_bases),
        ("update", first.update_bases, second.update_bases),
    ):
        for epoch in sorted(set(bases_a) & set(bases_b)):
            degrees = torch.rad2deg(spectral.principal_angles(bases_a[epoch], bases_b[epoch]))
            rows.append(
                {
                    "epoch": epoch,
                    "subspace": subspace,
                    "rank": int(bases_a[epoch].shape[1]),
                    "mean_angle_deg": float(degrees.mean()),
                    "max_angle_deg": float(degrees.max()),
                    "min_angle_deg": float(degrees.min()),
                }
            )
    return rows


# --------------------------------------------------------------------------------------------
# Wiring: which runs make up each family, resume units, tables, figures.


@dataclass(frozen=True)
class RunSpec:
    run: str
    activation: str
    gamma_scale: str
    lr: float
    lr_scale: str
    epochs: int


@dataclass(frozen=True)
class Comparison:
    """Two runs on the same problem whose subspaces are compared (one figure panel)."""

    family: str
    setting: str
    teacher: str
    nu: float
    runs: tuple[RunSpec, RunSpec]


def comparisons(config: Config) -> list[Comparison]:
    """The notebook's runs in its order, grouped by the pair they are compared in."""
    cap = config.epoch_cap or 10**9
    out: list[Comparison] = []
    if "relu-vs-sigmoid" in config.families:
        for index, s in enumerate(config.relu_vs_sigmoid_settings, start=1):
            epochs = min(s.epochs, cap)
            runs = tuple(
                RunSpec(f"s{index}-{act}", act, s.gamma_scale, s.lr, s.lr_scale, epochs)
                for act in ("relu", "sigmoid")
            )
            out.append(
                Comparison(
                    "relu-vs-sigmoid", f"s{index}", s.teacher, config.nu_relu_vs_sigmoid, runs
                )
            )
    if "ntk-vs-mf" in config.families:
        epochs = min(config.ntk_vs_mf_epochs, cap)
        lr, lr_scale = config.ntk_vs_mf_lr, config.ntk_vs_mf_lr_scale
        act = config.ntk_vs_mf_activation
        runs = (
            RunSpec("ntk", act, "1", lr, lr_scale, epochs),
            RunSpec("mf", act, "1/sqrt(k)", lr, lr_scale, epochs),
        )
        out.append(
            Comparison("ntk-vs-mf", "ntk-mf", config.ntk_vs_mf_teacher, config.nu_ntk_vs_mf, runs)
        )
    return out


def outer_init_for(family: str, parameterization: str) -> str:
    """ReLU-vs-Sigmoid used the notebook's {−1/√k, 0} draw (kept in notebook mode, replaced by
    ±1/√k in standard mode); NTK-vs-MF drew Gaussian a/√k in both."""
    if family == "ntk-vs-mf":
        return "gaussian"
    return "notebook_binary" if parameterization == "notebook" else "rademacher"


def family_seed(seed: int, family: str) -> int:
    """Independent, reproducible stream per family (running one family alone gives the same
    numbers as running both)."""
    return seed + {"relu-vs-sigmoid": 0, "ntk-vs-mf": 1}[family]


def _comparison_unit(
    config: Config, comparison: Comparison, problem: Problem, ctx: RunContext
) -> dict[str, Any]:
    options_base = {
        "top_k": config.top_k,
        "angle_rank": config.angle_rank,
        "oversample": config.svd_oversample,
        "tol": config.svd_tol,
        "max_iter": config.svd_max_iter,
    }
    generator = torch.Generator().manual_seed(config.seed + 7919)
    fast = {"tol": config.svd_tol, "max_iter": config.svd_max_iter, "generator": generator}
    w0_top = spectral.top_singular_triplets(problem.W0, 1, oversample=4, **fast).right_basis
    w0_basis = spectral.top_singular_triplets(
        problem.W0, config.angle_rank, oversample=config.svd_oversample, **fast
    ).right_basis
    tracked_runs = []
    rows: list[dict[str, Any]] = []
    for spec in comparison.runs:
        gamma = gamma_value(spec.gamma_scale, config.k)
        lr = lr_value(spec.lr, spec.lr_scale, config.k)
        options = TrackingOptions(
            checkpoints=checkpoint_epochs(spec.epochs, config.angle_checkpoints), **options_base
        )
        label = f"{comparison.family} {spec.run} ({spec.epochs} epochs)"
        tracked = train_and_track(
            problem,
            activation=spec.activation,
            gamma=gamma,
            scale=two_layer.output_scale(gamma, config.parameterization),
            lr=lr,
            epochs=spec.epochs,
            options=options,
            generator=generator,
            w0_top=w0_top,
            w0_basis=w0_basis,
            progress=lambda chunks, label=label: ctx.progress(
                chunks, total=len(chunks), description=label
            ),
        )
        tracked_runs.append(tracked)
        meta = {
            "run": f"{comparison.family}/{spec.run}",
            "family": comparison.family,
            "setting": comparison.setting,
            "teacher": comparison.teacher,
            "activation": spec.activation,
            "gamma_scale": spec.gamma_scale,
            "gamma": gamma,
            "lr": lr,
            "nu": comparison.nu,
            "parameterization": config.parameterization,
        }
        rows.extend({**meta, **row} for row in tracked.rows)
    angle_rows = [
        {"family": comparison.family, "setting": comparison.setting, **row}
        for row in angles_between_runs(*tracked_runs)
    ]
    return {
        "rows": rows,
        "angles": angle_rows,
        "unconverged": sum(t.unconverged for t in tracked_runs),
        "unconverged_angles": sum(t.unconverged_angles for t in tracked_runs),
    }


def _reference_gate(problem: Problem, comparison: Comparison, config: Config) -> GateResult:
    """Fast top-k vs the full SVD on the problem's initial gradient (validation of the fast
    path on the very matrices the experiment tracks)."""
    spec = comparison.runs[0]
    gamma = gamma_value(spec.gamma_scale, config.k)
    gradient, _ = two_layer.inner_weight_gradient(
        problem.x, problem.y, problem.W0, problem.a,
        activation=spec.activation, scale=two_layer.output_scale(gamma, config.parameterization),
    )  # fmt: skip
    fast = spectral.top_singular_triplets(
        gradient, config.top_k, oversample=config.svd_oversample, tol=config.svd_tol,
        max_iter=config.svd_max_iter, generator=torch.Generator().manual_seed(config.seed),
    )  # fmt: skip
    reference = spectral.top_singular_triplets_reference(gradient.double(), config.top_k)
    gate = allclose_gate(
        fast.S.double(),
        reference.S,
        name="fast_topk_vs_full_svd",
        scope=comparison.family,
        rel_tol=1e-4,
    )
    cos_v1 = spectral.abs_cos(fast.V[:, 0].double(), reference.V[:, 0])
    gate.details["cos_v1_vs_reference"] = cos_v1
    if cos_v1 < 0.999:
        gate.passed = False
        gate.message += f"; FAIL: |cos(v1, reference v1)| = {cos_v1:.6f} < 0.999"
    return gate


METRIC_COLUMNS_HEAD = [
    "run", "family", "setting", "teacher", "activation", "gamma_scale", "gamma", "lr", "nu",
    "parameterization", "epoch", "train_mse", "test_mse",
]  # fmt: skip


def run(config: Config, ctx: RunContext) -> RunResult:
    device = ctx.device
    dtype = DTYPES[config.dtype]
    metric_rows: list[dict[str, Any]] = []
    angle_rows: list[dict[str, Any]] = []
    gates: list[GateResult] = []
    unconverged = 0
    unconverged_angles = 0
    plan = comparisons(config)
    for family in config.families:
        generator = torch.Generator().manual_seed(family_seed(config.seed, family))
        q, W0, a = draw_shared_init(
            d=config.d, k=config.k, generator=generator, dtype=dtype,
            outer_init=outer_init_for(family, config.parameterization),
        )  # fmt: skip
        problems: dict[str, Problem] = {}
        for comparison in (c for c in plan if c.family == family):
            if comparison.teacher not in problems:
                problems[comparison.teacher] = draw_problem(
                    q=q, W0=W0, a=a, teacher=comparison.teacher, n_train=config.n_train,
                    n_test=config.n_test, nu=comparison.nu, alpha=config.alpha,
                    label_noise=config.label_noise, generator=generator, device=device,
                )  # fmt: skip
                gates.append(_reference_gate(problems[comparison.teacher], comparison, config))
            problem = problems[comparison.teacher]
            key = f"alignment-{family}-{comparison.setting}"
            unit = ctx.cached(
                key, lambda c=comparison, p=problem: _comparison_unit(config, c, p, ctx)
            )
            metric_rows.extend(unit["rows"])
            angle_rows.extend(unit["angles"])
            unconverged += unit["unconverged"]
            unconverged_angles += unit["unconverged_angles"]

    metrics = pd.DataFrame(metric_rows)
    sv_columns = [f"grad_sv_{i + 1}" for i in range(config.top_k)]
    rest = [c for c in metrics.columns if c not in METRIC_COLUMNS_HEAD and c not in sv_columns]
    metrics = metrics[METRIC_COLUMNS_HEAD + rest + sv_columns]
    angles = pd.DataFrame(
        angle_rows,
        columns=["family", "setting", "epoch", "subspace", "rank", "mean_angle_deg",
                 "max_angle_deg", "min_angle_deg"],
    )  # fmt: skip
    numeric = metrics.select_dtypes("number")
    finite = finite_gate(
        {c: torch.tensor(numeric[c].to_numpy(dtype=float)) for c in numeric.columns}
        | {
            f"angle_{c}": torch.tensor(angles[c].to_numpy(dtype=float)) for c in ("mean_angle_deg",)
        },
        name="finite_metrics",
    )
    gates.append(finite)
    converged = GateResult(
        "topk_converged",
        unconverged == 0,
        "PASS: every fast top-k solve met its tolerance"
        if unconverged == 0
        else f"FAIL: {unconverged} fast top-k solves hit svd_max_iter",
        details={"unconverged": unconverged},
    )
    gates.append(converged)
    ctx.write_csv("alignment_metrics.csv", metrics)
    ctx.write_csv("alignment_angles.csv", angles)

    final = metrics.sort_values("epoch").groupby("run", sort=False).tail(1)
    summary_columns = [
        "train_mse", "test_mse", "grad_sv_1", "sv_ratio_12", "sv_ratio_23", "stable_rank",
        "cos_v1_spike", "cos_v1_residue", "top2_cos_1", "top2_cos_2", "energy_fraction",
        "w_spectral_norm",
    ]  # fmt: skip
    final_values = {
        row["run"]: {"epoch": int(row["epoch"]), **{c: float(row[c]) for c in summary_columns}}
        for _, row in final.iterrows()
    }
    last_angles = angles.sort_values("epoch").groupby(["family", "setting", "subspace"]).tail(1)
    summary = {
        "final": final_values,
        "final_angles_deg": [
            {k: (v.item() if hasattr(v, "item") else v) for k, v in row.items()}
            for row in last_angles.to_dict("records")
        ],
        "column_space_angle_bound_deg": spectral.column_space_angle_bound_deg(
            config.k, min(config.k, config.d)
        ),
        "data": {
            "kind": "spiked Gaussian, X = X_B + zeta z q^T, single-index teacher",
            "d": config.d,
            "n_train": config.n_train,
            "n_test": config.n_test,
            "alpha": config.alpha,
            "label_noise_std": config.label_noise,
            "spike": {
                family: {"nu": nu, "zeta": spike_strength(config.n_train, nu)}
                for family, nu in (
                    ("relu-vs-sigmoid", config.nu_relu_vs_sigmoid),
                    ("ntk-vs-mf", config.nu_ntk_vs_mf),
                )
                if family in config.families
            },
        },
        "runs": int(metrics["run"].nunique()),
        "epochs_total": int(len(metrics)),
        "unconverged_angle_solves": unconverged_angles,
    }
    ctx.write_json("summary.json", summary)

    if finite.passed:
        from geomlab.plots import alignment as plots

        for stem, make in plots.FIGURES.items():
            ctx.save_figure(make(metrics, angles), stem)
    else:
        ctx.log.warning("non-finite metrics: figures skipped (%s)", finite.message)

    headline = {
        "median_final_cos_v1_residue": float(final["cos_v1_residue"].median()),
        "median_final_energy_fraction": float(final["energy_fraction"].median()),
        "median_final_sv_ratio_12": float(final["sv_ratio_12"].median()),
    }
    return RunResult(summary=summary, gates=gates, headline=headline)


EXPERIMENT = Experiment(
    name="alignment",
    aliases=("low-rank-gradients", "eigenvector-alignment"),
    description="Two-layer nets on spiked data: gradients align with spike and residue",
    config_cls=Config,
    presets=PRESETS,
    run=run,
)
