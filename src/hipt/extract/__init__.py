"""Feature extraction stage: tiled regions -> ViT-256 / ViT-4K features in per-slide Zarr stores."""

from hipt.extract.config import ExtractConfig
from hipt.extract.dataset import PatchBatch, RegionStream, resize_region, unfold_patches
from hipt.extract.encoder import RegionAssembler, RegionEncoder
from hipt.extract.plan import SlideJob, load_jobs, shard

__all__ = [
    "ExtractConfig",
    "PatchBatch",
    "RegionAssembler",
    "RegionEncoder",
    "RegionStream",
    "SlideJob",
    "load_jobs",
    "resize_region",
    "shard",
    "unfold_patches",
]
