"""Attention -> percentile maps per level, shifted-pass smoothing and the factorized combination.

All maps of one region live on its *token grid*: ``S = 16 * t`` cells per side, where ``t`` is the
number of ViT-256 tokens per patch side (16 for 256-px patches of 16-px tokens). A ViT-4K cell
(one patch) covers ``t x t`` tokens; the slide level gives one value per region.
"""

from __future__ import annotations

import dataclasses
from typing import cast

import numpy as np
from scipy.stats import rankdata

from hipt.slides.regions import GRID


def percentile(values: np.ndarray, valid: np.ndarray | None = None, axis: int = -1) -> np.ndarray:
    """Official percentile conversion ``rankdata(v) * 100 / len(v)`` along ``axis``.

    Ties get their average rank (scipy's default, as the official code). With ``valid``, only
    valid entries are ranked (among themselves) and the others become NaN.

    Args:
        values: scores; ranked independently along ``axis``.
        valid: bool mask broadcastable to ``values``.
        axis: the axis along which values are ranked.

    Returns:
        float32 percentiles in ``(0, 100]``, NaN where not valid.
    """
    values = np.asarray(values, dtype=np.float64)
    if valid is None:
        n = values.shape[axis]
        return (rankdata(values, axis=axis) * 100.0 / max(n, 1)).astype(np.float32)
    valid = np.broadcast_to(np.asarray(valid, dtype=bool), values.shape)
    flat_v = np.moveaxis(values, axis, -1).reshape(-1, values.shape[axis])
    flat_m = np.moveaxis(valid, axis, -1).reshape(-1, values.shape[axis])
    out = np.full(flat_v.shape, np.nan, dtype=np.float32)
    for row in range(flat_v.shape[0]):
        keep = flat_m[row]
        n = int(keep.sum())
        if n:
            out[row, keep] = rankdata(flat_v[row, keep]) * 100.0 / n
    shape = np.moveaxis(values, axis, -1).shape
    return np.moveaxis(out.reshape(shape), -1, axis)


def with_mean(attn: np.ndarray, head_axis: int = 0) -> np.ndarray:
    """Append the head-mean attention as an extra last head (``[..., H+1, ...]``).

    The mean is taken over raw attention weights before ranking, so "mean" is the percentile of
    the average attention, not the average of percentiles.
    """
    mean = attn.mean(axis=head_axis, keepdims=True)
    return np.concatenate([attn, mean], axis=head_axis)


def tile_patches(maps: np.ndarray, grid: int = GRID) -> np.ndarray:
    """Arrange per-patch maps ``[C, grid*grid, t, t]`` (row-major patches) as ``[C, S, S]``.

    Patch ``n`` sits at ``(row, col) = divmod(n, grid)``, so token ``(a, b)`` of patch ``n`` lands
    at ``(row * t + a, col * t + b)``.
    """
    c, n, t, t2 = maps.shape
    if n != grid * grid or t != t2:
        raise ValueError(f"expected [C, {grid * grid}, t, t] patch maps, got {list(maps.shape)}")
    # dims: C, patch row, patch col, token row, token col -> C, (patch row, token row), ...
    return maps.reshape(c, grid, grid, t, t).transpose(0, 1, 3, 2, 4).reshape(c, grid * t, grid * t)


def upsample(cells: np.ndarray, factor: int) -> np.ndarray:
    """Nearest upsampling of the last two axes by an integer ``factor``."""
    return np.repeat(np.repeat(cells, factor, axis=-2), factor, axis=-1)


def vit256_percentiles(cls_attn: np.ndarray) -> np.ndarray:
    """ViT-256 percentiles of one region (each patch ranked on its own, as the official code).

    Args:
        cls_attn: ``[256, H, t, t]`` CLS-row attention of every patch (row-major).

    Returns:
        ``[H + 1, S, S]``; the last map is the head mean.
    """
    p, h, t, _ = cls_attn.shape
    att = with_mean(cls_attn, head_axis=1).reshape(p, h + 1, t * t)
    pct = percentile(att, axis=-1).reshape(p, h + 1, t, t)
    return tile_patches(pct.transpose(1, 0, 2, 3))


def vit4k_percentiles(cls_attn: np.ndarray, valid: np.ndarray | None) -> np.ndarray:
    """ViT-4K percentiles of one region, ranked over its (valid) patches.

    Args:
        cls_attn: ``[H, g, g]`` CLS-row attention over the patch grid.
        valid: ``[g, g]`` bool cells to rank among (``None``: all, as the official code).

    Returns:
        ``[H + 1, g, g]``, NaN on invalid cells; the last map is the head mean.
    """
    h, g, _ = cls_attn.shape
    att = with_mean(cls_attn, head_axis=0).reshape(h + 1, g * g)
    mask = None if valid is None else np.asarray(valid, bool).reshape(1, g * g)
    return percentile(att, mask, axis=-1).reshape(h + 1, g, g)


