import json
import subprocess
import sys
from pathlib import Path

import torch
from pipelines.pretrain import main

REPO = Path(__file__).resolve().parents[2]


def _args(stores, out, batch):
    return [
        "config=tests/pretrain_4k_tiny.yaml",
        f"FEATURES={stores}",
        f"OUT={out}",
        f"data.batch_size={batch}",
        "model.drop_path_rate=0.0",
        "trainer.max_steps=3",
    ]


def test_two_process_ddp_matches_one_process_with_the_global_batch(
    stores_dir, tmp_path, monkeypatch
):
    """`trainer.devices=2 trainer.strategy=ddp` on CPU (gloo, ~15 s): both ranks end with identical
    weights, and these equal a 1-process run with batch 2x2 (same samples and augmentations
    per step, lr scaled by the same global batch)."""
    monkeypatch.setenv("WANDB_MODE", "disabled")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # the runner splits the cores itself
    cmd = [
        sys.executable,
        "-m",
        "pipelines.pretrain",
        *_args(stores_dir, tmp_path / "ddp", 2),
        "trainer.devices=2",
        "trainer.strategy=ddp",
        "trainer.accelerator=cpu",
    ]
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    assert main(_args(stores_dir, tmp_path / "one", 4)) == 0

    assert_same_training(tmp_path / "ddp", tmp_path / "one")


def assert_same_training(multi: Path, one: Path) -> None:
    """A 2-process run (global batch 4) ended with identical weights on both ranks, equal to
    the 1-process run's with batch 4."""
    run = json.loads((multi / "run.json").read_text())["extra"]
    assert run["world_size"] == 2 and run["global_batch"] == 4
    assert len(run["rank_digests"]) == 2 and len(set(run["rank_digests"])) == 1
    got = torch.load(multi / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    want = torch.load(one / "checkpoints/last.ckpt", weights_only=False)["state_dict"]
    assert got.keys() == want.keys()
    for k, v in want.items():
        torch.testing.assert_close(got[k], v, rtol=1e-4, atol=1e-5, msg=k)
