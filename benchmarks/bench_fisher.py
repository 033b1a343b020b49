"""Softmax-regression Fisher: per-sample reference loop vs the fast GEMM path, growing sizes.

Usage: python benchmarks/bench_fisher.py [--full]

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
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"# {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, "
          f"torch {torch.__version__}, float64, C={N_CLASSES}")  # fmt: skip
    header = ("N", "D", "P", "reference s", "fast s", "speed-up", "max|diff|")
    widths = (7, 4, 5, 12, 10, 9, 10)
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


def n_params(d: int) -> int:
    return N_CLASSES * d


if __name__ == "__main__":
    main()
