"""Per-slide Zarr feature stores: ViT-256 region grids, ViT-4K region features, coordinates."""

from hipt.features.schema import PROVENANCE_KEYS, SCHEMA_VERSION, FeatureStoreMeta
from hipt.features.store import (
    FeatureStore,
    StoreWriter,
    find_store,
    needs_recompute,
    open_store,
    store_path,
    write_store,
)

__all__ = [
    "PROVENANCE_KEYS",
    "SCHEMA_VERSION",
    "FeatureStore",
    "FeatureStoreMeta",
    "StoreWriter",
    "find_store",
    "needs_recompute",
    "open_store",
    "store_path",
    "write_store",
]
