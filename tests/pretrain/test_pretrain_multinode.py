"""DINO pretrain-4k across 2 "nodes" (one process each, torchrun's environment, gloo)."""

from __future__ import annotations

from multinode import run_nodes
from pipelines.pretrain import main
from test_ddp import _args, assert_same_training


def test_two_nodes_train_the_weights_of_one_process_with_the_global_batch(stores_dir, tmp_path):
    """2 nodes x 1 process, batch 2 each (NODE_RANK/RANK/WORLD_SIZE as torchrun sets them):
    both ranks end with identical weights, equal to a 1-process run with batch 4."""
    nodes = ["trainer.num_nodes=2", "trainer.devices=1", "trainer.strategy=ddp",
             "trainer.accelerator=cpu"]  # fmt: skip
    run_nodes("pipelines.pretrain", [*_args(stores_dir, tmp_path / "nodes", 2), *nodes])
    assert main(_args(stores_dir, tmp_path / "one", 4)) == 0

    assert_same_training(tmp_path / "nodes", tmp_path / "one")
