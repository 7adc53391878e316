"""Trained slide models as their users (predict, heatmap) find them on disk.

A ``MODEL=`` is one of: an exported ``X.safetensors`` with its card, a finetune ``fold_<k>``
folder (its ``model.safetensors``), a finetune output folder (every ``fold_<k>`` of it: an
ensemble), or an official finetuned HIPT ``s_<k>_checkpoint.pt`` (which needs the task named).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from hipt.errors import HiptError
from hipt.models.card import ModelCard
from hipt.models.checkpoints import CheckpointError
from hipt.models.factory import load, model_spec
from hipt.models.official import load_official
from hipt.models.spec import SLIDE_HEAD
from hipt.provenance import sha256_file

log = logging.getLogger(__name__)

#: The model file of a finetune fold folder (the one export format).
MODEL_FILE = "model.safetensors"
#: Suffixes of the official finetuned HIPT files (plain ``torch.save`` of a state dict).
OFFICIAL_SUFFIXES = (".pt", ".pth")
_FOLD = re.compile(r"^fold_(\d+)$")


@dataclasses.dataclass
class SlideModel:
    """A trained slide model ready for inference.

    Attributes:
        model: the slide head (eval mode), returning ``SlideOutput``.
        card: its card (architecture, input kind, task, provenance).
        path: the file loaded.
        sha256: its sha256.
        name: how reports call it (``fold_0``, the file name, ...).
    """

    model: nn.Module
    card: ModelCard
    path: Path
    sha256: str
    name: str = ""

    @property
    def architecture(self) -> str:
        """Registry key of the architecture."""
        return self.card.architecture

    def region_encoder(self) -> nn.Module | None:
        """The slide head's own ViT-4K, when its registry entry declares one and it has it."""
        if not model_spec(self.architecture).region_encoder:
            return None
        return getattr(self.model, "local_vit", None)

    def input_kind(self, wanted: str = "auto") -> str:
        """Which store array feeds it: ``wanted``, or (``auto``) what its card says.

        Raises:
            HiptError: the architecture cannot consume ``wanted``.
        """
        choice = self.card.consumes if wanted == "auto" else wanted
        allowed = model_spec(self.architecture).inputs
        if choice not in allowed:
            raise HiptError(
                f"slide model {self.architecture} cannot read {choice} (it takes "
                f"{', '.join(allowed)})"
            )
        return choice


def model_files(path: Path) -> list[tuple[str, Path]]:
    """``(name, file)`` of every model ``path`` stands for, in fold order.

    Raises:
        HiptError: nothing there, or a folder holding no model.
    """
    if path.is_file():
        return [(path.parent.name if path.name == MODEL_FILE else path.stem, path)]
    if not path.is_dir():
        raise HiptError(f"MODEL {path} does not exist")
    if (path / MODEL_FILE).is_file():
        return [(path.name, path / MODEL_FILE)]
    folds = sorted(
        (int(m.group(1)), p)
        for p in path.iterdir()
        if (m := _FOLD.match(p.name)) and (p / MODEL_FILE).is_file()
    )
    if not folds:
        raise HiptError(
            f"MODEL {path}: no {MODEL_FILE} here and no fold_<k>/{MODEL_FILE} below (give a "
            "finetune output or fold folder, or an exported model)"
        )
    return [(p.name, p / MODEL_FILE) for _, p in folds]


def load_slide_model(
    path: str | Path,
    device: torch.device | str = "cpu",
    task: str | None = None,
    classes: Sequence[str] = (),
    name: str | None = None,
) -> SlideModel:
    """Load one trained slide model (an export with its card, or an official HIPT file).

    Args:
        path: ``X.safetensors`` (or a fold folder holding ``model.safetensors``), or an
            official ``s_<k>_checkpoint.pt``.
        device: where it runs.
        task: official files only: what the model predicts (the file does not say).
        classes: official files only: class names in logit order.
        name: how reports call it (default: its fold folder or file name).

    Raises:
        HiptError: missing file or card, not a slide head, or a strict-load failure (one line).
    """
    files = model_files(Path(path))
    if len(files) > 1:
        shown = ", ".join(n for n, _ in files[:5])
        raise HiptError(
            f"MODEL {path} holds {len(files)} folds ({shown}); pick one, e.g. "
            f"MODEL={files[0][1].parent}"
        )
    default_name, file = files[0]
    try:
        if file.suffix in OFFICIAL_SUFFIXES:
            if task is None:
                raise HiptError(
                    f"MODEL {file} is an official HIPT file, which does not say its "
                    "task: give task=subtype|stage|survival|response"
                )
            model, card = load_official(file, task, classes)
        else:
            model, card = load(file)
    except CheckpointError as err:
        raise HiptError(f"MODEL {file}: {err}") from None
    if card.kind != SLIDE_HEAD:
        raise HiptError(
            f"MODEL {file} is a {card.kind.replace('_', ' ')} ({card.architecture}), "
            "not a finetuned slide model"
        )
    log.info("slide model %s from %s (input %s)", card.architecture, file, card.consumes)
    return SlideModel(model.to(device).eval(), card, file, sha256_file(file), name or default_name)


def load_slide_models(
    path: str | Path,
    device: torch.device | str = "cpu",
    task: str | None = None,
    classes: Sequence[str] = (),
) -> list[SlideModel]:
    """Every model ``path`` stands for (all folds of a finetune output), checked to agree.

    Raises:
        HiptError: a model fails to load, or the models differ in task, classes, input kind or
            the stores they were trained on (they could not be ensembled).
    """
    files = model_files(Path(path))
    models = [load_slide_model(f, device, task, classes, name) for name, f in files]
    first = models[0].card
    for other in models[1:]:
        c = other.card
        for field in ("consumes", "trained_on"):
            if getattr(c, field) != getattr(first, field):
                raise HiptError(
                    f"MODEL {path}: {other.name} differs from {models[0].name} in {field}; "
                    "give one model or a folder of one finetune run"
                )
        if (c.output.get("task"), c.output.get("classes")) != (
            first.output.get("task"),
            first.output.get("classes"),
        ):
            raise HiptError(
                f"MODEL {path}: {other.name} predicts another task or classes than {models[0].name}"
            )
    return models
