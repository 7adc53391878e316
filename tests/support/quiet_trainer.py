"""A Lightning Trainer for tests: one device, no logger, checkpoints, progress bar or summary."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lightning.pytorch import Callback, Trainer


def quiet_trainer(
    max_steps: int, accelerator: str = "cpu", callbacks: Sequence[Callback] = (), **kw: Any
) -> Trainer:
    """``Trainer`` for ``max_steps`` steps on one ``accelerator`` device, silent."""
    return Trainer(
        accelerator=accelerator,
        devices=1,
        max_steps=max_steps,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=list(callbacks),
        **kw,
    )
