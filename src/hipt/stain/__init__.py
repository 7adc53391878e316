"""Optional stain normalization (Macenko, Reinhard via torchstain) of uint8 RGB patches."""

from hipt.stain.normalizer import (
    METHODS,
    SHIPPED_REFERENCE,
    StainConfig,
    StainNormalizer,
    cost_per_region,
    load_reference,
    tissue_fraction,
)
from hipt.stain.record import normalizer_for_record, stain_text

__all__ = [
    "METHODS",
    "SHIPPED_REFERENCE",
    "StainConfig",
    "StainNormalizer",
    "cost_per_region",
    "load_reference",
    "normalizer_for_record",
    "stain_text",
    "tissue_fraction",
]
