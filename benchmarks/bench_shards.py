"""Shard balance of slide-sharded stages: regions per rank, balanced deal vs round-robin.

Usage::

    python benchmarks/bench_shards.py [--slides 1000] [--seed 0] [--tiles <tile out>]
    make bench-shards

A multi-process extraction waits for its busiest rank, so ``max/mean`` regions per rank is its
slowdown over a perfect split. The cohort is skewed as real ones are: region counts per slide
drawn log-normal (median 40 regions of 4096 px, i.e. a 1.6 cm² tissue area; the largest in the
hundreds) plus a handful of 150k x 150k-px slides of ~1,300 regions. ``--tiles`` measures a real
tile output (its ``regions.parquet``) instead. Both deals run in this process on the same list;
the baseline is largest-first round-robin (what extraction did before). ``bound`` is the best any
deal of whole slides can do: ``max(1, largest slide / mean load)``.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))

from hipt.shards import balanced_shards, round_robin_shards, shard_balance  # noqa: E402


def skewed_cohort(n: int, seed: int) -> list[int]:
    """Regions per slide: log-normal body and five whole 150k-px slides (~1,300 regions)."""
    rng = np.random.default_rng(seed)
    body = np.clip(rng.lognormal(mean=np.log(40), sigma=1.0, size=n - 5), 1, None)
    return [int(x) for x in body] + [1300, 1290, 1250, 1200, 1180]


def tile_output(folder: Path) -> list[int]:
    """Regions per slide of a tile stage's ``regions.parquet``."""
    import pandas as pd

    table = pd.read_parquet(folder / "regions.parquet", columns=["slide_id"])
    return [int(n) for n in table.groupby("slide_id").size()]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--slides", type=int, default=1000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--tiles", type=Path, default=None)
    raw = sys.argv[1:] if argv is None else argv
    args = ap.parse_args([f"--{a}" if "=" in a and not a.startswith("-") else a for a in raw])
    weights = tile_output(args.tiles) if args.tiles else skewed_cohort(args.slides, args.seed)
    what = args.tiles or f"skewed synthetic cohort (seed {args.seed})"
    print(f"{len(weights)} slides, {sum(weights)} regions, largest {max(weights)}: {what}")
    print(f"{'ranks':>5} | {'bound':>6} | {'balanced max/mean':>17} | "
          f"{'round-robin max/mean':>20} | ratio")  # fmt: skip
    for world in (2, 4, 8, 16, 32, 64):
        lpt = shard_balance(weights, balanced_shards(weights, world))["max_over_mean"]
        rr = shard_balance(weights, round_robin_shards(weights, world))["max_over_mean"]
        bound = max(1.0, max(weights) * world / sum(weights))  # no deal splits a slide
        print(f"{world:>5} | {bound:>6.3f} | {lpt:>17.3f} | {rr:>20.3f} | {rr / lpt:.2f}x")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
