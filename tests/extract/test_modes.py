"""Extraction modes: skip_background, DDP with 2 CPU processes, the CUDA path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from extract_utils import TINY, extract, store_arrays

from hipt.features import open_store
from hipt.models import build, normalize_patches

REPO = Path(__file__).resolve().parents[2]


def test_skip_background_fills_blank_feature_and_keeps_tissue(
    synth_tiles: Path, synth_reference: Path, tmp_path: Path
):
    """skip_background: masked patches keep their features (batching aside), the others hold
    ViT-256 of a white patch computed independently; the store says skip_background=true."""
    out = tmp_path / "skip"
    assert extract(synth_tiles, out, "dtype=float32", "skip_background=true") == 0
    torch.manual_seed(0)  # the stage seeds with seed=0 and builds ViT-256 first
    v256 = build("vit256_tiny_test").eval()
    with torch.inference_mode():
        white = torch.full((1, 64, 64, 3), 255, dtype=torch.uint8)
        blank = v256(normalize_patches(white))[0].numpy()
    n_bg = 0
    for name in ("a.zarr", "b.zarr", "c.zarr"):
        skip = open_store(out / name, expect={"skip_background": True})
        full = open_store(synth_reference / name, expect={"skip_background": False})
        mask = skip.patch_mask()
        assert 0 < mask.sum() < mask.size
        np.testing.assert_allclose(skip.feats256()[mask], full.feats256()[mask], atol=1e-5, rtol=0)
        bg = skip.feats256()[~mask]
        np.testing.assert_allclose(bg, np.broadcast_to(blank, bg.shape), atol=1e-5, rtol=0)
        n_bg += int((~mask).sum())
    assert n_bg > 0


def _ddp_run(tiles: Path, out: Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "pipelines.extract_features", f"TILES={tiles}", f"OUT={out}",
           *TINY, "dtype=float32", "devices=2", "strategy=ddp", "accelerator=cpu"]  # fmt: skip
    env = {**os.environ, "WANDB_MODE": "disabled"}
    env.pop("OMP_NUM_THREADS", None)
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)


def test_ddp_two_cpu_processes_equal_one_process(
    synth_tiles: Path, synth_reference: Path, tmp_path: Path
):
    """DDP predict with 2 gloo processes writes the same stores as 1 process; each slide is
    written by one rank and rank 0 writes one summary covering all slides."""
    out = tmp_path / "ddp"
    res = _ddp_run(synth_tiles, out)
    assert res.returncode == 0, res.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(s["slide_id"] for s in summary["ok"]) == ["a", "b", "c"]
    assert "rank 1/2" in res.stderr or "rank 0/2" in res.stderr
    for name in ("a.zarr", "b.zarr", "c.zarr"):
        got, want = store_arrays(out / name), store_arrays(synth_reference / name)
        for key in want:
            np.testing.assert_allclose(got[key], want[key], rtol=0, atol=1e-6, err_msg=key)
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.gpu
@pytest.mark.parametrize("decode", ["cpu", "gpu_batch"])
def test_cuda_bf16_features_match_cpu_fp32(synth_tiles: Path, synth_reference: Path, tmp_path,
                                           decode: str):  # fmt: skip
    """On CUDA (bf16 autocast, TF32) with either decode path, the features match the CPU
    float32 run within bf16's precision (stated: mean cosine > 0.999, min > 0.99, ViT-4K
    features too) and the stores record how they were made."""
    out = tmp_path / "cuda"
    assert extract(synth_tiles, out, "dtype=float32", "accelerator=gpu", "devices=1",
                   f"decode={decode}") == 0  # fmt: skip
    for name in ("a.zarr", "b.zarr", "c.zarr"):
        store, ref = open_store(out / name), open_store(synth_reference / name)
        meta = store.meta
        assert (meta.precision, meta.fp32_matmul, meta.decode) == ("bf16-mixed", "tf32", decode)
        for got, want in ((store.feats256(), ref.feats256()), (store.feats4k(), ref.feats4k())):
            cos = (got * want).sum(-1) / (
                np.linalg.norm(got, axis=-1) * np.linalg.norm(want, axis=-1)
            )  # noqa: E501
            assert cos.mean() > 0.999 and cos.min() > 0.99, (name, cos.mean(), cos.min())
