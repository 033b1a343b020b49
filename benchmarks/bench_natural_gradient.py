"""Natural gradient on real networks: Fisher-vector products, CG, K-FAC, dense vs CG.

Usage: python benchmarks/bench_natural_gradient.py [--cnn-samples 2000] [--max-cg 100]
       [--threads N] [--device cpu|cuda] [--skip-cnn]

In one run:
1. Fisher-vector product (curvlinops GGN, matrix-free) time against one plain forward+backward
   of the loss, for an MLP and the notebook's MNIST CNN (target: <= 3x).
2. CG on the CNN with ``--cnn-samples`` MNIST images (float32, damping 1e-3): iterations and
   time to a 1e-6 relative residual (capped at ``--max-cg`` iterations; the residual reached
   is printed).
3. K-FAC (factored damping, Cholesky) vs that CG solve: time and the direction's cosine with
   the CG direction and its relative residual in the exact damped system.
4. Dense (form F by P products, eigendecomposition) vs CG (to 1e-6) as P grows (MLPs of growing
   width, float64, 1000 synthetic points): where the crossover lies.
5. The Fisher self-check (float64 copy, 4 samples, curvlinops vs torch.func), first call and
   cached, against one Fisher-vector product on the section's data.
"""

from __future__ import annotations

import argparse
import platform

import torch

from geomlab.geometry import curvature as cv
from geomlab.geometry import natural_gradient as ng
from geomlab.geometry import params as gp
from geomlab.geometry.curvature.operator import _SELF_CHECKED
from geomlab.models.mlp import build_mlp
from geomlab.models.modes import eval_mode
from timing import best_time


def fvp_vs_backward(label: str, model, data, *, batch_size: int, repeats: int) -> None:
    with eval_mode(model):
        operator = cv.FisherOperator(model, data, loss="cross_entropy", batch_size=batch_size)
        v = torch.randn(operator.dim, dtype=operator.dtype, device=data[0].device)
        operator @ v  # warm-up (functorch tracing)
        backward = best_time(
            lambda: gp.loss_and_gradient(model, operator.batches, loss="cross_entropy"), repeats
        )
        product = best_time(lambda: operator @ v, repeats)
    print(f"{label:<34} {operator.dim:>10,} {backward:>12.3f} {product:>10.3f} "
          f"{product / backward:>7.2f}x")  # fmt: skip


def cnn_section(args, device) -> None:
    from geomlab.data.mnist import load_mnist
    from geomlab.models.mnist_cnn import build_mnist_cnn

    mnist = load_mnist(device=device, train_limit=args.cnn_samples, test_limit=1)
    data = (mnist.train_images, mnist.train_labels)
    model = build_mnist_cnn(seed=0, device=device)
    print(f"\n## 1b. FVP vs forward+backward: MNIST CNN, {args.cnn_samples} images, float32")
    print(f"{'model':<34} {'P':>10} {'fwd+bwd s':>12} {'FVP s':>10} {'ratio':>8}")
    fvp_vs_backward("notebook CNN", model, data, batch_size=500, repeats=2)

    print(f"\n## 2-3. CG (damping 1e-3, tol 1e-6, cap {args.max_cg}) vs K-FAC on the CNN")
    with eval_mode(model):
        operator = cv.FisherOperator(model, data, loss="cross_entropy", batch_size=500)
        _, gradient = gp.loss_and_gradient(model, operator.batches, loss="cross_entropy")
        cg = ng.natural_gradient(
            operator,
            gradient,
            solve=ng.SolveSpec(
                solver="cg", damping=1e-3, tolerance=1e-6, max_iterations=args.max_cg
            ),
        )
        kfac = ng.natural_gradient(
            operator, gradient, solve=ng.SolveSpec(solver="kfac", damping=1e-3)
        )
    cosine = float(cg.direction @ kfac.direction / (cg.direction.norm() * kfac.direction.norm()))
    print(
        f"CG:    {cg.cg_iterations} iterations, relative residual {cg.relative_residual:.1e}, "
        f"{cg.seconds:.1f} s ({cg.seconds / max(cg.cg_iterations, 1):.2f} s/iteration)"
    )
    print(
        f"K-FAC: {kfac.seconds:.1f} s, residual in the exact damped system "
        f"{kfac.relative_residual:.2f}, cosine with the CG direction {cosine:.3f}"
    )
    print(f"K-FAC / CG time: {kfac.seconds / cg.seconds:.2f}")
    print("\n## 5b. Fisher self-check: first call (s), cached (s), one FVP on all images (s)")
    self_check_section("notebook CNN", model, data, batch_size=500)


