"""DINO multi-crop views: lightly's ``DINOTransform`` for 256-px patches, integer crops for grids.

Both transforms draw their randomness from a per-sample seed (see
:mod:`hipt.pretrain.sampling`), so the views of a sample do not depend on the worker count,
the process rank or whether the run was resumed.
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Callable, Iterator
from typing import NamedTuple, cast

import numpy as np
import torch
from lightly.transforms import DINOTransform
from PIL import Image
from torch import Tensor

#: lightly multiplies the jitter strengths by ``cj_strength`` for every view but the second
#: global one, which keeps the default 0.5; fixing 0.5 and passing doubled strengths gives all
#: views the configured jitter.
_LIGHTLY_CJ_STRENGTH = 0.5


@contextlib.contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Run the block with torch, numpy and ``random`` seeded by ``seed``; restore them after.

    torchvision draws from torch's global generator and lightly's blur/solarize/rotation from
    numpy's, so both are seeded (numpy's is also not reseeded per DataLoader worker).
    """
    np_state = np.random.get_state()
    py_state = random.getstate()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        np.random.seed(seed % 2**32)
        random.seed(seed)
        try:
            yield
        finally:
            np.random.set_state(np_state)
            random.setstate(py_state)


class TileMultiCrop:
    """2 global + ``n_local_crops`` local views of a uint8 RGB patch, normalized (0.5, 0.5).

    Args:
        global_crop_size: side of the global views (224).
        global_crop_scale: area range of the global crops.
        local_crop_size: side of the local views (96).
        local_crop_scale: area range of the local crops.
        n_local_crops: number of local views.
        hflip_prob: horizontal flip probability.
        vflip_prob: vertical flip probability.
        rot90_prob: 90-degree rotation probability.
        color_jitter_prob: colour-jitter probability.
        brightness: jitter brightness.
        contrast: jitter contrast.
        saturation: jitter saturation.
        hue: jitter hue.
        grayscale_prob: grayscale probability.
        blur_probs: blur probability for (global 1, global 2, locals).
        solarization_prob: solarization probability of global view 2.
        mean: normalization mean.
        std: normalization std.
    """

    def __init__(
        self,
        global_crop_size: int = 224,
        global_crop_scale: tuple[float, float] = (0.4, 1.0),
        local_crop_size: int = 96,
        local_crop_scale: tuple[float, float] = (0.05, 0.4),
        n_local_crops: int = 8,
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.5,
        rot90_prob: float = 0.0,
        color_jitter_prob: float = 0.8,
        brightness: float = 0.4,
        contrast: float = 0.4,
        saturation: float = 0.2,
        hue: float = 0.05,
        grayscale_prob: float = 0.2,
        blur_probs: tuple[float, float, float] = (1.0, 0.1, 0.5),
        solarization_prob: float = 0.2,
        mean: tuple[float, float, float] = (0.5, 0.5, 0.5),
        std: tuple[float, float, float] = (0.5, 0.5, 0.5),
    ) -> None:
        k = 1.0 / _LIGHTLY_CJ_STRENGTH
        self.n_views = 2 + n_local_crops
        self.transform = DINOTransform(
            global_crop_size=global_crop_size,
            global_crop_scale=cast("tuple[float, float]", tuple(global_crop_scale)),
            local_crop_size=local_crop_size,
            local_crop_scale=cast("tuple[float, float]", tuple(local_crop_scale)),
            n_local_views=n_local_crops,
            hf_prob=hflip_prob,
            vf_prob=vflip_prob,
            rr_prob=rot90_prob,
            rr_degrees=None,
            cj_prob=color_jitter_prob,
            cj_strength=_LIGHTLY_CJ_STRENGTH,
            cj_bright=brightness * k,
            cj_contrast=contrast * k,
            cj_sat=saturation * k,
            cj_hue=hue * k,
            random_gray_scale=grayscale_prob,
            gaussian_blur=cast("tuple[float, float, float]", tuple(blur_probs)),
            solarization_prob=solarization_prob,
            normalize={"mean": list(mean), "std": list(std)},
        )

    def __call__(self, patch: np.ndarray, seed: int) -> list[Tensor]:
        """Views of one patch.

        Args:
            patch: uint8 ``[H, W, 3]`` RGB.
            seed: per-sample seed.

        Returns:
            2 tensors ``[3, G, G]`` then ``n_local_crops`` tensors ``[3, L, L]``.
        """
        with seeded(seed):
            # normalize is set, so every view is a tensor (not a PIL image)
            return list(cast("list[Tensor]", self.transform(Image.fromarray(patch))))


