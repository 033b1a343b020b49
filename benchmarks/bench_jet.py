"""geomlab's Taylor mode against JAX's jit-compiled ``jax.experimental.jet`` on the GELU variant of
the notebook CNN (issue 17, "Measured for the benchmark").

    python benchmarks/bench_jet.py [--batch 128] [--directions 2] [--orders 4] [--repeats 7]
        [--check-batch 16] [--threads N]

Needs JAX (``pip install jax jaxlib``, in its own environment beside torch); without it the
script says so and exits 0. What is compared, float32, batch 128, K = 2 directions, orders 1–4:

* ``public warm``: ``geomlab.directional_derivatives(model, x, y, u, max_order=4)``, the call a
  user makes, with the path already resolved and self-checked (the per-model cache warm);
* ``public cold``: the same call after ``clear_path_cache()``: path resolution and the float64
  self-check included (what the first call on a model pays, once);
* ``taylor core``: ``taylor_directional_derivatives`` (no dispatch at all);
* ``jet``: ``jax.jit(vmap over directions of jet(loss along t))``, compiled before timing;
* ``penalty value+grad``: mean |d_n| and its gradient in the parameters, geomlab (Taylor mode,
  reverse mode through it) vs ``jax.value_and_grad`` of the jitted jet.

Before timing, both are run in float64 on ``--check-batch`` samples and compared order by order
(relative to each order's largest value). Timings are interleaved (one of each variant per
round) and the median is reported with the ratio to jet's median: read the ratios on a shared
machine. Target (issue 17): public warm call ≤ 0.6× jet's time; the cold call's extra cost is
paid once per model.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import numpy as np
import torch

from geomlab.geometry import derivatives as deriv
from geomlab.geometry.penalty import derivative_penalty
from geomlab.models.mnist_cnn import build_mnist_cnn

try:
    import jax
    import jax.numpy as jnp
    from jax import lax
    from jax.experimental.jet import jet
except ImportError:  # pragma: no cover - optional
    jax = None


def jax_params(model: torch.nn.Module, dtype) -> dict:
    return {name: jnp.asarray(value.detach().cpu().numpy(), dtype=dtype)
            for name, value in model.state_dict().items()}  # fmt: skip


def jax_logits(params: dict, x):
    """The GELU CNN's eval-mode forward (dropout is the identity), NCHW / OIHW as torch."""
    dims = ("NCHW", "OIHW", "NCHW")

    def conv(h, name):
        out = lax.conv_general_dilated(h, params[f"{name}.weight"], (1, 1), "VALID",
                                       dimension_numbers=dims)  # fmt: skip
        return out + params[f"{name}.bias"][None, :, None, None]

    def gelu(h):
        return jax.nn.gelu(h, approximate=False)  # torch's default F.gelu (erf form)

    h = gelu(conv(x, "conv1"))
    h = gelu(conv(h, "conv2"))
    b, c, height, width = h.shape
    h = h.reshape(b, c, height // 2, 2, width // 2, 2).max(axis=(3, 5))  # 2×2 max-pool
    h = gelu(h.reshape(b, -1) @ params["fc1.weight"].T + params["fc1.bias"])
    return h @ params["fc2.weight"].T + params["fc2.bias"]


def jax_derivatives(params: dict, x, labels, directions, orders: int):
    """``d_n`` ``[orders, K, B]`` of the per-sample cross-entropy along each direction, by jet
    (its output series are the t-derivatives themselves)."""

    def per_sample_loss(inputs):
        z = jax_logits(params, inputs)
        top = z.max(axis=1, keepdims=True)
        lse = jnp.log(jnp.exp(z - top).sum(axis=1)) + top[:, 0]
        return lse - jnp.take_along_axis(z, labels[:, None], axis=1)[:, 0]

    def along(direction):
        series = (direction,) + tuple(jnp.zeros_like(direction) for _ in range(orders - 1))
        _, terms = jet(per_sample_loss, (x,), (series,))
        return jnp.stack(terms)  # [orders, B]

    return jnp.moveaxis(jax.vmap(along)(directions), 0, 1)


def interleaved(variants: dict, repeats: int) -> dict[str, float]:
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--directions", type=int, default=2)
    parser.add_argument("--orders", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--check-batch", type=int, default=16)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    if jax is None:
        print("JAX is not installed: bench_jet skipped (pip install jax jaxlib to run it)")
        return
    jax.config.update("jax_enable_x64", True)  # float64 for the check; float32 stays float32
    if args.threads:
        torch.set_num_threads(args.threads)
    orders, num_dirs = args.orders, args.directions
    model = build_mnist_cnn(seed=0, activation="gelu").eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 1, 28, 28, generator=generator)
    y = torch.randint(0, 10, (args.batch,), generator=generator)
    u = deriv.sample_unit_directions(num_dirs, x, generator=generator)
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), jax {jax.__version__}"
          f" ({jax.devices()[0].platform}); GELU CNN, batch {args.batch}, K {num_dirs},"
          f" orders 1..{orders}")  # fmt: skip

    # --- equality in float64 ---
    n = args.check_batch
    model64 = build_mnist_cnn(seed=0, activation="gelu").double().eval()
    ours = deriv.directional_derivatives(model64, x[:n].double(), y[:n], u[:, :n].double(),
                                         max_order=orders, method="fast")  # fmt: skip
    assert ours.path == "taylor", ours.path
    theirs = jax_derivatives(jax_params(model64, jnp.float64), jnp.asarray(x[:n].double().numpy()),
                             jnp.asarray(y[:n].numpy()), jnp.asarray(u[:, :n].double().numpy()),
                             orders)  # fmt: skip
    theirs = torch.from_numpy(np.asarray(theirs))
    errors = [float((ours.values[k] - theirs[k]).abs().max() / theirs[k].abs().max())
              for k in range(orders)]  # fmt: skip
    print("float64 geomlab vs jet, relative error by order:",
          ", ".join(f"{e:.1e}" for e in errors))  # fmt: skip
    if max(errors) > 1e-10:
        sys.exit("geomlab and jet disagree: no timing")

    # --- float32 timings ---
    params = jax_params(model, jnp.float32)
    jx, jy, ju = (jnp.asarray(t.numpy()) for t in (x, y, u))
    jet_fn = jax.jit(jax_derivatives, static_argnums=4)
    start = time.perf_counter()
    jet_fn(params, jx, jy, ju, orders).block_until_ready()
    compile_s = time.perf_counter() - start

    def jet_penalty(p, inputs, labels, directions):  # data as arguments, not folded constants
        return jnp.abs(jax_derivatives(p, inputs, labels, directions, orders)).mean()

    jet_grad = jax.jit(jax.value_and_grad(jet_penalty))
    jax.block_until_ready(jet_grad(params, jx, jy, ju))
    trainable = list(model.parameters())

    def public() -> None:
        deriv.directional_derivatives(model, x, y, u, max_order=orders)

    def public_cold() -> None:
        deriv.clear_path_cache(model)
        deriv.directional_derivatives(model, x, y, u, max_order=orders)

    def core() -> None:
        with torch.no_grad():
            deriv.taylor_directional_derivatives(model, x, y, u, max_order=orders)

    def penalty() -> None:
        values, _ = deriv.taylor_directional_derivatives(model, x, y, u, max_order=orders)
        torch.autograd.grad(derivative_penalty(values), trainable)

    variants = {
        "jet": lambda: jet_fn(params, jx, jy, ju, orders).block_until_ready(),
        "public warm": public,
        "taylor core": core,
        "public cold": public_cold,
        "jet penalty value+grad": lambda: jax.block_until_ready(jet_grad(params, jx, jy, ju)),
        "penalty value+grad": penalty,
    }
    for fn in variants.values():  # warm-up
        fn()
    times = interleaved(variants, args.repeats)
    print(f"jet compile (once) {compile_s:.3f} s; medians of {args.repeats} interleaved rounds:")
    print(f"{'variant':<26}{'seconds':>10}{'x jet':>10}")
    for name, seconds in times.items():
        base = times["jet penalty value+grad"] if name.startswith("penalty") else times["jet"]
        print(f"{name:<26}{seconds:>10.4f}{seconds / base:>10.2f}")
    ratio = times["public warm"] / times["jet"]
    print(
        f"public call (cache warm) {ratio:.2f}x jet (target <= 0.6x); first call on a model"
        f" {times['public cold'] / times['jet']:.2f}x (self-check included, once)"
    )
    # check the timed float32 outputs agree too (loosely: float32)
    ours32 = deriv.directional_derivatives(model, x, y, u, max_order=orders).values
    theirs32 = torch.from_numpy(np.asarray(jet_fn(params, jx, jy, ju, orders)))
    worst = max(float((ours32[k] - theirs32[k]).abs().max() / theirs32[k].abs().max())
                for k in range(orders))  # fmt: skip
    print(f"float32 geomlab vs jet, worst relative difference over orders: {worst:.1e}")


if __name__ == "__main__":
    main()