def self_check_section(label: str, model, data, *, batch_size: int) -> None:
    """Cost of ``curvature.fisher_self_check`` (first call, then cached) vs one product."""
    with eval_mode(model):
        operator = cv.FisherOperator(model, data, loss="cross_entropy", batch_size=batch_size,
                                     self_check=False)  # fmt: skip
        v = torch.randn(operator.dim, generator=torch.Generator().manual_seed(0)).to(
            next(model.parameters())
        )
        product = best_time(lambda: operator @ v, 1)

        def fresh() -> None:
            _SELF_CHECKED.pop(model, None)
            cv.fisher_self_check(model, operator.batches, loss="cross_entropy")

        first = best_time(fresh, 2)
        cached = best_time(lambda: cv.fisher_self_check(model, data, loss="cross_entropy"), 3)
    print(f"{label:<34} {operator.dim:>10} {first:>12.3f} {cached:>12.2e} {product:>10.3f}")


def crossover_section(device) -> None:
    print("\n## 4. Dense (form F + eigh) vs CG (tol 1e-6, damping 1e-3) as P grows")
    print("MLP 20 -> width -> 10 (tanh), 1000 synthetic points, float64")
    print(f"{'width':>6} {'P':>7} {'dense s':>9} {'CG s':>9} {'CG its':>7} {'dense/CG':>9} "
          f"{'|v_d - v_cg|/|v_d|':>19}")  # fmt: skip
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1000, 20, dtype=torch.float64, generator=g).to(device)
    y = torch.randint(0, 10, (1000,), generator=g).to(device)
    for width in (4, 16, 64, 128, 256):
        torch.manual_seed(0)
        model = build_mlp(20, 10, hidden=(width,), activation="tanh").double().to(device)
        operator = cv.FisherOperator(model, (x, y), loss="cross_entropy")
        _, gradient = gp.loss_and_gradient(model, (x, y), loss="cross_entropy")
        operator @ gradient  # warm-up
        dense = ng.natural_gradient(
            operator, gradient, solve=ng.SolveSpec(solver="dense", damping=1e-3, rcond=0)
        )
        cg = ng.natural_gradient(
            operator, gradient, solve=ng.SolveSpec(solver="cg", damping=1e-3, tolerance=1e-6)
        )
        diff = float((dense.direction - cg.direction).norm() / dense.direction.norm())
        ratio = dense.seconds / cg.seconds
        print(f"{width:>6} {operator.dim:>7,} {dense.seconds:>9.3f} {cg.seconds:>9.3f} "
              f"{cg.cg_iterations:>7} {ratio:>9.2f} {diff:>19.1e}")  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cnn-samples", type=int, default=2000)
    parser.add_argument("--max-cg", type=int, default=100)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--skip-cnn", action="store_true", help="no MNIST CNN sections")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, device {device}")  # fmt: skip
    print("\n## 1a. FVP vs forward+backward: MLP 784 -> 256 -> 10 (tanh), 2000 points, float32")
    print(f"{'model':<34} {'P':>10} {'fwd+bwd s':>12} {'FVP s':>10} {'ratio':>8}")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2000, 784, generator=g).to(device)
    y = torch.randint(0, 10, (2000,), generator=g).to(device)
    torch.manual_seed(0)
    mlp = build_mlp(784, 10, hidden=(256,), activation="tanh").to(device)
    fvp_vs_backward("MLP 784-256-10", mlp, (x, y), batch_size=1000, repeats=3)
    print("\n## 5a. Fisher self-check: first call (s), cached (s), one FVP on all points (s)")
    print(f"{'model':<34} {'P':>10} {'first s':>12} {'cached s':>12} {'FVP s':>10}")
    self_check_section("MLP 784-256-10", mlp, (x, y), batch_size=1000)
    if not args.skip_cnn:
        cnn_section(args, device)
    crossover_section(device)


if __name__ == "__main__":
    main()
