"""Typed metadata of a per-slide feature store (stored as the Zarr group's attributes)."""

from __future__ import annotations

import dataclasses
from typing import Any

SCHEMA_VERSION = 1


@dataclasses.dataclass
class FeatureStoreMeta:
    """What a store holds and what made it; readers compare it with what they expect.

    Attributes:
        slide_id: slide identifier (store file name without ``.zarr``).
        source_path: slide file the regions were read from.
        source_size_bytes: its size when read (a changed file makes the store stale).
        model_256: registry name of the ViT-256 encoder (e.g. ``vit256_small``).
        model_4k: registry name of the ViT-4K encoder.
        checkpoint_256_sha256: sha256 of the ViT-256 weights file; ``None`` for random weights.
        checkpoint_4k_sha256: sha256 of the ViT-4K weights file; ``None`` for random weights.
        random_weights: True when either encoder ran without a checkpoint.
        feature_dim_256: width of ``feats256`` (384 for ViT-S).
        feature_dim_4k: width of ``feats4k`` (192 for ViT-4K XS).
        target_mpp: microns per pixel the regions were read at.
        region_px: region side at ``target_mpp`` (4096).
        patch_px: patch side at ``target_mpp`` (256).
        tiling_config_hash: hash of the tiling settings that chose the regions.
        dtype: storage dtype of the feature arrays (``float16`` or ``float32``).
        skip_background: True when empty patches got the blank-patch feature.
        config_hash: hash of the extraction settings that change the features.
        code_version: git sha of the code.
        created_at: ISO time the store was finalised.
        n_regions: number of regions ``M``.
        complete: set last, just before the atomic rename; readers refuse stores without it.
        schema_version: layout version of the store.
    """

    slide_id: str
    source_path: str
    source_size_bytes: int
    model_256: str
    model_4k: str
    checkpoint_256_sha256: str | None
    checkpoint_4k_sha256: str | None
    random_weights: bool
    feature_dim_256: int
    feature_dim_4k: int
    target_mpp: float
    region_px: int
    patch_px: int
    tiling_config_hash: str
    dtype: str = "float16"
    skip_background: bool = False
    config_hash: str = ""
    code_version: str | None = None
    created_at: str = ""
    n_regions: int = 0
    complete: bool = False
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        """Plain dict for the Zarr attributes."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureStoreMeta:
        """Inverse of :meth:`to_dict`; unknown keys (from newer writers) are ignored."""
        fields = dataclasses.fields(cls)
        required = [f.name for f in fields if f.default is dataclasses.MISSING]
        missing = [name for name in required if name not in data]
        if missing:
            from hipt.errors import StaleOutputError

            raise StaleOutputError(
                f"store metadata lacks {', '.join(missing)} (made by another hipt version); "
                "re-extract features"
            )
        names = {f.name for f in fields}
        return cls(**{k: v for k, v in data.items() if k in names})
