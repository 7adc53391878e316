"""Device placement and precision policy: fp32 on CPU, bf16 autocast + channels-last on CUDA."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import Tensor, nn

__all__ = [
    "autocast_context",
    "prepare_images",
    "prepare_model",
    "resolve_precision",
    "uses_cuda",
]


def uses_cuda(accelerator: str) -> bool:
    """Whether Lightning will run on CUDA for this ``accelerator`` setting."""
    acc = str(accelerator).lower()
    return acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())


def resolve_precision(precision: str, accelerator: str) -> str:
    """The Lightning precision a stage runs at: the one policy of every stage.

    ``auto`` is ``bf16-mixed`` on CUDA and ``32-true`` on CPU (bf16 has no fast path on this
    kind of CPU: ~7.5x slower); ``32`` is spelled ``32-true``; anything else as given.
    """
    if precision == "auto":
        return "bf16-mixed" if uses_cuda(accelerator) else "32-true"
    return "32-true" if str(precision) == "32" else str(precision)


def autocast_context(device: torch.device | str) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast on CUDA; a no-op on CPU (bf16 has no fast path there, ~7.5x slower)."""
    dev = torch.device(device)
    if dev.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def prepare_model(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Move ``model`` to ``device``; channels-last weights on CUDA (for the patch-embed conv)."""
    dev = torch.device(device)
    model = model.to(dev)
    if dev.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    return model


def prepare_images(x: Tensor, device: torch.device | str) -> Tensor:
    """Move an image batch ``[B, 3, H, W]`` to ``device``, channels-last on CUDA."""
    dev = torch.device(device)
    x = x.to(dev, non_blocking=True)
    if dev.type == "cuda" and x.ndim == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    return x
