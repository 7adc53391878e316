"""Export the DINO teacher backbone as ``OUT/backbone.safetensors`` + ``backbone.json``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from torch import nn

from hipt.io import remove_path
from hipt.models.checkpoints import export_backbone

BACKBONE = "backbone.safetensors"
SIDECAR = "backbone.json"


def export_teacher(
    backbone: nn.Module, architecture: str, out_dir: str | Path, meta: dict[str, Any]
) -> Path:
    """Write the teacher backbone (what HIPT uses downstream) next to the run's other outputs.

    Both files are written into a hidden temporary folder first and then renamed, so an
    earlier export (a resumed run) is replaced only by a complete new one. The result loads
    strictly with ``hipt.models.build(architecture, checkpoint=path)``.

    Args:
        backbone: the teacher's backbone (built by ``hipt.models.build(architecture)``).
        architecture: registry key written to the sidecar.
        out_dir: run folder.
        meta: JSON-serialisable provenance stored under ``meta`` in the sidecar.

    Returns:
        ``out_dir/backbone.safetensors``.
    """
    out = Path(out_dir)
    tmp = out / f".export.{os.getpid()}.tmp"
    remove_path(tmp)
    try:
        export_backbone(backbone, architecture, tmp / BACKBONE, extra_meta=meta)
        os.replace(tmp / BACKBONE, out / BACKBONE)
        os.replace(tmp / SIDECAR, out / SIDECAR)
    finally:
        remove_path(tmp)
    return out / BACKBONE
