"""Data modules of the two DINO levels: tissue patches of tiled regions; feature-store grids."""

from __future__ import annotations

import logging
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd
import torch
from lightning.pytorch import LightningDataModule
from torch import Tensor
from torch.utils.data import DataLoader, Dataset

from hipt.errors import HiptError
from hipt.features import open_store
from hipt.models.grid import bag_to_grid
from hipt.models.runtime import worker_start_method
from hipt.pretrain.patch_cache import build_patch_cache, open_patch_cache
from hipt.pretrain.sampling import SampleKey, ShardedEpochSampler
from hipt.slides.geometry import SlideGeometry, open_slide_at
from hipt.slides.pixels import read_patch
from hipt.slides.regions import read_metadata
from hipt.slides.tiles import TileSet, load_tiles

log = logging.getLogger(__name__)


class DinoSample(NamedTuple):
    """One sample (collated: one batch): the DINO views, a dummy target, and where it came from."""

    data: list[Tensor]
    target: int
    meta: dict[str, Any]


def tissue_patches(tiles: TileSet) -> pd.DataFrame:
    """One row per tissue patch of the tiled regions: which slide, and its level-0 origin.

    Built with per-region numpy operations (no Python object per patch), so the ~100M patches
    of a TCGA-scale cohort stay a compact table.

    Args:
        tiles: the tile stage's output (:func:`hipt.slides.tiles.load_tiles`).

    Returns:
        Columns ``slide`` (index into ``tiles.slides``), ``slide_id`` (categorical), ``region``,
        ``patch``, ``x``, ``y`` (level-0).
    """
    cols: dict[str, list[np.ndarray]] = {k: [] for k in ("slide", "region", "patch", "x", "y")}
    for s, slide in enumerate(tiles.slides):
        for region, mask in enumerate(slide.patch_mask):
            keep = np.flatnonzero(mask)
            x, y = (int(v) for v in slide.coords[region])
            origins = slide.geometry.patch_origins(x, y)[keep]
            cols["slide"].append(np.full(keep.size, s, dtype=np.int32))
            cols["region"].append(np.full(keep.size, region, dtype=np.int32))
            cols["patch"].append(keep.astype(np.int16))
            cols["x"].append(origins[:, 0])
            cols["y"].append(origins[:, 1])
    flat = {k: np.concatenate(v) if v else np.zeros(0, np.int64) for k, v in cols.items()}
    ids = pd.Categorical.from_codes(flat["slide"], [t.slide_id for t in tiles.slides])
    return pd.DataFrame({"slide": flat["slide"], "slide_id": ids, "region": flat["region"],
                         "patch": flat["patch"], "x": flat["x"], "y": flat["y"]})  # fmt: skip


def evenly(n: int, limit: int | None) -> np.ndarray:
    """``limit`` evenly spaced indices of ``range(n)`` (all of them when ``limit`` is None)."""
    if limit is None or limit >= n:
        return np.arange(n)
    return np.unique(np.linspace(0, n - 1, max(1, limit)).round().astype(np.int64))


class _PerProcess:
    """Handles (slides, stores, memmaps) opened lazily, once per process, never pickled."""

    def __init__(self) -> None:
        self._pid = -1
        self._items: dict[Any, Any] = {}

    def get(self, key: Any, opener: Callable[[], Any]) -> Any:
        if self._pid != os.getpid():
            self._pid, self._items = os.getpid(), {}
        if key not in self._items:
            self._items[key] = opener()
        return self._items[key]

    def __getstate__(self) -> dict[str, Any]:
        return {"_pid": -1, "_items": {}}


