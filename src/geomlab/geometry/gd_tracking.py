"""Full-batch GD of the two-layer net on spiked data, measured at every epoch.

The measurement protocol of the low-rank-gradient study (Sonthalia, Murray, Montúfar): given a
spike q, the initial weights and a teacher's data (drawn by :mod:`geomlab.data.spiked`, wired by
the experiment into a :class:`SpikedProblem` by :func:`spiked_problem`), train
f(x) = s·aᵀσ(Wx) by W ← rownorm(W − (lr/γ)∇W) and record, at every
W_t, the loss, the gradient's top singular triplets and their alignment with the spike and the
residue direction (:func:`geomlab.geometry.spectral.gradient_alignment_metrics`), ‖W‖₂, the
fraction of ‖W‖_F in span(Xᵀy, q), and at checkpoint epochs the top-r right singular
subspaces of W_t and W_t − W_0, compared between runs by :func:`angles_between_runs`.

Pure functions on tensors: no I/O; progress is reported through an optional callback.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch

from geomlab.geometry import spectral
from geomlab.models import two_layer

__all__ = [
    "SpikedProblem", "TeacherData", "TrackedRun", "TrackingOptions", "angles_between_runs",
    "checkpoint_epochs", "epoch_metrics", "epochs_with_progress", "spiked_problem",
    "train_and_track",
]  # fmt: skip


@dataclass
class SpikedProblem:
    """Data, teacher and initialization shared by the runs that are compared with each other."""

    x: torch.Tensor
    bulk: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    q: torch.Tensor
    W0: torch.Tensor
    a: torch.Tensor
    target_span: torch.Tensor  # d×2 orthonormal basis of span(Xᵀy, q), float64
    zeta: float  # spike strength N^ν of this data


@dataclass
class TrackingOptions:
    """What :func:`train_and_track` measures and how the fast spectral solves run."""

    top_k: int
    angle_rank: int
    checkpoints: frozenset[int]
    oversample: int
    tol: float
    max_iter: int


@dataclass
class TrackedRun:
    """One trajectory's per-epoch rows and its checkpoint subspaces (d×r, float64)."""

    rows: list[dict[str, float]]
    weight_bases: dict[int, torch.Tensor] = field(default_factory=dict)
    update_bases: dict[int, torch.Tensor] = field(default_factory=dict)
    unconverged: int = 0  # gradient top-k and ‖W‖₂ solves that hit max_iter
    unconverged_angles: int = 0  # checkpoint subspace solves that hit max_iter


class TeacherData(Protocol):
    """Spiked train and test data with a teacher's targets (e.g.
    :class:`geomlab.data.spiked.SpikedTeacherData`): the tensors :func:`spiked_problem` reads."""

    x: torch.Tensor
    bulk: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    zeta: float


def spiked_problem(
    data: TeacherData,
    *,
    q: torch.Tensor,
    W0: torch.Tensor,
    a: torch.Tensor,
    device: torch.device | str,
) -> SpikedProblem:
    """The problem the runs share: ``data``'s tensors with the spike q and the initial weights
    W0, a, all moved to ``device``, and the orthonormal basis of span(Xᵀy, q) (computed where
    ``data`` lives, in float64) that :func:`epoch_metrics` measures energy in."""
    span = spectral.orthonormal_basis(torch.stack([data.x.mT @ data.y, q], dim=1).double())
    return SpikedProblem(
        x=data.x.to(device),
        bulk=data.bulk.to(device),
        y=data.y.to(device),
        x_test=data.x_test.to(device),
        y_test=data.y_test.to(device),
        q=q.to(device),
        W0=W0.to(device),
        a=a.to(device),
        target_span=span.to(device),
        zeta=data.zeta,
    )


def checkpoint_epochs(epochs: int, count: int) -> frozenset[int]:
    """About ``count`` log-spaced epochs in [1, epochs] plus 0 and the last one."""
    spaced = np.unique(np.round(np.geomspace(1, max(epochs, 1), num=count)).astype(int))
    return frozenset({0, epochs, *(int(e) for e in spaced if e <= epochs)})


