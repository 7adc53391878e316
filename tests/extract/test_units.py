"""Units of the extractor: region assembly, blank fill, encoders, sharding, stale detection."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from stores import geometry, store_meta

from hipt.extract.dataset import PatchBatch
from hipt.extract.encoder import RegionAssembler, RegionEncoder
from hipt.extract.module import ExtractModule
from hipt.extract.plan import shard
from hipt.features import FeatureStoreMeta, write_store
from hipt.features.store import needs_recompute
from hipt.models import bag_to_grid, build, normalize_patches
from hipt.slides.tiles import SlideTiles


def test_assembler_completes_interleaved_regions_in_any_order():
    """Patches of two regions arriving interleaved and out of order land at their indices;
    each region completes exactly when its last expected patch arrives."""
    asm = RegionAssembler()
    feats = torch.randn(2, 256, 4)
    order = torch.randperm(512)
    done = []
    for chunk in order.split(100):
        slide = torch.zeros(len(chunk), dtype=torch.long)
        region, patch = chunk // 256, chunk % 256
        srt = torch.argsort(region, stable=True)  # runs of one region, as the stream sends
        region, patch = region[srt], patch[srt]
        f = feats[region, patch]
        done += asm.add(slide, region, patch, torch.full_like(region, 256), f)
    assert sorted(done) == [(0, 0), (0, 1)] and len(asm) == 2
    fin = asm.pop(done)
    for k, (_, r) in enumerate(zip(fin.slide, fin.region, strict=True)):
        assert torch.equal(fin.bags[k], feats[r])
    assert len(asm) == 0


def test_assembler_fill_and_empty_regions():
    """With a fill vector, unencoded patches hold it; an empty region is all fill at once."""
    fill = torch.arange(4.0)
    asm = RegionAssembler(fill)
    one = torch.ones(2, dtype=torch.long)
    done = asm.add(0 * one, 0 * one, torch.tensor([3, 7]), 2 * one, torch.full((2, 4), 9.0))
    done += asm.add_empty(torch.tensor([[0, 1]]), torch.zeros(1, 4))
    fin = asm.pop(done)
    assert torch.equal(fin.bags[0][[3, 7]], torch.full((2, 4), 9.0))
    keep = torch.ones(256, dtype=torch.bool)
    keep[[3, 7]] = False
    assert torch.equal(fin.bags[0][keep], fill.expand(254, 4))
    assert torch.equal(fin.bags[1], fill.expand(256, 4))


@pytest.fixture(scope="module")
def tiny_encoder() -> RegionEncoder:
    torch.manual_seed(0)
    return RegionEncoder(build("vit256_tiny_test").eval(), build("vit4k_tiny_test").eval())


def test_module_step_equals_direct_encoder_calls(tiny_encoder: RegionEncoder):
    """predict_step over a batch straddling two regions returns, for the finished region, the
    ViT-256 features of its patches and ViT-4K on their row-major grid."""
    module = ExtractModule(tiny_encoder, skip_background=False, patch_px=32)
    module.on_predict_start()
    pix = torch.randint(0, 256, (300, 3, 32, 32), dtype=torch.uint8)
    idx = torch.arange(300)
    zeros, empty = torch.zeros(300, dtype=torch.long), torch.empty(0, 2, dtype=torch.long)
    batch = PatchBatch(pix, zeros, idx // 256, idx % 256, torch.full((300,), 256), empty, [])
    with torch.inference_mode():
        out = module.predict_step(batch)
        ref256 = tiny_encoder.vit256(normalize_patches(pix[:256]))
        ref4k = tiny_encoder.vit4k(bag_to_grid(ref256[None]))
    assert out.slide.tolist() == [0] and out.region.tolist() == [0]
    np.testing.assert_allclose(out.feats256[0], ref256.numpy(), atol=1e-5, rtol=0)
    np.testing.assert_allclose(out.feats4k[0], ref4k[0].numpy(), atol=1e-5, rtol=0)
    assert len(module.assembler) == 1  # region 1 waits for its other 212 patches


def test_blank_feature_is_white_patch_encoding(tiny_encoder: RegionEncoder):
    """The skip_background fill is ViT-256 of an all-255 patch, normalized like any patch."""
    with torch.inference_mode():
        got = tiny_encoder.blank_feature(32, "cpu")
        white = torch.full((1, 32, 32, 3), 255, dtype=torch.uint8)
        ref = tiny_encoder.vit256(normalize_patches(white))[0]
    torch.testing.assert_close(got, ref)


def _jobs(sizes: list[int], folder: str = "") -> list[SlideTiles]:
    return [SlideTiles(geometry(f"s{i}", path=f"{folder}s{i}.svs"), np.zeros((n, 2), np.int64),
                       np.ones((n, 256), bool)) for i, n in enumerate(sizes)]  # fmt: skip


@given(st.lists(st.integers(1, 50), min_size=0, max_size=20), st.integers(1, 5))
def test_shards_are_disjoint_cover_and_balanced(sizes: list[int], world: int):
    """Balanced by region count: every slide on exactly one rank; rank loads differ by at most
    the largest slide; shards do not depend on the order the slides are listed in."""
    jobs = _jobs(sizes)
    todo = list(range(len(jobs)))
    shards = [shard(jobs, todo, r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == todo
    loads = [sum(sizes[i] for i in s) for s in shards]
    assert max(loads) - min(loads) <= max(sizes, default=0)
    rev = list(reversed(jobs))  # another listing order, the same slides: the same shards
    names = [sorted(jobs[i].slide_id for i in s) for s in shards]
    assert [
        sorted(rev[i].slide_id for i in shard(rev, todo, r, world)) for r in range(world)
    ] == names


def _meta(**kw: object) -> FeatureStoreMeta:
    base = dict(slide_id="s", source_path="s.svs", source_size_bytes=10, model_256="a",
                model_4k="b", checkpoint_256_sha256="x", checkpoint_4k_sha256="y",
                random_weights=False, feature_dim_256=4, feature_dim_4k=2, target_mpp=0.5,
                region_px=4096, patch_px=256, tiling_config_hash="t", dtype="float32")  # fmt: skip
    base.update(kw)
    return store_meta(**base)  # type: ignore[arg-type]


def test_needs_recompute_names_the_changed_key(tmp_path):
    """A complete matching store needs nothing; a changed checkpoint is named; none is absent."""
    path = tmp_path / "s.zarr"
    assert needs_recompute(path) == "absent"
    write_store(path, _meta(), np.zeros((1, 256, 4)), np.zeros((1, 2)), np.zeros((1, 2)),
                np.ones((1, 256), bool))  # fmt: skip
    assert needs_recompute(path, {"checkpoint_256_sha256": "x"}) is None
    reason = needs_recompute(path, {"checkpoint_256_sha256": "z"})
    assert reason is not None and "checkpoint_256_sha256" in reason


def test_plan_flags_changed_tiling_and_skips_matching(tmp_path):
    """make_plan: a matching complete store is skipped, one from another tiling is stale (and
    names the tiling hash), a missing one is todo without a stale note."""
    from hipt.extract.plan import EncoderInfo, expected_meta, make_plan

    jobs = _jobs([2, 1, 1], f"{tmp_path}/")
    enc = EncoderInfo("a", "b", "x", "y", 4, 2, "float32", False, 0)
    old = [expected_meta(j, enc, "tiling-1", None) for j in jobs]
    for job, meta in zip(jobs[:2], old[:2], strict=True):
        write_store(tmp_path / f"{job.slide_id}.zarr", meta, np.zeros((job.n_regions, 256, 4)),
                    np.zeros((job.n_regions, 2)), job.coords, job.patch_mask)  # fmt: skip
    new = [expected_meta(j, enc, "tiling-1" if i == 0 else "tiling-2", None)
           for i, j in enumerate(jobs)]  # fmt: skip
    plan = make_plan(jobs, new, tmp_path, overwrite=False)
    assert plan.skipped == ["s0"] and plan.todo == [1, 2]
    assert list(plan.stale) == ["s1"] and "tiling_config_hash" in plan.stale["s1"]
    assert make_plan(jobs, new, tmp_path, overwrite=True).todo == [0, 1, 2]
