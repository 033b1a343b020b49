"""Differential fuzzing of geometry's fast paths against their float64 references.

Random networks from :mod:`geomlab.testing.netgen` (one per seed; a failure prints the network):

* Taylor mode (orders 1..4) against nested autograd (LayerNorm/BatchNorm from primitives, as the
  reference does), in eval mode and, for every fourth seed, train mode (batch statistics held
  constant, dropout masks replayed from the same seed with one direction);
* the same networks as regressors (MSE series, every fifth seed) and the penalty's parameter
  gradient through the Taylor pass (every sixth seed) against nested autograd;
* ``method="fast"``: the same numbers, or a ``ValueError`` refusal naming why — never a wrong
  number;
* the cumulant path on piecewise-linear networks;
* Fisher products (``FisherOperator @ v``) against the dense ``torch.func`` Fisher;
* every registered Taylor rule is reached by the CI seeds (a new rule without fuzz coverage
  fails :func:`test_every_taylor_rule_is_reached`).

CI runs a fixed seed set (about 15 s on one core); ``GEOMLAB_FUZZ_SEEDS=2000 make fuzz`` runs
more.
"""

from __future__ import annotations

import contextlib
import os

import pytest
import torch

from geomlab.geometry import derivatives as deriv
from geomlab.geometry.attention import math_attention
from geomlab.geometry.curvature import FisherOperator, dense_fisher_reference
from geomlab.geometry.derivatives import taylor
from geomlab.geometry.derivatives.batch_statistics import (
    PrimitiveLayerNorm,
    has_training_modules,
)
from geomlab.geometry.derivatives.eligibility import check_piecewise_linear
from geomlab.geometry.derivatives.nested import substituted
from geomlab.geometry.derivatives.ops import PIECEWISE_CONSTANT_OPS
from geomlab.models.modes import isolated_buffers
from geomlab.testing.compare import relative_error, relative_errors
from geomlab.testing.netgen import CLASSES, VOCABULARY, random_case

