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
        resize: resize patches to ``input_px``; ``False`` for encoders that take any multiple
            of their token size as it is (HIPT's ViT-256 interpolates its pos-embed).
    """

    input_px: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    resize: bool = True

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (model sidecars, store attributes)."""
        return {"input_px": self.input_px, "mean": list(self.mean), "std": list(self.std),
                "resize": self.resize}  # fmt: skip


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where a user gets a published encoder's weights, and what was published about it.

    We never download: the user fetches the file under its licence and passes its path.

    Attributes:
        where: where the weights are published (e.g. ``hf.co/MahmoodLab/UNI``).
        licence: the weights' licence.
        params: the parameter count as published (e.g. ``"303M"``, ``"1.1B"``).
        paper: the publication or model card stating the architecture.
    """

    where: str
    licence: str
    params: str
    paper: str = ""
    tolerance: str = ""

    def published_params(self) -> tuple[float, float]:
        """``(count, tolerance)``: ``"303M"`` -> ``(303e6, 0.5e6)`` (half the last digit).

        Or the stated ``tolerance`` where the published figure is the nominal size of the
        architecture family (e.g. Virchow's "632M" is a ViT-H/14 with a 1000-class head).
        """
        count, half = _count(self.params)
        return count, (_count(self.tolerance)[0] if self.tolerance else half)


def _count(text: str) -> tuple[float, float]:
    text = text.strip()
    scale = {"K": 1e3, "M": 1e6, "B": 1e9}[text[-1].upper()]
    digits = text[:-1]
    decimals = len(digits.split(".")[1]) if "." in digits else 0
    return float(digits) * scale, 0.5 * scale * 10.0**-decimals


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
        source: published patch encoders: where the weights are and their published size.
    """

    kind: str
    inputs: tuple[str, ...]
    preprocessing: Preprocessing | None = None
    region_encoder: bool = False
    source: WeightsSource | None = None

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
