"""Strict checkpoint loading: official DINO ``.pth`` files, our exports, or state dicts."""

from __future__ import annotations

import argparse
import logging
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from os import PathLike
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from hipt.errors import HiptError, one_line

__all__ = [
    "CheckpointError",
    "CheckpointSource",
    "LoadReport",
    "filter_hipt_checkpoint",
    "load_checkpoint",
    "load_state_dict_strict",
    "torch_load_safe",
]

logger = logging.getLogger(__name__)

CheckpointSource = str | PathLike[str] | Mapping[str, Any]

#: Wrapper keys tried in order to reach the backbone state dict (DINO keeps the EMA teacher,
#: which is what HIPT uses, beside the student).
WRAPPER_KEYS = ("teacher", "student", "state_dict", "model")
#: Prefixes added by DDP (``module.``), DINO's MultiCropWrapper (``backbone.``) and
#: ``torch.compile`` (``_orig_mod.``); stripped only at the start of a key.
STRIP_PREFIXES = ("module.", "backbone.", "_orig_mod.")
#: Prefixes of published foundation-model files (``model.`` of wrapped timm models, ``trunk.``
#: of open_clip towers): stripped only when every key has it and the model's keys do not
#: (``module.`` is one of :data:`STRIP_PREFIXES`, stripped from every key already).
SHARED_PREFIXES = ("model.", "trunk.", "encoder.")
#: The DINO projection head of the MultiCropWrapper; never part of a backbone.
DINO_HEAD_PREFIX = "head."
_MAX_LISTED = 20


class CheckpointError(HiptError, ValueError):
    """A checkpoint does not fit the model (keys, shapes, architecture) or cannot be read safely."""


@dataclass(frozen=True)
class LoadReport:
    """What :func:`load_checkpoint` did.

    Attributes:
        source: file name (or ``<state dict>``).
        n_loaded: tensors loaded into the model.
        dropped: checkpoint keys dropped on purpose (DINO head).
        wrapper: the wrapper key that was unwrapped (``teacher``...), if any.
    """

    source: str
    n_loaded: int
    dropped: list[str] = field(default_factory=list)
    wrapper: str | None = None


def torch_load_safe(path: str | PathLike[str]) -> Any:
    """``torch.load(weights_only=True)`` allowing only ``argparse.Namespace`` beyond tensors.

    The official DINO checkpoints pickle their ``args`` as an ``argparse.Namespace``; everything
    else (optimizer state, epoch, DINO loss center) is plain containers and tensors.

    Raises:
        CheckpointError: the file holds other pickled objects (they are never unpickled).
    """
    try:
        with torch.serialization.safe_globals([argparse.Namespace]):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        raise CheckpointError(
            f"{path}: refusing to unpickle objects outside the weights-only allow-list "
            f"(tensors, containers, argparse.Namespace): {one_line(err)[:300]}"
        ) from err
    except (RuntimeError, EOFError, OSError, ValueError) as err:  # truncated or not a torch file
        raise CheckpointError(
            f"{path}: not a readable torch checkpoint ({one_line(err)[:200]}); the file is "
            "damaged or incomplete: download it again"
        ) from err


def read_safetensors(path: str | PathLike[str]) -> dict[str, Tensor]:
    """Tensors of a published ``.safetensors`` file (no card), one line when unreadable."""
    import safetensors.torch

    try:
        return safetensors.torch.load_file(str(path), device="cpu")
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types
        raise CheckpointError(
            f"{path}: not a readable safetensors file ({one_line(err)[:200]}); the file is "
            "damaged or incomplete: download it again"
        ) from err


def _is_hipt_export(path: Path) -> bool:
    """Whether a ``.safetensors`` file was written by ``export_model``.

    Its header names the architecture: such a file is only read with its card; published
    weights have none.
    """
    import safetensors

    try:
        with safetensors.safe_open(str(path), framework="pt") as fh:
            return "architecture" in (fh.metadata() or {})
    except Exception:  # noqa: BLE001 - unreadable: read_safetensors says so in one line
        return False


def _strip_shared_prefix(state: dict[str, Tensor], model: nn.Module | None) -> dict[str, Tensor]:
    """Drop a prefix every key carries when the model's own keys do not carry it."""
    if model is None or not state:
        return state
    own = model.state_dict().keys()
    for prefix in SHARED_PREFIXES:
        if all(k.startswith(prefix) for k in state) and not any(k.startswith(prefix) for k in own):
            return {k[len(prefix) :]: v for k, v in state.items()}
    return state


def _unwrap(checkpoint: Mapping[str, Any]) -> tuple[Mapping[str, Any], str | None]:
    for key in WRAPPER_KEYS:
        inner = checkpoint.get(key)
        if isinstance(inner, Mapping):
            return inner, key
    return checkpoint, None


def _strip_prefixes(key: str) -> str:
    changed = True
    while changed:
        changed = False
        for prefix in STRIP_PREFIXES:
            if key.startswith(prefix):
                key = key[len(prefix) :]
                changed = True
    return key


