"""The notebook-exact backend of KL-matched steps for bias-free softmax regression: the
analytic Fisher (:func:`~geomlab.geometry.curvature.softmax_regression_fisher`), one
eigendecomposition, SGD and NG steps at every target KL, returned as the same
:class:`~geomlab.geometry.natural_gradient.steps.StepPair` as the any-model path."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from geomlab.geometry.curvature import softmax_regression_fisher
from geomlab.geometry.natural_gradient.direction import NaturalGradient
from geomlab.geometry.natural_gradient.inverses import pseudo_inverse
from geomlab.geometry.natural_gradient.kl import (
    KLMeasurement,
    categorical_kl,
    fisher_curvature,
    notebook_self_kl,
    step_size_for_kl,
)
from geomlab.geometry.natural_gradient.solve import Solver, SolveSpec, StepMethod
from geomlab.geometry.natural_gradient.steps import MatchedSteps, StepPair
from geomlab.models import softmax_regression as sr

__all__ = ["softmax_regression_kl_matched_steps"]


def softmax_regression_kl_matched_steps(
    weight: torch.Tensor,
    inputs: torch.Tensor,
    labels: torch.Tensor,
    epsilons: torch.Tensor,
    *,
    solve: SolveSpec = SolveSpec(),
    kl_measurement: KLMeasurement = KLMeasurement.EXACT,
) -> StepPair:
    """SGD and NG steps of bias-free softmax regression at every target KL (E1's notebook path).

    From ``W``: ``g = grad L(W)``, ``F`` = the exact softmax-regression Fisher, ``v = F^+ g``
    (one eigendecomposition with cutoff ``solve.rcond``, shared by all targets). For ``d`` in
    ``(g, v)`` and each ``eps``: ``eta = sqrt(2 eps / d^T F d)``, ``W' = W - eta d``, the loss at
    ``W'`` and the measured KL(p(W) || p(W')) (or the notebook's self-KL, see
    :class:`KLMeasurement`).

    Args:
        weight: ``(C, D)`` weights.
        inputs: ``(N, D)``; labels: ``(N,)`` class indices.
        epsilons: ``(E,)`` target KLs > 0.
        solve: a ``dense`` solve without damping (the notebook's); its ``rcond`` is the cutoff.
        kl_measurement: which KL to record.

    Returns:
        :class:`StepPair`; ``solves["natgrad"].inverse`` is the Fisher's pseudo-inverse (its
        ``eigenvalues`` for Gate A).
    """
    if solve.solver is not Solver.DENSE or solve.damping != 0:
        raise ValueError(
            "the softmax-regression backend solves densely without damping (the notebook's "
            f"computation), got solver {solve.solver.value} with damping {solve.damping:g}; "
            "use kl_matched_steps on an nn.Module for other solves"
        )
    kl_measurement = KLMeasurement(kl_measurement)
    n_classes, n_features = weight.shape
    start = time.perf_counter()
    loss_before, gradient, probs = sr.loss_and_gradient(weight, inputs, labels)
    fisher = softmax_regression_fisher(probs, inputs)
    pinv = pseudo_inverse(fisher, rcond=solve.rcond)
    natural = pinv @ gradient
    seconds = time.perf_counter() - start
    g_norm = gradient.norm()
    solved = NaturalGradient(
        direction=natural, solver=Solver.DENSE, damping=0.0, cg_iterations=0,
        relative_residual=float((fisher @ natural - gradient).norm() / g_norm),
        null_space_share=float("nan"),
        cos_g_v=float(gradient @ natural / (g_norm * natural.norm())),
        rank=pinv.rank, seconds=seconds, min_eigenvalue=float(pinv.eigenvalues.min()),
        max_eigenvalue=float(pinv.eigenvalues.max()),
        dropped_above_floor=pinv.dropped_above_floor, inverse=pinv,
    )  # fmt: skip
    logits_before = sr.logits(weight, inputs)

    steps = []
    for method, direction in ((StepMethod.SGD, gradient), (StepMethod.NATGRAD, natural)):
        eta = step_size_for_kl(fisher_curvature(fisher, direction), epsilons)  # (E,)
        weights_after = weight - eta[:, None, None] * direction.reshape(n_classes, n_features)
        logits_after = sr.logits(weights_after, inputs)  # (E, N, C)
        losses_after = torch.stack([F.cross_entropy(z, labels) for z in logits_after])
        if kl_measurement is KLMeasurement.EXACT:
            kl_step = categorical_kl(logits_before, logits_after)
        else:
            kl_step = notebook_self_kl(logits_after)
        steps.append(MatchedSteps(method, direction, eta, losses_after, kl_step))
    solves = {StepMethod.SGD: None, StepMethod.NATGRAD: solved}
    return StepPair(epsilons, loss_before, gradient, tuple(steps), solves)
