"""Export the DINO teacher backbone as ``OUT/backbone.safetensors`` + ``backbone.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from hipt.io import remove_path
from hipt.models import export_model

BACKBONE = "backbone.safetensors"
SIDECAR = "backbone.json"


def export_teacher(
    backbone: nn.Module, out_dir: Path, meta: dict[str, Any], trained_on: dict[str, Any] | None
) -> Path:
    """Write the teacher backbone (what HIPT uses downstream) next to the run's other outputs.

    Both files are written into a hidden temporary folder first and then renamed, so an
    earlier export (a resumed run) is replaced only by a complete new one. The result loads
    strictly with ``hipt.models.load(path)`` or ``hipt.models.build(name, checkpoint=path)``.

    Args:
        backbone: the teacher's backbone (built by ``hipt.models.build``).
        out_dir: run folder.
        meta: JSON-serialisable provenance of the run, stored in the card's ``meta``.
        trained_on: what the backbone was trained on (stored in the card's ``trained_on``).

    Returns:
        ``out_dir/backbone.safetensors``.
    """
    tmp = out_dir / f".export.{os.getpid()}.tmp"
    remove_path(tmp)
    try:
        export_model(backbone, tmp / BACKBONE, meta=meta, trained_on=trained_on)
        os.replace(tmp / BACKBONE, out_dir / BACKBONE)
        os.replace(tmp / SIDECAR, out_dir / SIDECAR)
    finally:
        remove_path(tmp)
    return out_dir / BACKBONE
