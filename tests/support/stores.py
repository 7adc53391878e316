"""Feature-store metadata for tests: every required field with a plausible default."""

from __future__ import annotations

from typing import Any

from hipt.features import FeatureStoreMeta
from hipt.slides.geometry import SlideGeometry


def geometry(slide_id: str = "s", **kw: Any) -> SlideGeometry:
    """A slide read at level 0 of a 0.5 µm/px scan into 4096-px regions (fields overridable)."""
    base: dict[str, Any] = {
        "slide_id": slide_id, "path": f"synthetic/{slide_id}.svs", "backend": "synthetic",
        "width": 8192, "height": 4096, "mpp": 0.5, "mpp_source": "override", "read_level": 0,
        "read_size": 4096, "read_downsample": 1.0, "target_mpp": 0.5, "region_px": 4096,
        "patch_px": 256,
    }  # fmt: skip
    return SlideGeometry(**{**base, **kw})


def store_meta(
    slide_id: str = "s", geom: SlideGeometry | None = None, **kw: Any
) -> FeatureStoreMeta:
    """A store's metadata: ``geom`` (default :func:`geometry`) plus encoder fields, overridable."""
    g = geom if geom is not None else geometry(slide_id)
    base: dict[str, Any] = {
        **FeatureStoreMeta.geometry_fields(g),
        "source_size_bytes": 0, "model_256": "vit256_tiny_test", "model_4k": "vit4k_tiny_test",
        "checkpoint_256_sha256": None, "checkpoint_4k_sha256": None, "random_weights": True,
        "feature_dim_256": 32, "feature_dim_4k": 16, "tiling_config_hash": "test",
        "dtype": "float32",
    }  # fmt: skip
    return FeatureStoreMeta(**{**base, **kw})