class TilePatchDataset(Dataset[DinoSample]):
    """256-px tissue patches read on the fly through the slide reader (or a patch cache).

    Args:
        patches: :func:`tissue_patches` rows.
        geometries: the tiled slides' geometries (``patches.slide`` indexes them).
        transform: ``(uint8 [P, P, 3], seed) -> views``.
        backend: slide reader backend.
        cache: folder of a patch cache built for exactly these rows, or ``None``.
    """

    def __init__(
        self,
        patches: pd.DataFrame,
        geometries: list[SlideGeometry],
        transform: Callable[[np.ndarray, int], list[Tensor]],
        backend: str = "auto",
        cache: Path | None = None,
    ) -> None:
        patches = patches.reset_index(drop=True)
        self.geometries = geometries
        self.slide = patches["slide"].to_numpy(np.int32)
        self.xy = patches[["x", "y"]].to_numpy(np.int64)
        self.transform = transform
        self.backend = backend
        self.cache = cache
        self._open = _PerProcess()

    def __len__(self) -> int:
        return len(self.xy)

    def read(self, index: int) -> np.ndarray:
        """uint8 ``[patch_px, patch_px, 3]`` of patch ``index``."""
        cache = self.cache
        if cache is not None:
            return np.asarray(self._open.get("cache", lambda: open_patch_cache(cache))[index])
        geometry = self.geometries[self.slide[index]]
        reader = self._open.get(
            geometry.slide_id, lambda: open_slide_at(geometry, backend=self.backend)
        )
        return read_patch(reader, geometry, *self.xy[index])

    def __getitem__(self, key: SampleKey) -> DinoSample:
        views = self.transform(self.read(key.index), key.seed)
        return DinoSample(views, 0, {"index": key.index})


class RegionGridDataset(Dataset[DinoSample]):
    """``feats256`` of one region from a Zarr store as a ``[D, 16, 16]`` grid, cut into views.

    Args:
        stores: store paths.
        index: ``[N, 2]`` (store number, region) pairs.
        transform: ``(grid [D, 16, 16], seed) -> views``.
    """

    def __init__(
        self,
        stores: list[Path],
        index: np.ndarray,
        transform: Callable[[Tensor, int], list[Tensor]],
    ) -> None:
        self.stores = stores
        self.index = index
        self.transform = transform
        self._open = _PerProcess()

    def __len__(self) -> int:
        return len(self.index)

    def grid(self, i: int) -> Tensor:
        """``[D, 16, 16]`` float32 grid of sample ``i`` (row-major patches)."""
        s, r = (int(v) for v in self.index[i])
        store = self._open.get(s, lambda: open_store(self.stores[s]))
        bag = torch.from_numpy(store.feats256(slice(r, r + 1)))
        return bag_to_grid(bag)[0]

    def __getitem__(self, key: SampleKey) -> DinoSample:
        views = self.transform(self.grid(key.index), key.seed)
        return DinoSample(views, 0, {"index": key.index})


class _DinoDataModule(LightningDataModule):
    """Loader plumbing shared by both levels: resumable sharded sampler, seeded workers."""

    def __init__(self, batch_size: int, num_workers: int, seed: int, pin_memory: bool) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.pin_memory = pin_memory
        self.dataset: TilePatchDataset | RegionGridDataset | None = None

    def _start_batch(self, epoch: int) -> int:
        """Batches of ``epoch`` a restored run already trained on (0 on a fresh run)."""
        trainer = self.trainer
        if trainer is None or trainer.global_step == 0:
            return 0
        n = self._sampler.batches_per_epoch
        limit = trainer.limit_train_batches
        per_epoch = min(n, int(limit)) if isinstance(limit, int) else int(n * float(limit))
        acc = trainer.accumulate_grad_batches
        steps_per_epoch = max(1, math.ceil(per_epoch / acc))
        done = (trainer.global_step - epoch * steps_per_epoch) * acc
        return max(0, min(done, per_epoch))

    def train_dataloader(self) -> DataLoader[DinoSample]:
        """Loader over this rank's shard (Lightning's own distributed sampler must be off)."""
        if self.dataset is None:
            raise HiptError("call setup() before train_dataloader()")
        trainer = self.trainer
        rank, world = (trainer.global_rank, trainer.world_size) if trainer else (0, 1)
        sampler = ShardedEpochSampler(
            len(self.dataset),
            self.batch_size,
            rank,
            world,
            self.seed,
            start_batch=self._start_batch,
        )
        self._sampler = sampler
        pin = self.pin_memory and torch.cuda.is_available()
        device = trainer.strategy.root_device if trainer is not None else torch.device("cpu")
        start = worker_start_method(device, self.num_workers)  # forkserver beside CUDA
        if start and rank == 0:
            log.info("%d DataLoader worker(s) start by %s: CUDA is initialised in this process",
                     self.num_workers, start)  # fmt: skip
        return DataLoader(
            self.dataset,
            batch_size=self.batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            multiprocessing_context=start,
            pin_memory=pin,
            drop_last=False,
            persistent_workers=self.num_workers > 0,
            generator=torch.Generator().manual_seed(self.seed),
        )


