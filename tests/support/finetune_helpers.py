"""Helpers shared by the finetune tests: tiny feature stores and fast configs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import stores
import torch
import zarr

from hipt.config import load_config
from hipt.features import FeatureStoreMeta, find_store, open_store, write_store
from hipt.finetune import FinetuneConfig
from hipt.models import load
from hipt.tasks.base import task_from_state

#: Settings every CPU test run shares: no validation part, 3 folds, one torch thread (tiny
#: models are fastest that way and the CI machine is shared), no W&B unless a test asks.
FAST = [
    "split.n_folds=3",
    "split.val_fraction=0",
    "train.accumulate_grad_batches=1",
    "train.accelerator=cpu",
    "train.cpu_threads=1",
    "model.dropout=0",
    "train.lr=2e-3",
    "wandb.mode=disabled",
]


def store_meta(slide_id: str, **kw: object) -> FeatureStoreMeta:
    """Metadata of a tiny store (32-d ViT-256, 16-d ViT-4K features)."""
    base: dict[str, object] = dict(
        slide_id=slide_id,
        source_path=f"{slide_id}.svs",
        source_size_bytes=1,
        model_256="vit256_tiny_test",
        model_4k="vit4k_tiny_test",
        checkpoint_256_sha256=None,
        checkpoint_4k_sha256="a" * 64,
        random_weights=True,
        feature_dim_256=32,
        feature_dim_4k=16,
        target_mpp=0.5,
        region_px=4096,
        patch_px=256,
        tiling_config_hash="t",
        dtype="float32",
    )
    base.update(kw)
    return stores.store_meta(**base)  # type: ignore[arg-type]


def make_store(folder: Path, slide_id: str, m: int = 2, seed: int = 0, **kw: object) -> Path:
    """Write a random store ``folder/<slide_id>.zarr`` with ``m`` regions."""
    rng = np.random.default_rng(seed)
    meta = store_meta(slide_id, **kw)
    f256 = rng.normal(size=(m, 256, meta.feature_dim_256)).astype(np.float32)
    f4k = rng.normal(size=(m, meta.feature_dim_4k)).astype(np.float32)
    coords = np.zeros((m, 2), np.int64)
    return write_store(
        folder / f"{slide_id}.zarr", meta, f256, f4k, coords, np.ones((m, 256), bool)
    )


def mark_incomplete(path: Path) -> None:
    """Turn a finished store into one a killed writer would leave (``complete`` false)."""
    group = zarr.open_group(str(path), mode="r+")
    group.attrs["complete"] = False


def ft_config(task: str, cohort: Path, features: Path, out: Path, *extra: str) -> FinetuneConfig:
    """A finetune config from ``conf/finetune/<task>.yaml`` + the fast CPU settings + extras."""
    args = [f"task={task}", f"cohort={cohort}", f"features={features}", f"out={out}", *FAST, *extra]
    return load_config(FinetuneConfig, f"finetune/{task}.yaml", args)


def reload_predictions(fold: Path, features: Path) -> tuple[pd.DataFrame, dict[str, np.ndarray]]:
    """A fold's ``predictions.csv`` and the same columns recomputed from its exported model.

    Only ``fold/model.safetensors`` and the stores are used: ``hipt.models.load`` rebuilds the
    model from its card, whose ``output`` restores the fitted task (classes, survival bins).
    """
    model, card = load(fold / "model.safetensors")
    task = task_from_state(card.output)
    written = pd.read_csv(fold / "predictions.csv", dtype={"patient_id": str})
    logits = []
    for ids in written["slide_ids"]:
        stores = [open_store(find_store(features, s)) for s in ids.split(";")]
        parts = [s.feats256() if card.consumes == "feats256" else s.feats4k() for s in stores]
        with torch.no_grad():
            logits.append(model(torch.from_numpy(np.concatenate(parts))).logits)
    return written, task.outputs(torch.cat(logits))
