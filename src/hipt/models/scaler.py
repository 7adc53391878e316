"""FeatureScaler: a fixed per-feature standardisation fitted once, stored with the model."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

__all__ = ["FeatureScaler"]


class FeatureScaler(nn.Module):
    """``(x - mean) / std`` per feature, with statistics fitted on training data.

    Frozen features from tiny or barely pretrained encoders can differ between regions by a
    few hundredths of their scale; a slide head that starts from such inputs sees nearly
    identical instances and collapses to one class. Standardising each feature with the
    training fold's statistics (a fixed affine map, so nothing of the test fold leaks in)
    removes that without changing what the features can express. The statistics are buffers:
    checkpoints carry them and strict loading checks them.

    Args:
        dim: feature width.
        rel_floor: a feature's std is raised to at least this share of the largest feature's
            std, so near-constant features map to ~0 instead of blowing up. Unlike an absolute
            ``eps`` this keeps the map exact for features of any overall scale (the tiny
            ones are the point); all-constant features get std 1.
    """

    mean: Tensor
    std: Tensor
    count: Tensor

    def __init__(self, dim: int, rel_floor: float = 1e-3) -> None:
        super().__init__()
        self.dim, self.rel_floor = dim, rel_floor
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @torch.no_grad()
    def fit(self, batches: Iterable[Tensor]) -> FeatureScaler:
        """Set mean and std from every row of ``batches`` (each ``[N, dim]``), streamed.

        Batches are merged with Chan et al.'s pairwise update in float64, so the result equals
        the statistics of all rows at once (population variance) without holding them.
        """
        n, mean, m2 = 0, torch.zeros(self.dim, dtype=torch.float64), None
        for x in batches:
            x = x.detach().reshape(-1, self.dim).to("cpu", torch.float64)
            if not len(x):
                continue
            if not bool(torch.isfinite(x).all()):
                raise ValueError("FeatureScaler.fit: non-finite feature values")
            k, bmean = len(x), x.mean(0)
            bm2 = ((x - bmean) ** 2).sum(0)
            delta, total = bmean - mean, n + k
            mean = mean + delta * (k / total)
            m2 = bm2 if m2 is None else m2 + bm2 + delta**2 * (n * k / total)
            n = total
        if m2 is None:
            raise ValueError("FeatureScaler.fit: no rows to fit on")
        std = torch.sqrt(m2 / n)
        top = float(std.max())
        std = std.clamp_min(self.rel_floor * top) if top > 0 else torch.ones_like(std)
        self.mean.copy_(mean.to(self.mean.dtype))
        self.std.copy_(std.to(self.std.dtype))
        self.count.fill_(n)
        return self

    @property
    def fitted(self) -> bool:
        """Whether :meth:`fit` ran (or fitted statistics were loaded)."""
        return int(self.count) > 0

    def forward(self, x: Tensor) -> Tensor:
        """Standardise the last dimension of ``x``."""
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        """Width, floor and whether statistics are set (shown in ``print(model)``)."""
        return f"{self.dim}, rel_floor={self.rel_floor}, fitted={self.fitted}"
