"""Deal weighted work items (slides, by region count) to ranks so no rank idles while one works.

Round-robin by count leaves one 150k-px slide (~1,300 regions) on a rank beside its share of
small ones. Longest-processing-time-first (Graham 1969) gives each item, largest first, to the
rank with the least work so far: the busiest rank then carries at most 4/3 of the optimum, and
exceeds the least busy one by at most one item. Every rank computes the same deal from the same
list (ties break by rank, then by the caller's order), so shards are disjoint and cover all items.
"""

from __future__ import annotations

import heapq
from collections.abc import Sequence
from typing import Any


def balanced_shards(weights: Sequence[int], world: int) -> list[list[int]]:
    """Positions into ``weights`` per rank (``world`` lists, each in dealing order).

    Args:
        weights: work per item (regions per slide); the caller's order breaks ties.
        world: number of ranks.
    """
    if world < 1:
        raise ValueError(f"world must be >= 1, got {world}")
    order = sorted(range(len(weights)), key=lambda i: (-int(weights[i]), i))
    heap = [(0, rank) for rank in range(world)]
    shards: list[list[int]] = [[] for _ in range(world)]
    for i in order:
        load, rank = heapq.heappop(heap)
        shards[rank].append(i)
        heapq.heappush(heap, (load + int(weights[i]), rank))
    return shards


def shard_balance(weights: Sequence[int], shards: Sequence[Sequence[int]]) -> dict[str, Any]:
    """Work per rank and ``max_over_mean`` (1.0 = perfect; the run takes that much longer)."""
    loads = [sum(int(weights[i]) for i in shard) for shard in shards]
    mean = sum(loads) / len(loads) if loads else 0.0
    return {
        "per_rank": loads,
        "max": max(loads, default=0),
        "mean": round(mean, 3),
        "max_over_mean": round(max(loads) / mean, 4) if mean > 0 else 1.0,
    }


def round_robin_shards(weights: Sequence[int], world: int) -> list[list[int]]:
    """Largest first, dealt in turn: the baseline :func:`balanced_shards` is measured against."""
    order = sorted(range(len(weights)), key=lambda i: (-int(weights[i]), i))
    return [order[rank::world] for rank in range(world)]