class GridView(NamedTuple):
    """Where a grid view was cut and how it was flipped (for tests and debugging)."""

    top: int
    left: int
    size: int
    hflip: bool
    vflip: bool
    rot90: int


def grid_view(grid: Tensor, view: GridView) -> Tensor:
    """Cut ``view`` out of ``grid [D, H, W]``: crop, then flips, then ``rot90`` quarter turns."""
    out = grid[:, view.top : view.top + view.size, view.left : view.left + view.size]
    if view.hflip:
        out = out.flip(-1)
    if view.vflip:
        out = out.flip(-2)
    if view.rot90:
        out = torch.rot90(out, view.rot90, dims=(-2, -1))
    return out.contiguous()


class GridMultiCrop:
    """DINO views of a ViT-256 feature grid ``[D, 16, 16]`` (HIPT ``DataAugmentationDINO4K``).

    Integer-offset random crops without resizing: 2 global ``14x14`` and ``n_local_crops``
    local ``6x6`` crops, each flipped horizontally with ``hflip_prob``; vertical flips and
    90-degree rotations are optional and off in HIPT (reference/hipt.md 5.3).

    Args:
        global_crop_size: side of the global crops.
        local_crop_size: side of the local crops.
        n_local_crops: number of local crops.
        hflip_prob: horizontal flip probability.
        vflip_prob: vertical flip probability.
        rot90_prob: probability of a 90/180/270-degree rotation.
    """

    def __init__(
        self,
        global_crop_size: int = 14,
        local_crop_size: int = 6,
        n_local_crops: int = 8,
        hflip_prob: float = 0.5,
        vflip_prob: float = 0.0,
        rot90_prob: float = 0.0,
    ) -> None:
        self.sizes = [global_crop_size] * 2 + [local_crop_size] * n_local_crops
        self.n_views = len(self.sizes)
        self.hflip_prob = hflip_prob
        self.vflip_prob = vflip_prob
        self.rot90_prob = rot90_prob

    def sample(self, height: int, width: int, seed: int) -> list[GridView]:
        """Draw the crop positions and flips of every view for a ``height x width`` grid."""
        if max(self.sizes) > min(height, width):
            raise ValueError(f"crop {max(self.sizes)} does not fit a {height}x{width} grid")
        rng = np.random.default_rng(seed)
        views = []
        for size in self.sizes:
            top = int(rng.integers(0, height - size + 1))
            left = int(rng.integers(0, width - size + 1))
            hflip = bool(rng.random() < self.hflip_prob)
            vflip = bool(rng.random() < self.vflip_prob)
            rot = int(rng.integers(1, 4)) if rng.random() < self.rot90_prob else 0
            views.append(GridView(top, left, size, hflip, vflip, rot))
        return views

    def __call__(self, grid: Tensor, seed: int) -> list[Tensor]:
        """Views of one grid ``[D, H, W]``: 2 ``[D, G, G]`` then the ``[D, L, L]`` locals."""
        return [grid_view(grid, v) for v in self.sample(grid.shape[-2], grid.shape[-1], seed)]


class StainedViews:
    """Stain-normalize a uint8 ``[H, W, 3]`` patch, then cut the views of ``views``.

    Args:
        stain: normalizer, ``uint8 [B, 3, H, W] -> uint8 [B, 3, H, W]``.
        views: ``(patch, seed) -> views`` (:class:`TileMultiCrop`).
    """

    def __init__(
        self,
        stain: Callable[[Tensor], Tensor],
        views: Callable[[np.ndarray, int], list[Tensor]],
    ) -> None:
        self.stain = stain
        self.views = views
        self.n_views = int(getattr(views, "n_views", 0))

    def __call__(self, patch: np.ndarray, seed: int) -> list[Tensor]:
        """Views of the normalized patch."""
        chw = torch.from_numpy(np.ascontiguousarray(patch)).permute(2, 0, 1)[None]
        normalized = self.stain(chw)[0].permute(1, 2, 0).contiguous().numpy()
        return self.views(normalized, seed)