def filter_hipt_checkpoint(
    checkpoint: Mapping[str, Any], model: nn.Module | None = None
) -> tuple[dict[str, Tensor], list[str]]:
    """Turn an official HIPT/DINO checkpoint (or any of our state dicts) into a backbone state dict.

    In order: unwrap ``teacher`` (else ``student``, ``state_dict``, ``model``); strip ``module.``,
    ``backbone.`` and ``_orig_mod.`` as prefixes only; drop DINO ``head.*`` keys unless ``model``
    has ``head.*`` entries of its own.

    Args:
        checkpoint: loaded file content or a state dict.
        model: target model, used to decide whether ``head.*`` keys belong to it.

    Returns:
        ``(state_dict, dropped_keys)`` with dropped keys as they were after prefix stripping.

    Raises:
        CheckpointError: non-tensor values, or two keys that collide after stripping.
    """
    raw, _ = _unwrap(checkpoint)
    model_has_head = model is not None and any(
        k.startswith(DINO_HEAD_PREFIX) for k in model.state_dict()
    )
    state: dict[str, Tensor] = {}
    dropped: list[str] = []
    for key, value in raw.items():
        if not isinstance(value, Tensor):
            raise CheckpointError(
                f"checkpoint entry '{key}' is a {type(value).__name__}, not a tensor"
            )
        new_key = _strip_prefixes(str(key))
        if new_key.startswith(DINO_HEAD_PREFIX) and not model_has_head:
            dropped.append(new_key)
            continue
        if new_key in state:
            raise CheckpointError(f"checkpoint keys collide after stripping prefixes: '{new_key}'")
        state[new_key] = value
    return _strip_shared_prefix(state, model), dropped


def _listing(title: str, items: list[str]) -> str:
    shown = ", ".join(items[:_MAX_LISTED])
    more = f", ... and {len(items) - _MAX_LISTED} more" if len(items) > _MAX_LISTED else ""
    return f"{title} ({len(items)}): {shown}{more}"


def load_state_dict_strict(model: nn.Module, state: Mapping[str, Tensor], source: str) -> None:
    """``model.load_state_dict(state, strict=True)`` with one error listing every problem.

    Raises:
        CheckpointError: missing keys, unexpected keys or shape mismatches, naming ``source``.
    """
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    mismatched = sorted(
        f"{k} (checkpoint {list(state[k].shape)} vs model {list(expected[k].shape)})"
        for k in set(state) & set(expected)
        if state[k].shape != expected[k].shape
    )
    if missing or unexpected or mismatched:
        name = getattr(model, "hipt_architecture", None)
        what = f"{name} ({type(model).__name__})" if name else type(model).__name__
        parts = [
            _listing(title, items)
            for title, items in (
                ("missing keys", missing),
                ("unexpected keys", unexpected),
                ("shape mismatches", mismatched),
            )
            if items
        ]
        raise CheckpointError(
            f"strict load of {source} into {what} failed: {'; '.join(parts)}; is it the "
            f"checkpoint of {name or 'this architecture'}?"
        )
    model.load_state_dict(state, strict=True)


def _read_export(path: Path, architecture: str | None) -> dict[str, Tensor]:
    from hipt.models.card import read_card, read_weights

    card = read_card(path)
    if architecture is not None and card.architecture != architecture:
        raise CheckpointError(
            f"{path}: exported architecture '{card.architecture}' does not match "
            f"the model '{architecture}'"
        )
    return read_weights(path, card)


def load_checkpoint(
    model: nn.Module, source: CheckpointSource, *, architecture: str | None = None
) -> LoadReport:
    """Load weights strictly into ``model`` (or into the module under a ``torch.compile`` wrapper).

    Args:
        model: target; ``model.hipt_architecture`` (set by ``build``) is the default for
            ``architecture``.
        source: official DINO ``.pth``/``.pt`` file (``teacher``/``student``, ``module.``/
            ``backbone.`` prefixes, DINO head), our ``X.safetensors`` export with its ``X.json``
            sidecar, or an in-memory state dict.
        architecture: registry key the export must name; checked only for safetensors files.

    Returns:
        A :class:`LoadReport`; dropped DINO-head keys are also logged.

    Raises:
        CheckpointError: unreadable/unsafe file, architecture or sha mismatch, or any missing,
            unexpected or mis-shaped key.
    """
    target: nn.Module = getattr(model, "_orig_mod", model)
    architecture = architecture or getattr(target, "hipt_architecture", None)
    if isinstance(source, Mapping):
        name, raw = "<state dict>", source
    else:
        path = Path(source)
        name = str(path)
        if not path.is_file():
            raise CheckpointError(f"checkpoint {path} does not exist")
        if path.suffix == ".safetensors":
            from hipt.models.card import card_path

            exported = card_path(path).is_file() or _is_hipt_export(path)
            raw = _read_export(path, architecture) if exported else read_safetensors(path)
        else:
            raw = torch_load_safe(path)
        if not isinstance(raw, Mapping):
            raise CheckpointError(f"{path}: expected a dict, got {type(raw).__name__}")
    _, wrapper = _unwrap(raw)
    state, dropped = filter_hipt_checkpoint(raw, target)
    load_state_dict_strict(target, state, name)
    if dropped:
        logger.info("%s: dropped %d DINO head keys: %s", name, len(dropped), ", ".join(dropped))
    logger.info(
        "%s: loaded %d tensors into %s (wrapper=%s)",
        name,
        len(state),
        type(target).__name__,
        wrapper,
    )
    return LoadReport(source=name, n_loaded=len(state), dropped=dropped, wrapper=wrapper)
