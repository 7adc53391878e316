"""Regions of interest from QuPath annotations: exact patch gating, round trip, errors, staleness.

The reference for "which patches are kept" is computed here with shapely set operations on
polygons (tissue as the union of its mask's column runs, intersected with tumor minus pen and
with each patch square), independent of the stage's integral-image and pixel-coverage code.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import shapely
from PIL import Image
from pipelines.extract_features import main as extract
from pipelines.tile import main as tile

from hipt.features.store import needs_recompute
from hipt.slides.annotations import RoiConfig, load_roi
from hipt.slides.qupath import AnnotationError
from hipt.slides.readers import open_slide
from hipt.slides.regions import read_regions
from hipt.slides.tiles import load_tiles
from hipt.slides.tissue import TissueConfig, segment_tissue
from hipt.tile.qc import EXCLUDE_RGBA, INCLUDE_RGBA

QUIET = ["wandb.mode=disabled"]


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


SIDE = 4096 * 0.5 / 0.499  # the sample's region side in level-0 px (MPP 0.499)
TUMOR = shapely.Polygon([(0, 0), (1110, 0), (1300, 2967), (0, 2967)])  # the left half, slanted
PEN = shapely.Point(950, 1700).buffer(180)  # a pen circle inside the tumor, over tissue


def qupath_file(path: Path, objects: list[tuple[object, str | None]]) -> Path:
    """A GeoJSON FeatureCollection as QuPath's File > Export objects writes it."""
    features = []
    for geom, cls in objects:
        props: dict = {"objectType": "annotation"}
        if cls is not None:
            props["classification"] = {"name": cls, "color": [200, 0, 0]}
        shape = shapely.geometry.mapping(geom)
        features.append({"type": "Feature", "id": f"id-{len(features)}", "geometry": shape,
                         "properties": props})  # fmt: skip
    path.write_text(json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def _tissue_geometry(slide: Path) -> shapely.Geometry:
    """The stage's tissue mask as polygons: union of its column runs (not the stage's row runs)."""
    with open_slide(slide) as reader:
        thumb, ds = reader.thumbnail(2048)
        mask = segment_tissue(thumb, ds, reader.mpp, TissueConfig()).mask
    boxes = []
    for c in range(mask.shape[1]):
        col = np.concatenate([[0], mask[:, c].astype(np.int8), [0]])
        starts, ends = np.flatnonzero(np.diff(col) == 1), np.flatnonzero(np.diff(col) == -1)
        boxes += [shapely.box(c * ds, r0 * ds, (c + 1) * ds, r1 * ds) for r0, r1 in zip(starts, ends, strict=True)]  # fmt: skip  # noqa: E501
    return shapely.union_all(boxes)


def test_tumor_minus_pen_keeps_exactly_the_patches_shapely_computes(tmp_path, sample_slide):
    """Hand-checked case: one Tumor polygon over half the sample, a Pen polygon inside it;
    a patch is kept iff tissue inside (tumor - pen) covers at least min_patch_tissue of it."""
    notes = tmp_path / "notes"
    notes.mkdir()
    qupath_file(notes / "cmu_small_region.geojson",
                [(TUMOR, "Tumor"), (PEN, "Pen"), (shapely.box(1500, 0, 2000, 500), "Stroma"),
                 (shapely.Point(10, 10), "Tumor")])  # fmt: skip
    out = tmp_path / "out"
    assert tile([f"SLIDES={sample_slide}", f"OUT={out}", f"ANNOTATIONS={notes}",
                 "roi.include=[tumor]", "roi.exclude=[Pen]", *QUIET]) == 0  # fmt: skip
    (row,) = read_regions(out / "regions.parquet").itertuples()

    roi = TUMOR.difference(PEN)
    tissue = _tissue_geometry(sample_slide)
    s = SIDE / 16
    frac = np.array([[shapely.intersection_all([tissue, roi, shapely.box(c * s, r * s, (c + 1) * s, (r + 1) * s)]).area / s**2  # noqa: E501
                      for c in range(16)] for r in range(16)])  # fmt: skip
    expected = frac >= 0.25 - 1e-9
    assert np.abs(frac - 0.25).min() > 1e-6  # no patch is a tie that float noise could flip
    assert np.array_equal(row.patch_mask, expected)
    assert row.tissue_fraction == pytest.approx(frac.mean(), abs=1e-6)
    # The annotations did something: without them more patches are tissue, pen patches too.
    plain = tmp_path / "plain"
    assert tile([f"SLIDES={sample_slide}", f"OUT={plain}", *QUIET]) == 0
    (free,) = read_regions(plain / "regions.parquet").itertuples()
    assert expected.sum() < free.patch_mask.sum() and not (expected & ~free.patch_mask).any()
    pen_patch = (int(1700 // s), int(950 // s))
    assert free.patch_mask[pen_patch] and not row.patch_mask[pen_patch]
    assert not row.patch_mask[:, int(1300 // s) + 1 :].any()  # right of the tumor: nothing
    rec = summary(out)["ok"][0]["roi"]
    assert rec["used"] == {"Tumor": 1, "Pen": 1} and rec["ignored"] == {"Stroma": 1}


def test_qc_picture_draws_the_annotation_polygons(tmp_path, sample_slide):
    notes = tmp_path / "notes"
    notes.mkdir()
    qupath_file(notes / "cmu_small_region.geojson", [(TUMOR, "Tumor"), (PEN, "Pen")])
    out = tmp_path / "out"
    assert tile([f"SLIDES={sample_slide}", f"OUT={out}", f"ANNOTATIONS={notes}",
                 "roi.include=[Tumor]", "roi.exclude=[Pen]", *QUIET]) == 0  # fmt: skip
    qc = np.asarray(Image.open(out / "qc" / "cmu_small_region.png").convert("RGB"))
    colors = {tuple(c) for c in qc.reshape(-1, 3)}
    assert tuple(INCLUDE_RGBA[:3]) in colors and tuple(EXCLUDE_RGBA[:3]) in colors


@pytest.fixture(scope="module")
def two_regions(tmp_path_factory, sample_slide) -> Path:
    """A synthetic 8192 x 4096 slide of real tissue at 0.5 µm/px: two regions."""
    from hipt.slides.synthetic import make_synthetic_slide

    folder = tmp_path_factory.mktemp("two")
    make_synthetic_slide(folder / "two.svs", 8192, 4096, 0.5, source=sample_slide, seed=7)
    return folder / "two.svs"


def test_exported_tissue_reimported_as_roi_gives_identical_regions(tmp_path, two_regions):
    """OUT/geojson/<id>.geojson (Tissue outline + Region squares) imported with
    roi.include=[Tissue] keeps exactly the same regions, patches and tissue fractions."""
    first = tmp_path / "first"
    assert tile([f"SLIDES={two_regions}", f"OUT={first}", *QUIET]) == 0
    exported = first / "geojson" / "two.geojson"
    feats = json.loads(exported.read_text())["features"]
    classes = [f["properties"]["classification"]["name"] for f in feats]
    assert classes.count("Tissue") == 1 and classes.count("Region") == 2
    regions = [shapely.geometry.shape(f["geometry"]) for f in feats[1:]]
    df = read_regions(first / "regions.parquet")
    for square, r in zip(regions, df.itertuples(), strict=True):  # level-0 squares of the table
        assert square.bounds == pytest.approx((r.x, r.y, r.x + 4096, r.y + 4096))
    notes = tmp_path / "notes"
    notes.mkdir()
    shutil.copy(exported, notes / "two.geojson")
    second = tmp_path / "second"
    assert tile([f"SLIDES={two_regions}", f"OUT={second}", f"ANNOTATIONS={notes}",
                 "roi.include=[Tissue]", *QUIET]) == 0  # fmt: skip
    again = read_regions(second / "regions.parquet")
    assert again.roi_sha256.notna().all() and df.roi_sha256.isna().all()
    columns = [c for c in df.columns if c not in ("roi_sha256", "patch_mask")]
    pd.testing.assert_frame_equal(df[columns], again[columns], check_exact=True)
    assert all(np.array_equal(a, b) for a, b in zip(df.patch_mask, again.patch_mask, strict=True))
    rec = summary(second)["ok"][0]["roi"]
    assert rec["used"] == {"Tissue": 1} and rec["ignored"] == {"Region": 2}


def test_editing_the_annotations_makes_tiles_and_features_stale(tmp_path, two_regions):
    """The annotation file's sha256 is in the slide's tiling key: after an edit the slide is
    re-tiled and its feature store no longer matches (extract recomputes it)."""
    notes = tmp_path / "notes"
    notes.mkdir()
    qupath_file(notes / "two.geojson", [(shapely.box(0, 0, 4096, 4096), "Tumor")])  # region 0
    tiles, feats = tmp_path / "tiles", tmp_path / "feats"
    args = [f"SLIDES={two_regions}", f"OUT={tiles}", f"ANNOTATIONS={notes}",
            "roi.include=[Tumor]", *QUIET]  # fmt: skip
    assert tile(args) == 0
    assert extract([f"TILES={tiles}", f"OUT={feats}", "model_256=vit256_tiny_test",
                    "model_4k=vit4k_tiny_test", "batch_size=64", "num_workers=0",
                    "progress=false", *QUIET]) == 0  # fmt: skip
    assert len(read_regions(tiles / "regions.parquet")) == 1
    assert tile(args) == 0 and summary(tiles)["skipped"]  # unchanged: nothing to redo

    qupath_file(notes / "two.geojson", [(shapely.box(0, 0, 8192, 4096), "Tumor")])  # widened
    assert tile(args) == 0
    assert summary(tiles)["stale"] == ["two"]
    assert len(read_regions(tiles / "regions.parquet")) == 2
    (slide,) = load_tiles(tiles).slides
    reason = needs_recompute(feats / "two.zarr", {"tiling_config_hash": slide.tiling_key(
        load_tiles(tiles).tiling_hash)})  # fmt: skip
    assert reason is not None and "tiling_config_hash" in reason


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("{not json", "not readable as GeoJSON"),
        ('{"type": "Point", "coordinates": [1, 2]}', "not a GeoJSON FeatureCollection"),
        ('{"type": "FeatureCollection", "features": [{"type": "Feature"}]}', "feature 0 has no"),
        ('[{"type": "Feature", "geometry": {"type": "Polygon", "coordinates": [[1]]}}]',
         "unreadable geometry"),
    ],
)  # fmt: skip
def test_malformed_files_are_one_line_naming_the_file(tmp_path, content, message):
    path = tmp_path / "bad.geojson"
    path.write_text(content)
    with pytest.raises(AnnotationError, match=message) as err:
        load_roi(path, RoiConfig(include=["Tumor"]), 1000, 1000)
    assert str(err.value).startswith(str(path)) and "\n" not in str(err.value)


def test_polygons_off_the_slide_are_refused(tmp_path):
    """One polygon outside: named with its class; all outside: 'another level's pixels'."""
    path = tmp_path / "n.geojson"
    qupath_file(path, [(shapely.box(0, 0, 100, 100), "Tumor"),
                       (shapely.box(5000, 5000, 5100, 5100), "Pen")])  # fmt: skip
    cfg = RoiConfig(include=["Tumor"], exclude=["Pen"])
    with pytest.raises(AnnotationError, match="a 'Pen' polygon .* lies outside the 1000x1000"):
        load_roi(path, cfg, 1000, 1000)
    qupath_file(path, [(shapely.box(4000, 4000, 8000, 8000), "Tumor")])
    with pytest.raises(AnnotationError, match="another image's or pyramid level's pixels"):
        load_roi(path, cfg, 1000, 1000)


def test_roi_semantics_unclassified_and_case(tmp_path):
    """Include classes bound the area, exclusions cut it, classes match case-insensitively,
    unclassified polygons follow roi.unclassified, other classes are counted and ignored."""
    path = qupath_file(tmp_path / "n.geojson", [(shapely.box(0, 0, 500, 500), None),
                                                (shapely.box(100, 100, 200, 200), "PEN"),
                                                (shapely.box(600, 600, 700, 700), "Other")])  # fmt: skip  # noqa: E501
    roi = load_roi(path, RoiConfig(exclude=["pen"]), 1000, 1000)
    assert roi.keep.area == pytest.approx(500 * 500 - 100 * 100)  # unclassified -> include
    assert roi.counts == {"used": {"(unclassified)": 1, "PEN": 1}, "ignored": {"Other": 1}}
    roi = load_roi(path, RoiConfig(exclude=["pen"], unclassified="ignore"), 1000, 1000)
    assert roi.keep.area == pytest.approx(1000 * 1000 - 100 * 100)  # whole slide minus pen
    roi = load_roi(path, RoiConfig(include=["Tumor"], unclassified="ignore"), 1000, 1000)
    assert roi.keep.is_empty  # an include class without polygons keeps nothing
    roi = load_roi(path, RoiConfig(unclassified="ignore"), 1000, 1000)
    assert roi.keep is None and len(roi.sha256) == 64  # restricts nothing


def test_required_missing_and_bad_files_fail_only_their_slide(tmp_path, sample_slide):
    """roi.required: a slide without a file is reported and skipped; a malformed file fails
    its slide in one line; a manifest 'annotations' column names files per slide."""
    root = tmp_path / "in"
    root.mkdir()
    for name in ("a", "b", "c"):
        shutil.copy(sample_slide, root / f"{name}.svs")
    notes = tmp_path / "notes"
    notes.mkdir()
    qupath_file(notes / "a.geojson", [(TUMOR, "Tumor")])
    (notes / "b.geojson").write_text("{broken")
    out = tmp_path / "out"
    assert tile([f"SLIDES={root}", f"OUT={out}", f"ANNOTATIONS={notes}", "roi.include=[Tumor]",
                 "roi.required=true", "verify_read=false", *QUIET]) == 1  # fmt: skip
    s = summary(out)
    assert [i["slide_id"] for i in s["ok"]] == ["a"]
    errors = {i["slide_id"]: i["error"] for i in s["failed"]}
    assert "b.geojson: not readable as GeoJSON" in errors["b"] and "\n" not in errors["b"]
    assert "no annotation file" in errors["c"] and "roi.required=false" in errors["c"]
    assert not (out / "geojson" / "b.geojson").exists()

    manifest = tmp_path / "m.csv"
    manifest.write_text(f"slide_id,path,annotations\nm,{root / 'a.svs'},notes/a.geojson\n")
    assert tile([f"SLIDES={manifest}", f"OUT={tmp_path / 'o2'}", "roi.include=[Tumor]",
                 "verify_read=false", *QUIET]) == 0  # fmt: skip
    assert summary(tmp_path / "o2")["ok"][0]["roi"]["used"] == {"Tumor": 1}


def test_roi_settings_without_annotations_are_a_config_error(tmp_path, sample_slide):
    assert tile([f"SLIDES={sample_slide}", f"OUT={tmp_path / 'o'}", "roi.include=[Tumor]",
                 *QUIET]) == 2  # fmt: skip
    assert tile([f"SLIDES={sample_slide}", f"OUT={tmp_path / 'o'}", "roi.include=[A]",
                 "roi.exclude=[a]", f"ANNOTATIONS={tmp_path}", *QUIET]) == 2  # fmt: skip
