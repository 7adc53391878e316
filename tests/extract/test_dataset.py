"""Region streaming: resize, row-major unfold, batches across regions, masks and failures."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from stores import geometry
from torch.utils.data import DataLoader

from hipt.extract.dataset import PatchBatch, RegionStream
from hipt.slides.readers import open_slide
from hipt.slides.tiles import SlideTiles

P = 32  # patch side of these tests: 512-px regions of a 16x16 grid


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Path:
    from hipt.slides.synthetic import make_synthetic_slide, tissue_tiles_from_sample

    path = tmp_path_factory.mktemp("stream") / "s.svs"
    tiles = tissue_tiles_from_sample(sample_path)
    make_synthetic_slide(path, 1536, 1024, 0.5, levels=(1, 2), source=tiles, seed=3)
    return path


def _job(path: Path, coords: list[tuple[int, int]], mask: np.ndarray | None = None,
         read_size: int = 512, level: int = 0) -> SlideTiles:  # fmt: skip
    m = len(coords)
    geom = geometry(path.stem, path=str(path), read_level=level, read_size=read_size,
                    region_px=16 * P, patch_px=P)  # fmt: skip
    if path.exists():  # the slide's own size and MPP (open_slide_at checks them)
        with open_slide(path) as reader:
            (w, h), ds = reader.level_dimensions[0], reader.level_downsamples[level]
            geom = dataclasses.replace(
                geom, width=w, height=h, mpp=reader.mpp, mpp_source=reader.mpp_source,
                read_downsample=ds,
            )  # fmt: skip
    return SlideTiles(
        geom, np.asarray(coords, np.int64).reshape(m, 2),
        np.ones((m, 256), bool) if mask is None else mask,
    )  # fmt: skip


def _reference_patches(job: SlideTiles, region: int) -> np.ndarray:
    """Independent unfold: numpy slicing of the region read, patch n = (row n // 16, col n % 16)."""
    x, y = job.coords[region]
    g = job.geometry
    with open_slide(job.path, backend="openslide") as reader:
        img = reader.read_region(int(x), int(y), g.read_level, g.read_size, g.read_size)
    if g.read_size != g.region_px:
        img = np.asarray(Image.fromarray(img).resize((g.region_px,) * 2, Image.BILINEAR))
    tiles = [img[r * P : (r + 1) * P, c * P : (c + 1) * P] for r in range(16) for c in range(16)]
    return np.stack(tiles).transpose(0, 3, 1, 2)


def _collect(batches: list[PatchBatch]) -> tuple[np.ndarray, list[tuple[int, int, int]]]:
    pixels = np.concatenate([b.patches.numpy() for b in batches if len(b.patches)])
    keys = []
    for b in batches:
        keys += list(zip(b.slide.tolist(), b.region.tolist(), b.patch.tolist(), strict=True))
    return pixels, keys


def test_batches_span_regions_and_equal_independent_reads(small_slide: Path):
    """Batches of 100 patches cut across regions; their pixels, in order, equal the regions
    read and unfolded independently (incl. a 1024 -> 512 resize at level 0)."""
    jobs = [_job(small_slide, [(0, 0), (512, 0), (1024, 512)]),
            _job(small_slide, [(256, 256)], read_size=1024)]  # fmt: skip
    stream = RegionStream(jobs, [0, 1], batch_size=100, prefetch_regions=2, reader_threads=2)
    batches = list(stream)
    assert [len(b.patches) for b in batches] == [100] * 10 + [24]
    pixels, keys = _collect(batches)
    want = [(s, r, p) for s, j in enumerate(jobs) for r in range(j.n_regions) for p in range(256)]
    assert keys == want
    ref = np.concatenate([_reference_patches(j, r) for j in jobs for r in range(j.n_regions)])
    np.testing.assert_array_equal(pixels[: 3 * 256], ref[: 3 * 256])
    assert np.abs(pixels[3 * 256 :].astype(int) - ref[3 * 256 :]).max() <= 1  # PIL vs torch
    assert all(int(b.expected.unique()) == 256 for b in batches)


def test_skip_background_yields_masked_patches_and_empty_regions(small_slide: Path):
    """Only masked patches are streamed; a region with an empty mask is reported as empty."""
    mask = np.zeros((2, 256), bool)
    mask[0, [0, 17, 255]] = True
    job = _job(small_slide, [(0, 0), (512, 0)], mask=mask)
    batches = list(RegionStream([job], [0], batch_size=2, skip_background=True))
    _, keys = _collect(batches)
    assert keys == [(0, 0, 0), (0, 0, 17), (0, 0, 255)]
    assert [e for b in batches for e in b.empty.tolist()] == [[0, 1]]
    assert {int(e) for b in batches for e in b.expected} == {3}


def test_unreadable_slide_is_reported_once_and_the_stream_goes_on(small_slide: Path, tmp_path):
    """A slide that cannot be opened appears once in ``failed``; the next slide still streams."""
    missing = tmp_path / "gone.svs"
    jobs = [_job(missing, [(0, 0), (512, 0)]), _job(small_slide, [(0, 0)])]
    batches = list(RegionStream(jobs, [0, 1], batch_size=256))
    failed = [f for b in batches for f in b.failed]
    assert len(failed) == 1 and failed[0][0] == 0 and "gone.svs" in failed[0][1]
    _, keys = _collect(batches)
    assert {(s, r) for s, r, _ in keys} == {(1, 0)}


def test_dataloader_workers_split_regions_without_overlap(small_slide: Path):
    """With 2 worker processes every (region, patch) arrives exactly once."""
    jobs = [_job(small_slide, [(0, 0), (512, 0), (1024, 0), (0, 512), (512, 512)])]
    loader = DataLoader(RegionStream(jobs, [0], batch_size=200), batch_size=None, num_workers=2)
    _, keys = _collect(list(loader))
    assert sorted(keys) == [(0, r, p) for r in range(5) for p in range(256)]
