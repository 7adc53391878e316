"""``make encode-4k``: recompute a store's ``feats4k`` from its ``feats256`` with another ViT-4K.

After ``make pretrain-4k`` the stores' region features were made with the ViT-4K of extraction
time (often random weights). Reading every slide again to update them would repeat the costly
ViT-256 pass; the ViT-4K needs only the cached 16x16 grids. This stage re-encodes them, store by
store, and replaces each store atomically:

* the new store is assembled under a hidden temporary name: ``feats256``, ``coords`` and
  ``patch_mask`` chunks are hard-linked (no copy; chunk files are never written in place),
  metadata files are copied, ``feats4k`` is written new;
* its metadata records the new ViT-4K (name, checkpoint sha256, width) and the extraction config
  hash it would have had, so ``make extract-features CHECKPOINT4K=<same file>`` finds it current
  and a finetune that expects another ViT-4K (``expect_checkpoint_4k``) refuses it;
* the rename replaces the old store only once the new one is complete: a killed run leaves
  every store either old or new, never half-written.

The ViT-4K runs at the precision and float32 matmul mode the store records (its ``feats256``
were made that way): stores made on the GPU in bf16 are re-encoded on a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
from torch import nn

from hipt.errors import HiptError, one_line
from hipt.extract.config import Encode4KConfig, validate_encode4k
from hipt.extract.plan import EncoderInfo
from hipt.features.schema import FeatureStoreMeta
from hipt.features.store import (
    FEATS4K_DTYPE,
    STORE_SUFFIX,
    create_feats4k,
    needs_recompute,
    open_store,
    read_meta,
    replace_store,
)
from hipt.io import clean_stale_tmp, remove_path, tmp_path_for
from hipt.lock import RunLock
from hipt.models.grid import bag_to_grid
from hipt.models.runtime import resolve_device, set_fp32_matmul
from hipt.provenance import git_state, sha256_file
from hipt.stage import StageRun

if TYPE_CHECKING:
    from hipt.models import Vit4K

log = logging.getLogger(__name__)

STAGE = "encode_4k"
#: What a store shares with its re-encoded successor, unchanged (hard-linked chunks).
KEPT_ARRAYS = ("feats256", "coords", "patch_mask")
AUTOCAST = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


def link_tree(src: Path, dst: Path) -> None:
    """Mirror ``src`` under ``dst``: chunk files hard-linked, ``zarr.json`` files copied.

    Metadata files are copied because the new store rewrites them; a chunk file is only ever
    replaced whole, so sharing its inode cannot change the old store. Where hard links are not
    possible (another file system, no permission) the chunk is copied.
    """
    for root, _dirs, files in os.walk(src):
        target = dst / Path(root).relative_to(src)
        target.mkdir(parents=True, exist_ok=True)
        for name in files:
            s, d = Path(root) / name, target / name
            if name == "zarr.json":
                shutil.copy2(s, d)
                continue
            try:
                os.link(s, d)
            except OSError:
                shutil.copy2(s, d)


def encoder_info(
    meta: FeatureStoreMeta, model_4k: str, sha: str, dim: int, seed: int
) -> EncoderInfo:
    """The extraction settings a store with this ViT-4K would have been made with."""
    return dataclasses.replace(
        EncoderInfo.from_meta(meta, seed),
        model_4k=model_4k,
        checkpoint_4k_sha256=sha,
        feature_dim_4k=dim,
    )


@dataclasses.dataclass
class Encoder4K:
    """The new ViT-4K, where it runs, and what identifies its output."""

    model: nn.Module
    name: str
    sha256: str
    dim: int
    device: torch.device
    seed: int

    def autocast(self, precision: str) -> contextlib.AbstractContextManager[Any]:
        """The store's precision on this device; refuses a GPU-made store on a CPU run."""
        dtype = AUTOCAST.get(precision)
        if dtype is None:
            return contextlib.nullcontext()
        if self.device.type != "cuda":
            raise HiptError(
                f"its feats256 were made at {precision} on a GPU; run `make encode-4k` on a "
                "GPU machine (trainer runs at the store's precision) or re-extract"
            )
        return torch.autocast(device_type="cuda", dtype=dtype)

    def matmul(self, mode: str) -> None:
        """Use the store's float32 matmul mode (``tf32`` exists on CUDA only)."""
        got = set_fp32_matmul(self.device, tf32=mode == "tf32")
        if got != mode:
            raise HiptError(
                f"its features were made with fp32 matmul {mode}, this device runs {got}; "
                "re-encode on the kind of device that extracted it"
            )

    @torch.inference_mode()
    def encode(self, path: Path, meta: FeatureStoreMeta, batch: int) -> np.ndarray:
        """``[M, D4k]`` float32 ViT-4K CLS of every region of the store, ``batch`` at a time."""
        store = open_store(path)
        self.matmul(meta.fp32_matmul)
        out = np.zeros((store.n_regions, self.dim), dtype=np.float32)
        with self.autocast(meta.precision):
            for start in range(0, store.n_regions, batch):
                bags = torch.from_numpy(store.feats256(slice(start, start + batch)))
                feats = self.model(bag_to_grid(bags.to(self.device)))
                out[start : start + len(bags)] = feats.float().cpu().numpy()
        return out


