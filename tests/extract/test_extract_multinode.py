"""Extraction across 2 "nodes" (one process each, torchrun's environment, gloo)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from extract_utils import TINY, store_arrays
from multinode import run_nodes


def test_two_nodes_write_the_stores_of_one_process_with_balanced_shards(
    synth_tiles: Path, synth_reference: Path, tmp_path: Path
):
    """2 nodes x 1 process (NODE_RANK/RANK/WORLD_SIZE set per process as torchrun would, shared
    output folder): every slide is encoded once, by one node; the stores equal the 1-process
    run's; rank 0's summary covers all slides and records the shard balance by region count."""
    out = tmp_path / "nodes"
    args = [f"TILES={synth_tiles}", f"OUT={out}", *TINY, "dtype=float32", "num_nodes=2",
            "devices=1", "accelerator=cpu", "strategy=ddp"]  # fmt: skip
    logs = run_nodes("pipelines.extract_features", args)
    assert "rank 0/2" in logs[0] and "GLOBAL_RANK: 1, MEMBER: 2/2" in logs[1]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(s["slide_id"] for s in summary["ok"]) == ["a", "b", "c"]
    shards = summary["shards"]
    assert shards["world_size"] == 2
    regions = {s["slide_id"]: s["n_regions"] for s in summary["ok"]}
    assert sorted(shards["per_rank"]) == sorted(  # LPT: the largest slide alone
        [max(regions.values()), sum(regions.values()) - max(regions.values())]
    )
    for name in ("a.zarr", "b.zarr", "c.zarr"):
        got, want = store_arrays(out / name), store_arrays(synth_reference / name)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=key)
