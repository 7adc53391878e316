"""One region's maps: ViT-256 on its pixels, ViT-4K on its grid, optional shifted re-inference."""

from __future__ import annotations

import dataclasses
from typing import cast

import numpy as np
import torch
from torch import nn

from hipt.heatmap.inference import Vit256Pass, shift_region, vit4k_cls_attention
from hipt.heatmap.scores import (
    RegionMaps,
    ShiftAccumulator,
    region_maps,
    upsample,
    vit4k_percentiles,
    vit256_percentiles,
)
from hipt.slides.regions import GRID

#: Official shifts in patches (reference/hipt.md 4.2): 128 px of 256 at the 256 level, and
#: 128/256/384 px at the 4K level.
SHIFTS_256 = (0.0, 0.5)
SHIFTS_4K = (0.0, 0.5, 1.0, 1.5)


@dataclasses.dataclass
class MapSpec:
    """Which maps are made and how they combine.

    Attributes:
        heads256: ViT-256 heads drawn one by one.
        heads4k: ViT-4K heads drawn one by one.
        head_pairs: ``(vit4k head, vit256 head)`` factorized pairs.
        weights: ``(slide, vit4k, vit256)`` level weights.
        combine: ``mean`` or ``product``.
        scope: ``tissue`` or ``all`` (which cells the ViT-4K percentiles rank among).
        smoothing: average the official shifted passes.
    """

    heads256: list[int]
    heads4k: list[int]
    head_pairs: list[tuple[int, int]]
    weights: tuple[float, float, float]
    combine: str
    scope: str
    smoothing: bool


@dataclasses.dataclass
class RegionResult:
    """Maps of one region plus what the feature check found.

    Attributes:
        maps: the named token-grid maps.
        cosine: cosine similarity of recomputed vs stored ViT-256 features, per tissue patch.
    """

    maps: RegionMaps
    cosine: np.ndarray


def shifted_cells(patch_valid: np.ndarray, t: int, offset: int) -> np.ndarray:
    """Validity of the cells of a pass shifted by ``offset`` tokens (any tissue token inside)."""
    tokens = upsample(np.asarray(patch_valid, bool), t)
    side = tokens.shape[0]
    moved = np.zeros_like(tokens)
    moved[: side - offset, : side - offset] = tokens[offset:, offset:]
    return cast(np.ndarray, moved.reshape(GRID, t, GRID, t).any(axis=(1, 3)))


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise cosine similarity of ``[n, D]`` arrays."""
    num = (a * b).sum(axis=1)
    den = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return num / np.maximum(den, 1e-12)


class RegionScorer:
    """Computes every map of one region, one region at a time (bounded memory).

    Args:
        vit256: the ViT-256 pass (store's patch encoder).
        vit4k: the ViT-4K drawn at the 4K level.
        device: where the ViT-4K runs.
        patch_px: patch side at the store's resolution.
        spec: which maps and how.
    """

    def __init__(
        self,
        vit256: Vit256Pass,
        vit4k: nn.Module,
        device: torch.device,
        patch_px: int,
        spec: MapSpec,
    ) -> None:
        self.vit256 = vit256
        self.vit4k = vit4k
        self.device = device
        self.patch_px = patch_px
        self.spec = spec
        self.t = vit256.tokens_per_patch(patch_px)

    def _offsets(self, shifts: tuple[float, ...]) -> list[tuple[int, int]]:
        """``(pixel, token)`` offsets of the shifts that land on whole tokens."""
        out: list[tuple[int, int]] = []
        for frac in shifts:
            px = round(frac * self.patch_px)
            if (px * self.t) % self.patch_px == 0 and (px, px * self.t // self.patch_px) not in out:
                out.append((px, px * self.t // self.patch_px))
        return out

    def _p4k(self, attn: np.ndarray, valid: np.ndarray) -> np.ndarray:
        return upsample(
            vit4k_percentiles(attn, valid if self.spec.scope == "tissue" else None), self.t
        )

    def score(
        self,
        region: np.ndarray,
        stored: np.ndarray,
        attn4k: np.ndarray,
        patch_mask: np.ndarray,
        slide_pct: float | None,
    ) -> RegionResult:
        """Maps of one region.

        Args:
            region: uint8 ``[16P, 16P, 3]`` pixels at the store's resolution.
            stored: ``[256, D]`` stored ViT-256 features of the region.
            attn4k: ``[H4k, 16, 16]`` ViT-4K CLS attention on the stored grid.
            patch_mask: ``[256]`` tissue patches.
            slide_pct: the region's slide-attention percentile (``None``: no model).
        """
        valid = np.asarray(patch_mask, bool).reshape(GRID, GRID)
        feats0, attn0 = self.vit256(region, self.patch_px)
        side = GRID * self.t
        if not self.spec.smoothing:
            p256 = vit256_percentiles(attn0)
            p4k = self._p4k(attn4k, valid)
        else:
            acc256 = ShiftAccumulator(attn0.shape[1] + 1, side)
            feats: dict[int, np.ndarray] = {0: stored}
            for px, tok in self._offsets(SHIFTS_256):
                f, a = (
                    (feats0, attn0)
                    if px == 0
                    else self.vit256(shift_region(region, px), self.patch_px)
                )
                feats.setdefault(px, f)
                acc256.add(vit256_percentiles(a), tok)
            p256 = acc256.result()
            acc4k = ShiftAccumulator(attn4k.shape[0] + 1, side)
            for px, tok in self._offsets(SHIFTS_4K):
                if px == 0:
                    a4 = attn4k
                else:
                    if px not in feats:
                        feats[px] = self.vit256(shift_region(region, px), self.patch_px)[0]
                    a4 = vit4k_cls_attention(self.vit4k, feats[px][None], self.device)[0]
                acc4k.add(self._p4k(a4, shifted_cells(valid, self.t, tok)), tok)
            p4k = acc4k.result()
        s = self.spec
        maps = region_maps(
            p256, p4k, valid, slide_pct, s.head_pairs, s.weights, s.combine, s.heads256, s.heads4k
        )
        flat = valid.reshape(-1)
        return RegionResult(maps=maps, cosine=cosine(feats0[flat], stored[flat]))
