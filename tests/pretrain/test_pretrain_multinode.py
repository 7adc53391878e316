"""DINO pretrain-4k across 2 "nodes" (one process each, torchrun's environment, gloo)."""

from __future__ import annotations

import json

import torch
from multinode import run_nodes
from pipelines.pretrain import main
from test_ddp import _args


def test_two_nodes_train_the_weights_of_one_process_with_the_global_batch(stores_dir, tmp_path):
    """2 nodes x 1 process, batch 2 each (NODE_RANK/RANK/WORLD_SIZE as torchrun sets them):
    both ranks end with identical weights, equal to a 1-process run with batch 4."""
    nodes = ["trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp",
             "trainer.accelerator=cpu"]  # fmt: skip
    run_nodes("pipelines.pretrain", [*_args(stores_dir, tmp_path / "nodes", 2), *nodes])
    assert main(_args(stores_dir, tmp_path / "one", 4)) == 0

    run = json.loads((tmp_path / "nodes/run.json").read_text())["extra"]
    assert run["world_size"] == 2 and run["global_batch"] == 4
    assert len(run["rank_digests"]) == 2 and len(set(run["rank_digests"])) == 1
    two = torch.load(tmp_path / "nodes/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    one = torch.load(tmp_path / "one/checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert two.keys() == one.keys()
    for k, v in one.items():
        torch.testing.assert_close(two[k], v, rtol=1e-4, atol=1e-5, msg=k)
