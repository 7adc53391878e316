"""Row-major mapping between [M, 256, 384] region bags and [M, 384, 16, 16] grids."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hipt.models import bag_to_grid, grid_to_bag


def test_patch_index_is_row_times_16_plus_col() -> None:
    bag = torch.randn(3, 256, 384)
    grid = bag_to_grid(bag)
    assert grid.shape == (3, 384, 16, 16)
    for m, row, col in [(0, 0, 0), (1, 0, 15), (2, 15, 0), (0, 7, 9), (2, 15, 15)]:
        assert torch.equal(grid[m, :, row, col], bag[m, row * 16 + col])


def test_equals_the_unfold_form() -> None:
    bag = torch.randn(2, 256, 8)
    assert torch.equal(bag_to_grid(bag), bag.unfold(1, 16, 16).transpose(1, 2))


@settings(max_examples=40, deadline=None)
@given(
    m=st.integers(1, 3),
    h=st.integers(1, 6),
    w=st.integers(1, 6),
    d=st.integers(1, 5),
)
def test_bijection_on_any_grid(m: int, h: int, w: int, d: int) -> None:
    bag = torch.arange(m * h * w * d, dtype=torch.float32).reshape(m, h * w, d)
    grid = bag_to_grid(bag, (h, w))
    rows = torch.arange(h).view(h, 1).expand(h, w)
    cols = torch.arange(w).view(1, w).expand(h, w)
    expected = bag[:, rows * w + cols].permute(0, 3, 1, 2)  # [M, D, H, W] gathered by index
    assert torch.equal(grid, expected)
    assert torch.equal(grid_to_bag(grid), bag)


def test_bad_shapes() -> None:
    with pytest.raises(ValueError):
        bag_to_grid(torch.zeros(2, 10, 3))  # not square
    with pytest.raises(ValueError):
        bag_to_grid(torch.zeros(10, 3))
    with pytest.raises(ValueError):
        grid_to_bag(torch.zeros(2, 3, 4))
