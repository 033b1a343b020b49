"""Derivative engine speed: plain vs regularized training steps and λ measurement, fast path
vs nested-autograd reference, on the notebook CNN (1,199,882 parameters; cumulant path) and on
its GELU variant (Taylor mode).

    python benchmarks/bench_derivatives.py [--batch 128] [--directions 2] [--orders 3]
        [--repeats 5] [--lambda-points 200] [--device cpu|cuda] [--threads N] [--skip-relu]

Timings are interleaved (plain, fast, nested, plain, ...) and the median is reported, so a
machine-wide slowdown hits every variant alike. Prints ratios to the plain step. Targets
(issue 12): GELU penalized step ≤ 7× a plain step; GELU λ measurement ≥ 15× faster than nested;
the notebook CNN's ratio no worse than 2.0×. Issue 17: the public ``directional_derivatives``
with the per-model path cache warm vs cold (the first call on a model resolves the path and
runs the float64 self-check; later calls only look it up). JAX's jet: ``bench_jet.py``.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from geomlab.geometry import derivatives as deriv
from geomlab.geometry.lambda_fit import measure_lambda
from geomlab.geometry.penalty import class_selective_loss
from geomlab.models.mnist_cnn import MNISTConvNet, build_mnist_cnn


class GenericJVPCNN(MNISTConvNet):
    """The same network seen as a black box: redefining ``forward`` makes the engine skip the
    hand-written linearization and use the generic ``torch.func.jvp`` path."""

    def forward(self, x):
        return super().forward(x)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def make_step(model, optimizer, inputs, labels, *, method, targets, orders, directions, gen):
    def step() -> None:
        parts = class_selective_loss(
            model, inputs, labels, target_classes=targets, scale=200.0, max_order=orders,
            num_directions=directions, method=method, generator=gen,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        parts.total.backward()
        optimizer.step()

    return step


def time_interleaved(variants: dict, repeats: int, device) -> dict[str, float]:
    for fn in variants.values():  # warm-up (allocator, kernels)
        fn()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(repeats):
        for name, fn in variants.items():
            synchronize(device)
            start = time.perf_counter()
            fn()
            synchronize(device)
            samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in samples.items()}


def step_table(variants: dict, repeats: int, device) -> dict[str, float]:
    step_times = time_interleaved(variants, repeats, device)
    plain = step_times["plain"]
    print(f"{'training step':<28}{'seconds':>10}{'x plain':>10}")
    for name, seconds in step_times.items():
        print(f"{name:<28}{seconds:>10.4f}{seconds / plain:>10.2f}")
    return step_times


def lambda_timing(model, args, generator, device, repeats) -> dict[str, float]:
    model.eval()
    points = torch.randn(args.lambda_points, 1, 28, 28, generator=generator).to(device)
    point_labels = torch.tensor([4, 9], device=device).repeat((args.lambda_points + 1) // 2)[
        : args.lambda_points
    ]

    def measure(method):
        def run() -> None:
            measure_lambda(
                model, points, point_labels, (4, 9), max_order=4, num_directions=4,
                prob_range=(0.0, 1.0), max_points=args.lambda_points, method=method,
                generator=torch.Generator(device=device).manual_seed(0),
                probs=torch.full((args.lambda_points, 10), 0.5, device=device),
            )  # fmt: skip

        return run

    return time_interleaved({"fast": measure("fast"), "nested": measure("nested")}, repeats, device)


def public_call_timing(model, inputs, labels, args, device, repeats) -> dict[str, float]:
    """The public ``directional_derivatives`` (eval mode, orders 1–4, ``--directions``) with the
    per-model path cache warm (resolved and self-checked already) and cold (``clear_path_cache``
    first: eligibility traces and the float64 self-check included), against the Taylor core it
    dispatches to and a plain forward+backward of the loss."""
    model.eval()
    generator = torch.Generator(device=device).manual_seed(2)
    directions = deriv.sample_unit_directions(args.directions, inputs, generator=generator)
    trainable = list(model.parameters())

    def plain() -> None:
        loss = torch.nn.functional.cross_entropy(model(inputs), labels)
        torch.autograd.grad(loss, trainable)

    def core() -> None:
        with torch.no_grad():
            deriv.fast_directional_derivatives(model, inputs, labels, directions, max_order=4,
                                               path="taylor")  # fmt: skip

    def public() -> None:
        deriv.directional_derivatives(model, inputs, labels, directions, max_order=4)

    def cold() -> None:
        deriv.clear_path_cache(model)
        deriv.directional_derivatives(model, inputs, labels, directions, max_order=4)

    return time_interleaved(
        {"plain fwd+bwd": plain, "taylor core": core, "public, cache warm": public,
         "public, cache cold": cold},
        repeats, device,
    )  # fmt: skip


def public_table(gelu, inputs, labels, args, device) -> None:
    calls = public_call_timing(gelu, inputs, labels, args, device, args.repeats)
    print(f"\npublic directional_derivatives, GELU variant (eval, orders 1-4, K {args.directions})")
    print(f"{'call':<28}{'seconds':>10}{'x core':>10}")
    for name, seconds in calls.items():
        print(f"{name:<28}{seconds:>10.4f}{seconds / calls['taylor core']:>10.2f}")
    print(
        f"the cache saves {calls['public, cache cold'] - calls['public, cache warm']:.3f} s per"
        " call after the first (eligibility traces and the self-check run once per model)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--directions", type=int, default=2)
    parser.add_argument("--orders", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--lambda-points", type=int, default=200)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--skip-relu", action="store_true", help="only the GELU variant")
    parser.add_argument("--only-public", action="store_true",
                        help="only the public call, cache warm vs cold (GELU variant)")  # fmt: skip
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    generator = torch.Generator().manual_seed(0)
    inputs = torch.randn(args.batch, 1, 28, 28, generator=generator).to(device)
    labels = torch.randint(0, 10, (args.batch,), generator=generator).to(device)
    dir_gen = torch.Generator(device=device).manual_seed(1)
    common = dict(orders=args.orders, directions=args.directions, gen=dir_gen)
    selective = (4, 9)
    print(
        f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; batch"
        f" {args.batch}, K_dirs {args.directions}, orders 1..{args.orders}; median of"
        f" {args.repeats} interleaved repeats"
    )

    # --- GELU variant: Taylor mode ---
    gelu = build_mnist_cnn(seed=0, activation="gelu", device=device).train()
    gelu_optimizer = torch.optim.Adam(gelu.parameters(), lr=1e-4)
    assert deriv.resolve_path(gelu, inputs, "auto").method == "fast"
    assert deriv.choose_fast_path(gelu, inputs) == "taylor"
    if args.only_public:
        return public_table(gelu, inputs, labels, args, device)
    print("\nGELU variant of the notebook CNN (Taylor mode)")
    g = step_table(
        {
            "plain": make_step(gelu, gelu_optimizer, inputs, labels, method="fast", targets=(),
                               **common),
            "global taylor": make_step(gelu, gelu_optimizer, inputs, labels, method="fast",
                                       targets=None, **common),
            "global nested": make_step(gelu, gelu_optimizer, inputs, labels, method="nested",
                                       targets=None, **common),
            "selective 4,9 taylor": make_step(gelu, gelu_optimizer, inputs, labels,
                                              method="fast", targets=selective, **common),
        },
        args.repeats,
        device,
    )  # fmt: skip
    print(
        f"GELU: penalized step {g['global taylor'] / g['plain']:.2f}x a plain step (target"
        f" <= 7x); nested {g['global nested'] / g['plain']:.1f}x;"
        f" taylor {g['global nested'] / g['global taylor']:.1f}x faster than nested"
    )
    lam = lambda_timing(gelu, args, generator, device, max(2, args.repeats // 2))
    print(
        f"GELU λ measurement ({args.lambda_points} points, n_max 4, 4 directions, no grad):"
        f" taylor {lam['fast']:.3f} s, nested {lam['nested']:.3f} s ->"
        f" {lam['nested'] / lam['fast']:.1f}x faster (target >= 15x)"
    )
    public_table(gelu, inputs, labels, args, device)
    if args.skip_relu:
        return

    # --- the notebook CNN: cumulant path ---
    model = build_mnist_cnn(seed=0, device=device).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    assert deriv.resolve_path(model, inputs, "auto").method == "fast"
    generic = GenericJVPCNN().to(device).train()
    generic.load_state_dict(model.state_dict())
    generic_optimizer = torch.optim.Adam(generic.parameters(), lr=1e-4)
    print("\nThe notebook CNN (ReLU; cumulant path)")
    step_times = step_table(
        {
            "plain": make_step(model, optimizer, inputs, labels, method="fast", targets=(),
                               **common),
            "global fast": make_step(model, optimizer, inputs, labels, method="fast",
                                     targets=None, **common),
            "global fast, generic jvp": make_step(generic, generic_optimizer, inputs, labels,
                                                  method="fast", targets=None, **common),
            "global nested": make_step(model, optimizer, inputs, labels, method="nested",
                                       targets=None, **common),
            "selective 4,9 fast": make_step(model, optimizer, inputs, labels, method="fast",
                                            targets=selective, **common),
            "selective 4,9 nested": make_step(model, optimizer, inputs, labels,
                                              method="nested", targets=selective, **common),
        },
        args.repeats,
        device,
    )  # fmt: skip
    print(
        f"fast vs nested (global): {step_times['global nested'] / step_times['global fast']:.2f}x"
        f" faster; penalized step {step_times['global fast'] / step_times['plain']:.2f}x plain"
    )
    lam = lambda_timing(model, args, generator, device, max(2, args.repeats // 2))
    print(
        f"λ measurement ({args.lambda_points} points, n_max 4, 4 directions): fast"
        f" {lam['fast']:.3f} s, nested {lam['nested']:.3f} s ->"
        f" {lam['nested'] / lam['fast']:.1f}x faster"
    )


if __name__ == "__main__":
    main()
