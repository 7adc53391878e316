"""The one export format of every model: ``<name>.safetensors`` + ``<name>.json`` (its card).

The card says everything a user of the weights needs, so no reader guesses: the registry name
and constructor arguments (to rebuild the architecture), what the model consumes (``pixels``,
a store's ``feats256`` grids or its ``feats4k`` region features), what it outputs (an embedding
width, or a task's classes / survival bins / ordinal levels), the feature-store provenance it
was trained on (encoders and their checkpoint sha256, target MPP, region/patch px, feature
widths), the weights' sha256 and a format version.
"""

from __future__ import annotations

import dataclasses
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from hipt.io import atomic_write_text, remove_path, tmp_path_for
from hipt.models.checkpoints import CheckpointError
from hipt.models.spec import INPUT_KINDS
from hipt.provenance import sha256_file

FORMAT = "hipt.model/v2"
#: The earlier backbone-only format (architecture + overrides), still read.
LEGACY_FORMATS = ("hipt.backbone/v1",)


class ModelFileError(CheckpointError):
    """A model file or its card is missing, unreadable, of another format, or does not fit."""


@dataclasses.dataclass
class ModelCard:
    """The JSON sidecar of an exported model.

    Attributes:
        architecture: registry key (:func:`hipt.models.build`).
        kwargs: constructor arguments that rebuild the architecture.
        kind: ``patch_encoder``, ``region_encoder`` or ``slide_head``.
        consumes: ``pixels``, ``feats256`` or ``feats4k``.
        output: encoders: ``{"dim": D}``; slide heads: the task state (``task``, ``classes``,
            ``n_outputs``, survival ``bin_edges`` and ``t_max``, ...).
        trained_on: feature-store provenance the model was trained on (slide heads and
            region encoders; see :data:`hipt.features.PROVENANCE_KEYS`), or None.
        preprocessing: patch encoders: ``input_px``, ``mean``, ``std``.
        meta: free-form provenance of the run that made it (stage, config hash, fold, ...).
        sha256: sha256 of the ``.safetensors`` file.
        n_params: number of parameters.
        n_tensors: number of tensors in the state dict.
        torch_version: torch that saved it.
        created_at: ISO time of the export.
        format: :data:`FORMAT`.
    """

    architecture: str
    kwargs: dict[str, Any]
    kind: str
    consumes: str
    output: dict[str, Any] = dataclasses.field(default_factory=dict)
    trained_on: dict[str, Any] | None = None
    preprocessing: dict[str, Any] | None = None
    meta: dict[str, Any] = dataclasses.field(default_factory=dict)
    sha256: str = ""
    n_params: int = 0
    n_tensors: int = 0
    torch_version: str = ""
    created_at: str = ""
    format: str = FORMAT

    def to_json(self) -> str:
        """Indented, sorted JSON text."""
        return json.dumps(dataclasses.asdict(self), indent=2, sort_keys=True) + "\n"


def card_path(path: str | Path) -> Path:
    """``X.json`` beside ``X.safetensors``."""
    return Path(path).with_suffix(".json")


def read_card(path: str | Path) -> ModelCard:
    """Read and check the card of ``X.safetensors``.

    Raises:
        ModelFileError: no card, unreadable JSON, unknown format or missing fields.
    """
    weights = Path(path)
    side = card_path(weights)
    if not side.is_file():
        raise ModelFileError(
            f"{weights}: missing card {side.name} (the JSON sidecar naming the architecture); "
            "export models with hipt.models.export_model"
        )
    try:
        data = json.loads(side.read_text())
    except (OSError, ValueError) as err:
        raise ModelFileError(f"{side}: unreadable card ({err})") from None
    if not isinstance(data, dict) or "architecture" not in data:
        raise ModelFileError(f"{side}: card has no 'architecture'")
    fmt = data.get("format", "")
    if fmt in LEGACY_FORMATS:
        return _from_legacy(data)
    if fmt != FORMAT:
        raise ModelFileError(f"{side}: card format '{fmt}' is not {FORMAT}; re-export the model")
    names = {f.name for f in dataclasses.fields(ModelCard)}
    missing = [n for n in ("kwargs", "kind", "consumes") if n not in data]
    if missing:
        raise ModelFileError(f"{side}: card lacks {', '.join(missing)}")
    card = ModelCard(**{k: v for k, v in data.items() if k in names})
    if card.consumes not in INPUT_KINDS:
        raise ModelFileError(f"{side}: consumes '{card.consumes}' is not one of {INPUT_KINDS}")
    return card


