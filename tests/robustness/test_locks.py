"""Two runs on one output folder: the second refuses (exit 3) naming the holder; stale locks go."""

from __future__ import annotations

import json
import socket

import pytest
from robust_utils import SMALL_TILING, dead_pid, error_lines, held_lock, stage

from hipt.lock import LOCK_NAME
from hipt.samples import sample_slide_path


def _args(module: str, tiles, features, out) -> list[str]:  # noqa: ANN001
    return {
        "tile": [f"slides={sample_slide_path()}", *SMALL_TILING],
        "extract_features": [
            f"tiles={tiles}",
            "model_256=vit256_tiny_test",
            "model_4k=vit4k_tiny_test",
        ],
        "pretrain-256": ["level=256", f"data.tiles={tiles}"],
        "pretrain-4k": ["level=4k", f"data.features={features}"],
        "finetune": ["task=subtype", f"cohort={out}/c.csv", f"features={features}"],
        "heatmap": [f"slide={sample_slide_path()}", f"features={features}/x.zarr"],
        "demo": [],
    }[module] + [f"out={out}", "wandb.mode=disabled"]


STAGES = ["tile", "extract_features", "pretrain-256", "pretrain-4k", "finetune", "heatmap", "demo"]


@pytest.mark.parametrize("module", STAGES)
def test_second_run_refuses_with_owner(module, sample_tiles, sample_features, tmp_path, capsys):
    """While another live process holds OUT, every stage exits 3 with the holder's pid and
    host, and writes nothing there."""
    out = tmp_path / "out"
    out.mkdir()
    with held_lock(out) as pid:
        before = sorted(p.name for p in out.iterdir())
        code = stage(module.split("-")[0], *_args(module, sample_tiles, sample_features, out))
        assert code == 3
        (error,) = error_lines(capsys.readouterr().err)
        assert f"pid {pid}" in error and socket.gethostname() in error and str(out) in error
        assert sorted(p.name for p in out.iterdir()) == before
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == pid  # holder keeps it


def test_stale_lock_of_a_dead_run_is_taken_over(sample_tiles, tmp_path):
    """A lock left by a killed run (dead pid, this host) does not block; it is removed after."""
    out = tmp_path / "tiles"
    (out).mkdir()
    stale = {"pid": dead_pid(), "host": socket.gethostname(), "since": 0}
    (out / LOCK_NAME).write_text(json.dumps(stale))
    assert (
        stage(
            "tile",
            f"slides={sample_slide_path()}",
            f"out={out}",
            "wandb.mode=disabled",
            *SMALL_TILING,
        )
        == 0
    )
    assert (out / "regions.parquet").is_file() and not (out / LOCK_NAME).exists()


def test_lock_of_another_host_is_respected(tmp_path, capsys):
    """A lock naming another host is never guessed stale (its pid means nothing here)."""
    out = tmp_path / "out"
    out.mkdir()
    (out / LOCK_NAME).write_text(json.dumps({"pid": dead_pid(), "host": "node-17", "since": 0}))
    assert stage("demo", f"out={out}") == 3
    assert "node-17" in error_lines(capsys.readouterr().err)[0]
