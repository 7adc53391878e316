"""Slide sharding by region count: LPT's guarantee against the exact optimum, and the skew case."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from hipt.shards import balanced_shards, round_robin_shards, shard_balance


def optimum(weights: list[int], world: int) -> int:
    """Smallest possible busiest-rank load, by trying every assignment (small cases only)."""
    best = sum(weights)
    for deal in itertools.product(range(world), repeat=len(weights)):
        loads = [0] * world
        for w, rank in zip(weights, deal, strict=True):
            loads[rank] += w
        best = min(best, max(loads))
    return best


@settings(max_examples=60, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=7), st.integers(2, 3))
def test_busiest_rank_within_graham_bound_of_the_exact_optimum(weights, world):
    """LPT: busiest rank <= (4/3 - 1/(3m)) x the optimum found by exhaustive search; every item
    dealt exactly once."""
    shards = balanced_shards(weights, world)
    assert sorted(i for s in shards for i in s) == list(range(len(weights)))
    busiest = shard_balance(weights, shards)["max"]
    assert busiest <= (4 / 3 - 1 / (3 * world)) * optimum(weights, world) + 1e-9


def test_one_huge_slide_gets_a_rank_of_its_own():
    """A 150k-px slide (1,300 regions) among 63 small ones on 4 ranks: round-robin puts it
    beside a quarter of the small slides; balancing gives the other ranks all of them."""
    weights = [1300] + [60] * 63
    lpt = shard_balance(weights, balanced_shards(weights, 4))
    rr = shard_balance(weights, round_robin_shards(weights, 4))
    assert lpt["max"] == 1300 and lpt["per_rank"].count(1300) == 1
    assert rr["max"] == 1300 + 15 * 60
    assert lpt["max_over_mean"] < rr["max_over_mean"]


def test_balance_of_empty_and_single_rank():
    assert shard_balance([], balanced_shards([], 2))["max_over_mean"] == 1.0
    assert balanced_shards([3, 1, 2], 1) == [[0, 2, 1]]