def new_meta(meta: FeatureStoreMeta, enc: Encoder4K, code_version: str | None) -> FeatureStoreMeta:
    """``meta`` with the new ViT-4K recorded (and the config hash extraction would give it)."""
    info = encoder_info(meta, enc.name, enc.sha256, enc.dim, enc.seed)
    now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    return dataclasses.replace(
        meta, **info.store_fields(), code_version=code_version, created_at=now, complete=True
    )


def rewrite_store(path: Path, meta: FeatureStoreMeta, feats4k: np.ndarray) -> None:
    """Replace the store at ``path`` with one whose ``feats4k`` and metadata are new.

    Assembled under a temporary sibling and renamed into place (see the module docstring).
    """
    import zarr

    tmp = tmp_path_for(path)
    remove_path(tmp)
    try:
        tmp.mkdir(parents=True)
        shutil.copy2(path / "zarr.json", tmp / "zarr.json")
        for name in KEPT_ARRAYS:
            link_tree(path / name, tmp / name)
        group = zarr.open_group(str(tmp), mode="r+")
        m, d4k = feats4k.shape
        create_feats4k(group, *feats4k.shape)[:] = feats4k.astype(FEATS4K_DTYPE)
        group.attrs.update(meta.to_dict())
        replace_store(tmp, path)
    except BaseException:
        remove_path(tmp)
        raise


def why_skip(path: Path, enc: Encoder4K, overwrite: bool) -> str | None:
    """``"current"`` for a store already made with this ViT-4K, an error, or None (encode it).

    A store extraction would not reuse (absent, incomplete, another schema: the same checks,
    :func:`~hipt.features.store.needs_recompute`) is an error naming the fix.
    """
    problem = needs_recompute(path)
    if problem is not None:
        return f"{problem} store; rerun `make extract-features` for it"
    meta = read_meta(path)
    assert meta is not None  # needs_recompute found a complete store
    if meta.feature_dim_256 != getattr(enc.model, "input_dim", meta.feature_dim_256):
        return (
            f"feats256 are {meta.feature_dim_256}-d but {enc.name} takes "
            f"{enc.model.input_dim}-d grids; pick a ViT-4K built for this patch encoder"
        )
    same = meta.model_4k == enc.name and meta.checkpoint_4k_sha256 == enc.sha256
    return "current" if same and not overwrite else None


def stores(folder: Path) -> Iterator[Path]:
    """Every ``<slide_id>.zarr`` of ``folder`` (temporaries excluded), sorted."""
    for path in sorted(folder.glob(f"*{STORE_SUFFIX}")):
        if not path.name.startswith("."):
            yield path


