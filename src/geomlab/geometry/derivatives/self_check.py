"""Self-check before use: a fast path against the nested reference in float64, once per model.

The resolution and outcome are cached per model and structure (:data:`_PATH_CACHE`, the
package's only global mutable state; :func:`clear_path_cache`). docs/derivatives.md.
"""

from __future__ import annotations

import copy
import weakref
from dataclasses import dataclass, field

import torch
from torch import nn

from geomlab.geometry.attention import math_attention
from geomlab.geometry.derivatives.directions import sample_unit_directions
from geomlab.geometry.derivatives.eligibility import Eligibility, probe_batch, rng_devices
from geomlab.geometry.derivatives.fast import fast_directional_derivatives
from geomlab.geometry.derivatives.nested import nested_directional_derivatives
from geomlab.geometry.derivatives.options import Path
from geomlab.geometry.outputs import as_logits
from geomlab.geometry.params import LossKind
from geomlab.geometry.refusal import Refused
from geomlab.models.modes import isolated_buffers

__all__ = [
    "SELF_CHECK_FLOOR", "SELF_CHECK_RTOL", "SELF_CHECK_SAMPLES", "SELF_CHECK_SEED",
    "SelfCheckError", "SelfCheckUnavailable", "clear_path_cache", "model_entry",
    "run_check", "self_check_errors",
]  # fmt: skip


SELF_CHECK_SAMPLES = 2
SELF_CHECK_SEED = 20_240_517
SELF_CHECK_RTOL = 1e-6
"""Largest accepted relative error of a fast path against the nested reference (float64)."""
SELF_CHECK_FLOOR = 1e-8
"""An order's error is relative to max(its own largest |d_n|, this × the largest |d| of any
order), so an order whose true value is zero (MSE of a linear output, n ≥ 3) is judged against
rounding, not against itself."""


class SelfCheckError(Refused, ValueError):
    """A fast path disagreed with the nested reference on the model (float64, a few samples)."""

    def __init__(self, model_class: str, path: str, order: int, error: float, loss: str) -> None:
        self.model_class, self.path, self.order, self.relative_error = (
            model_class, path, order, error,
        )  # fmt: skip
        super().__init__(
            f"self-check failed: the {path} derivative path disagrees with the nested reference"
            f" on {model_class} at order {order} (relative error {error:.3g} > "
            f"{SELF_CHECK_RTOL:g}, float64, {loss}). Its numbers would be wrong: use"
            " method='nested' (or 'auto', which falls back to it), and please report the model."
        )


class SelfCheckUnavailable(Refused, ValueError):
    """The self-check could not run: the model cannot be deep-copied to float64."""


@dataclass
class _Check:
    """What the self-check established for one (path, loss): orders 1..``passed`` agree;
    ``failure`` (if any) is the first order that does not, and every request reaching it fails."""

    passed: int = 0
    failure: SelfCheckError | None = None


@dataclass
class _ModelEntry:
    """Per model structure: the fast path's resolution and the self-checks run on it."""

    choice: Path | Eligibility | None = None
    checks: dict[tuple[str, str], _Check] = field(default_factory=dict)
    warned: bool = False


_PATH_CACHE: weakref.WeakKeyDictionary[nn.Module, dict[tuple, _ModelEntry]] = (
    weakref.WeakKeyDictionary()
)
"""The only process-global mutable state of this module: per model (weakly referenced, so it
goes with the model), per structure signature (:func:`_structure_key`), the resolved fast path
and the self-check outcomes. :func:`clear_path_cache` empties it."""


def clear_path_cache(model: nn.Module | None = None) -> None:
    """Forget resolved paths and self-check outcomes: of ``model``, or of every model (None).
    Needed only after changing a model in a way its signature does not see (a module's
    ``forward`` replaced in place, a flag read by ``forward``)."""
    if model is None:
        _PATH_CACHE.clear()
    else:
        _PATH_CACHE.pop(model, None)


def _structure_key(model: nn.Module, inputs: torch.Tensor) -> tuple:
    """What the resolution and the check depend on: module types and train/eval flags, the
    parameters' identity, shape, dtype and device, and the inputs' per-sample shape, dtype and
    device. Parameter values are not in it (training changes them; the paths' exactness does
    not depend on them)."""
    return (
        tuple((type(m), m.training) for m in model.modules()),
        tuple((id(p), p.shape, p.dtype, p.device) for p in model.parameters()),
        inputs.shape[1:],
        inputs.dtype,
        inputs.device,
    )


