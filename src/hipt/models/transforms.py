"""uint8 RGB patches -> normalized float tensors, as ToTensor + Normalize(0.5, 0.5) do."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
from torch import Tensor

__all__ = ["HIPT_MEAN", "HIPT_STD", "PatchNormalize", "normalize_patches"]

#: HIPT inference normalization (author-confirmed, reference/hipt.md 3.4), not ImageNet's.
HIPT_MEAN = (0.5, 0.5, 0.5)
HIPT_STD = (0.5, 0.5, 0.5)

Layout = Literal["auto", "hwc", "chw"]


def _is_hwc(x: Tensor, layout: Layout) -> bool:
    if layout != "auto":
        return layout == "hwc"
    if x.shape[-1] == 3 and x.shape[-3] != 3:
        return True
    if x.shape[-3] == 3:
        return False
    raise ValueError(f"cannot tell the channel axis of shape {list(x.shape)}; pass layout=")


def normalize_patches(
    x: Tensor | np.ndarray,
    *,
    mean: Sequence[float] = HIPT_MEAN,
    std: Sequence[float] = HIPT_STD,
    layout: Layout = "auto",
    dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Convert uint8 RGB to ``(x / 255 - mean) / std``, channels first, on the input's device.

    The arithmetic order equals torchvision ``ToTensor`` followed by ``Normalize``, so results are
    bit-identical to the official preprocessing.

    Args:
        x: uint8 ``[H, W, 3]``, ``[B, H, W, 3]``, ``[3, H, W]`` or ``[B, 3, H, W]`` (numpy array
            or tensor, CPU or CUDA).
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std on the [0, 1] scale.
        layout: ``"hwc"``/``"chw"``, or ``"auto"`` to infer from where the size-3 axis is.
        dtype: output float dtype.

    Returns:
        ``[3, H, W]`` or ``[B, 3, H, W]`` float tensor.
    """
    t = torch.from_numpy(np.ascontiguousarray(x)) if isinstance(x, np.ndarray) else x
    if t.dtype != torch.uint8:
        raise TypeError(f"expected uint8 RGB, got {t.dtype}")
    if t.ndim not in (3, 4):
        raise ValueError(f"expected 3 or 4 dims, got shape {list(t.shape)}")
    if _is_hwc(t, layout):
        t = t.movedim(-1, -3)
    if t.shape[-3] != 3:
        raise ValueError(f"expected 3 channels, got shape {list(t.shape)}")
    mean_t = torch.tensor(mean, dtype=dtype, device=t.device).view(3, 1, 1)
    std_t = torch.tensor(std, dtype=dtype, device=t.device).view(3, 1, 1)
    return t.contiguous().to(dtype).div(255).sub(mean_t).div(std_t)


class PatchNormalize:
    """Callable form of :func:`normalize_patches` with fixed statistics.

    Args:
        mean: per-channel mean on the [0, 1] scale.
        std: per-channel std on the [0, 1] scale.
    """

    def __init__(self, mean: Sequence[float] = HIPT_MEAN, std: Sequence[float] = HIPT_STD) -> None:
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)

    def __call__(self, x: Tensor | np.ndarray, layout: Layout = "auto") -> Tensor:
        """Normalize ``x`` (see :func:`normalize_patches`)."""
        return normalize_patches(x, mean=self.mean, std=self.std, layout=layout)

    def __repr__(self) -> str:
        return f"PatchNormalize(mean={self.mean}, std={self.std})"
