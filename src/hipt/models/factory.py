"""The model registry and ``build``: every architecture is picked by a snake_case key."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Mapping
from os import PathLike
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn

from hipt.models.checkpoints import CheckpointSource, load_checkpoint, read_sidecar
from hipt.registry import Registry

__all__ = ["MODELS", "available", "build", "build_from_export", "tag_model"]

logger = logging.getLogger(__name__)

ModelFactory = Callable[..., nn.Module]

MODELS: Registry[ModelFactory] = Registry("model")

# Overrides that only steer initialisation (not the architecture), so they are not written to
# an export sidecar: rebuilding from the export must not try to read that file again.
INIT_ONLY_OVERRIDES = frozenset({"checkpoint_4k"})


def available() -> list[str]:
    """Sorted names accepted by :func:`build`."""
    return MODELS.keys()


def tag_model(model: nn.Module, name: str, overrides: Mapping[str, Any]) -> None:
    """Record the registry key and architecture overrides on ``model``.

    ``load_checkpoint`` checks an export's architecture against ``model.hipt_architecture`` and
    ``export_backbone`` writes ``model.hipt_overrides`` to the sidecar.
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
        checkpoint: official DINO ``.pth``, our ``.safetensors`` export, or a state dict; loaded
            strictly (see :func:`hipt.models.checkpoints.load_checkpoint`).
        compile: wrap the model with ``torch.compile`` (after loading).
        **overrides: keyword arguments for the factory (``n_classes=4``, ``freeze_4k=True``,
            ``drop_path_rate=0.1``, ``checkpoint_4k=path``, ...).

    Returns:
        The model in training mode (``nn.Module`` default); call ``.eval()`` for inference.

    Raises:
        KeyError: unknown ``name`` (the message lists the available names).
    """
    factory = MODELS.get(name)
    model = factory(**overrides)
    tag_model(model, name, overrides)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    if compile:
        model = cast(nn.Module, torch.compile(model))
    return model


def build_from_export(path: str | PathLike[str], *, compile: bool = False) -> nn.Module:
    """Rebuild the architecture named in an export's JSON sidecar and load its weights strictly.

    Args:
        path: ``X.safetensors`` written by :func:`hipt.models.checkpoints.export_backbone`.
        compile: wrap the model with ``torch.compile``.
    """
    sidecar = read_sidecar(Path(path))
    overrides = sidecar.get("overrides", {})
    if not isinstance(overrides, dict):
        raise ValueError(f"{path}: sidecar 'overrides' must be a JSON object")
    logger.info(
        "building %s from %s (overrides %s)",
        sidecar["architecture"],
        path,
        json.dumps(overrides, sort_keys=True),
    )
    return build(str(sidecar["architecture"]), checkpoint=path, compile=compile, **overrides)