def _from_legacy(data: dict[str, Any]) -> ModelCard:
    """A ``hipt.backbone/v1`` sidecar (architecture + overrides) as a card (registry defaults)."""
    from hipt.models.factory import model_spec

    spec = model_spec(str(data["architecture"]))
    meta = dict(data.get("meta") or {})
    consumes = meta.get("input") if meta.get("input") in spec.inputs else spec.default_input
    return ModelCard(
        architecture=str(data["architecture"]),
        kwargs=dict(data.get("overrides") or {}),
        kind=spec.kind,
        consumes=str(consumes),
        preprocessing=spec.preprocessing.to_dict() if spec.preprocessing else None,
        meta=meta,
        sha256=str(data.get("sha256", "")),
        n_params=int(data.get("n_params", 0)),
        n_tensors=int(data.get("n_tensors", 0)),
        torch_version=str(data.get("torch_version", "")),
        created_at=str(data.get("created_at", "")),
        format=str(data["format"]),
    )


def read_weights(path: str | Path, card: ModelCard) -> dict[str, torch.Tensor]:
    """The tensors of ``X.safetensors`` after checking them against the card's sha256."""
    path = Path(path)
    if card.sha256 and sha256_file(path) != card.sha256:
        raise ModelFileError(f"{path}: sha256 differs from its card (file changed or corrupt); "
                             "re-export or re-copy it")  # fmt: skip
    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise ModelFileError(f"{path}: unreadable safetensors file ({err})") from None


def save_model(
    model: nn.Module, path: str | os.PathLike[str], card: ModelCard, overwrite: bool = False
) -> Path:
    """Write ``X.safetensors`` and its card ``X.json``; return the weights' path.

    Both are written under temporary names first; the weights are renamed into place before
    the card, so a reader never sees a card without its weights.

    Args:
        model: module to save (a ``torch.compile`` wrapper is unwrapped).
        path: ``X`` or ``X.safetensors``.
        card: the card; ``sha256``, ``n_params``, ``n_tensors``, ``torch_version`` and
            ``created_at`` are filled in here.
        overwrite: replace existing files (else ``FileExistsError``).
    """
    target: nn.Module = getattr(model, "_orig_mod", model)
    out = Path(path)
    if out.suffix != ".safetensors":
        out = out.with_name(out.name + ".safetensors")
    side = card_path(out)
    if not overwrite:
        for p in (out, side):
            if p.exists():
                raise FileExistsError(f"{p} already exists")
    tensors = {k: v.detach().cpu().contiguous() for k, v in target.state_dict().items()}
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = tmp_path_for(out)
    try:
        # One metadata key only: safetensors writes a metadata map in no fixed order, and the
        # file's sha256 must not change between two exports of the same weights.
        safetensors.torch.save_file(tensors, str(tmp), metadata={"architecture": card.architecture})
        card = dataclasses.replace(
            card,
            sha256=sha256_file(tmp),
            n_tensors=len(tensors),
            n_params=sum(t.numel() for t in tensors.values()),
            torch_version=torch.__version__,
            created_at=datetime.now(UTC).isoformat(timespec="seconds"),
        )
        text = card.to_json()  # serialise before anything is replaced
        os.replace(tmp, out)
    finally:
        remove_path(tmp)
    atomic_write_text(side, text)
    return out
