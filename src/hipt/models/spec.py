"""What a registered model is: its kind, what it consumes and its preprocessing.

Like timm's ``pretrained_cfg``: stages dispatch on these declarations, never on names or
attributes.
"""

from __future__ import annotations

import dataclasses
from typing import Any

#: Input kinds: RGB patches, ViT-256 grids of a store (``feats256 [M,256,D]``), or the store's
#: region features (``feats4k [M,D4k]``).
PIXELS, FEATS256, FEATS4K = "pixels", "feats256", "feats4k"
INPUT_KINDS = (PIXELS, FEATS256, FEATS4K)
#: Model kinds, one per level of the hierarchy.
PATCH_ENCODER, REGION_ENCODER, SLIDE_HEAD = "patch_encoder", "region_encoder", "slide_head"
MODEL_KINDS = (PATCH_ENCODER, REGION_ENCODER, SLIDE_HEAD)


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How uint8 RGB patches become a patch encoder's input.

    Attributes:
        input_px: side of the patch the encoder sees (256-px patches are resized to it).
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std on the [0, 1] scale.
    """

    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (model sidecars, store attributes)."""
        return {"input_px": self.input_px, "mean": list(self.mean), "std": list(self.std)}


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """The declaration a model is registered with.

    Attributes:
        kind: ``patch_encoder``, ``region_encoder`` or ``slide_head``.
        inputs: input kinds it can consume; the first is its default.
        preprocessing: patch encoders: what their pixels must look like.
        region_encoder: slide heads: embeds its own region encoder (a ViT-4K over ``feats256``
            grids), which may be loaded from a checkpoint, frozen, or skipped by reading the
            stores' ``feats4k`` when they were made by the same weights.
    """

    kind: str
    inputs: tuple[str, ...]
    preprocessing: Preprocessing | None = None
    region_encoder: bool = False

    def __post_init__(self) -> None:
        if self.kind not in MODEL_KINDS:
            raise ValueError(f"model kind must be one of {MODEL_KINDS}, got {self.kind}")
        bad = [i for i in self.inputs if i not in INPUT_KINDS]
        if not self.inputs or bad:
            raise ValueError(f"model inputs must be among {INPUT_KINDS}, got {self.inputs}")
        if self.kind == PATCH_ENCODER and self.preprocessing is None:
            raise ValueError("a patch encoder must declare its preprocessing")

    @property
    def default_input(self) -> str:
        """The input kind used when nothing else is said."""
        return self.inputs[0]
