"""The heatmap's models: encoders checked against the store, and the finetuned slide model."""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from hipt.errors import HiptError
from hipt.features import FeatureStoreMeta
from hipt.models import build, build_from_export
from hipt.models.checkpoints import (
    CheckpointError,
    load_state_dict_strict,
    read_sidecar,
    sha256_file,
    torch_load_safe,
)

log = logging.getLogger(__name__)

#: Where a finetune fold folder keeps its model, in the order they are tried.
MODEL_FILES = ("model.safetensors", "model.ckpt", "last.ckpt")
#: Keys under which a checkpoint's ``hipt`` block (or a JSON sidecar) may name the model.
_NAME_KEYS = ("architecture", "model_name", "name", "model")
_KWARGS_KEYS = ("overrides", "model_kwargs", "kwargs")
_INPUT_KEYS = ("input", "model_input", "input_kind")
#: Lightning prefixes the slide model's keys by the LightningModule attribute holding it.
_LIGHTNING_PREFIXES = ("model.", "net.")


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
    except (CheckpointError, KeyError) as err:
        raise HiptError(f"cannot build encoder {name}: {err}") from None
    return model.eval().to(device)


@dataclasses.dataclass
class SlideModel:
    """A finetuned slide model ready for inference.

    Attributes:
        model: the slide head (eval mode), returning ``SlideOutput``.
        name: registry key.
        input: ``feats256``, ``feats4k`` or ``None`` when the file does not say.
        path: the file loaded.
        sha256: its sha256.
    """

    model: nn.Module
    name: str
    input: str | None
    path: Path
    sha256: str


def _pick(info: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        if key in info and info[key] is not None:
            return info[key]
    return None


def _model_file(path: Path) -> Path:
    if path.is_file():
        return path
    if not path.is_dir():
        raise HiptError(f"MODEL {path} does not exist")
    for name in MODEL_FILES:
        if (path / name).is_file():
            return path / name
    folds = sorted(p.name for p in path.glob("fold_*") if p.is_dir())
    if folds:
        raise HiptError(
            f"MODEL {path} holds {len(folds)} folds ({', '.join(folds[:5])}); pick one, e.g. "
            f"MODEL={path / folds[0]}"
        )
    raise HiptError(f"MODEL {path}: no {' / '.join(MODEL_FILES)} in this folder")


def _from_checkpoint(path: Path) -> tuple[nn.Module, str, Any]:
    """Rebuild a slide model from a Lightning/torch checkpoint (``weights_only`` load)."""
    try:
        raw = torch_load_safe(path)
    except CheckpointError as err:
        raise HiptError(f"MODEL {path}: {err}; export it as .safetensors + .json instead") from None
    if not isinstance(raw, Mapping):
        raise HiptError(f"MODEL {path}: expected a dict checkpoint, got {type(raw).__name__}")
    sidecar = path.with_suffix(".json")
    info: Mapping[str, Any] = raw.get("hipt") or {}
    if sidecar.is_file():
        info = {**json.loads(sidecar.read_text()), **info}
    name = _pick(info, _NAME_KEYS)
    if not isinstance(name, str):
        raise HiptError(
            f"MODEL {path}: cannot tell the architecture (no 'hipt' block with 'model_name' in "
            f"the checkpoint and no {sidecar.name}); found keys {sorted(raw)[:10]}"
        )
    kwargs = dict(_pick(info, _KWARGS_KEYS) or {})
    kwargs.pop("checkpoint_4k", None)  # the weights below replace any initialisation
    state = raw.get("state_dict", raw)
    prefix = next((p for p in _LIGHTNING_PREFIXES if all(k.startswith(p) for k in state)), "")
    state = {k[len(prefix) :]: v for k, v in state.items()}
    try:
        model = build(name, **kwargs)
        load_state_dict_strict(model, state, str(path))
    except (CheckpointError, KeyError, TypeError) as err:
        raise HiptError(f"MODEL {path}: {err}") from None
    return model, name, _pick(info, _INPUT_KEYS)


def load_slide_model(path: str | Path, device: torch.device) -> SlideModel:
    """Load a finetuned slide model with ``weights_only`` loads only.

    Accepted: ``X.safetensors`` with its ``X.json`` sidecar (``export_backbone`` format:
    ``architecture``, ``overrides``, optional ``meta.input``); a ``.ckpt``/``.pt`` whose
    ``hipt`` block (or ``X.json`` sidecar) names ``model_name`` + ``overrides``/``kwargs`` and
    ``input``; or a fold folder holding one of :data:`MODEL_FILES`.

    Raises:
        HiptError: missing file, unknown architecture, or a strict-load failure.
    """
    file = _model_file(Path(path))
    if file.suffix == ".safetensors":
        try:
            sidecar = read_sidecar(file)
            model = build_from_export(file)
        except (CheckpointError, KeyError, ValueError) as err:
            raise HiptError(f"MODEL {file}: {err}") from None
        name = str(sidecar["architecture"])
        declared = _pick(sidecar.get("meta") or {}, _INPUT_KEYS) or _pick(sidecar, _INPUT_KEYS)
    else:
        model, name, declared = _from_checkpoint(file)
    log.info("slide model %s from %s (input %s)", name, file, declared or "auto")
    return SlideModel(model.eval().to(device), name, declared, file, sha256_file(file))


def resolve_input(slide: SlideModel, wanted: str, meta: FeatureStoreMeta) -> str:
    """Which store array feeds the slide model: the config, the file's word, or its shape.

    Raises:
        HiptError: the model's width fits neither store array.
    """
    choice = wanted if wanted != "auto" else slide.input
    if choice in ("feats256", "feats4k"):
        return str(choice)
    model = slide.model
    if hasattr(model, "local_vit"):
        return "feats256" if model.local_vit is not None else "feats4k"
    width = getattr(model, "input_dim", None)
    if width == meta.feature_dim_256:
        return "feats256"
    if width == meta.feature_dim_4k:
        return "feats4k"
    raise HiptError(
        f"slide model {slide.name} takes {width}-d inputs; the store has "
        f"{meta.feature_dim_256}-d patch and {meta.feature_dim_4k}-d region features"
    )
