"""ViT-256 over patch batches, per-region assembly of the 16x16 grid, ViT-4K over finished grids."""

from __future__ import annotations

import logging
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from hipt.errors import one_line
from hipt.models.grid import bag_to_grid
from hipt.models.preprocess import PatchPreprocess
from hipt.models.vit256 import VIT256_PREPROCESSING
from hipt.slides.regions import GRID

GRID_PATCHES = GRID * GRID

log = logging.getLogger(__name__)


class CompiledOrEager(nn.Module):
    """``torch.compile`` d module that falls back to eager when compilation fails.

    Compilation happens at the first call; a machine without a working compiler toolchain
    (inductor needs a C++ compiler on CPU) then keeps running, eagerly, with one warning.

    Args:
        module: the eager module.
    """

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.module = module
        self._compiled: Any = torch.compile(module)
        self._ok: bool | None = None

    def forward(self, x: Tensor) -> Tensor:
        """Compiled forward, or eager after a failed compilation."""
        if self._ok is False:
            return self.module(x)
        try:
            out = self._compiled(x)
        except Exception as exc:  # noqa: BLE001 - any compiler failure: fall back
            if self._ok:
                raise
            log.warning("torch.compile failed (%s); running eagerly", one_line(exc)[:200])
            self._ok = False
            return self.module(x)
        self._ok = True
        return out  # type: ignore[no-any-return]


class RegionEncoder(nn.Module):
    """The two frozen HIPT encoders and the official preprocessing (reference/hipt.md 3.4, 4.1).

    Args:
        vit256: patch encoder, preprocessed ``[B, 3, S, S]`` -> embedding ``[B, D256]``.
        vit4k: region encoder, grid ``[n, D256, 16, 16]`` -> CLS ``[n, D4k]``.
        pad_to: pad every patch batch to this size (keeps a compiled ViT-256 at one shape).
        preprocess: uint8 patches -> the patch encoder's input (stain, resize, normalize);
            default: HIPT's ``(x / 255 - 0.5) / 0.5`` at the patch's own size.
    """

    def __init__(
        self,
        vit256: nn.Module,
        vit4k: nn.Module,
        pad_to: int | None = None,
        preprocess: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.vit256 = vit256
        self.vit4k = vit4k
        self.pad_to = pad_to
        self.preprocess = preprocess or PatchPreprocess(VIT256_PREPROCESSING)

    def encode_patches(self, patches: Tensor) -> Tensor:
        """uint8 ``[B, 3, P, P]`` -> patch embeddings ``[B, D256]`` (preprocessed first)."""
        n = patches.shape[0]
        if self.pad_to is not None and n < self.pad_to:
            pad = patches.new_full((self.pad_to - n, *patches.shape[1:]), 255)
            patches = torch.cat([patches, pad])
        x = self.preprocess(patches)
        if x.is_cuda:  # the patch-embed conv is fastest channels-last (weights follow)
            x = x.contiguous(memory_format=torch.channels_last)
        return self.vit256(x)[:n]

    def encode_regions(self, bags: Tensor) -> Tensor:
        """``[n, 256, D256]`` row-major bags -> ViT-4K CLS ``[n, D4k]``."""
        return self.vit4k(bag_to_grid(bags))

    def blank_feature(self, patch_px: int, device: torch.device | str) -> Tensor:
        """ViT-256 CLS ``[D256]`` of an all-white patch (the fill of skipped background)."""
        white = torch.full((1, 3, patch_px, patch_px), 255, dtype=torch.uint8, device=device)
        eager = getattr(self.vit256, "module", self.vit256)  # no compile for one odd shape
        return eager(self.preprocess(white))[0]


class Finished(NamedTuple):
    """Regions whose 256 patch features are all present."""

    slide: list[int]
    region: list[int]
    bags: Tensor  # [n, 256, D256] float32


class RegionAssembler:
    """Collects patch features per region until all its patches arrived (regions interleave).

    Buffers live on the features' device; at most one partial region per reader stream is open.

    Args:
        fill: ``[D256]`` feature for patches that are never encoded (skip_background); ``None``
            when every patch is encoded.
    """

    def __init__(self, fill: Tensor | None = None) -> None:
        self.fill = None if fill is None else fill.detach().float()
        self._bufs: dict[tuple[int, int], Tensor] = {}
        self._counts: dict[tuple[int, int], int] = {}

    def __len__(self) -> int:
        return len(self._bufs)

    def _buffer(self, key: tuple[int, int], like: Tensor) -> Tensor:
        buf = self._bufs.get(key)
        if buf is None:
            dim = like.shape[-1]
            if self.fill is not None:
                buf = self.fill.to(like.device).expand(GRID_PATCHES, dim).clone()
            else:
                buf = torch.zeros((GRID_PATCHES, dim), dtype=torch.float32, device=like.device)
            self._bufs[key] = buf
            self._counts[key] = 0
        return buf

    def add(
        self, slide: Tensor, region: Tensor, patch: Tensor, expected: Tensor, feats: Tensor
    ) -> list[tuple[int, int]]:
        """Place ``feats [B, D]`` at their (slide, region, patch); return regions now complete."""
        done = []
        s_l, r_l, e_l = slide.tolist(), region.tolist(), expected.tolist()
        start = 0
        for i in range(1, len(s_l) + 1):  # runs of consecutive patches of one region
            if i < len(s_l) and (s_l[i], r_l[i]) == (s_l[start], r_l[start]):
                continue
            key = (s_l[start], r_l[start])
            buf = self._buffer(key, feats)
            idx = patch[start:i].to(buf.device)
            buf[idx] = feats[start:i].float()
            self._counts[key] += i - start
            if self._counts[key] >= e_l[start]:
                done.append(key)
            start = i
        return done

    def add_empty(self, keys: Tensor, like: Tensor) -> list[tuple[int, int]]:
        """Regions with no patch to encode: all fill, complete at once."""
        out = []
        for s, r in keys.tolist():
            self._buffer((s, r), like)
            out.append((s, r))
        return out

    def pop(self, keys: list[tuple[int, int]]) -> Finished:
        """Remove finished regions and stack their bags."""
        bags = torch.stack([self._bufs.pop(k) for k in keys]) if keys else torch.empty(0)
        for k in keys:
            self._counts.pop(k)
        return Finished([k[0] for k in keys], [k[1] for k in keys], bags)

    def drop_slide(self, slide: int) -> None:
        """Forget the partial regions of a failed slide."""
        for key in [k for k in self._bufs if k[0] == slide]:
            self._bufs.pop(key)
            self._counts.pop(key)
