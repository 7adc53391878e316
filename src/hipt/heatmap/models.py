"""The heatmap's models: encoders checked against the store, and the finetuned slide model."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import torch
from torch import nn

from hipt.errors import HiptError
from hipt.features import FeatureStoreMeta
from hipt.features.store import mismatches
from hipt.models import SLIDE_HEAD, ModelCard, build, load, model_spec
from hipt.models.checkpoints import CheckpointError
from hipt.provenance import sha256_file

log = logging.getLogger(__name__)

#: The model file of a finetune fold folder (the one export format).
MODEL_FILE = "model.safetensors"


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


def build_encoder(name: str, checkpoint: str | None, device: torch.device) -> nn.Module:
    """Build a ViT-256/ViT-4K by registry name, load weights strictly, eval mode on ``device``."""
    try:
        model = build(name, checkpoint=checkpoint)
    except CheckpointError as err:
        raise HiptError(f"cannot build encoder {name}: {err}") from None
    return model.eval().to(device)


@dataclasses.dataclass
class SlideModel:
    """A finetuned slide model ready for inference.

    Attributes:
        model: the slide head (eval mode), returning ``SlideOutput``.
        card: its card (architecture, input kind, task, provenance).
        path: the file loaded.
        sha256: its sha256.
    """

    model: nn.Module
    card: ModelCard
    path: Path
    sha256: str

    @property
    def name(self) -> str:
        """Registry key of the architecture."""
        return self.card.architecture

    def region_encoder(self) -> nn.Module | None:
        """The slide head's own ViT-4K, when its registry entry declares one and it has it."""
        if not model_spec(self.name).region_encoder:
            return None
        return getattr(self.model, "local_vit", None)


def model_file(path: Path) -> Path:
    """The exported model of ``path``: the file itself, or a fold folder's ``model.safetensors``.

    Raises:
        HiptError: nothing there, or a finetune folder of several folds (one must be picked).
    """
    if path.is_file():
        return path
    if not path.is_dir():
        raise HiptError(f"MODEL {path} does not exist")
    if (path / MODEL_FILE).is_file():
        return path / MODEL_FILE
    folds = sorted(p.name for p in path.glob("fold_*") if (p / MODEL_FILE).is_file())
    if folds:
        raise HiptError(
            f"MODEL {path} holds {len(folds)} folds ({', '.join(folds[:5])}); pick one, e.g. "
            f"MODEL={path / folds[0]}"
        )
    raise HiptError(f"MODEL {path}: no {MODEL_FILE} in this folder (a finetune fold_<k> folder "
                    "or an exported model file)")  # fmt: skip


def load_slide_model(path: str | Path, device: torch.device) -> SlideModel:
    """Load a finetuned slide model (``X.safetensors`` + card, or a fold folder holding one).

    Raises:
        HiptError: missing file or card, not a slide head, or a strict-load failure.
    """
    file = model_file(Path(path))
    try:
        model, card = load(file)
    except CheckpointError as err:
        raise HiptError(f"MODEL {file}: {err}") from None
    if card.kind != SLIDE_HEAD:
        raise HiptError(f"MODEL {file} is a {card.kind.replace('_', ' ')} ({card.architecture}), "
                        "not a finetuned slide model")  # fmt: skip
    log.info("slide model %s from %s (input %s)", card.architecture, file, card.consumes)
    return SlideModel(model.to(device), card, file, sha256_file(file))


def check_provenance(slide: SlideModel, meta: FeatureStoreMeta, store: Path) -> None:
    """Refuse a store made otherwise than the stores the model was trained on (one line)."""
    bad = mismatches(meta, slide.card.trained_on or {})
    if bad:
        raise HiptError(f"{store} does not match the stores MODEL {slide.path} was trained on "
                        f"({bad[0]}); re-extract with those encoders and settings")  # fmt: skip


def resolve_input(slide: SlideModel, wanted: str) -> str:
    """Which store array feeds the slide model: the config's choice, else what its card says.

    Raises:
        HiptError: the architecture cannot consume the chosen array.
    """
    choice = slide.card.consumes if wanted == "auto" else wanted
    allowed = model_spec(slide.name).inputs
    if choice not in allowed:
        raise HiptError(f"slide model {slide.name} cannot read {choice} (it takes "
                        f"{', '.join(allowed)})")  # fmt: skip
    return choice
