"""The cumulant path: exact for networks piecewise linear in their input.

Near x the logits move on a line, ``z(x + t u) = z + t v`` with ``v = J u``, so the derivatives
are those of ``t ↦ CE(z + t v, y)``: ``E_p[v] − v_y`` for n = 1 and the n-th cumulant of ``v_C``
with ``C ~ softmax(z)`` for n ≥ 2. One forward-mode pass (all directions batched, the primal
computed once) gives every order, and reverse mode through it gives parameter gradients.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from geomlab.geometry.outputs import TensorOutput

__all__ = [
    "jvp_logits_and_tangents", "logits_and_tangents", "loss_derivatives_along_tangents",
    "provided_linearization",
]  # fmt: skip


def logits_and_tangents(
    model: nn.Module, inputs: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits ``z`` ``[B, C]`` and their directional derivatives ``v = J u`` ``[K, B, C]``.

    Uses the model's own linearization when it provides one (see :func:`provided_linearization`),
    else :func:`jvp_logits_and_tangents`. Differentiable in the model's parameters.
    """
    provided = provided_linearization(model)
    if provided is not None:
        return provided(inputs, directions)
    return jvp_logits_and_tangents(model, inputs, directions)


def jvp_logits_and_tangents(
    model: nn.Module, inputs: torch.Tensor, directions: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generic path: one forward-mode pass with the K tangents batched by ``vmap``; the primal
    (and any dropout mask, drawn once with ``randomness="same"``) is shared by all directions."""

    tensor_model = TensorOutput(model)

    def push_forward(direction: torch.Tensor):
        return torch.func.jvp(tensor_model, (inputs,), (direction,))

    logits, tangents = torch.func.vmap(push_forward, randomness="same", out_dims=(None, 0))(
        directions
    )
    return logits, tangents


def provided_linearization(model: nn.Module):
    """The model's ``logits_and_tangents(inputs, directions)`` method, trusted only when the class
    that defines ``forward`` also defines it (a subclass that changes ``forward`` falls back to
    the generic JVP rather than using a stale linearization)."""
    method = getattr(model, "logits_and_tangents", None)
    if not callable(method):
        return None
    owner = next(cls for cls in type(model).__mro__ if "forward" in vars(cls))
    return method if "logits_and_tangents" in vars(owner) else None


def loss_derivatives_along_tangents(
    logits: torch.Tensor, tangents: torch.Tensor, labels: torch.Tensor, *, max_order: int
) -> torch.Tensor:
    """t-derivatives at 0 of ``CE(z + t v, y)``, orders 1..max_order: ``[max_order, K, B]``.

    Order 1 is ``E_p[v] − v_y``; order n ≥ 2 is the n-th cumulant of ``v_C``, ``C ~ softmax(z)``
    (the derivatives of the log-partition function), computed from central moments.
    """
    probs = torch.softmax(logits, dim=-1)  # [B, C], broadcast over K
    mean = (probs * tangents).sum(dim=-1)  # [K, B]
    label_tangent = tangents.gather(-1, labels.expand(tangents.shape[0], -1).unsqueeze(-1))
    orders = [mean - label_tangent.squeeze(-1)]
    if max_order >= 2:
        centered = tangents - mean.unsqueeze(-1)
        # central moments mu[j] = E_p[(v - E v)^j]; mu[0] = 1, mu[1] = 0
        moments = [torch.ones_like(mean), torch.zeros_like(mean)]
        power = centered
        for _ in range(2, max_order + 1):
            power = power * centered
            moments.append((probs * power).sum(dim=-1))
        # moment-cumulant recursion for a centered variable (kappa_1 = 0)
        cumulants = [None, torch.zeros_like(mean)]
        for n in range(2, max_order + 1):
            kappa = moments[n]
            for m in range(2, n - 1):
                kappa = kappa - math.comb(n - 1, m - 1) * cumulants[m] * moments[n - m]
            cumulants.append(kappa)
            orders.append(kappa)
    return torch.stack(orders)