class TileDataModule(_DinoDataModule):
    """DINO data of ViT-256: tissue patches of the tiled regions, multi-cropped.

    Args:
        tiles: tile-stage output folder or its ``regions.parquet``.
        transform: ``(uint8 patch, seed) -> views``, e.g.
            :class:`hipt.pretrain.transforms.TileMultiCrop`.
        batch_size: samples per device.
        num_workers: loader workers.
        seed: data-order and augmentation seed.
        backend: slide reader backend.
        patch_cache: folder of an optional uint8 patch cache (built in ``prepare_data``).
        max_samples: evenly spaced subset of the patches.
        pin_memory: pin host memory on CUDA.
        stain: the stain normalization ``transform`` applies (recorded in ``trained_on``).
    """

    def __init__(
        self,
        tiles: str | Path,
        transform: Callable[[np.ndarray, int], list[Tensor]],
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        backend: str = "auto",
        patch_cache: str | Path | None = None,
        max_samples: int | None = None,
        pin_memory: bool = True,
        stain: str = "none",
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory)
        self.stain = stain
        self.tiles_path = Path(tiles)
        self.transform = transform
        self.backend = backend
        self.patch_cache = Path(patch_cache) if patch_cache else None
        self.max_samples = max_samples
        self._tiles: TileSet | None = None

    @property
    def tiles(self) -> TileSet:
        """The tile stage's output (read once)."""
        if self._tiles is None:
            self._tiles = load_tiles(self.tiles_path, grid=None)
        return self._tiles

    def patches(self) -> pd.DataFrame:
        """The tissue patches used (after ``max_samples``)."""
        table = tissue_patches(self.tiles)
        if table.empty:
            raise HiptError(f"{self.tiles.path}: the tiled regions hold no tissue patch")
        return table.iloc[evenly(len(table), self.max_samples)].reset_index(drop=True)

    def geometries(self) -> list[SlideGeometry]:
        """Geometry of every tiled slide (what ``patches().slide`` indexes)."""
        return [t.geometry for t in self.tiles.slides]

    def prepare_data(self) -> None:
        """Build the patch cache once (local rank 0), if one is configured."""
        if self.patch_cache is not None:
            build_patch_cache(self.patch_cache, self.patches(), self.geometries(), self.backend)

    def setup(self, stage: str | None = None) -> None:
        """Index the tissue patches."""
        if self.dataset is None:
            table = self.patches()
            self.dataset = TilePatchDataset(
                table, self.geometries(), self.transform, self.backend, self.patch_cache
            )
            log.info("%d tissue patches from %d slide(s)", len(table), table.slide_id.nunique())

    def upstream(self) -> dict[str, Any]:
        """What the run read: the tile stage's metadata."""
        return read_metadata(self.tiles.path)

    def trained_on(self) -> dict[str, Any]:
        """What the exported ViT-256 was trained on (recorded in its card)."""
        geoms = self.geometries()
        return {
            "tiling_config_hash": self.tiles.tiling_hash,
            "target_mpp": sorted({g.target_mpp for g in geoms}),
            "patch_px": sorted({g.patch_px for g in geoms}),
            "n_slides": len(geoms),
            "stain": self.stain,
        }


