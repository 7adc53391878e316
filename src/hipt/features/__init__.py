"""Per-slide Zarr feature stores: ViT-256 region grids, ViT-4K region features, coordinates."""

from hipt.features.schema import SCHEMA_VERSION, FeatureStoreMeta
from hipt.features.store import FeatureStore, StoreWriter, open_store, write_store

__all__ = [
    "SCHEMA_VERSION",
    "FeatureStore",
    "FeatureStoreMeta",
    "StoreWriter",
    "open_store",
    "write_store",
]
