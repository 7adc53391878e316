"""What to extract: slides of ``regions.parquet``, their expected store metadata, skip/stale."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hipt.features.schema import FeatureStoreMeta
from hipt.features.store import needs_recompute, open_store, read_meta, store_path
from hipt.shards import balanced_shards
from hipt.slides.pixels import RESIZE
from hipt.slides.tiles import SlideTiles

log = logging.getLogger(__name__)

#: Store metadata that must match for a store to be reused (everything that changes values):
#: the encoders and their weights, the slide's geometry, the tiling and extraction settings.
STALE_KEYS = (
    "slide_id", "model_256", "model_4k", "checkpoint_256_sha256", "checkpoint_4k_sha256",
    "random_weights", "feature_dim_256", "feature_dim_4k", "input_px_256", "norm_256", "stain",
    "target_mpp", "region_px", "patch_px",
    "slide_mpp", "mpp_source", "slide_width", "slide_height", "read_level", "read_size",
    "tiling_config_hash", "dtype", "skip_background", "precision", "fp32_matmul", "config_hash",
    "source_size_bytes", "n_regions", "schema_version",
)  # fmt: skip


@dataclasses.dataclass(frozen=True)
class EncoderInfo:
    """What identifies the encoders' outputs (names, weights, widths, storage)."""

    model_256: str
    model_4k: str
    checkpoint_256_sha256: str | None
    checkpoint_4k_sha256: str | None
    feature_dim_256: int
    feature_dim_4k: int
    dtype: str
    skip_background: bool
    seed: int
    precision: str = "32-true"
    fp32_matmul: str = "ieee"
    decode: str = "cpu"
    input_px_256: int = 256
    norm_256: str = "mean=0.5,0.5,0.5 std=0.5,0.5,0.5 resize=none"
    stain: str = "none"

    @classmethod
    def from_meta(cls, meta: FeatureStoreMeta, seed: int) -> EncoderInfo:
        """The settings a store records (``seed``: extraction's, for random weights)."""
        recorded = meta.to_dict()
        names = [f.name for f in dataclasses.fields(cls) if f.name != "seed"]
        return cls(seed=seed, **{name: recorded[name] for name in names})

    @property
    def random_weights(self) -> bool:
        """True when either encoder has no checkpoint."""
        return self.checkpoint_256_sha256 is None or self.checkpoint_4k_sha256 is None

    def store_fields(self) -> dict[str, Any]:
        """The store metadata fields that record these encoders (and their config hash)."""
        fields = dataclasses.asdict(self)
        fields.pop("seed")
        return {**fields, "random_weights": self.random_weights, "config_hash": self.config_hash()}

    def config_hash(self) -> str:
        """sha256 of everything that changes feature values (the seed only for random weights)."""
        data = dataclasses.asdict(self)
        data.pop("decode")  # recorded, but the decoders agree to within JPEG rounding
        data["resize"] = RESIZE
        if not self.random_weights:
            data.pop("seed")
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def expected_meta(
    job: SlideTiles, enc: EncoderInfo, tiling_hash: str, code_version: str | None
) -> FeatureStoreMeta:
    """The metadata a store of ``job`` made now would carry (before completion)."""
    return FeatureStoreMeta(
        **FeatureStoreMeta.geometry_fields(job.geometry),
        **enc.store_fields(),
        source_size_bytes=job.source_size(),
        tiling_config_hash=job.tiling_key(tiling_hash),
        code_version=code_version,
        n_regions=job.n_regions,
    )


def expect_dict(meta: FeatureStoreMeta) -> dict[str, Any]:
    """The :data:`STALE_KEYS` subset of ``meta``, for ``open_store(expect=...)``."""
    full = meta.to_dict()
    return {k: full[k] for k in STALE_KEYS}


@dataclasses.dataclass
class Plan:
    """Which slides to encode now and why.

    Attributes:
        todo: positions (into the job list) of slides to encode, in job order.
        skipped: slide ids whose complete, matching store is kept.
        stale: slide id -> why its existing store is recomputed (or refused).
    """

    todo: list[int]
    skipped: list[str]
    stale: dict[str, str]

    def fingerprint(self, jobs: list[SlideTiles]) -> str:
        """Short hash of the todo list; every rank must compute the same one."""
        ids = [(jobs[i].slide_id, jobs[i].n_regions) for i in self.todo]
        return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def stale_reason(
    path: Path, meta: FeatureStoreMeta, job: SlideTiles, verify: bool = True
) -> str | None:
    """Why the store at ``path`` cannot be reused for ``job`` (``None``: reuse it).

    With ``verify`` every chunk is decoded once (checksums), so a damaged store is recomputed.
    """
    reason = needs_recompute(path, expect_dict(meta), verify=verify)
    if reason is not None:
        return reason
    stored = open_store(path).coords()
    if stored.shape != job.coords.shape or not np.array_equal(stored, job.coords):
        return "coords differ from regions.parquet"
    return None


def make_plan(
    jobs: list[SlideTiles],
    metas: list[FeatureStoreMeta],
    out: str | Path,
    overwrite: bool,
    verify: bool = True,
) -> Plan:
    """Sort slides into skip (complete and matching), stale (existing but different) and todo."""
    todo, skipped, stale = [], [], {}
    for i, (job, meta) in enumerate(zip(jobs, metas, strict=True)):
        path = store_path(out, job.slide_id)
        if overwrite:
            todo.append(i)
            continue
        reason = stale_reason(path, meta, job, verify)
        if reason is None:
            skipped.append(job.slide_id)
            continue
        if reason != "absent" and read_meta(path) is not None:
            stale[job.slide_id] = reason
        todo.append(i)
    return Plan(todo=todo, skipped=skipped, stale=stale)


def shard(jobs: list[SlideTiles], todo: list[int], rank: int, world: int) -> list[int]:
    """Slides of ``rank``: ``todo`` balanced by region count (:func:`hipt.shards.balanced_shards`).

    Every rank computes the same deal, so the shards are disjoint and cover ``todo``; a rank
    writes whole slides only, so no two ranks ever touch one store (eva #891).
    """
    ordered = sorted(todo, key=lambda i: jobs[i].slide_id)  # the same order on every rank
    deal = balanced_shards([jobs[i].n_regions for i in ordered], world)
    return [ordered[k] for k in deal[rank]]