def model_entry(model: nn.Module, inputs: torch.Tensor) -> _ModelEntry:
    per_model = _PATH_CACHE.get(model)
    if per_model is None:
        per_model = _PATH_CACHE[model] = {}
    key = _structure_key(model, inputs)
    entry = per_model.get(key)
    if entry is None:
        entry = per_model[key] = _ModelEntry()
    return entry


def self_check_errors(
    model: nn.Module,
    inputs: torch.Tensor,
    labels: torch.Tensor | None,
    path: Path,
    *,
    max_order: int,
    loss: LossKind | None = None,
    num_samples: int = SELF_CHECK_SAMPLES,
) -> torch.Tensor:
    """Relative error per order (``[max_order]``, float64) of ``path`` against the nested
    reference on a float64 deep copy of ``model`` (same train/eval modes), on the first
    ``num_samples`` inputs and one seeded direction. Both passes draw the same dropout masks;
    the caller's random stream, the model's modes and buffers are untouched. ``labels`` None:
    the class after the model's argmax (cross-entropy) or zeros (MSE).

    Each order's error is ``max |fast − nested|`` over ``max(max |nested_n|, SELF_CHECK_FLOOR ×
    max |nested|)``."""
    probe = probe_batch(inputs, num_samples)
    if not probe.dtype.is_floating_point:
        raise ValueError(f"input derivatives need float inputs, got dtype {probe.dtype}")
    try:
        reference = copy.deepcopy(model).to(torch.float64)
    except Exception as error:  # noqa: BLE001 - reported as what it means for the caller
        raise SelfCheckUnavailable(
            f"the self-check needs a float64 deep copy of {type(model).__name__}, which failed"
            f" ({type(error).__name__}: {error}); pass self_check=False to skip the check, or"
            " use method='nested'"
        ) from error
    x = probe.to(torch.float64)
    generator = torch.Generator(device=x.device).manual_seed(SELF_CHECK_SEED)
    direction = sample_unit_directions(1, x, generator=generator)
    with torch.random.fork_rng(devices=rng_devices(x)):
        torch.manual_seed(SELF_CHECK_SEED)
        if labels is None:
            with torch.no_grad(), math_attention(), isolated_buffers(reference):
                outputs = as_logits(reference(x))
            torch.manual_seed(SELF_CHECK_SEED)
            loss = LossKind(loss or LossKind.CROSS_ENTROPY)
            y = (
                (outputs.argmax(dim=1) + 1) % outputs.shape[1]
                if loss is LossKind.CROSS_ENTROPY
                else torch.zeros_like(outputs)
            )
        else:
            y = probe_batch(labels, num_samples)
            y = y.to(torch.float64) if y.dtype.is_floating_point else y
        with torch.no_grad():
            fast, _ = fast_directional_derivatives(
                reference, x, y, direction, max_order=max_order, path=path, loss=loss
            )
        torch.manual_seed(SELF_CHECK_SEED)
        nested = nested_directional_derivatives(
            reference, x, y, direction, max_order=max_order, loss=loss
        )
    largest = nested.abs().flatten(1).amax(dim=1)
    scale = largest.clamp_min(SELF_CHECK_FLOOR * float(largest.max())).clamp_min(1e-300)
    return (fast - nested).abs().flatten(1).amax(dim=1) / scale


def run_check(
    entry: _ModelEntry, model, inputs, labels, path: Path, max_order: int, loss: LossKind
) -> SelfCheckError | None:
    check = entry.checks.setdefault((path, loss), _Check())
    if check.failure is not None and max_order >= check.failure.order:
        return check.failure
    if max_order <= check.passed:
        return None
    errors = self_check_errors(model, inputs, labels, path, max_order=max_order, loss=loss)
    bad = [n for n in range(max_order) if not float(errors[n]) <= SELF_CHECK_RTOL]  # NaN is bad
    if not bad:
        check.passed = max_order
        return None
    order = bad[0] + 1
    check.passed = order - 1
    check.failure = SelfCheckError(type(model).__name__, path, order, float(errors[bad[0]]),
                                   loss)  # fmt: skip
    return check.failure
