"""Typed metadata of a per-slide feature store (stored as the Zarr group's attributes)."""

from __future__ import annotations

import dataclasses
from typing import Any

from hipt.slides.geometry import SlideGeometry

#: v2: slide geometry (MPP and its source, read level/size, level-0 size) and crc32c checksums.
#: v3: the precision, fp32 matmul mode and decode path the features were computed with.
#: v4: the patch encoder's input (side, normalization, resize) and the stain normalization.
SCHEMA_VERSION = 4

#: What a model trained on stores depends on: stores of one cohort must agree on these, and a
#: model applied to new stores (predict, heatmap) needs the same values.
PROVENANCE_KEYS = (
    "model_256",
    "checkpoint_256_sha256",
    "feature_dim_256",
    "input_px_256",
    "norm_256",
    "stain",
    "model_4k",
    "checkpoint_4k_sha256",
    "feature_dim_4k",
    "target_mpp",
    "region_px",
    "patch_px",
)


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
        input_px_256: side of the patch encoder's input (256-px patches are resized to it).
        norm_256: the patch encoder's input normalization and resize, as text.
        stain: stain normalization of the patches: ``none`` or its provenance as canonical
            JSON (method, reference and its fitted stain values).
        target_mpp: microns per pixel the regions were read at.
        region_px: region side at ``target_mpp`` (4096).
        patch_px: patch side at ``target_mpp`` (256).
        slide_mpp: level-0 µm/px of the slide as tiling used it.
        mpp_source: where ``slide_mpp`` came from (file metadata, ``override``, ``manifest``).
        slide_width: level-0 width of the slide.
        slide_height: level-0 height of the slide.
        read_level: pyramid level the regions were read at.
        read_size: square side read at ``read_level`` (resized to ``region_px``).
        read_downsample: level-0 pixels per ``read_level`` pixel.
        backend: reader backend that tiled the slide.
        tiling_config_hash: what chose the regions: the tiling settings hash, combined with
            the sha256 of the slide's annotation file when it had one.
        dtype: storage dtype of ``feats256`` (``float16`` or ``float32``); ``feats4k`` is
            always written float32 (stores written before may hold float16; both read as
            float32).
        skip_background: True when empty patches got the blank-patch feature.
        precision: Lightning precision the encoders ran at (``32-true``, ``bf16-mixed``); a
            store of another precision is stale (CPU fp32 and GPU bf16 stores never mix).
        fp32_matmul: float32 matmuls in ``ieee`` or ``tf32`` (CUDA only).
        decode: where the JPEG tiles were decoded (``cpu``, ``gpu_batch``): recorded, not a
            staleness key (the decoders agree to within JPEG's rounding).
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
    slide_mpp: float
    mpp_source: str
    slide_width: int
    slide_height: int
    read_level: int
    read_size: int
    read_downsample: float
    backend: str
    tiling_config_hash: str
    input_px_256: int = 256
    norm_256: str = "mean=0.5,0.5,0.5 std=0.5,0.5,0.5 resize=none"
    stain: str = "none"
    dtype: str = "float16"
    skip_background: bool = False
    precision: str = "32-true"
    fp32_matmul: str = "ieee"
    decode: str = "cpu"
    config_hash: str = ""
    code_version: str | None = None
    created_at: str = ""
    n_regions: int = 0
    complete: bool = False
    schema_version: int = SCHEMA_VERSION

    @classmethod
    def geometry_fields(cls, geometry: SlideGeometry) -> dict[str, Any]:
        """The store fields that record ``geometry`` (pass them on to the constructor)."""
        return {
            "slide_id": geometry.slide_id,
            "source_path": geometry.path,
            "target_mpp": geometry.target_mpp,
            "region_px": geometry.region_px,
            "patch_px": geometry.patch_px,
            "slide_mpp": geometry.mpp,
            "mpp_source": geometry.mpp_source,
            "slide_width": geometry.width,
            "slide_height": geometry.height,
            "read_level": geometry.read_level,
            "read_size": geometry.read_size,
            "read_downsample": geometry.read_downsample,
            "backend": geometry.backend,
        }

    def geometry(self) -> SlideGeometry:
        """How the store's slide was read (the tile stage's record, carried along)."""
        return SlideGeometry(
            slide_id=self.slide_id,
            path=self.source_path,
            backend=self.backend,
            width=self.slide_width,
            height=self.slide_height,
            mpp=self.slide_mpp,
            mpp_source=self.mpp_source,
            read_level=self.read_level,
            read_size=self.read_size,
            read_downsample=self.read_downsample,
            target_mpp=self.target_mpp,
            region_px=self.region_px,
            patch_px=self.patch_px,
        )

    def provenance(self) -> dict[str, Any]:
        """The :data:`PROVENANCE_KEYS` values (what a model trained on this store relies on)."""
        return {k: getattr(self, k) for k in PROVENANCE_KEYS}

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
