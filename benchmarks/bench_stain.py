"""Stain normalization cost: seconds per 4096-px region (256 patches of 256 px) per method.

Usage::

    python benchmarks/bench_stain.py [--methods macenko reinhard] [--repeats 3] [--threads N]
                                     [--device cpu|cuda] [--n-patches 256] [--px 256]

Each method normalizes one region's worth of all-tissue patches (the shipped reference, rolled
per patch) through :class:`hipt.stain.StainNormalizer`; the best of ``--repeats`` runs is shown
with the median, since a shared machine only ever adds time.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hipt.stain import cost_per_region  # noqa: E402


def main() -> None:
    """Parse arguments, time each method, print one line per method."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["macenko", "reinhard"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--threads", type=int, default=None, help="torch threads (default: torch's)"
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-patches", type=int, default=256)
    parser.add_argument("--px", type=int, default=256)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print(
        f"device={args.device} torch_threads={torch.get_num_threads()} "
        f"region={args.n_patches} patches x {args.px} px"
    )
    for method in args.methods:
        times = [
            cost_per_region(method, args.n_patches, args.px, device=args.device)
            for _ in range(args.repeats)
        ]
        best, median = min(times), statistics.median(times)
        per_patch_ms = 1000 * best / args.n_patches
        print(
            f"{method:9s} best {best:6.2f} s/region  median {median:6.2f} s  "
            f"({per_patch_ms:.1f} ms/patch)"
        )


if __name__ == "__main__":
    main()