def build_encoder(cfg: Encode4KConfig) -> Encoder4K:
    """The ViT-4K of ``cfg.checkpoint4k`` on the resolved device, in eval mode."""
    from hipt.models import build, model_spec
    from hipt.models.card import card_path, read_card

    ckpt = Path(cfg.checkpoint4k)
    card = read_card(ckpt) if card_path(ckpt).is_file() else None
    name = cfg.model_4k or (card.architecture if card else "vit4k_xs")
    model_spec(name)  # an unknown name is a configuration error naming the choices
    device = resolve_device(cfg.accelerator)
    # an export knows its architecture arguments (input_dim: the width it was trained on)
    kwargs = card.kwargs if card is not None and card.architecture == name else {}
    model = cast("Vit4K", build(name, checkpoint=ckpt, **kwargs)).eval().to(device)
    return Encoder4K(model, name, sha256_file(ckpt), int(model.embed_dim), device, cfg.seed)


def run(cfg: Encode4KConfig) -> int:
    """Re-encode ``feats4k`` of every store in ``cfg.features``.

    Returns:
        0 when every store now carries this ViT-4K's features, 1 when any store failed (the
        others are done; a failed store is left as it was).
    """
    validate_encode4k(cfg)
    features = Path(cfg.features)
    if not features.is_dir():
        raise HiptError(f"{features}: no feature store folder; run `make extract-features` first")
    enc = build_encoder(cfg)
    sha, dirty = git_state()
    code_version = None if sha is None else f"{sha}{'-dirty' if dirty else ''}"
    out = Path(cfg.out) if cfg.out else features / STAGE
    done: list[dict[str, Any]] = []
    current: list[str] = []
    failed: list[dict[str, str]] = []
    # The stores' folder is locked too: no extraction may write there meanwhile.
    with RunLock(features), StageRun(STAGE, cfg, out, inputs=[cfg.checkpoint4k]) as run:
        for tmp in clean_stale_tmp(features):  # a killed run's: its old store is in place
            log.info("removed %s left by an interrupted run", tmp)
        log.info("encode-4k: device %s; %s from %s; each store at its own precision",
                 enc.device, enc.name, cfg.checkpoint4k)  # fmt: skip
        t0 = time.perf_counter()
        for path in stores(features):
            try:
                reason = why_skip(path, enc, cfg.overwrite)
                if reason == "current":
                    current.append(path.stem)
                    continue
                meta = read_meta(path)
                if reason is not None or meta is None:
                    raise HiptError(reason or "unreadable store")
                t = time.perf_counter()
                feats4k = enc.encode(path, meta, cfg.batch_size)
                rewrite_store(path, new_meta(meta, enc, code_version), feats4k)
                secs = round(time.perf_counter() - t, 3)
                done.append({"slide_id": path.stem, "n_regions": len(feats4k), "seconds": secs})
            except HiptError as err:
                failed.append({"slide_id": path.stem, "error": f"{path}: {one_line(err)}"})
                log.error("encode-4k: %s: %s", path, one_line(err))
        seconds = time.perf_counter() - t0
        n = sum(d["n_regions"] for d in done)
        totals = {"stores": len(done) + len(current) + len(failed), "encoded": len(done),
                  "current": len(current), "failed": len(failed), "regions": n,
                  "seconds": round(seconds, 3)}  # fmt: skip
        run.write_summary({"stage": STAGE, "features": str(features), "model_4k": enc.name,
                           "checkpoint_4k_sha256": enc.sha256, "totals": totals,
                           "encoded": done, "current": current, "failed": failed})  # fmt: skip
        if done:
            run.logger.log_metrics({f"total/{k}": v for k, v in totals.items()})
        run.done({"totals": totals, "model_4k": enc.name, "checkpoint_4k_sha256": enc.sha256})
        if failed:
            run.close_logger(ok=False)
    log.info("encode-4k: %d re-encoded (%d regions, %.1f s), %d already current, %d failed",
             len(done), n, seconds, len(current), len(failed))  # fmt: skip
    return 1 if failed else 0