class ShiftAccumulator:
    """Average of maps computed on shifted copies of a region (official smoothing).

    A shifted pass sees the region cropped by ``o`` tokens at the top-left and padded at the
    bottom-right, so its map cell ``(r, c)`` belongs at ``(r + o, c + o)``; cells pushed past the
    region are dropped, and each region cell averages the passes that cover it.

    Args:
        channels: maps per pass.
        side: token-grid side ``S`` of the region.
    """

    def __init__(self, channels: int, side: int) -> None:
        self.sum = np.zeros((channels, side, side), dtype=np.float64)
        self.count = np.zeros((channels, side, side), dtype=np.int32)
        self.side = side

    def add(self, maps: np.ndarray, offset: int = 0) -> None:
        """Add ``[C, S, S]`` maps of a pass shifted by ``offset`` tokens (NaN = no value)."""
        n = self.side - offset
        if n <= 0:
            return
        part = maps[:, :n, :n]
        ok = ~np.isnan(part)
        self.sum[:, offset:, offset:] += np.where(ok, part, 0.0)
        self.count[:, offset:, offset:] += ok

    def result(self) -> np.ndarray:
        """``[C, S, S]`` float32 mean, NaN where no pass gave a value."""
        with np.errstate(invalid="ignore", divide="ignore"):
            out = self.sum / self.count
        return np.where(self.count > 0, out, np.nan).astype(np.float32)


def shift_offsets(fractions: tuple[float, ...], tokens_per_patch: int) -> list[int]:
    """Distinct token offsets of shifts given in patches (e.g. ``(0, 0.5)`` -> ``[0, t/2]``)."""
    out: list[int] = []
    for frac in fractions:
        off = round(frac * tokens_per_patch)
        if off not in out:
            out.append(off)
    return out


def combine(
    levels: list[tuple[np.ndarray | float, float]], mode: str = "mean"
) -> np.ndarray | float:
    """Factorized map of percentile maps (``0..100``) of several levels.

    Args:
        levels: ``(percentiles, weight)`` per level; scalars (slide level) broadcast.
        mode: ``mean``: the weighted mean (official HIPT, reference/hipt.md 4.2);
            ``product``: ``100 * prod(p / 100)`` (high only where every level is high).

    Returns:
        Map in ``0..100`` (NaN where any input is NaN).
    """
    used = [(np.asarray(p, dtype=np.float32), float(w)) for p, w in levels if w > 0]
    if not used:
        raise ValueError("combine needs at least one level with a positive weight")
    if mode == "mean":
        total = sum(w for _, w in used)
        return sum(p * w for p, w in used) / total
    if mode == "product":
        out: np.ndarray | np.float32 = np.float32(100.0)
        for p, _ in used:
            out = out * (p / 100.0)
        return cast(np.ndarray, out)  # a product with at least one array (used is not empty)
    raise ValueError(f"unknown combine mode '{mode}'")


@dataclasses.dataclass
class RegionMaps:
    """Every map of one region on its token grid (NaN outside tissue).

    Attributes:
        maps: name -> ``[S, S]`` float32 percentile map (``vit256_head0``, ``vit4k_mean``,
            ``slide_attention``, ``factorized_mean``, ...).
        valid: ``[S, S]`` bool tissue cells.
    """

    maps: dict[str, np.ndarray]
    valid: np.ndarray


def region_maps(
    p256: np.ndarray,
    p4k: np.ndarray,
    patch_valid: np.ndarray,
    slide_pct: float | None,
    head_pairs: list[tuple[int, int]],
    weights: tuple[float, float, float],
    mode: str,
    heads256: list[int],
    heads4k: list[int],
) -> RegionMaps:
    """Assemble the named maps of one region.

    Args:
        p256: ``[H256 + 1, S, S]`` ViT-256 percentiles (last = mean).
        p4k: ``[H4k + 1, S, S]`` ViT-4K percentiles on the token grid (last = mean).
        patch_valid: ``[16, 16]`` tissue patches.
        slide_pct: the region's slide-attention percentile, or ``None`` without a model.
        head_pairs: ``(vit4k head, vit256 head)`` pairs to factorize.
        weights: ``(slide, vit4k, vit256)`` level weights.
        mode: combine mode (see :func:`combine`).
        heads256: ViT-256 heads drawn one by one.
        heads4k: ViT-4K heads drawn one by one.
    """
    side = p256.shape[-1]
    valid = upsample(np.asarray(patch_valid, bool), side // patch_valid.shape[-1])
    w_slide, w4k, w256 = weights

    def masked(a: np.ndarray | float) -> np.ndarray:
        return np.where(valid, np.broadcast_to(a, valid.shape), np.nan).astype(np.float32)

    def factor(j: int, i: int) -> np.ndarray:
        levels: list[tuple[np.ndarray | float, float]] = [(p4k[j], w4k), (p256[i], w256)]
        if slide_pct is not None:
            levels.insert(0, (slide_pct, w_slide))
        return masked(combine(levels, mode))

    maps: dict[str, np.ndarray] = {}
    if slide_pct is not None:
        maps["slide_attention"] = masked(slide_pct)
    maps["vit4k_mean"] = masked(p4k[-1])
    for j in heads4k:
        maps[f"vit4k_head{j}"] = masked(p4k[j])
    maps["vit256_mean"] = masked(p256[-1])
    for i in heads256:
        maps[f"vit256_head{i}"] = masked(p256[i])
    maps["factorized_mean"] = factor(-1, -1)
    for j, i in head_pairs:
        maps[f"factorized_4kh{j}_256h{i}"] = factor(j, i)
    return RegionMaps(maps=maps, valid=valid)
