"""Typed config of the tile stage (``conf/tile.yaml``) and its validation."""

from __future__ import annotations

import dataclasses

from hipt.config import WandbConfig, config_hash, non_result
from hipt.errors import ConfigError
from hipt.slides.annotations import RoiConfig, validate_roi_config
from hipt.slides.tissue import TissueConfig, validate_tissue_config


@dataclasses.dataclass
class TileConfig:
    """Settings of ``make tile``; see ``conf/tile.yaml`` for the documented defaults.

    Attributes:
        slides: a folder of slides (files, DICOM series folders) or a CSV with
            ``slide_id,path`` (optional ``mpp``, ``annotations``) columns.
        out: output folder.
        annotations: folder of ``<slide_id>.geojson`` QuPath annotation files (a manifest's
            ``annotations`` column, when filled, names a slide's file instead).
        target_mpp: microns per pixel of the regions (0.5 ~ 20x).
        region_px: region side in target pixels.
        patch_px: patch side in target pixels; ``region_px`` must be a multiple of it.
        min_tissue: keep a region when at least this fraction of it is tissue.
        min_patch_tissue: a patch counts as tissue in the patch mask from this fraction on.
        mpp_tolerance: a level up to this much (relative) coarser than ``target_mpp`` is still
            read directly instead of falling back to a finer level.
        mpp_override: level-0 µm/px to use for every slide instead of the file's own.
        backend: slide reader backend (``auto`` picks per file).
        num_workers: reader threads for the verification reads.
        thumbnail_px: longest side of the thumbnail that tissue is segmented on.
        verify_read: decode every kept region once at its read level, so an unreadable tile
            fails the slide here instead of in the middle of feature extraction.
        overwrite: redo slides that are already done with the same settings.
        tissue: tissue segmentation parameters.
        roi: which annotation classes bound (``include``) or remove (``exclude``) tissue.
        wandb: Weights & Biases settings.
    """

    # Fields declared non_result never change which regions a slide gets; everything else goes
    # into the tiling hash, so a key added later is conservatively treated as result-changing.
    # ``slides`` is non-result because each slide's own identity (size, mtime) is stored with
    # its output; ``backend`` because every backend must return the same pixels; ``annotations``
    # because each slide's annotation file (its sha256) is stored with its output.
    slides: str = non_result("???")
    out: str = non_result("data/tiles")
    annotations: str | None = non_result(None)
    target_mpp: float = 0.5
    region_px: int = 4096
    patch_px: int = 256
    min_tissue: float = 0.01
    min_patch_tissue: float = 0.25
    mpp_tolerance: float = 0.02
    mpp_override: float | None = None
    backend: str = non_result("auto")
    num_workers: int = non_result(2)
    thumbnail_px: int = 2048
    verify_read: bool = True
    overwrite: bool = non_result(False)
    tissue: TissueConfig = dataclasses.field(default_factory=TissueConfig)
    roi: RoiConfig = dataclasses.field(default_factory=RoiConfig)
    wandb: WandbConfig = non_result(default_factory=WandbConfig)


def validate(cfg: TileConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid value."""
    if not cfg.slides or not str(cfg.slides).strip():
        raise ConfigError("slides must name a folder of slides or a manifest CSV")
    if cfg.target_mpp <= 0:
        raise ConfigError(f"target_mpp must be > 0, got {cfg.target_mpp}")
    if cfg.patch_px <= 0 or cfg.region_px <= 0 or cfg.region_px % cfg.patch_px:
        raise ConfigError(
            f"region_px ({cfg.region_px}) must be a positive multiple of patch_px ({cfg.patch_px})"
        )
    for key in ("min_tissue", "min_patch_tissue"):
        value = getattr(cfg, key)
        if not 0.0 <= value <= 1.0:
            raise ConfigError(f"{key} must be in [0, 1], got {value}")
    if cfg.mpp_tolerance < 0:
        raise ConfigError(f"mpp_tolerance must be >= 0, got {cfg.mpp_tolerance}")
    if cfg.mpp_override is not None and cfg.mpp_override <= 0:
        raise ConfigError(f"mpp_override must be > 0 µm/px, got {cfg.mpp_override}")
    if cfg.num_workers < 0:
        raise ConfigError(f"num_workers must be >= 0, got {cfg.num_workers}")
    if cfg.thumbnail_px < 64:
        raise ConfigError(f"thumbnail_px must be >= 64, got {cfg.thumbnail_px}")
    validate_tissue_config(cfg.tissue)
    validate_roi_config(cfg.roi)


def tiling_hash(cfg: TileConfig) -> str:
    """sha256 of the settings that change the regions (the non-result fields left out)."""
    return config_hash(cfg)