def find_feature_stores(features: str | Path) -> list[Path]:
    """The ``<slide>.zarr`` store folders under ``features`` (or ``features`` itself).

    Raises:
        HiptError: there is none.
    """
    root = Path(features)
    if (root / "zarr.json").is_file():
        return [root]
    stores = sorted(p for p in root.glob("*.zarr") if p.is_dir())
    if not stores:
        raise HiptError(
            f"{root}: no <slide>.zarr feature stores; run `make extract-features` first"
        )
    return stores


class RegionGridDataModule(_DinoDataModule):
    """DINO data of ViT-4K: ``feats256`` of every region of the feature stores as ``[D, 16, 16]``.

    Args:
        features: folder of ``<slide>.zarr`` stores, or one store.
        feature_dim: expected ``feature_dim_256`` (the ViT-4K ``input_dim``).
        transform: ``(grid, seed) -> views`` (:class:`hipt.pretrain.transforms.GridMultiCrop`).
        batch_size: samples per device.
        num_workers: loader workers.
        seed: data-order and augmentation seed.
        min_tissue_patches: skip regions with fewer tissue patches.
        max_samples: evenly spaced subset of the regions.
        pin_memory: pin host memory on CUDA.
    """

    def __init__(
        self,
        features: str | Path,
        feature_dim: int,
        transform: Callable[[Tensor, int], list[Tensor]],
        batch_size: int,
        num_workers: int = 0,
        seed: int = 0,
        min_tissue_patches: int = 1,
        max_samples: int | None = None,
        pin_memory: bool = True,
    ) -> None:
        super().__init__(batch_size, num_workers, seed, pin_memory)
        self.features = Path(features)
        self.feature_dim = feature_dim
        self.transform = transform
        self.min_tissue_patches = min_tissue_patches
        self.max_samples = max_samples
        self.stores: list[Path] = []
        self.store_meta: dict[str, Any] = {}
        self._provenance: dict[str, Any] = {}

    def find_stores(self) -> list[Path]:
        """The store folders under ``features`` (or ``features`` itself)."""
        return find_feature_stores(self.features)

    def setup(self, stage: str | None = None) -> None:
        """Open every store (checking width and provenance) and index its tissue regions."""
        if self.dataset is not None:
            return
        self.stores = self.find_stores()
        rows, encoders = [], set()
        for s, path in enumerate(self.stores):
            store = open_store(path, expect={"feature_dim_256": self.feature_dim})
            meta = store.meta
            encoders.add((meta.model_256, meta.checkpoint_256_sha256, meta.target_mpp))
            keep = np.flatnonzero(store.patch_mask().sum(axis=1) >= self.min_tissue_patches)
            rows.append(np.stack([np.full(keep.size, s), keep], axis=1))
        if len(encoders) > 1:
            raise HiptError(
                f"{self.features}: stores mix ViT-256 encoders or MPPs "
                f"{sorted(encoders, key=str)}; pretrain on one extraction"
            )
        index = np.concatenate(rows) if rows else np.zeros((0, 2), np.int64)
        if len(index) == 0:
            raise HiptError(
                f"{self.features}: no region with >= {self.min_tissue_patches} tissue patches"
            )
        index = index[evenly(len(index), self.max_samples)]
        model, sha, mpp = encoders.pop()
        self.store_meta = {
            "n_stores": len(self.stores),
            "n_regions": len(index),
            "model_256": model,
            "checkpoint_256_sha256": sha,
            "target_mpp": mpp,
        }
        self._provenance = store.meta.provenance()
        self.dataset = RegionGridDataset(self.stores, index, self.transform)
        log.info("%d regions from %d feature store(s)", len(index), len(self.stores))

    def upstream(self) -> dict[str, Any]:
        """What the run read: counts and the patch encoder of the stores."""
        return dict(self.store_meta)

    def trained_on(self) -> dict[str, Any]:
        """What the exported ViT-4K was trained on: the ViT-256 features of these stores."""
        keys = ("model_256", "checkpoint_256_sha256", "feature_dim_256", "target_mpp",
                "region_px", "patch_px")  # fmt: skip
        return {k: self._provenance[k] for k in keys}
