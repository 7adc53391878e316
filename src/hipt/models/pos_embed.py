"""DINO-exact positional-embedding interpolation and a per-grid cache for it."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["PosEmbedCache", "dino_interpolate_pos_embed", "pos_embed_grid_side"]


def pos_embed_grid_side(pos_embed: Tensor, num_prefix_tokens: int = 1) -> int:
    """Side of the square patch grid a learned ``[1, P + N, D]`` pos_embed was trained for.

    Args:
        pos_embed: learned table ``[1, num_prefix_tokens + side**2, D]``.
        num_prefix_tokens: leading tokens (CLS) that are not part of the grid.

    Raises:
        ValueError: if the patch part is not a square number of tokens.
    """
    n_patch = pos_embed.shape[1] - num_prefix_tokens
    side = math.isqrt(n_patch)
    if side * side != n_patch:
        raise ValueError(f"pos_embed patch part has {n_patch} tokens, not a square grid")
    return side


def dino_interpolate_pos_embed(
    pos_embed: Tensor, grid_hw: tuple[int, int], num_prefix_tokens: int = 1
) -> Tensor:
    """Resample a square pos_embed to a ``grid_hw`` token grid exactly as DINO (2021) does.

    DINO calls ``F.interpolate`` with ``scale_factor=((h + 0.1) / side, (w + 0.1) / side)``,
    bicubic (a = -0.75), ``align_corners=False`` and no antialias. Because a scale factor (not an
    output size) is passed, the kernel maps output pixel ``i`` to source ``(i + 0.5) / s - 0.5``
    with ``s = (h + 0.1) / side``; this differs numerically from ``size=(h, w)`` and from timm's
    ``resample_abs_pos_embed`` (antialiased), so released HIPT features are only reproduced with
    this exact call (reference/hipt.md 2.2).

    Args:
        pos_embed: ``[1, num_prefix_tokens + side**2, D]``.
        grid_hw: target token grid ``(rows, cols)``.
        num_prefix_tokens: number of leading (CLS) tokens kept as they are.

    Returns:
        ``[1, num_prefix_tokens + rows * cols, D]``; ``pos_embed`` itself when the grid already
        matches (no copy, so gradients flow to it unchanged).
    """
    side = pos_embed_grid_side(pos_embed, num_prefix_tokens)
    h, w = int(grid_hw[0]), int(grid_hw[1])
    if (h, w) == (side, side):
        return pos_embed
    dim = pos_embed.shape[-1]
    prefix = pos_embed[:, :num_prefix_tokens]
    patch = pos_embed[:, num_prefix_tokens:].reshape(1, side, side, dim).permute(0, 3, 1, 2)
    # The 0.1 offset avoids floating-point floor errors in DINO; divide by the float sqrt like it.
    scale = ((h + 0.1) / math.sqrt(side * side), (w + 0.1) / math.sqrt(side * side))
    patch = F.interpolate(patch, scale_factor=scale, mode="bicubic", align_corners=False)
    if tuple(patch.shape[-2:]) != (h, w):
        raise ValueError(
            f"DINO interpolation gave a {tuple(patch.shape[-2:])} grid, wanted {(h, w)}"
        )
    patch = patch.permute(0, 2, 3, 1).reshape(1, h * w, dim)
    return torch.cat((prefix, patch), dim=1)


class PosEmbedCache:
    """Caches :func:`dino_interpolate_pos_embed` per grid size for inference.

    The cached value is keyed on the grid, the parameter's storage, device, dtype and version
    counter, so ``load_state_dict``, optimizer steps (in-place updates) and ``.to()`` all
    invalidate it. When autograd would record the result (grad mode on and the table trainable)
    or under ``torch.compile`` it is recomputed on every call so gradients reach ``pos_embed``.

    Args:
        num_prefix_tokens: leading (CLS) tokens of the table.
    """

    def __init__(self, num_prefix_tokens: int = 1) -> None:
        self.num_prefix_tokens = num_prefix_tokens
        self._entries: dict[tuple[int, int], tuple[tuple[object, ...], Tensor]] = {}

    def __call__(self, pos_embed: Tensor, grid_hw: tuple[int, int]) -> Tensor:
        """Return the pos_embed for ``grid_hw`` (``[1, prefix + rows * cols, D]``)."""
        grid = (int(grid_hw[0]), int(grid_hw[1]))
        if (
            (torch.is_grad_enabled() and pos_embed.requires_grad)
            or torch.compiler.is_compiling()
            or pos_embed.is_inference()
        ):
            return dino_interpolate_pos_embed(pos_embed, grid, self.num_prefix_tokens)
        key = (
            pos_embed.data_ptr(),
            pos_embed._version,
            pos_embed.device,
            pos_embed.dtype,
            torch.is_inference_mode_enabled(),
        )
        hit = self._entries.get(grid)
        if hit is not None and hit[0] == key:
            return hit[1]
        with torch.no_grad():
            value = dino_interpolate_pos_embed(pos_embed, grid, self.num_prefix_tokens)
        self._entries[grid] = (key, value)
        return value

    def clear(self) -> None:
        """Drop every cached grid."""
        self._entries.clear()
