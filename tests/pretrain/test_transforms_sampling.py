import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from hipt.pretrain.sampling import ShardedEpochSampler
from hipt.pretrain.transforms import GridMultiCrop, TileMultiCrop


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 2**62))
def test_grid_crops_shapes_bounds_and_flip(seed):
    """2 global 14x14 + 8 local 6x6 crops, inside the 16x16 grid; each view is the grid slice,
    mirrored left-right exactly when it was flipped; no vertical flip or rotation by default."""
    grid = torch.arange(5 * 16 * 16, dtype=torch.float32).reshape(5, 16, 16)
    crop = GridMultiCrop()
    plan = crop.sample(16, 16, seed)
    views = crop(grid, seed)
    assert [tuple(v.shape) for v in views] == [(5, 14, 14)] * 2 + [(5, 6, 6)] * 8
    for p, v in zip(plan, views, strict=True):
        assert 0 <= p.top <= 16 - p.size and 0 <= p.left <= 16 - p.size
        assert not p.vflip and p.rot90 == 0
        ref = grid[:, p.top : p.top + p.size, p.left : p.left + p.size]
        want = ref[:, :, torch.arange(p.size - 1, -1, -1)] if p.hflip else ref
        assert torch.equal(v, want)


def test_grid_flip_rate_and_optional_augs():
    """hflip happens about half the time; vflip and rot90 only when enabled, as grid symmetries."""
    crop = GridMultiCrop()
    flips = [v.hflip for s in range(200) for v in crop.sample(16, 16, s)]
    assert 0.4 < np.mean(flips) < 0.6
    grid = torch.randn(3, 16, 16)
    rot = GridMultiCrop(hflip_prob=0.0, vflip_prob=1.0, rot90_prob=1.0)
    for p, v in zip(rot.sample(16, 16, 3), rot(grid, 3), strict=True):
        ref = grid[:, p.top : p.top + p.size, p.left : p.left + p.size].flip(-2)
        assert p.vflip and p.rot90 in (1, 2, 3)
        assert torch.equal(v, torch.rot90(ref, p.rot90, dims=(-2, -1)))
    with pytest.raises(ValueError, match="does not fit"):
        crop.sample(12, 12, 0)


def test_tile_multicrop_shapes_range_and_seeding():
    """2 global + n local views in [-1, 1]; same seed -> same views; global RNG untouched."""
    rng = np.random.default_rng(0)
    patch = rng.integers(0, 256, size=(256, 256, 3), dtype=np.uint8)
    t = TileMultiCrop(global_crop_size=64, local_crop_size=32, n_local_crops=3)
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = t(patch, seed=7)
    after = torch.rand(1)
    assert torch.equal(before, after)  # the transform did not consume the global generator
    assert [tuple(v.shape) for v in a] == [(3, 64, 64)] * 2 + [(3, 32, 32)] * 3
    assert all(v.min() >= -1.0 - 1e-6 and v.max() <= 1.0 + 1e-6 for v in a)
    b, c = t(patch, seed=7), t(patch, seed=8)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(torch.equal(x, y) for x, y in zip(a, c, strict=True))


def test_sampler_shards_equal_one_process_batches():
    """W ranks x batch B see, step by step, the samples and seeds of 1 rank x batch W*B."""
    one = list(ShardedEpochSampler(37, 4, 0, 1, seed=3))
    shards = [list(ShardedEpochSampler(37, 2, r, 2, seed=3)) for r in range(2)]
    assert len(one) == 36 and all(len(s) == 18 for s in shards)
    for step in range(9):
        merged = shards[0][2 * step : 2 * step + 2] + shards[1][2 * step : 2 * step + 2]
        assert merged == one[4 * step : 4 * step + 4]
    assert len({k.index for k in one}) == 36  # a permutation: no repeats within the epoch


def test_sampler_epochs_resume_and_tiny_datasets():
    """Epochs reshuffle; a resumed sampler skips the trained batches; tiny data is cycled."""
    s = ShardedEpochSampler(20, 4, seed=0)
    e0 = list(s)
    s.set_epoch(1)
    e1 = list(s)
    assert e0 != e1 and sorted(k.index for k in e0) == sorted(k.index for k in e1)
    resumed = ShardedEpochSampler(20, 4, seed=0, start_batch=lambda epoch: 3)
    assert list(resumed) == e0[12:]
    tiny = list(ShardedEpochSampler(3, 4, seed=0))
    assert len(tiny) == 4 and {k.index for k in tiny} == {0, 1, 2}


def test_stained_views_cut_the_views_of_the_normalized_patch():
    """StainedViews(stain, views)(patch, seed) == views(stain(patch), seed): the stain runs on
    the whole patch first (channels-first uint8, as the extraction normalizer takes it)."""
    import numpy as np
    import torch

    from hipt.pretrain.transforms import StainedViews, TileMultiCrop

    views = TileMultiCrop(n_local_crops=2)
    patch = np.random.default_rng(0).integers(0, 256, (256, 256, 3), dtype=np.uint8)

    def invert(x: torch.Tensor) -> torch.Tensor:
        assert x.dtype == torch.uint8 and x.shape == (1, 3, 256, 256)
        return 255 - x

    got = StainedViews(invert, views)(patch, seed=3)
    want = views(255 - patch, seed=3)
    assert len(got) == len(want) == 4
    for a, b in zip(got, want, strict=True):
        assert torch.equal(a, b)
    assert not torch.equal(views(patch, seed=3)[0], want[0])


def test_dino_views_must_be_whole_tokens_of_the_patch_encoder():
    """pretrain-256 of a 14-px-token encoder with the default 96-px local crops stops in one
    line proposing 98 px; 98 px passes, and 16-px-token encoders take the defaults."""
    import pytest

    from hipt.config import load_config
    from hipt.errors import ConfigError
    from hipt.pretrain.config import PretrainConfig
    from hipt.pretrain.runner import check_crop_sizes

    cfg = load_config(PretrainConfig, "pretrain_256.yaml", ["data.tiles=x", "out=y"])
    check_crop_sizes(cfg, "uni")
    check_crop_sizes(cfg, "vit256_small")
    with pytest.raises(ConfigError, match=r"local_crop_size=96 .*14-px tokens; use e.g. .*=98"):
        check_crop_sizes(cfg, "virchow2")
    cfg.crops256.local_crop_size = 98
    check_crop_sizes(cfg, "virchow2")
