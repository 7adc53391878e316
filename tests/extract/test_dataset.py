"""Region streaming: resize, row-major unfold, batches across regions, masks and failures."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from hipt.extract.dataset import PatchBatch, RegionStream, resize_region, unfold_patches
from hipt.extract.plan import SlideJob
from hipt.slides.readers import open_slide

P = 32  # patch side of these tests: 512-px regions of a 16x16 grid


@pytest.fixture(scope="module")
def small_slide(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Path:
    from hipt.slides.synthetic import make_synthetic_slide, tissue_tiles_from_sample

    path = tmp_path_factory.mktemp("stream") / "s.svs"
    tiles = tissue_tiles_from_sample(sample_path)
    make_synthetic_slide(path, 1536, 1024, 0.5, levels=(1, 2), source=tiles, seed=3)
    return path


def _job(path: Path, coords: list[tuple[int, int]], mask: np.ndarray | None = None,
         read_size: int = 512, level: int = 0) -> SlideJob:  # fmt: skip
    m = len(coords)
    return SlideJob(
        slide_id=path.stem, path=str(path), coords=np.asarray(coords, np.int64).reshape(m, 2),
        patch_mask=np.ones((m, 256), bool) if mask is None else mask, read_level=level,
        read_size=read_size, region_px=16 * P, patch_px=P, target_mpp=0.5, slide_mpp=0.5,
    )  # fmt: skip


def _reference_patches(job: SlideJob, region: int) -> np.ndarray:
    """Independent unfold: numpy slicing of the region read, patch n = (row n // 16, col n % 16)."""
    x, y = job.coords[region]
    with open_slide(job.path, backend="openslide") as reader:
        img = reader.read_region(int(x), int(y), job.read_level, job.read_size, job.read_size)
    if job.read_size != job.region_px:
        img = np.asarray(Image.fromarray(img).resize((job.region_px,) * 2, Image.BILINEAR))
    tiles = [img[r * P : (r + 1) * P, c * P : (c + 1) * P] for r in range(16) for c in range(16)]
    return np.stack(tiles).transpose(0, 3, 1, 2)


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
