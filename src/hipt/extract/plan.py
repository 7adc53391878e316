"""What to extract: slides of ``regions.parquet``, their expected store metadata, skip/stale."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path
from typing import Any

import numpy as np

from hipt.errors import HiptError
from hipt.features.schema import FeatureStoreMeta
from hipt.features.store import GRID, needs_recompute, read_meta
from hipt.slides.regions import patch_masks, read_metadata, read_regions

log = logging.getLogger(__name__)

REGIONS_FILE = "regions.parquet"
#: Resize applied when the tile stage's read size differs from ``region_px``.
RESIZE = "bilinear-antialias"
#: Store metadata that must match for a store to be reused (everything that changes values).
STALE_KEYS = (
    "slide_id", "model_256", "model_4k", "checkpoint_256_sha256", "checkpoint_4k_sha256",
    "random_weights", "feature_dim_256", "feature_dim_4k", "target_mpp", "region_px", "patch_px",
    "tiling_config_hash", "dtype", "skip_background", "config_hash", "source_size_bytes",
    "n_regions", "schema_version",
)  # fmt: skip


@dataclasses.dataclass
class SlideJob:
    """The regions of one slide, as chosen by the tile stage.

    Attributes:
        slide_id: identifier (store name without ``.zarr``).
        path: slide file.
        coords: ``[M, 2]`` int64 level-0 top-left (x, y) of each region.
        patch_mask: ``[M, 256]`` bool tissue mask per patch, row-major.
        read_level: pyramid level the regions are read at.
        read_size: square side read at ``read_level`` (resized to ``region_px`` when different).
        region_px: region side at ``target_mpp``.
        patch_px: patch side at ``target_mpp``.
        target_mpp: µm/px of the regions.
        slide_mpp: level-0 µm/px of the slide.
    """

    slide_id: str
    path: str
    coords: np.ndarray
    patch_mask: np.ndarray
    read_level: int
    read_size: int
    region_px: int
    patch_px: int
    target_mpp: float
    slide_mpp: float

    @property
    def n_regions(self) -> int:
        """Number of regions ``M``."""
        return int(self.coords.shape[0])

    def source_size(self) -> int:
        """Size in bytes of the slide file now (-1 when it is missing)."""
        try:
            return Path(self.path).stat().st_size
        except OSError:
            return -1


def _one(values: Any, name: str, slide_id: str) -> Any:
    uniq = list(dict.fromkeys(values.tolist() if hasattr(values, "tolist") else values))
    if len(uniq) != 1:
        raise HiptError(f"regions.parquet: slide {slide_id} has several {name} values {uniq}")
    return uniq[0]


def load_jobs(tiles: str | Path) -> tuple[list[SlideJob], str]:
    """Read the tile stage's ``regions.parquet`` into one :class:`SlideJob` per slide.

    Returns:
        (jobs in file order, tiling config hash).

    Raises:
        HiptError: no ``regions.parquet`` in ``tiles``, or a region grid other than 16x16.
    """
    path = Path(tiles) / REGIONS_FILE
    if not path.is_file():
        raise HiptError(f"{path} not found; run `make tile SLIDES=... OUT={tiles}` first")
    tiling_hash = str(read_metadata(path).get("config_hash", ""))
    if not tiling_hash:
        log.warning("%s carries no tiling config hash; tiling changes cannot be detected", path)
    df = read_regions(path)
    jobs = []
    for slide_id, rows in df.groupby("slide_id", sort=False):
        rows = rows.sort_values("region")
        sid = str(slide_id)
        region_px = int(_one(rows["region_px"], "region_px", sid))
        patch_px = int(_one(rows["patch_px"], "patch_px", sid))
        if region_px != GRID * patch_px:
            raise HiptError(
                f"slide {sid}: regions of {region_px} px with {patch_px} px patches make a "
                f"{region_px // patch_px}-patch grid; feature stores hold {GRID}x{GRID} grids"
            )
        jobs.append(
            SlideJob(
                slide_id=sid,
                path=str(_one(rows["slide_path"], "slide_path", sid)),
                coords=rows[["x", "y"]].to_numpy(np.int64),
                patch_mask=patch_masks(rows).reshape(len(rows), GRID * GRID),
                read_level=int(_one(rows["read_level"], "read_level", sid)),
                read_size=int(_one(rows["read_size"], "read_size", sid)),
                region_px=region_px,
                patch_px=patch_px,
                target_mpp=float(_one(rows["target_mpp"], "target_mpp", sid)),
                slide_mpp=float(_one(rows["slide_mpp"], "slide_mpp", sid)),
            )
        )
    return jobs, tiling_hash


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

    @property
    def random_weights(self) -> bool:
        """True when either encoder has no checkpoint."""
        return self.checkpoint_256_sha256 is None or self.checkpoint_4k_sha256 is None

    def config_hash(self) -> str:
        """sha256 of everything that changes feature values (the seed only for random weights)."""
        data = dataclasses.asdict(self)
        data["resize"] = RESIZE
        if not self.random_weights:
            data.pop("seed")
        blob = json.dumps(data, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(blob.encode()).hexdigest()


def expected_meta(
    job: SlideJob, enc: EncoderInfo, tiling_hash: str, code_version: str | None
) -> FeatureStoreMeta:
    """The metadata a store of ``job`` made now would carry (before completion)."""
    return FeatureStoreMeta(
        slide_id=job.slide_id,
        source_path=job.path,
        source_size_bytes=job.source_size(),
        model_256=enc.model_256,
        model_4k=enc.model_4k,
        checkpoint_256_sha256=enc.checkpoint_256_sha256,
        checkpoint_4k_sha256=enc.checkpoint_4k_sha256,
        random_weights=enc.random_weights,
        feature_dim_256=enc.feature_dim_256,
        feature_dim_4k=enc.feature_dim_4k,
        target_mpp=job.target_mpp,
        region_px=job.region_px,
        patch_px=job.patch_px,
        tiling_config_hash=tiling_hash,
        dtype=enc.dtype,
        skip_background=enc.skip_background,
        config_hash=enc.config_hash(),
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

    def fingerprint(self, jobs: list[SlideJob]) -> str:
        """Short hash of the todo list; every rank must compute the same one."""
        ids = [(jobs[i].slide_id, jobs[i].n_regions) for i in self.todo]
        return hashlib.sha256(json.dumps(ids).encode()).hexdigest()[:16]


def store_path(out: str | Path, slide_id: str) -> Path:
    """``OUT/<slide_id>.zarr``."""
    return Path(out) / f"{slide_id}.zarr"


def stale_reason(path: Path, meta: FeatureStoreMeta, job: SlideJob) -> str | None:
    """Why the store at ``path`` cannot be reused for ``job`` (``None``: reuse it)."""
    reason = needs_recompute(path, expect_dict(meta))
    if reason is not None:
        return reason
    from hipt.features.store import open_store

    stored = open_store(path).coords()
    if stored.shape != job.coords.shape or not np.array_equal(stored, job.coords):
        return "coords differ from regions.parquet"
    return None


def make_plan(
    jobs: list[SlideJob], metas: list[FeatureStoreMeta], out: str | Path, overwrite: bool
) -> Plan:
    """Sort slides into skip (complete and matching), stale (existing but different) and todo."""
    todo, skipped, stale = [], [], {}
    for i, (job, meta) in enumerate(zip(jobs, metas, strict=True)):
        path = store_path(out, job.slide_id)
        if overwrite:
            todo.append(i)
            continue
        reason = stale_reason(path, meta, job)
        if reason is None:
            skipped.append(job.slide_id)
            continue
        if reason != "absent" and read_meta(path) is not None:
            stale[job.slide_id] = reason
        todo.append(i)
    return Plan(todo=todo, skipped=skipped, stale=stale)


def shard(jobs: list[SlideJob], todo: list[int], rank: int, world: int) -> list[int]:
    """Slides of ``rank``: todo sorted by region count (largest first), dealt round-robin.

    Every rank computes the same order, so the shards are disjoint and cover ``todo``; a rank
    writes whole slides only, so no two ranks ever touch one store (eva #891).
    """
    order = sorted(todo, key=lambda i: (-jobs[i].n_regions, jobs[i].slide_id))
    return order[rank::world]
