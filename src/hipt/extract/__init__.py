"""Feature extraction stage: tiled regions -> ViT-256 / ViT-4K features in per-slide Zarr stores."""

from hipt.extract.config import ExtractConfig
from hipt.extract.dataset import PatchBatch, RegionStream
from hipt.extract.encoder import RegionAssembler, RegionEncoder
from hipt.extract.plan import shard

__all__ = [
    "ExtractConfig",
    "PatchBatch",
    "RegionAssembler",
    "RegionEncoder",
    "RegionStream",
    "shard",
]
