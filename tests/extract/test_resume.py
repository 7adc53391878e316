"""Atomic, resumable runs: SIGKILL mid-run, stale stores, failed slides, a second live run."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from extract_utils import TINY, corrupt_tile_at, extract, store_arrays, tile

from hipt.features import open_store
from hipt.slides.regions import read_regions

REPO = Path(__file__).resolve().parents[2]


def _stores(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("*.zarr"))


def test_sigkill_then_rerun_equals_uninterrupted_run(
    synth_tiles: Path, synth_reference: Path, tmp_path: Path
):
    """Kill the CLI with SIGKILL once the first store exists; a rerun skips that store,
    finishes the rest, and every array equals the uninterrupted run; no .tmp is left."""
    out = tmp_path / "killed"
    cmd = [sys.executable, "-m", "pipelines.extract_features", f"TILES={synth_tiles}",
           f"OUT={out}", *TINY, "dtype=float32", "batch_size=32"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.monotonic() + 300
    while not _stores(out) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    first = _stores(out)
    assert len(first) >= 1, "the run ended before its first store appeared"
    assert len(first) < 3, "the run finished before it could be killed; nothing to resume"
    kept = {name: store_arrays(out / name) for name in first}
    assert extract(synth_tiles, out, "dtype=float32") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(f"{s['slide_id']}.zarr" for s in summary["skipped"]) == first
    assert _stores(out) == _stores(synth_reference) == ["a.zarr", "b.zarr", "c.zarr"]
    for name in _stores(out):
        got, want = store_arrays(out / name), store_arrays(synth_reference / name)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=f"{name}/{key}")
    for name, arrays in kept.items():  # the skipped stores were not rewritten
        np.testing.assert_array_equal(store_arrays(out / name)["feats256"], arrays["feats256"])
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


def test_changed_checkpoint_recomputes_or_refuses(synth_tiles: Path, tmp_path, tiny_checkpoints):
    """Another ViT-256 checkpoint makes the stores stale: on_stale=error exits non-zero and
    leaves them untouched; the default recomputes them and says which and why."""
    out = tmp_path / "f"
    ck4k = f"CHECKPOINT4K={tiny_checkpoints['4k']}"
    assert extract(synth_tiles, out, f"CHECKPOINT256={tiny_checkpoints['256']}", ck4k) == 0
    before = store_arrays(out / "a.zarr")["feats256"]
    other = f"CHECKPOINT256={tiny_checkpoints['256b']}"
    assert extract(synth_tiles, out, other, ck4k, "on_stale=error") == 1
    np.testing.assert_array_equal(store_arrays(out / "a.zarr")["feats256"], before)
    assert extract(synth_tiles, out, other, ck4k) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["recomputed"]) == {"a", "b", "c"}
    assert all("checkpoint_256_sha256" in why for why in summary["recomputed"].values())
    from hipt.provenance import sha256_file

    store = open_store(out / "a.zarr", expect={"checkpoint_256_sha256":
                                               sha256_file(tiny_checkpoints["256b"])})  # fmt: skip
    assert not np.array_equal(store.feats256(), before.astype(np.float32))


def test_unreadable_slide_is_recorded_and_others_complete(synth_slides: Path, tmp_path: Path):
    """A slide whose tile is damaged after tiling fails (one-line error in summary.json, no
    store, exit 1); the other slides get complete stores."""
    slides = tmp_path / "slides"
    shutil.copytree(synth_slides, slides)
    tiles = tile(slides, tmp_path / "tiles", "region_px=1024", "patch_px=64", "min_tissue=0.05")
    df = read_regions(tiles / "regions.parquet")
    b = df[df.slide_id == "b"].iloc[-1]  # damage b's last region: earlier regions are encoded
    corrupt_tile_at(slides / "b.svs", int(b.x) + 300, int(b.y) + 300)
    out = tmp_path / "f"
    assert extract(tiles, out) == 1
    summary = json.loads((out / "summary.json").read_text())
    assert [f["slide_id"] for f in summary["failed"]] == ["b"]
    assert "\n" not in summary["failed"][0]["error"] and "b.svs" in summary["failed"][0]["error"]
    assert _stores(out) == ["a.zarr", "c.zarr"]
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
