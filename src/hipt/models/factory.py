"""The model registry, ``build``, ``load`` and ``export_model``: every architecture by a key."""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import torch
from torch import nn

from hipt.models.card import ModelCard, ModelFileError, read_card, save_model
from hipt.models.checkpoints import CheckpointSource, load_checkpoint
from hipt.models.spec import PATCH_ENCODER, ModelSpec
from hipt.registry import Registry

__all__ = [
    "MODELS",
    "Loaded",
    "available",
    "build",
    "export_model",
    "load",
    "model_spec",
    "register_model",
]

logger = logging.getLogger(__name__)

ModelFactory = Callable[..., nn.Module]
F = TypeVar("F", bound=ModelFactory)


@dataclasses.dataclass(frozen=True)
class ModelEntry:
    """A registered architecture: its factory and its declaration."""

    factory: ModelFactory
    spec: ModelSpec


MODELS: Registry[ModelEntry] = Registry("model")

# Overrides that only steer initialisation (not the architecture), so they are not written to
# a card: rebuilding from the export must not try to read that file again.
INIT_ONLY_OVERRIDES = frozenset({"checkpoint_4k"})


def register_model(name: str, spec: ModelSpec) -> Callable[[F], F]:
    """Decorator registering a factory under ``name`` with its :class:`ModelSpec`."""

    def deco(factory: F) -> F:
        MODELS.add(name, ModelEntry(factory, spec))
        return factory

    return deco


def entry(name: str) -> ModelEntry:
    """The registered entry of ``name``, or the one of a timm architecture (``timm:<arch>``).

    Raises:
        UnknownNameError: unknown name (a configuration error listing the valid names).
    """
    from hipt.models.timm_encoder import is_timm_name, timm_factory, timm_spec

    if is_timm_name(name):
        return ModelEntry(timm_factory(name), timm_spec(name))
    return MODELS.get(name)


def model_spec(name: str) -> ModelSpec:
    """The declaration of ``name``; unknown names are a configuration error (exit 2)."""
    return entry(name).spec


def available(kind: str | None = None) -> list[str]:
    """Sorted names accepted by :func:`build` (of one ``kind`` when given)."""
    return [k for k in MODELS.keys() if kind is None or MODELS.get(k).spec.kind == kind]


def tag_model(model: nn.Module, name: str, overrides: Mapping[str, Any]) -> None:
    """Record the registry key and architecture arguments on ``model``.

    ``load_checkpoint`` checks an export's architecture against ``model.hipt_architecture`` and
    :func:`export_model` writes ``model.hipt_overrides`` to the card.
    """
    setattr(model, "hipt_architecture", name)  # noqa: B010 (plain attributes on an nn.Module)
    kept = {k: v for k, v in overrides.items() if k not in INIT_ONLY_OVERRIDES}
    setattr(model, "hipt_overrides", kept)  # noqa: B010


def build(
    name: str,
    checkpoint: CheckpointSource | None = None,
    *,
    compile: bool = False,
    **overrides: Any,
) -> nn.Module:
    """Build a registered model, optionally load weights strictly and wrap it in ``torch.compile``.

    Args:
        name: registry key, one of :func:`available` (e.g. ``"vit256_small"``).
        checkpoint: official DINO ``.pth``, our ``.safetensors`` export (its card must name
            ``name``), or a state dict; loaded strictly.
        compile: wrap the model with ``torch.compile`` (after loading).
        **overrides: keyword arguments for the factory (``n_classes=4``, ``freeze_4k=True``,
            ``drop_path_rate=0.1``, ``checkpoint_4k=path``, ...).

    Returns:
        The model in training mode (``nn.Module`` default); call ``.eval()`` for inference.

    Raises:
        UnknownNameError: unknown ``name`` (a configuration error listing the valid names).
        CheckpointError: the weights do not fit.
    """
    model = entry(name).factory(**overrides)
    tag_model(model, name, overrides)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    if compile:
        model = cast(nn.Module, torch.compile(model))
    return model


class Loaded(NamedTuple):
    """A model read back from its export, and the card that describes it."""

    model: nn.Module
    card: ModelCard


def load(path: str | PathLike[str], *, compile: bool = False) -> Loaded:
    """Rebuild the model an export describes and load its weights strictly.

    Args:
        path: ``X.safetensors`` with its ``X.json`` card (what every stage exports).
        compile: wrap the model with ``torch.compile``.

    Returns:
        ``(model in eval mode, card)``.

    Raises:
        ModelFileError: no file, no card, or a card of another format.
        CheckpointError: the weights do not fit the card's architecture.
    """
    file = Path(path)
    if file.suffix != ".safetensors" or not file.is_file():
        raise ModelFileError(f"{file}: expected an exported model X.safetensors with its X.json")
    card = read_card(file)
    logger.info("building %s from %s (%s)", card.architecture, file, card.kwargs)
    model = build(card.architecture, checkpoint=file, compile=compile, **card.kwargs)
    return Loaded(model.eval(), card)


def export_model(
    model: nn.Module,
    path: str | PathLike[str],
    *,
    consumes: str | None = None,
    output: Mapping[str, Any] | None = None,
    trained_on: Mapping[str, Any] | None = None,
    meta: Mapping[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Save a model built by :func:`build` in the one export format (weights + card).

    Args:
        model: the model (its registry name and arguments come from :func:`build`).
        path: ``X`` or ``X.safetensors``.
        consumes: its input kind (default: the registry's default input).
        output: what it outputs (default for encoders: ``{"dim": output width}``).
        trained_on: feature-store provenance it was trained on.
        meta: provenance of the run that made it.
        overwrite: replace an existing export.

    Returns:
        The path of the ``.safetensors`` file.
    """
    target: nn.Module = getattr(model, "_orig_mod", model)
    name = getattr(target, "hipt_architecture", None)
    if not isinstance(name, str):
        raise ModelFileError(f"cannot export a {type(target).__name__} not built by hipt.models")
    spec = model_spec(name)
    kind = consumes or spec.default_input
    if kind not in spec.inputs:
        raise ModelFileError(f"{name} cannot consume {kind} (it takes {', '.join(spec.inputs)})")
    width = getattr(target, "embed_dim", None)
    if spec.kind == PATCH_ENCODER:  # e.g. Virchow's CLS + mean: twice its token width
        from hipt.models.patch_vit import feature_width

        width = feature_width(target)
    card = ModelCard(
        architecture=name,
        kwargs=dict(getattr(target, "hipt_overrides", {})),
        kind=spec.kind,
        consumes=kind,
        output=dict(output) if output is not None else ({"dim": int(width)} if width else {}),
        trained_on=dict(trained_on) if trained_on is not None else None,
        preprocessing=spec.preprocessing.to_dict() if spec.preprocessing else None,
        meta=dict(meta or {}),
    )
    out = save_model(target, path, card, overwrite=overwrite)
    logger.info("exported %s to %s", name, out)
    return out
