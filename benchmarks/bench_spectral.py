"""Per-epoch spectral tracking: full SVD (the notebook's method) vs the fast top-k path.

Along one real training trajectory (ReLU student, sigmoid teacher, γ = 1/√k, lr = 2√k, ν = 1/8,
the notebook's first cell) at growing sizes up to the notebook's d=1000, k=1250, N=750, every
epoch is tracked twice on the same weights:

- reference: the notebook's tracking, a full SVD of the gradient (float32) + ‖W‖₂ by 200
  power iterations;
- fast: randomized top-k of the gradient warm-started from the previous epoch + a warm-started
  top-1 of W, in the training dtype (float32), as the alignment experiment runs them.

Accuracy is checked against a float64 full SVD (not timed): max relative error of the top-k
singular values and the |cos| of the leading right singular vector. The gradient itself (common
to both, with the test forward pass) is timed separately so the whole-epoch ratio is printed.

    python benchmarks/bench_spectral.py [--epochs 10] [--top-k 10] [--threads N]
"""

from __future__ import annotations

import argparse
import math
import time

import torch

from geomlab.data.spiked import draw_shared_init, draw_teacher_data
from geomlab.experiments import alignment
from geomlab.geometry import spectral
from geomlab.geometry.gd_tracking import spiked_problem
from geomlab.models import two_layer
from geomlab.models.two_layer import Activation, OuterInit

SIZES = [(250, 312, 188), (500, 625, 375), (1000, 1250, 750)]  # (d, k, N), notebook last


def _timed(fn):
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def power_iteration_norm(A: torch.Tensor, iterations: int = 200) -> torch.Tensor:
    """The notebook's ‖A‖₂ estimate (fixed iteration count, no convergence check)."""
    v = torch.randn(A.shape[1], dtype=A.dtype)
    v = v / v.norm()
    for _ in range(iterations):
        u = A @ v
        v = A.mT @ u
        v = v / v.norm()
    return u.norm()


def bench_size(
    d: int, k: int, n: int, *, epochs: int, top_k: int, oversample: int, tol: float
) -> dict[str, float]:
    generator = torch.Generator().manual_seed(0)
    q, W0, a = draw_shared_init(d=d, k=k, outer_init=OuterInit.RADEMACHER, generator=generator,
                                dtype=torch.float32)  # fmt: skip
    data = draw_teacher_data(
        q, teacher=Activation.SIGMOID, n_train=n, n_test=n, nu=0.125, alpha=0.0,
        label_noise=1.0, generator=generator,
    )  # fmt: skip
    problem = spiked_problem(data, q=q, W0=W0, a=a, device=torch.device("cpu"))
    gamma, lr = 1 / math.sqrt(k), 2 * math.sqrt(k)
    W = problem.W0.clone()
    # ‖W_0‖₂ is solved once per comparison in the experiment (both runs start from W_0), so it
    # is a one-off cost, reported apart from the per-epoch numbers.
    start = time.perf_counter()
    previous_w = spectral.top_singular_triplets(
        W, 1, oversample=4, generator=generator, tol=1e-6, max_iter=1000
    ).right_basis
    one_off = time.perf_counter() - start
    previous_v = None
    totals = {"gradient": 0.0, "reference": 0.0, "fast": 0.0}
    worst_sv_error, worst_cos, worst_norm_error = 0.0, 1.0, 0.0
    relu = Activation.RELU
    for _ in range(epochs):
        (gradient, _), t_grad = _timed(
            lambda W=W: (
                two_layer.inner_weight_gradient(
                    problem.x, problem.y, W, problem.a, activation=relu, scale=gamma
                )[0],
                two_layer.forward(problem.x_test, W, problem.a, activation=relu, scale=gamma),
            )
        )
        _, t_ref = _timed(
            lambda g=gradient, W=W: (
                torch.linalg.svd(g, full_matrices=False),
                power_iteration_norm(W),
            )
        )

        def fast_path(g=gradient, W=W, pv=previous_v, pw=previous_w):
            options = {"generator": generator, "tol": tol, "max_iter": 300}
            top = spectral.top_singular_triplets(
                g, top_k, init=pv, oversample=oversample, **options
            )
            w_top = spectral.top_singular_triplets(W, 1, init=pw, oversample=4, **options)
            return top, w_top

        (top, w_top), t_fast = _timed(fast_path)
        previous_v, previous_w = top.right_basis, w_top.right_basis
        truth = spectral.top_singular_triplets_reference(gradient.double(), top_k)
        relative = (top.S.double() - truth.S).abs() / truth.S
        worst_sv_error = max(worst_sv_error, float(relative.max()))
        worst_cos = min(worst_cos, spectral.abs_cos(top.V[:, 0].double(), truth.V[:, 0]))
        norm_truth = spectral.spectral_norm_reference(W.double())
        worst_norm_error = max(worst_norm_error, abs(float(w_top.S[0]) - norm_truth) / norm_truth)
        totals["gradient"] += t_grad
        totals["reference"] += t_ref
        totals["fast"] += t_fast
        W = two_layer.gradient_step(W, gradient, lr=lr, gamma=gamma)
    per_epoch = {key: value / epochs for key, value in totals.items()}
    return {
        **per_epoch,
        "spectral_speedup": per_epoch["reference"] / per_epoch["fast"],
        "epoch_speedup": (per_epoch["gradient"] + per_epoch["reference"])
        / (per_epoch["gradient"] + per_epoch["fast"]),
        "max_rel_sv_error": worst_sv_error,
        "min_cos_v1": worst_cos,
        "w_norm_rel_error": worst_norm_error,
        "one_off_w0": one_off,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--oversample", type=int, default=alignment.Config().svd_oversample)
    parser.add_argument("--tol", type=float, default=alignment.Config().svd_tol)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's choice)"
    )
    args = parser.parse_args()
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, top-k = {args.top_k}, "
          f"oversample = {args.oversample}, tol = {args.tol:g}, {args.epochs} epochs per size "
          "(seconds are per epoch)")  # fmt: skip
    header = (f"{'d':>5} {'k':>5} {'N':>4} | {'train s':>7} {'fullSVD s':>9} {'fast s':>7} | "
              f"{'spectral x':>10} {'epoch x':>7} | {'max rel σ err':>13} {'min|cos v1|':>11} "
              f"{'‖W‖ err':>8} | {'‖W0‖ once s':>11}")  # fmt: skip
    print(header)
    print("-" * len(header))
    for d, k, n in SIZES:
        r = bench_size(
            d, k, n, epochs=args.epochs, top_k=args.top_k, oversample=args.oversample, tol=args.tol
        )
        print(f"{d:>5} {k:>5} {n:>4} | {r['gradient']:>7.3f} {r['reference']:>9.3f} "
              f"{r['fast']:>7.3f} | {r['spectral_speedup']:>10.1f} {r['epoch_speedup']:>7.1f} | "
              f"{r['max_rel_sv_error']:>13.1e} {r['min_cos_v1']:>11.6f} "
              f"{r['w_norm_rel_error']:>8.1e} | {r['one_off_w0']:>11.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
