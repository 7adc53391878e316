"""SlideReader contract on both backends: pixels, borders, MPP, errors, batches, thumbnails."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from hipt.errors import ConfigError, SlideError
from hipt.slides import SlideReader, open_slide, readers
from hipt.slides.synthetic import CORRUPT_TILE_XY

BACKENDS = ["cucim", "openslide"]
# Regions of the sample (2220 x 2967, 240-px JPEG tiles): aligned, unaligned, tile-straddling.
SAMPLE_REGIONS = [
    (0, 0, 256, 256),
    (240, 480, 240, 240),
    (1000, 1500, 512, 384),
    (1111, 2222, 333, 171),
    (1963, 2710, 257, 257),
]


@pytest.fixture(params=BACKENDS)
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def test_sample_metadata(sample_path, backend):
    with open_slide(sample_path, backend=backend) as reader:
        assert isinstance(reader, SlideReader)
        assert reader.backend == backend
        assert reader.level_count == 1
        assert reader.level_dimensions == [(2220, 2967)]
        assert reader.level_downsamples == [1.0]
        assert reader.mpp == pytest.approx(0.499)
        assert reader.mpp_source == "aperio"
        source = {"cucim": "aperio", "openslide": "openslide"}[backend]
        assert reader.backend_mpp() == (pytest.approx(0.499), source)  # the backend agrees


def test_auto_prefers_cucim_for_svs(sample_path):
    with open_slide(sample_path) as reader:
        assert reader.backend == "cucim"


def test_backends_return_identical_pixels_on_sample(sample_path):
    # Both decode the same JPEG tiles with libjpeg-turbo (same IDCT, same YCbCr->RGB): the
    # install notes measured bit-identical output, so the tolerance is exactly zero.
    with (
        open_slide(sample_path, backend="cucim") as cu,
        open_slide(sample_path, "openslide") as os_,
    ):
        for x, y, w, h in SAMPLE_REGIONS:
            a, b = cu.read_region(x, y, 0, w, h), os_.read_region(x, y, 0, w, h)
            assert a.shape == b.shape == (h, w, 3) and a.dtype == b.dtype == np.uint8
            assert int(np.abs(a.astype(int) - b).max()) == 0, (x, y, w, h)


def test_backends_identical_on_every_level_of_synthetic(synthetic_slide):
    # Exact at level > 0 when x / downsample is an integer. Otherwise OpenSlide resamples at the
    # fractional offset while cuCIM floors it, and the two differ by design.
    with (
        open_slide(synthetic_slide.path, "cucim") as cu,
        open_slide(synthetic_slide.path, "openslide") as os_,
    ):
        assert cu.level_dimensions == os_.level_dimensions == synthetic_slide.level_dimensions
        assert cu.level_downsamples == pytest.approx([1, 4, 16])
        assert os_.level_downsamples == pytest.approx([1, 4, 16])
        for level, ds in enumerate(synthetic_slide.levels):
            for x, y in [(0, 0), (1024, 512), (3 * ds * 37, ds * 101)]:
                a, b = cu.read_region(x, y, level, 200, 150), os_.read_region(x, y, level, 200, 150)
                assert np.array_equal(a, b), (level, x, y)


def test_border_and_outside_are_white(sample_path, backend):
    with open_slide(sample_path, backend=backend) as reader:
        w0, h0 = reader.level_dimensions[0]
        inside = reader.read_region(w0 - 100, h0 - 60, 0, 100, 60)
        region = reader.read_region(w0 - 100, h0 - 60, 0, 256, 256)
        assert np.array_equal(region[:60, :100], inside)
        assert (region[60:] == 255).all() and (region[:, 100:] == 255).all()
        top_left = reader.read_region(-50, -30, 0, 128, 128)
        assert (top_left[:30] == 255).all() and (top_left[:, :50] == 255).all()
        assert np.array_equal(top_left[30:, 50:], reader.read_region(0, 0, 0, 78, 98))
        assert (reader.read_region(w0 + 10, 0, 0, 64, 64) == 255).all()
        assert (reader.read_region(-10_000, -10_000, 0, 64, 64) == 255).all()


def test_generic_tiff_border_is_white_at_every_level(generic_slide, backend):
    # cuCIM pads generic TIFF with black itself; OpenSlide with transparent pixels.
    with open_slide(generic_slide.path, backend=backend) as reader:
        for level, ds in enumerate(generic_slide.levels):
            lw, lh = reader.level_dimensions[level]
            region = reader.read_region((lw - 20) * ds, (lh - 10) * ds, level, 64, 64)
            assert (region[10:] == 255).all() and (region[:, 20:] == 255).all()
            assert region[:10, :20].mean() < 250  # glass is grey 243 + noise, not padding


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    level=st.integers(0, 2),
    fx=st.floats(-0.2, 1.1),
    fy=st.floats(-0.2, 1.1),
    w=st.integers(1, 300),
    h=st.integers(1, 300),
)
def test_any_region_same_on_both_backends_and_white_outside(synthetic_slide, level, fx, fy, w, h):
    ds = synthetic_slide.levels[level]
    x = int(fx * synthetic_slide.width) // ds * ds
    y = int(fy * synthetic_slide.height) // ds * ds
    with (
        open_slide(synthetic_slide.path, "cucim") as cu,
        open_slide(synthetic_slide.path, "openslide") as os_,
    ):
        a, b = cu.read_region(x, y, level, w, h), os_.read_region(x, y, level, w, h)
    assert a.shape == (h, w, 3) and a.dtype == np.uint8
    assert np.array_equal(a, b)
    lw, lh = synthetic_slide.level_dimensions[level]
    cols = x // ds + np.arange(w)
    rows = y // ds + np.arange(h)
    outside = ~(((cols >= 0) & (cols < lw))[None, :] & ((rows >= 0) & (rows < lh))[:, None])
    assert (a[outside] == 255).all()


def test_mpp_of_synthetic_and_generic_slides(synthetic_slide, generic_slide, backend):
    with open_slide(synthetic_slide.path, backend=backend) as reader:
        assert reader.mpp == pytest.approx(0.25) and reader.mpp_source == "aperio"
        assert reader.backend_mpp()[0] == pytest.approx(0.25)  # the backend agrees
    with open_slide(generic_slide.path, backend=backend) as reader:
        assert reader.mpp == pytest.approx(0.5) and reader.mpp_source == "tiff-resolution"
        assert reader.level_dimensions == generic_slide.level_dimensions
    if backend == "openslide":
        with open_slide(generic_slide.path, backend=backend) as reader:
            assert reader.backend_mpp() == (pytest.approx(0.5), "openslide")


def test_mpp_override(bad_inputs, sample_path, backend):
    with open_slide(bad_inputs["no_mpp"], backend=backend, mpp_override=0.5) as reader:
        assert (reader.mpp, reader.mpp_source) == (0.5, "override")
    with open_slide(sample_path, backend=backend, mpp_override=0.2527) as reader:
        assert (reader.mpp, reader.mpp_source) == (0.2527, "override")


@pytest.mark.parametrize(
    "name, cause",
    [
        ("zero_bytes", "empty"),
        ("truncated", "truncated"),
        ("random_bytes", "not a TIFF"),
        ("png_as_svs", "PNG"),
        ("unsupported_ext", "unsupported slide type"),
        ("no_mpp", "no MPP metadata; pass mpp_override"),
    ],
)
@pytest.mark.parametrize("which", ["auto", *BACKENDS])
def test_bad_inputs_raise_one_line_slide_error(bad_inputs, name, cause, which):
    path = bad_inputs[name]
    with pytest.raises(SlideError) as info:
        open_slide(path, backend=which)
    message = str(info.value)
    assert message.startswith(str(path)) and cause in message and "\n" not in message


def test_missing_file_directory_and_bad_arguments(tmp_path, sample_path):
    with pytest.raises(SlideError, match="no such file"):
        open_slide(tmp_path / "absent.svs")
    with pytest.raises(SlideError, match="folder without .dcm files"):
        open_slide(tmp_path)
    with pytest.raises(ConfigError, match="unknown slide backend"):
        open_slide(sample_path, backend="tiffslide")
    with pytest.raises(ConfigError, match="mpp_override"):
        open_slide(sample_path, mpp_override=0.0)
    with open_slide(sample_path) as reader, pytest.raises(ValueError, match="level 3"):
        reader.read_region(0, 0, 3, 10, 10)


def test_corrupt_tile_raises_with_location_and_reader_survives(bad_inputs, backend):
    path = bad_inputs["corrupt_tile"]
    x, y = CORRUPT_TILE_XY
    with open_slide(path, backend=backend) as reader:
        good = reader.read_region(0, 0, 0, 256, 256)
        with pytest.raises(SlideError) as info:
            reader.read_region(x + 10, y + 10, 0, 64, 64)
        message = str(info.value)
        assert message.startswith(str(path)) and f"x={x + 10}, y={y + 10}" in message
        assert "\n" not in message
        assert np.array_equal(reader.read_region(0, 0, 0, 256, 256), good)  # still usable
        stream = reader.read_regions([(0, 0), (512, 0), (x, y), (0, 512)], 0, 256, 256)
        assert np.array_equal(next(stream), good)
        next(stream)
        with pytest.raises(SlideError, match=f"x={x}, y={y}"):
            next(stream)


def test_concurrent_reads_around_a_corrupt_tile_on_openslide(bad_inputs):
    # A decode error breaks the shared OpenSlide handle for every thread; regions read at the
    # same time on other threads must still come back, and nothing may crash.
    x, y = CORRUPT_TILE_XY
    with open_slide(bad_inputs["corrupt_tile"], backend="openslide") as reader:
        for _ in range(5):
            stream = reader.read_regions([(0, 0), (512, 512)] * 4 + [(x, y), (0, 0)], 0, 256, 256)
            assert len([next(stream) for _ in range(8)]) == 8
            with pytest.raises(SlideError, match=f"x={x}, y={y}"):
                next(stream)


def test_truncated_tile_data_is_caught_at_open(synthetic_slide, tmp_path, backend):
    data = synthetic_slide.path.read_bytes()
    cut = tmp_path / "cut.svs"
    cut.write_bytes(data[: int(len(data) * 0.9)])
    with pytest.raises(SlideError, match="truncated: a TIFF directory") as info:
        open_slide(cut, backend=backend)
    assert str(info.value).startswith(str(cut))
    # Directories intact but a tile's byte range runs past the end (tile data cut off).
    bad = tmp_path / "tile_past_end.svs"
    bad.write_bytes(data)
    with tifffile.TiffFile(bad) as tif:
        tag = tif.pages.first.tags["TileByteCounts"]
        at, n, itemsize = tag.valueoffset, tag.count, tag.valuebytecount // tag.count
    with open(bad, "r+b") as fh:
        fh.seek(at + (n - 1) * itemsize)
        fh.write((len(data) * 2).to_bytes(itemsize, "little"))
    with pytest.raises(SlideError, match="truncated: tiles of page 0 reach byte"):
        open_slide(bad, backend=backend)


def test_auto_falls_back_to_openslide_when_cucim_fails(sample_path, monkeypatch):
    from hipt.slides import cucim_reader

    def broken(path):
        raise ValueError(f"Cannot load {path}!")

    monkeypatch.setattr(cucim_reader, "_open", broken)
    with open_slide(sample_path) as reader:
        assert reader.backend == "openslide" and reader.mpp == pytest.approx(0.499)
    with pytest.raises(SlideError, match="cuCIM cannot open it"):
        open_slide(sample_path, backend="cucim")


@pytest.mark.parametrize("workers", [1, 2])
def test_read_regions_equals_read_region(synthetic_slide, backend, workers):
    locations = [(0, 0), (3900, 100), (-100, 2000), (1024, 1024), (5000, 5000), (2048, 4000)]
    locations += [(x * 512, 1536) for x in range(8)]
    with open_slide(synthetic_slide.path, backend=backend) as reader:
        for level, size in [(0, 256), (1, 300)]:
            batch = list(reader.read_regions(locations, level, size, size, num_workers=workers))
            single = [reader.read_region(x, y, level, size, size) for x, y in locations]
            assert len(batch) == len(locations)
            for got, want in zip(batch, single, strict=True):
                assert np.array_equal(got, want)


def test_read_region_tensor_cpu(sample_path, backend):
    with open_slide(sample_path, backend=backend) as reader:
        tensor = reader.read_region_tensor(100, 200, 0, 64, 48)
        assert tensor.shape == (3, 48, 64) and tensor.dtype == torch.uint8
        assert tensor.is_contiguous()
        assert np.array_equal(
            tensor.permute(1, 2, 0).numpy(), reader.read_region(100, 200, 0, 64, 48)
        )


@pytest.mark.gpu
def test_gpu_batch_decode_ran_on_the_gpu_and_matches_cpu(synthetic_slide, caplog):
    """cuCIM's batch loader decodes on the GPU (no fallback warning, the reader marks GPU
    decoding as working), and its pixels equal libjpeg-turbo's within nvJPEG's IDCT rounding
    (mean |diff| < 1 grey level, 99.9th percentile <= 4)."""
    locs = [(512, 512), (4000, 4000), (7900, 7900)]  # the last crosses the slide's edge
    with open_slide(synthetic_slide.path, backend="cucim") as reader:
        with caplog.at_level("WARNING"):
            gpu = list(reader.read_regions_tensor(locs, 1, 256, 256, "cuda", batch_size=2))
        assert not caplog.records, caplog.text
        assert reader._gpu_ok is True  # type: ignore[attr-defined]
        for (x, y), g in zip(locs, gpu, strict=True):
            assert g.is_cuda and g.shape == (3, 256, 256)
            cpu = reader.read_region_tensor(x, y, 1, 256, 256)
            diff = (g.cpu().int() - cpu.int()).abs().float()
            assert diff.mean() < 1.0 and torch.quantile(diff.flatten(), 0.999) <= 4


def test_thumbnail_of_sample(sample_path, backend):
    with open_slide(sample_path, backend=backend) as reader:
        thumb, ds = reader.thumbnail(512)
        full = reader.read_region(0, 0, 0, 2220, 2967)
    assert thumb.shape == (512, 383, 3) and thumb.dtype == np.uint8
    assert ds == pytest.approx(2220 / 383) and ds == pytest.approx(2967 / 512, rel=0.01)
    expected = np.asarray(Image.fromarray(full).resize((383, 512), Image.BOX)).astype(int)
    assert np.abs(thumb.astype(int) - expected).mean() < 2


def test_thumbnail_reads_coarse_level_in_bounded_blocks(synthetic_slide, monkeypatch):
    with open_slide(synthetic_slide.path, backend="cucim") as reader:
        calls = []
        original = reader.read_region

        def spy(x, y, level, width, height):
            calls.append((level, width, height))
            return original(x, y, level, width, height)

        monkeypatch.setattr(reader, "read_region", spy)
        thumb, ds = reader.thumbnail(200)
        assert thumb.shape == (200, 200, 3) and ds == pytest.approx(4096 / 200)
        assert {c[0] for c in calls} == {2}  # 256-px level 2 is the smallest >= 200 px
        calls.clear()
        whole, ds = reader.thumbnail(4096)  # level 0 itself, in blocks of <= 4096^2 px
        assert whole.shape == (4096, 4096, 3) and ds == 1.0
        assert max(w * h for _, w, h in calls) <= 4096 * 4096
        one_block, _ = reader.thumbnail(300)
        calls.clear()
        monkeypatch.setattr(readers, "_THUMB_BLOCK", 500)
        assert np.array_equal(reader.thumbnail(4096)[0], whole)  # blocks tile without seams
        many_blocks, _ = reader.thumbnail(300)
        assert max(w * h for _, w, h in calls) <= 501 * 501 and len(calls) > 16
        assert np.abs(many_blocks.astype(int) - one_block).max() <= 1  # float rounding only


def test_reader_pickles_as_reopen(sample_path):
    with open_slide(sample_path, mpp_override=0.5) as reader:
        clone = pickle.loads(pickle.dumps(reader))
    with clone:
        assert (clone.backend, clone.mpp, clone.mpp_source) == ("cucim", 0.5, "override")
        assert clone.read_region(0, 0, 0, 8, 8).shape == (8, 8, 3)


def test_no_cufile_log_and_clean_stdout(tmp_path, sample_path):
    code = (
        "import torch\n"
        "from hipt.slides import open_slide\n"
        f"r = open_slide({str(sample_path)!r}, backend='cucim')\n"
        "r.read_region(0, 0, 0, 64, 64)\n"
        "print('done')\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).parents[2] / "src")}
    env.pop("CUFILE_LOGFILE_PATH", None)
    res = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout == "done\n"
    assert list(tmp_path.iterdir()) == []


def test_region_larger_than_whole_slide(sample_path):
    """A 4104-px region over the 2220x2967 sample (one padded region): both backends agree
    exactly, pixels on the slide equal a plain in-bounds read, and the rest is white."""
    regions = {}
    for name in BACKENDS:
        with open_slide(sample_path, backend=name) as r:
            regions[name] = r.read_region(0, 0, 0, 4104, 4104)
            inside = r.read_region(0, 0, 0, 2220, 2967)
            batch = list(r.read_regions([(0, 0), (-8, 4)], 0, 4104, 4104, num_workers=2))
        np.testing.assert_array_equal(regions[name][:2967, :2220], inside)
        assert (regions[name][2967:] == 255).all() and (regions[name][:, 2220:] == 255).all()
        np.testing.assert_array_equal(batch[0], regions[name])
        # (-8, 4): output pixel (r, c) shows slide pixel (r + 4, c - 8)
        np.testing.assert_array_equal(batch[1][:2963, 8:2228], inside[4:2967])
        assert (batch[1][:, :8] == 255).all()
    np.testing.assert_array_equal(regions["cucim"], regions["openslide"])
