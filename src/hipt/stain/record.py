"""A stain normalization as a feature store records it, and the normalizer rebuilt from it."""

from __future__ import annotations

import json
from typing import Any

from hipt.errors import HiptError
from hipt.stain.normalizer import StainConfig, StainNormalizer

__all__ = ["normalizer_for_record", "stain_text"]


def stain_text(normalizer: StainNormalizer | None) -> str:
    """What a store records: ``none``, or the normalizer's provenance as canonical JSON."""
    if normalizer is None or not normalizer.enabled:
        return "none"
    return json.dumps(normalizer.provenance(), sort_keys=True, separators=(",", ":"))


def normalizer_for_record(
    record: str, reference: str | None, device: Any = "cpu"
) -> StainNormalizer | None:
    """The normalizer that made a store's patches (``None`` for ``none``).

    Args:
        record: the store's ``stain`` field.
        reference: the reference image the store was made with (``None``: the shipped one).
        device: where the normalizer runs.

    Raises:
        HiptError: the rebuilt normalizer differs from the record (another reference image).
    """
    if record == "none":
        return None
    prov = json.loads(record)
    cfg = StainConfig(
        method=str(prov["method"]),
        reference=reference,
        min_tissue_fraction=float(prov.get("min_tissue_fraction", 0.1)),
    )
    cfg.validate()
    normalizer = StainNormalizer.from_config(cfg, device)
    if stain_text(normalizer) != record:
        raise HiptError(
            f"the store's patches were stain-normalized ({prov['method']}, reference "
            f"{prov.get('reference')}) otherwise than stain_reference={reference} gives; pass "
            "the reference image the features were extracted with"
        )
    return normalizer
