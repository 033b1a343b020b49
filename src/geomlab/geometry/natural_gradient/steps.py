"""KL-matched steps: each method's direction taken at every target KL, for any model.

For each method a direction ``v`` (``sgd``: ``g``; ``natgrad``: :func:`natural_gradient` with the
:class:`SolveSpec`; ``kfac``/``ekfac``: with their own damping, :meth:`SolveSpec.for_method`),
then for each ``eps``: ``eta = sqrt(2 eps / v^T F v)`` with the exact *undamped* Fisher (so the
second-order KL is ``eps`` whatever the solver), ``theta' = theta - eta v``, the loss at
``theta'`` and the measured KL(p_theta || p_theta').
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.curvature import (
    FisherOperator,
    ProgressCallback,
    check_finite,
    check_kfac_eligible,
)
from geomlab.geometry.natural_gradient.direction import NaturalGradient, natural_gradient
from geomlab.geometry.natural_gradient.kl import fisher_curvature, output_kl, step_size_for_kl
from geomlab.geometry.natural_gradient.solve import KFAC_SOLVERS, SolveSpec, StepMethod
from geomlab.geometry.params import (
    Batch,
    LossKind,
    as_batches,
    flatten,
    loss_and_gradient,
    loss_value,
    model_outputs,
    trainable_parameters,
    unflatten,
)
from geomlab.models.modes import eval_mode

__all__ = ["MatchedSteps", "StepPair", "kl_matched_steps"]


@dataclass(frozen=True)
class MatchedSteps:
    """One direction taken at every target KL: step sizes, losses and measured KLs, ``(E,)``."""

    method: StepMethod
    direction: torch.Tensor
    eta: torch.Tensor
    loss_after: torch.Tensor
    kl_step: torch.Tensor


@dataclass(frozen=True)
class StepPair:
    """Steps of several methods from one model, each at every target KL, and each solved
    method's :class:`NaturalGradient` (``None`` for ``sgd``). ``loss_before`` is a float or a
    0-d tensor (the softmax-regression backend keeps the notebook's tensor arithmetic)."""

    epsilons: torch.Tensor
    loss_before: float | torch.Tensor
    gradient: torch.Tensor
    steps: tuple[MatchedSteps, ...]
    solves: dict[StepMethod, NaturalGradient | None]


def kl_matched_steps(
    model: nn.Module,
    data: Batch | Sequence[Batch],
    epsilons: torch.Tensor,
    *,
    loss: LossKind,
    methods: Sequence[StepMethod] = (StepMethod.SGD, StepMethod.NATGRAD),
    solve: SolveSpec = SolveSpec(),
    fisher: FisherOperator | None = None,
    batch_size: int | None = None,
    self_check: bool = True,
    progress: ProgressCallback | None = None,
) -> StepPair:
    """E1's KL-matched steps for any ``nn.Module`` (classifier or regressor), in eval mode.

    See the module docstring. Outputs go through ``torch.func.functional_call``; the model's own
    parameters are never changed. Every pass runs inside
    :func:`~geomlab.geometry.attention.math_attention`; the model may return a tensor or a
    Hugging Face-style output with ``.logits``.

    Args:
        model: the network; data: ``(inputs, targets)`` or batches; epsilons: ``(E,)`` > 0.
        loss: the likelihood (:class:`~geomlab.geometry.params.LossKind`).
        methods: which directions.
        solve: the natgrad solve and the K-FAC methods' damping (:class:`SolveSpec`).
        fisher: the model's Fisher on ``data`` if already built (else built here).
        batch_size: batches for Fisher products and forward passes (memory).
        self_check: check curvlinops' Fisher products against the torch.func reference once
            for this model (:func:`~geomlab.geometry.curvature.fisher_self_check`).
        progress: see :func:`natural_gradient`.

    Returns:
        :class:`StepPair`.

    Raises:
        UnsupportedShapeError: before any work, when a ``kfac``/``ekfac`` method (or solver) meets
            parameters outside ``nn.Linear``/``nn.Conv2d`` (freeze them to proceed).
        NonFiniteOutputError: the model's outputs, loss or gradient at its weights are NaN/inf.
    """
    loss = LossKind(loss)
    methods = [StepMethod(m) for m in methods]
    kfac_methods = [m.value for m in methods if m in (StepMethod.KFAC, StepMethod.EKFAC)]
    if StepMethod.NATGRAD in methods and solve.solver in KFAC_SOLVERS:
        kfac_methods.append(solve.solver.value)
    for name in kfac_methods[:1]:
        check_kfac_eligible(model, method=name)
    batches = as_batches(data, batch_size=batch_size)
    targets = torch.cat([y for _, y in batches])
    with eval_mode(model), math_attention():
        params = {n: p.detach() for n, p in trainable_parameters(model).items()}
        outputs_before = model_outputs(model, params, batches)
        check_finite(outputs_before, what=f"the outputs of model {type(model).__name__}")
        if fisher is None:
            fisher = FisherOperator(model, batches, loss=loss, self_check=self_check)
        theta = flatten(params.values())
        loss_before, gradient = loss_and_gradient(model, batches, loss=loss)
        check_finite(gradient, what=f"the loss gradient of model {type(model).__name__}")
        steps, solves = [], {}
        for method in methods:
            solved = None
            if method is StepMethod.SGD:
                direction = gradient
            else:
                solved = natural_gradient(fisher, gradient, solve=solve.for_method(method),
                                          progress=progress)  # fmt: skip
                direction = solved.direction
            eta = step_size_for_kl(fisher_curvature(fisher, direction), epsilons.cpu())
            losses, kls = [], []
            for value in eta.tolist():
                after = unflatten(theta - value * direction, params)
                outputs_after = model_outputs(model, after, batches)
                losses.append(float(loss_value(outputs_after, targets, loss=loss)))
                kls.append(float(output_kl(outputs_before, outputs_after, loss=loss)))
            losses_t = torch.tensor(losses, dtype=torch.float64)
            kls_t = torch.tensor(kls, dtype=torch.float64)
            steps.append(MatchedSteps(method, direction, eta, losses_t, kls_t))
            solves[method] = solved
    return StepPair(epsilons.cpu(), float(loss_before), gradient, tuple(steps), solves)
