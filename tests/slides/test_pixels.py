"""The one read-resize-cut path: antialiased resize, row-major unfold/split, region reads."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

from hipt.slides.pixels import resize_region, split_patches, unfold_patches


def test_resize_matches_pil_bilinear_and_closed_form():
    """Antialiased bilinear equals PIL's BILINEAR (within one grey level) and, for a 2x
    reduction, the [1, 3, 3, 1] / 8 triangle filter computed by hand."""
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    got = resize_region(torch.from_numpy(img).permute(2, 0, 1), 32).permute(1, 2, 0).numpy()
    pil = np.asarray(Image.fromarray(img).resize((32, 32), Image.BILINEAR))
    assert np.abs(got.astype(int) - pil).max() <= 1
    k = np.array([1, 3, 3, 1], float) / 8
    pad = np.pad(img.astype(float), ((1, 1), (1, 1), (0, 0)), mode="constant")
    wts = np.pad(np.ones((64, 64)), 1)
    num = sum(k[a] * k[b] * pad[a : a + 64 : 2, b : b + 64 : 2][:32, :32] for a in range(4)
              for b in range(4))  # fmt: skip
    den = sum(k[a] * k[b] * wts[a : a + 64 : 2, b : b + 64 : 2][:32, :32] for a in range(4)
              for b in range(4))  # fmt: skip
    ref = num / den[..., None]
    assert np.abs(got - ref).max() <= 0.5 + 1e-6
    same = torch.from_numpy(img).permute(2, 0, 1)
    assert resize_region(same, 64) is same


def test_unfold_is_row_major():
    """Patch n of the unfold is the pixel block at row n // g, column n % g."""
    region = torch.arange(3 * 64 * 64, dtype=torch.int32).reshape(3, 64, 64)
    patches = unfold_patches(region, 16)
    assert patches.shape == (16, 3, 16, 16)
    for n in range(16):
        r, c = divmod(n, 4)
        assert torch.equal(patches[n], region[:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16])


def test_split_patches_is_the_numpy_twin_of_unfold():
    """split_patches (HWC numpy) and unfold_patches (CHW torch) cut the same row-major patches."""
    rng = np.random.default_rng(1)
    region = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    a = split_patches(region, 16)
    b = unfold_patches(torch.from_numpy(region).permute(2, 0, 1), 16).permute(0, 2, 3, 1)
    np.testing.assert_array_equal(a, b.numpy())
