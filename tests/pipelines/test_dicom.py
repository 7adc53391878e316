"""DICOM whole-slide images are slides like any other: same MPP, same regions, same pixels.

The fixture is one slide of real tissue written twice, as a pyramidal TIFF and as its DICOM
conversion (wsidicomizer, made once per test run). The conversion re-encodes every JPEG tile,
so pixels agree within that re-encoding error: measured mean |diff| 1.4-2.6 grey levels, 99.9th
percentile 14-26 (levels 0-2); asserted below with margin.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from dicom_pair import LEVELS, MPP
from pipelines.extract_features import main as extract
from pipelines.tile import main as tile

from hipt.features import open_store
from hipt.slides.dicom import instance_files
from hipt.slides.inputs import discover_slides
from hipt.slides.readers import open_slide
from hipt.slides.regions import read_regions

QUIET = ["wandb.mode=disabled"]


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def pair(tmp_path_factory: pytest.TempPathFactory, sample_slide: Path) -> tuple[Path, Path]:
    from dicom_pair import make_dicom_pair

    return make_dicom_pair(sample_slide, tmp_path_factory.mktemp("dicom"))


@pytest.fixture(scope="module")
def tiled(pair, tmp_path_factory) -> tuple[Path, pd.DataFrame]:
    """Both copies tiled in one run of the tile stage over a folder (file + series folder)."""
    tiff, series = pair
    slides = tmp_path_factory.mktemp("slides")
    shutil.copy(tiff, slides / "pair.tif")
    shutil.copytree(series, slides / "pair_dcm")
    out = tmp_path_factory.mktemp("tiles")
    assert tile([f"SLIDES={slides}", f"OUT={out}", *QUIET]) == 0
    return out, read_regions(out / "regions.parquet")


def test_the_sample_svs_as_dicom_has_its_mpp_regions_and_pixels(sample_slide, tmp_path):
    """The real Aperio SVS converted to DICOM: MPP 0.499 from the DICOM Pixel Spacing, same
    size, region and patch mask; pixels within the JPEG re-encoding (measured: mean |diff| 2.9,
    99th percentile 24 grey levels, the SVS itself being JPEG quality 30)."""
    from dicom_pair import to_dicom

    slides = tmp_path / "slides"
    slides.mkdir()
    shutil.copy(sample_slide, slides / "svs.svs")
    to_dicom(sample_slide, slides / "dcm")
    with open_slide(slides / "svs.svs") as svs, open_slide(slides / "dcm") as dcm:
        assert (svs.mpp, dcm.mpp, dcm.mpp_source) == (0.499, 0.499, "dicom")
        assert dcm.level_dimensions == svs.level_dimensions == [(2220, 2967)]
        diff = np.abs(svs.read_region(0, 0, 0, 2220, 2967).astype(np.int16)
                      - dcm.read_region(0, 0, 0, 2220, 2967).astype(np.int16))  # fmt: skip
        assert diff.mean() < 4.0 and np.percentile(diff, 99) < 32, (diff.mean(), diff.max())
    out = tmp_path / "tiles"
    assert tile([f"SLIDES={slides}", f"OUT={out}", *QUIET]) == 0
    df = read_regions(out / "regions.parquet").set_index("slide_id")
    a, b = df.loc["svs"], df.loc["dcm"]
    assert (a.x, a.y, a.read_level, a.read_size) == (b.x, b.y, b.read_level, b.read_size)
    assert np.array_equal(a.patch_mask, b.patch_mask)


def test_dicom_series_opens_with_the_tiffs_mpp_levels_and_pixels(pair):
    """Folder or any instance file: OpenSlide reads the series; MPP comes from the DICOM
    metadata; every level's pixels equal the TIFF's within the JPEG re-encoding error."""
    tiff, series = pair
    files = instance_files(series)
    assert len(files) == len(LEVELS)  # one instance per pyramid level
    with open_slide(tiff) as ref:
        for name in (series, files[-1]):
            with open_slide(name) as dcm:
                assert dcm.backend == "openslide" and Path(dcm.path) == name
                assert (dcm.mpp, dcm.mpp_source) == (pytest.approx(MPP), "dicom")
                assert dcm.level_dimensions == ref.level_dimensions
                assert dcm.level_downsamples == ref.level_downsamples
        with open_slide(series) as dcm:
            for level, (w, h) in enumerate(ref.level_dimensions):
                w, h = min(w, 4096), min(h, 4096)
                a = ref.read_region(1000, 2000, level, w, h).astype(np.int16)
                b = dcm.read_region(1000, 2000, level, w, h).astype(np.int16)
                diff = np.abs(a - b)
                assert diff.mean() < 4.0, (level, diff.mean())
                assert np.percentile(diff, 99.9) < 40, (level, np.percentile(diff, 99.9))


def test_regions_of_the_dicom_slide_equal_those_of_the_tiff(tiled, caplog):
    """Same grid, read level and size, patch masks; tissue fractions within the re-encoding
    noise of the thumbnail."""
    _, df = tiled
    a = df[df.slide_id == "pair"].reset_index(drop=True)
    b = df[df.slide_id == "pair_dcm"].reset_index(drop=True)
    assert len(a) == len(b) >= 2
    same = ["x", "y", "grid_index", "read_level", "read_size", "read_downsample", "slide_mpp",
            "slide_width", "slide_height", "n_tissue_patches"]  # fmt: skip
    pd.testing.assert_frame_equal(a[same], b[same])
    assert (a.read_level == 1).all()  # 0.25 µm/px read at level 1 for 0.5 µm/px
    assert all(np.array_equal(x, y) for x, y in zip(a.patch_mask, b.patch_mask, strict=True))
    np.testing.assert_allclose(a.tissue_fraction, b.tissue_fraction, atol=0.01)
    assert set(b.mpp_source) == {"dicom"} and set(b.backend) == {"openslide"}


def test_the_log_says_which_reader_read_which_slide(pair, tmp_path, capsys):
    """A manifest may name the series folder or one of its files."""
    tiff, series = pair
    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_id,path\nby_folder,{series}\nby_file,{instance_files(series)[0]}\n")
    entries = discover_slides(manifest)
    assert [e.error for e in entries] == [None, None]
    capsys.readouterr()
    assert tile([f"SLIDES={manifest}", f"OUT={tmp_path / 'out'}", "verify_read=false",
                 *QUIET]) == 0  # fmt: skip
    text = capsys.readouterr().err
    assert "by_folder: read with openslide (DICOM series)" in text
    assert "by_file: read with openslide (DICOM series)" in text


def test_features_of_a_dicom_slide_carry_its_geometry(tiled, tmp_path):
    """Extraction reopens the series through the recorded geometry (path = series folder)."""
    out, df = tiled
    keep = df[df.slide_id == "pair_dcm"]
    assert extract([f"TILES={out}", f"OUT={tmp_path / 'f'}", "model_256=vit256_tiny_test",
                    "model_4k=vit4k_tiny_test", "batch_size=64", "num_workers=0",
                    "progress=false", *QUIET]) == 0  # fmt: skip
    meta = open_store(tmp_path / "f" / "pair_dcm.zarr").meta
    assert (meta.mpp_source, meta.read_level, meta.n_regions) == ("dicom", 1, len(keep))
    assert Path(meta.source_path).is_dir()


def test_a_folder_with_loose_dcm_files_is_one_series(pair, tmp_path):
    """A series folder given as SLIDES is that one slide; loose .dcm files beside other
    slides are refused with the fix."""
    from hipt.errors import ConfigError

    _, series = pair
    (entry,) = discover_slides(series)
    assert (entry.slide_id, entry.path) == (series.name, series.resolve())
    mixed = tmp_path / "mixed"
    shutil.copytree(series, mixed)
    (mixed / "other.svs").write_bytes(b"x")
    with pytest.raises(ConfigError, match="folder of its own"):
        discover_slides(mixed)
