"""Softmax-regression Fisher: per-sample reference loop vs the fast GEMM path, growing sizes;
then the dense Fisher of any model: P Fisher-vector products (F @ I) vs FisherOperator.dense()
(one torch.func Jacobian per batch, J^T H J), on small CNNs with BatchNorm and 256 images.

Usage: python benchmarks/bench_fisher.py [--full] [--skip-softmax]

The reference costs exactly N identical Kronecker products, so by default it is timed on at
most --ref-samples rows and scaled linearly to N (marked '~'); --full times it on all N.
"""

from __future__ import annotations

import argparse
import platform

import torch

from geomlab.geometry.curvature import softmax_regression_fisher as softmax_fisher
from geomlab.geometry.curvature import (
    softmax_regression_fisher_reference as softmax_fisher_reference,
)
from timing import best_time

SIZES = [(1_000, 16), (5_000, 16), (5_000, 32), (20_000, 32), (50_000, 32), (50_000, 64)]
N_CLASSES = 10


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="time the reference on all N rows")
    parser.add_argument("--ref-samples", type=int, default=1_000)
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads")
    parser.add_argument("--skip-softmax", action="store_true", help="only the any-model section")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, float64, C={N_CLASSES}")  # fmt: skip
    header = ("N", "D", "P", "reference s", "fast s", "speed-up", "max|diff|")
    widths = (7, 4, 5, 12, 10, 9, 10)
    if not args.skip_softmax:
        softmax_section(header, widths, args)
    dense_section()


def softmax_section(header, widths, args) -> None:
    print(" ".join(f"{h:>{w}}" for h, w in zip(header, widths, strict=True)))
    for n, d in SIZES:
        g = torch.Generator().manual_seed(0)
        inputs = torch.randn(n, d, dtype=torch.float64, generator=g)
        probs = torch.softmax(torch.randn(n, N_CLASSES, dtype=torch.float64, generator=g), 1)
        fast_s = best_time(lambda p=probs, x=inputs: softmax_fisher(p, x), repeats=10)
        m = n if args.full else min(n, args.ref_samples)
        ref_s = best_time(
            lambda p=probs[:m], x=inputs[:m]: softmax_fisher_reference(p, x), repeats=3
        )
        ref_s *= n / m
        diff = (softmax_fisher(probs[:m], inputs[:m])
                - softmax_fisher_reference(probs[:m], inputs[:m])).abs().max().item()  # fmt: skip
        mark = " " if m == n else "~"
        print(f"{n:>7} {d:>4} {n_params(d):>5} {mark}{ref_s:>11.3f} {fast_s:>10.4f} "
              f"{ref_s / fast_s:>8.0f}x {diff:>10.1e}")  # fmt: skip


def dense_section() -> None:
    """FisherOperator.dense() (per-sample Jacobian) against P products F @ I, same operator."""
    from torch import nn

    from geomlab.geometry.curvature import FisherOperator

    print("\n# dense Fisher of a CNN (Conv-BN-ReLU x2, pool, Linear), 256 images 3x8x8, eval")
    print(f"{'width':>5} {'P':>6} {'F @ I s':>9} {'dense() s':>10} {'speed-up':>9} {'rel diff':>9}")
    for width in (4, 8, 12):
        torch.manual_seed(0)
        model = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1), nn.BatchNorm2d(width), nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
            nn.Flatten(), nn.Linear(width, 10),
        ).double().eval()  # fmt: skip
        g = torch.Generator().manual_seed(1)
        x = torch.randn(256, 3, 8, 8, dtype=torch.float64, generator=g)
        y = torch.randint(0, 10, (256,), generator=g)
        fisher = FisherOperator(model, (x, y), loss="cross_entropy")
        eye = torch.eye(fisher.dim, dtype=torch.float64)
        by_products = torch.cat([fisher @ block for block in eye.split(256, dim=1)], dim=1)
        products_s = best_time(
            lambda f=fisher, e=eye: [f @ block for block in e.split(256, dim=1)], repeats=1
        )  # the former dense(): F @ I in blocks of 256 columns
        dense_s = best_time(fisher.dense, repeats=3)
        by_products = (by_products + by_products.T) / 2
        diff = float((fisher.dense() - by_products).abs().max() / by_products.abs().max())
        print(f"{width:>5} {fisher.dim:>6} {products_s:>9.2f} {dense_s:>10.3f} "
              f"{products_s / dense_s:>8.0f}x {diff:>9.1e}")  # fmt: skip


def n_params(d: int) -> int:
    return N_CLASSES * d


if __name__ == "__main__":
    main()