def epoch_metrics(
    problem: SpikedProblem,
    W: torch.Tensor,
    gradient: torch.Tensor,
    prediction: torch.Tensor,
    test_prediction: torch.Tensor,
    top: spectral.SingularTriplets,
) -> dict[str, float]:
    """Every per-epoch quantity at the weights W the gradient was taken at.

    Returns:
        ``train_mse``, ``test_mse``, the gradient's spectrum and alignment with the spike q
        and the residue X_Bᵀ(y − f) at W (:func:`spectral.gradient_alignment_metrics`), and
        ``energy_fraction`` = ‖W P_S‖_F/‖W‖_F for S = span(Xᵀy, q).
    """
    residue = spectral.residue_direction(problem.bulk, problem.y, prediction)
    return {
        "train_mse": float(two_layer.mean_squared_error(prediction, problem.y)),
        "test_mse": float(two_layer.mean_squared_error(test_prediction, problem.y_test)),
        **spectral.gradient_alignment_metrics(gradient, top, residue=residue, spike=problem.q),
        "energy_fraction": spectral.energy_fraction_in_span(W, problem.target_span.to(W.dtype)),
    }


def epochs_with_progress(
    count: int, progress: Callable[[list[tuple[int, int]]], Iterable] | None, parts: int = 20
) -> Iterator[int]:
    """range(count), advancing ``progress`` (called once with the chunk list, iterated
    lazily) once per ~1/parts of it: a log line per step, not per epoch."""
    if progress is None:
        yield from range(count)
        return
    bounds = np.linspace(0, count, min(parts, count) + 1).round().astype(int).tolist()
    for start, stop in progress(list(zip(bounds[:-1], bounds[1:], strict=True))):
        yield from range(start, stop)


def train_and_track(
    problem: SpikedProblem,
    *,
    activation: two_layer.Activation,
    gamma: float,
    scale: float,
    lr: float,
    epochs: int,
    options: TrackingOptions,
    generator: torch.Generator,
    w0_top: torch.Tensor | None = None,
    w0_basis: torch.Tensor | None = None,
    progress: Callable[[list[tuple[int, int]]], Iterable] | None = None,
) -> TrackedRun:
    """Full-batch GD for ``epochs`` steps; metrics at every W_t, t = 0..epochs.

    Row t describes the weights after t updates (t = epochs: the final weights), the gradient at
    those weights, and the residue at those weights. Spectral solves run in the training dtype
    (the gradient carries no more precision than that) and are warm-started: the gradient's
    top-k from the previous epoch, ‖W‖₂ from the previous epoch, W's top-r subspace from the
    previous checkpoint (``w0_top`` / ``w0_basis``: precomputed for W_0, shared by the runs).

    Args:
        problem: data and initialization (:func:`spiked_problem`).
        activation: the student's σ.
        gamma: γ of the step W − (lr/γ)∇W.
        scale: the output scale s of f = s·aᵀσ(Wx) (:func:`two_layer.output_scale`).
        lr: learning rate.
        epochs: GD steps.
        options: top-k, angle rank, checkpoint epochs and solver settings.
        generator: source of the solvers' random start vectors.

    Returns:
        A :class:`TrackedRun`: one row per epoch (:func:`epoch_metrics` plus ``epoch``,
        ``w_spectral_norm``), the checkpoint bases and counts of unconverged solves.
    """
    tracked = TrackedRun(rows=[])
    W = problem.W0.clone()
    previous_v: torch.Tensor | None = None
    previous_w = w0_top
    fast = {"oversample": options.oversample, "tol": options.tol, "max_iter": options.max_iter}
    for epoch in epochs_with_progress(epochs + 1, progress):
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


def angles_between_runs(
    first: TrackedRun, second: TrackedRun
) -> list[dict[str, float | int | str]]:
    """Principal angles between the two runs' top-r right singular subspaces (of W_t and of
    W_t − W_0) at every shared checkpoint epoch.

    Returns:
        Rows ``epoch, subspace ∈ {weights, update}, rank, mean/max/min_angle_deg``
        (:func:`spectral.principal_angle_summary_deg`).
    """
    rows: list[dict[str, float | int | str]] = []
    pairs: Sequence[tuple[str, dict[int, torch.Tensor], dict[int, torch.Tensor]]] = (
        ("weights", first.weight_bases, second.weight_bases),
        ("update", first.update_bases, second.update_bases),
    )
    for subspace, bases_a, bases_b in pairs:
        for epoch in sorted(set(bases_a) & set(bases_b)):
            summary = spectral.principal_angle_summary_deg(bases_a[epoch], bases_b[epoch])
            rows.append({"epoch": epoch, "subspace": subspace, **summary})
    return rows