MAX_ORDER = 4
REL_TOL = 1e-8  # per order, relative to the largest |reference| (float64; bugs are O(1))
SCALE_FLOOR = 1e-6  # an order whose derivatives all vanish (saturated softmax) is compared
# absolutely, to 1e-14: nested autograd's own rounding there is far above REL_TOL relative
SEEDS = int(os.environ.get("GEOMLAB_FUZZ_SEEDS", 3 * len(VOCABULARY)))
PIECEWISE_LINEAR_SEEDS = max(SEEDS // 3, 40)
FISHER_SEEDS = max(SEEDS // 8, 16)

# Registered rules no generated network can reach on CPU, and why (anything else must be hit).
UNREACHABLE = {
    # piecewise constant: the recorder treats their outputs as constants before any rule
    **dict.fromkeys(PIECEWISE_CONSTANT_OPS, "piecewise constant, short-circuited"),
    "cudnn_batch_norm": "CUDA only",
    "miopen_batch_norm": "ROCm only",
    # CompositeImplicitAutograd: decomposed (into view/permute/slice/mm/...) above the recorder
    **dict.fromkeys(
        [
            "matmul",
            "reshape",
            "flatten",
            "contiguous",
            "narrow",
            "movedim",
            "unflatten",
            "adaptive_avg_pool1d",
            "adaptive_avg_pool2d",
            "avg_pool1d",
            "_convolution",
            "max_pool1d_with_indices",
        ],
        "decomposed before dispatch",
    ),  # fmt: skip
    "lift_fresh": "only ever applied to constants (torch.tensor literals)",
}


def check_close(model, seed: int, what: str, fast: torch.Tensor, reference: torch.Tensor):
    errors = relative_errors(fast, reference, norm="max", floor=SCALE_FLOOR)
    if not max(errors) <= REL_TOL:  # (NaN or a wrong shape: inf)
        pytest.fail(
            f"{what} differs from the reference for seed {seed} (errors per order {errors}):\n"
            f"{model.describe()}",
            pytrace=False,
        )


def is_refusal(error: ValueError) -> bool:
    """A fast path declining a model, naming why (not some other ValueError from inside)."""
    message = str(error)
    return isinstance(error, taylor.UnsupportedOperation) or any(
        phrase in message for phrase in ("not exact", "Taylor-mode rule", "self-check")
    )


def train_mode(seed: int) -> bool:
    return seed % 4 == 3


@contextlib.contextmanager
def reseeded(seed: int):
    """The same dropout masks for every pass of a train-mode case."""
    torch.manual_seed(20_000 + seed)
    yield


def taylor_case(seed: int):
    train = train_mode(seed)
    # train mode: dropout by fixed mask buffers only. A random mask is drawn in the memory order
    # of its input, and the reference's primitive BatchNorm lays its output out differently from
    # torch's, so reseeding does not replay the same logical mask there (seed 723 of the first
    # 1,500). (torch.native_dropout in train mode is checked in test_taylor.py, same layout.)
    exclude = ("dropout:module", "dropout:native") if train else ()
    model, inputs, labels, u = random_case(seed, directions=1 if train else 2, exclude=exclude)
    model.train(train)
    return model, inputs, labels, u


def reference(model, inputs, labels, u, seed):
    with reseeded(seed):
        return deriv.nested_directional_derivatives(model, inputs, labels, u, max_order=MAX_ORDER)


@pytest.mark.parametrize("seed", range(SEEDS))
def test_taylor_mode_and_fast_match_nested(seed):
    model, inputs, labels, u = taylor_case(seed)
    expected = reference(model, inputs, labels, u, seed)
    try:
        with reseeded(seed):
            values, _ = deriv.taylor_directional_derivatives(
                model, inputs, labels, u, max_order=MAX_ORDER
            )
    except taylor.UnsupportedOperation as error:
        pytest.fail(f"seed {seed}: Taylor mode refused ({error}):\n{model.describe()}")
    check_close(model, seed, "Taylor mode", values, expected)
    try:
        with reseeded(seed):
            fast = deriv.directional_derivatives(
                model, inputs, labels, u, max_order=MAX_ORDER, method="fast"
            )
    except ValueError as error:  # a refusal is allowed; a crash is not
        if not is_refusal(error):
            raise
        return
    check_close(model, seed, f"method='fast' ({fast.path})", fast.values, expected)


def nested_mse_reference(model, inputs, targets, u) -> torch.Tensor:
    """``deriv.nested_directional_derivatives(..., loss="mse")`` with zeros where the loss's
    degree in t is below MAX_ORDER (a piecewise-linear network's MSE is quadratic, so d_3 has no
    graph): the library reference of this branch's base raised there (seeds 86, 91); the twin
    keeps the check independent of that fix."""
    statistics = None
    if has_training_modules(model):
        statistics = deriv.capture_batch_statistics(model, inputs, differentiable=False)
    per_direction = []
    for direction in u:
        x = inputs.detach().clone().requires_grad_(True)
        with (
            torch.enable_grad(),
            isolated_buffers(model),
            substituted(statistics),
            PrimitiveLayerNorm(),
        ):
            error = model(x) - targets
            scalar = (error * error).flatten(1).mean(dim=1).sum()
            orders = []
            for _ in range(MAX_ORDER):
                if scalar.requires_grad:
                    (grad,) = torch.autograd.grad(
                        scalar, x, create_graph=True, allow_unused=True, materialize_grads=True
                    )
                else:
                    grad = torch.zeros_like(x)
                d_n = (grad * direction).flatten(1).sum(dim=1)
                orders.append(d_n.detach())
                scalar = d_n.sum()
        per_direction.append(torch.stack(orders))
    return torch.stack(per_direction, dim=1)


def mse_seed(seed: int) -> bool:
    return seed % 5 == 1


@pytest.mark.parametrize("seed", [s for s in range(SEEDS) if mse_seed(s)])
def test_taylor_mode_mse_series_matches_nested(seed):
    """The same networks as regressors: the per-sample mean squared error's series."""
    model, inputs, _, u = taylor_case(seed)
    targets = torch.randn(inputs.shape[0], CLASSES, dtype=torch.float64)
    with reseeded(seed), math_attention():
        expected = nested_mse_reference(model, inputs, targets, u)
    with reseeded(seed):
        values, _ = deriv.taylor_directional_derivatives(
            model, inputs, targets, u, max_order=MAX_ORDER, loss="mse"
        )
    check_close(model, seed, "Taylor mode (MSE)", values, expected)


@pytest.mark.parametrize("seed", range(0, SEEDS, 6))
def test_penalty_parameter_gradients_match_nested(seed):
    """Reverse mode through the Taylor pass (what the penalty's gradient, which lambda-control
    trains with, runs through) against nested autograd with ``create_graph``, orders 1..3.

    The penalty here is ``Σ d²``, not the library's ``mean |d|``: where a network's derivatives
    vanish identically (seed 1362 of 2,000: LayerNorm, then an input-independent mix), ``|d|``
    sits on its kink and either path's gradient is a subgradient with rounding-noise signs."""
    model, inputs, labels, u = taylor_case(seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    with reseeded(seed), math_attention():
        nested = deriv.nested_directional_derivatives(
            model, inputs, labels, u, max_order=3, create_graph=True
        )
    expected = torch.autograd.grad(nested.square().sum(), parameters, allow_unused=True)
    with reseeded(seed):
        values, _ = deriv.taylor_directional_derivatives(model, inputs, labels, u, max_order=3)
    grads = torch.autograd.grad(values.square().sum(), parameters, allow_unused=True)

    def flat(tensors):
        return torch.cat(
            [(g if g is not None else torch.zeros_like(p)).reshape(-1)
             for g, p in zip(tensors, parameters, strict=True)]
        ).unsqueeze(0)  # fmt: skip

    check_close(model, seed, "the penalty's parameter gradient", flat(grads), flat(expected))


@pytest.mark.parametrize("seed", range(PIECEWISE_LINEAR_SEEDS))
def test_cumulant_path_matches_nested_on_piecewise_linear_networks(seed):
    model, inputs, labels, u = random_case(seed, piecewise_linear=True, attention=False)
    model.eval()
    verdict = check_piecewise_linear(model, inputs)
    assert verdict.eligible, f"seed {seed}: {verdict.reason}\n{model.describe()}"
    values, _ = deriv.fast_directional_derivatives(
        model, inputs, labels, u, max_order=MAX_ORDER, path="linear"
    )
    check_close(model, seed, "the cumulant path", values, reference(model, inputs, labels, u, 0))


@pytest.mark.parametrize("seed", range(FISHER_SEEDS))
def test_fisher_products_match_the_dense_reference(seed):
    # as_strided: curvlinops' vmapped products raise on it (a refusal, not a wrong number)
    model, inputs, labels, _ = random_case(seed, batch=4, exclude=("structural:as_strided",))
    model.eval()
    data = (inputs, labels)
    dense = dense_fisher_reference(model, data, loss="cross_entropy")
    operator = FisherOperator(model, data, loss="cross_entropy")
    v = torch.randn(
        operator.dim, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    product, expected = operator @ v, dense @ v
    error = relative_error(product, expected, norm="max")
    if not error <= 1e-10:
        pytest.fail(f"Fisher product error {error} for seed {seed}:\n{model.describe()}")


def test_every_taylor_rule_is_reached():
    """Each registered rule is applied by some CI seed's network, or listed in UNREACHABLE with
    its reason; a new rule needs a vocabulary item (geomlab/testing/netgen.py)."""
    reached: set[str] = set()
    original = dict(taylor.RULES)

    def counting(name, fn):
        def apply(ctx):
            reached.add(name)
            return fn(ctx)

        return apply

    try:
        taylor.RULES.update({name: counting(name, fn) for name, fn in original.items()})
        for seed in range(2 * len(VOCABULARY)):
            model, inputs, _, u = taylor_case(seed)
            with reseeded(seed), torch.no_grad():
                taylor.taylor_forward(model, inputs, u, max_order=2)
    finally:
        taylor.RULES.update(original)
    stale = sorted(name for name in UNREACHABLE if name not in original)
    assert not stale, f"UNREACHABLE lists ops without a rule: {stale}"
    missed = sorted(set(original) - reached - set(UNREACHABLE))
    assert not missed, f"Taylor rules no fuzz network reaches: {missed}"
    wrongly_exempt = sorted(set(UNREACHABLE) & reached)
    assert not wrongly_exempt, f"listed as unreachable but reached: {wrongly_exempt}"
