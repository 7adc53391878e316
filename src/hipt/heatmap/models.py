"""The heatmap's models: encoders checked against the store, and the finetuned slide model."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hipt.errors import HiptError
from hipt.features import FeatureStoreMeta
from hipt.features.store import provenance_problem
from hipt.models import build, model_spec
from hipt.models.checkpoints import CheckpointError
from hipt.models.preprocess import PatchPreprocess, norm_text
from hipt.models.slide import SlideModel, load_slide_model
from hipt.models.vit4k import region_encoder_for
from hipt.provenance import sha256_file

__all__ = ["build_encoder", "check_provenance", "check_weights", "load_slide_model"]

log = logging.getLogger(__name__)


def check_weights(level: str, given: str | None, stored_sha: str | None) -> str | None:
    """Check an encoder checkpoint against the sha256 the store records; return its sha.

    Raises:
        HiptError: one line saying which file the store needs (or that none is wanted).
    """
    key = "checkpoint256" if level == "256" else "checkpoint4k"
    if given is None:
        if stored_sha is not None:
            raise HiptError(
                f"the store was made with ViT-{level} weights sha256 {stored_sha[:12]}...; "
                f"pass {key}=<that file>"
            )
        return None
    path = Path(given)
    if not path.is_file():
        raise HiptError(f"{key} {path} does not exist")
    sha = sha256_file(path)
    if stored_sha is None:
        raise HiptError(
            f"{key} {path} given, but the store was made with random ViT-{level} weights; "
            f"leave {key} out or re-extract the features with it"
        )
    if sha != stored_sha:
        raise HiptError(
            f"{key} {path} (sha256 {sha[:12]}...) is not the ViT-{level} the store was made "
            f"with (sha256 {stored_sha[:12]}...); pass the store's checkpoint"
        )
    return sha


def build_encoder(
    name: str, checkpoint: str | None, device: torch.device, grid_dim: int | None = None
) -> nn.Module:
    """Build an encoder by registry name, load weights strictly, eval mode on ``device``.

    With ``grid_dim`` it is a region encoder for ``grid_dim``-d grids.
    """
    try:
        model = (
            build(name, checkpoint=checkpoint)
            if grid_dim is None  # a patch encoder
            else region_encoder_for(name, checkpoint, grid_dim)
        )
    except CheckpointError as err:
        raise HiptError(f"cannot build encoder {name}: {err}") from None
    return model.eval().to(device)


def patch_preprocess(meta: FeatureStoreMeta, stain: Any) -> PatchPreprocess:
    """The store's patch preprocessing (stain normalization, resize, normalization).

    Raises:
        HiptError: the patch encoder declares other inputs than the store records.
    """
    pre = model_spec(meta.model_256).preprocessing
    if pre is None or norm_text(pre, meta.patch_px) != meta.norm_256:
        raise HiptError(
            f"the store's patch inputs ({meta.norm_256}) are not what {meta.model_256} "
            "declares now; re-extract the features"
        )
    return PatchPreprocess(pre, stain)


def check_provenance(slide: SlideModel, meta: FeatureStoreMeta, store: Path) -> None:
    """Refuse a store made otherwise than the stores the model was trained on (one line)."""
    bad = provenance_problem(meta, slide.card.trained_on)
    if bad:
        raise HiptError(f"{store} does not match the stores MODEL {slide.path} was trained on "
                        f"({bad}); re-extract with those encoders and settings")  # fmt: skip
