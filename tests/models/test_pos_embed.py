"""DINO pos-embed interpolation: closed form, exactness, difference from timm, caching."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from timm.layers import resample_abs_pos_embed

from hipt.models import build, dino_interpolate_pos_embed


def _cubic_weights(t: float, a: float = -0.75) -> list[float]:
    """Keys' cubic convolution weights for taps at offsets -1, 0, 1, 2 (a = -0.75 as PyTorch)."""

    def near(x: float) -> float:  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x: float) -> float:  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return [far(t + 1), near(t), near(1 - t), far(2 - t)]


def _resample_matrix(n_in: int, n_out: int, scale: float) -> np.ndarray:
    """Row i: weights of the source cells for output i, source x = (i + 0.5) / scale - 0.5."""
    mat = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = (i + 0.5) / scale - 0.5
        x0 = math.floor(src)
        for tap, w in enumerate(_cubic_weights(src - x0)):
            mat[i, min(max(x0 - 1 + tap, 0), n_in - 1)] += w
    return mat


def _closed_form(pos: torch.Tensor, h: int, w: int) -> np.ndarray:
    """The DINO formula written out: separable bicubic with scale (n + 0.1) / 14 per axis."""
    table = pos[0, 1:].double().numpy().reshape(14, 14, -1)
    rows = _resample_matrix(14, h, (h + 0.1) / 14)
    cols = _resample_matrix(14, w, (w + 0.1) / 14)
    grid = np.einsum("ia,abd,jb->ijd", rows, table, cols)  # i,j out rows/cols; a,b src; d dim
    return np.concatenate([pos[0, :1].double().numpy(), grid.reshape(h * w, -1)])


@pytest.fixture
def pos() -> torch.Tensor:
    torch.manual_seed(0)
    return torch.randn(1, 197, 24)


@pytest.mark.parametrize("grid", [(16, 16), (6, 6), (16, 14), (4, 9)])
def test_matches_closed_form(pos: torch.Tensor, grid: tuple[int, int]) -> None:
    # float64 so that only the formula (not float32 rounding, ~3e-6 here) can differ
    out = dino_interpolate_pos_embed(pos.double(), grid)
    assert out.shape == (1, 1 + grid[0] * grid[1], 24)
    np.testing.assert_allclose(out[0].numpy(), _closed_form(pos, *grid), rtol=0, atol=1e-12)
    out32 = dino_interpolate_pos_embed(pos, grid)
    np.testing.assert_allclose(out32[0].double().numpy(), _closed_form(pos, *grid), atol=1e-5)


@pytest.mark.parametrize("grid", [(16, 16), (6, 6)])
def test_equals_direct_dino_call_bit_for_bit(pos: torch.Tensor, grid: tuple[int, int]) -> None:
    h, w = grid
    patch = pos[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    ref = F.interpolate(patch, scale_factor=((h + 0.1) / 14, (w + 0.1) / 14), mode="bicubic")
    ref = torch.cat((pos[:, :1], ref.permute(0, 2, 3, 1).reshape(1, h * w, -1)), dim=1)
    assert torch.equal(dino_interpolate_pos_embed(pos, grid), ref)


def test_differs_from_timm_and_from_size_based_resampling(pos: torch.Tensor) -> None:
    ours = dino_interpolate_pos_embed(pos, (16, 16))
    timm_out = resample_abs_pos_embed(pos, new_size=(16, 16), old_size=(14, 14))
    patch = pos[:, 1:].reshape(1, 14, 14, -1).permute(0, 3, 1, 2)
    sized = (
        F.interpolate(patch, size=(16, 16), mode="bicubic").permute(0, 2, 3, 1).reshape(1, 256, -1)
    )
    assert (ours - timm_out).abs().max() > 1e-2
    assert (ours[:, 1:] - sized).abs().max() > 1e-2
    assert torch.equal(ours[:, :1], pos[:, :1])  # CLS entry untouched


def test_identity_on_the_training_grid(pos: torch.Tensor) -> None:
    assert dino_interpolate_pos_embed(pos, (14, 14)) is pos


def test_non_square_table_is_rejected() -> None:
    with pytest.raises(ValueError, match="square"):
        dino_interpolate_pos_embed(torch.zeros(1, 11, 4), (4, 4))


def test_cache_reuses_and_invalidates() -> None:
    model = build("vit4k_tiny_test").eval()
    cache = model._pos_cache
    with torch.no_grad():
        first = cache(model.pos_embed, (16, 16))
        assert cache(model.pos_embed, (16, 16)) is first
        model.pos_embed.add_(1.0)  # in-place update (as an optimizer step) bumps the version
        second = cache(model.pos_embed, (16, 16))
    assert second is not first
    assert torch.allclose(second, first + 1.0, atol=1e-5)  # bicubic weights sum to 1
    model.load_state_dict({k: v.clone() for k, v in model.state_dict().items()})
    with torch.no_grad():
        third = cache(model.pos_embed, (16, 16))
    assert third is not second and torch.equal(third, second)
    model.double()
    with torch.no_grad():
        assert cache(model.pos_embed, (16, 16)).dtype == torch.float64


def test_model_output_follows_pos_embed_updates() -> None:
    model = build("vit4k_tiny_test").eval()
    grid = torch.randn(1, 32, 16, 16)
    with torch.no_grad():
        before = model(grid)
        model.pos_embed.mul_(3.0)
        after = model(grid)
    assert not torch.allclose(before, after)


def test_gradient_reaches_pos_embed_in_training() -> None:
    model = build("vit256_tiny_test").train()
    model(torch.randn(2, 3, 256, 256)).sum().backward()
    assert model.pos_embed.grad is not None
    assert model.pos_embed.grad[:, 1:].abs().sum() > 0
