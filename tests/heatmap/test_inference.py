"""Model passes: one ViT-256 pass gives the same features and CLS maps as two separate calls."""

from __future__ import annotations

import numpy as np
import torch

from hipt.heatmap.inference import Vit256Pass, shift_region, split_patches, vit4k_cls_attention
from hipt.models import attention_maps, bag_to_grid, build, normalize_patches


def test_split_patches_is_row_major():
    """Patch n = 16 r + c holds pixels [rP:(r+1)P, cP:(c+1)P]."""
    region = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    patches = split_patches(region, 4)
    for n in (0, 1, 16, 37, 255):
        r, c = divmod(n, 16)
        assert (patches[n] == region[r * 4 : (r + 1) * 4, c * 4 : (c + 1) * 4]).all()


def test_shift_region_crops_top_left_and_pads_white():
    """The official shift: content moves up-left by the offset, white fills bottom and right."""
    region = np.random.default_rng(1).integers(0, 200, (32, 32, 3), dtype=np.uint8)
    out = shift_region(region, 8)
    assert (out[:24, :24] == region[8:, 8:]).all()
    assert (out[24:] == 255).all() and (out[:, 24:] == 255).all()


def test_vit256_pass_matches_forward_and_attention_maps():
    """Features = model(x) and CLS rows = attention_maps(model, x)[:, :, 0, 1:] on every patch."""
    torch.manual_seed(0)
    model = build("vit256_tiny_test").eval()
    region = np.random.default_rng(2).integers(0, 255, (16 * 32, 16 * 32, 3), dtype=np.uint8)
    feats, cls = Vit256Pass(model, torch.device("cpu"), batch_size=100)(region, 32)
    x = normalize_patches(split_patches(region, 32))
    with torch.no_grad():
        want_f = model(x).numpy()
        want_a = attention_maps(model, x)[:, :, 0, 1:].reshape(256, 2, 2, 2).numpy()
    np.testing.assert_allclose(feats, want_f, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cls, want_a, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(cls.sum(axis=(2, 3)) <= 1.0, True)


def test_vit4k_cls_attention_uses_the_row_major_grid():
    """The map equals attention_maps on bag_to_grid(feats), reshaped to the 16 x 16 grid."""
    torch.manual_seed(0)
    vit4k = build("vit4k_tiny_test").eval()
    feats = np.random.default_rng(3).standard_normal((2, 256, 32)).astype(np.float32)
    got = vit4k_cls_attention(vit4k, feats, torch.device("cpu"))
    with torch.no_grad():
        want = attention_maps(vit4k, bag_to_grid(torch.from_numpy(feats)))[:, :, 0, 1:]
    np.testing.assert_allclose(got, want.reshape(2, 2, 16, 16).numpy(), rtol=1e-5, atol=1e-7)
