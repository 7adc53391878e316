"""Heatmaps of many slides at once, and the QuPath GeoJSON every slide gets."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import geojson
import numpy as np
import pytest
import torch
import zarr
from heatmap_data import Setup
from pipelines.heatmap import main
from shapely.geometry import shape

from hipt.features import open_store
from hipt.models import build, export_model

QUIET = ["wandb.mode=disabled", "progress=false", "heads256=[]", "heads4k=[]", "topk.patches=0",
         "min_canvas_side=0", "canvas_mpp=4"]  # fmt: skip


def test_geojson_polygons_are_the_stores_regions_and_tissue_patches(square_setup: Setup, tmp_path):
    """attention.geojson is valid GeoJSON; each region is the level-0 square at the store's
    coordinates, each tissue patch the square at its patch origin (exactly the mask's patches),
    with the maps' values as QuPath measurements; the tissue outline is their union."""
    out = tmp_path / "hm"
    args = [f"SLIDE={square_setup.slide.path}", f"FEATURES={square_setup.store}", f"OUT={out}",
            f"CHECKPOINT256={square_setup.ckpt256}", f"CHECKPOINT4K={square_setup.ckpt4k}",
            *QUIET]  # fmt: skip
    assert main(args) == 0
    text = (out / "attention.geojson").read_text()
    doc = geojson.loads(text)
    assert doc.is_valid, doc.errors()
    feats = doc["features"]
    kinds = [f["properties"]["classification"]["name"] for f in feats]
    assert kinds.count("Tissue") == 1
    store = open_store(square_setup.store)
    geom = store.meta.geometry()
    regions = [f for f in feats if f["properties"]["classification"]["name"] == "Region"]
    got = [tuple(int(v) for v in shape(f["geometry"]).bounds[:2]) for f in regions]
    assert got == [tuple(int(v) for v in xy) for xy in store.coords()]
    want = {
        (int(ox), int(oy))
        for (x, y), mask in zip(store.coords(), store.patch_mask(), strict=True)
        for (ox, oy) in geom.patch_origins(int(x), int(y))[np.flatnonzero(mask)]
    }
    patches = [f for f in feats if f["properties"]["classification"]["name"] == "Patch"]
    assert {tuple(int(v) for v in shape(f["geometry"]).bounds[:2]) for f in patches} == want
    assert len(patches) == int(store.patch_mask().sum())
    side = shape(patches[0]["geometry"]).bounds
    assert side[2] - side[0] == pytest.approx(geom.patch_side_l0)
    assert {"vit4k_mean", "vit256_mean", "factorized_mean"} <= set(
        patches[0]["properties"]["measurements"]
    )
    outline = shape(next(f for f in feats if f["properties"]["name"] == "tissue")["geometry"])
    assert outline.is_valid
    assert outline.area == pytest.approx(len(patches) * geom.patch_side_l0**2, rel=0.02)


def _planted_model(folder: Path, store: Path) -> Path:
    """A subtype ABMIL on the store's region features, exported as a finetune fold would be."""
    torch.manual_seed(0)
    meta = open_store(store).meta
    model = build("abmil_tiny_test", input_dim=meta.feature_dim_4k, n_classes=2)
    output = {"task": "subtype", "classes": ["A", "B"], "n_outputs": 2}
    return export_model(model, folder / "fold_0" / "model", consumes="feats4k", output=output,
                        trained_on=meta.provenance())  # fmt: skip


def test_a_cohort_of_slides_gets_pages_an_index_by_score_and_skips_a_bad_slide(
    square_setup: Setup, fine_square_setup: Setup, tmp_path, capsys
):
    """SLIDES=<store folder>: one subfolder per slide with the model's prediction in its summary
    and page, an index.html of all sorted by score, a slide whose file is gone reported and
    skipped (exit 1); a second run skips the slides already drawn."""
    stores = tmp_path / "stores"
    stores.mkdir()
    for setup in (square_setup, fine_square_setup):
        shutil.copytree(setup.store, stores / f"{setup.slide.path.parent.name}.zarr")
    broken = stores / "zz_gone.zarr"
    shutil.copytree(square_setup.store, broken)
    zarr.open_group(str(broken), mode="r+").attrs["source_path"] = str(tmp_path / "gone.tif")
    model = _planted_model(tmp_path / "model", square_setup.store)
    out = tmp_path / "cohort"
    args = [f"SLIDES={stores}", f"OUT={out}", f"MODEL={model.parent}",
            f"CHECKPOINT256={square_setup.ckpt256}", f"CHECKPOINT4K={square_setup.ckpt4k}",
            *QUIET]  # fmt: skip
    assert main(args) == 1
    summary = json.loads((out / "summary.json").read_text())
    names = [setup.slide.path.parent.name for setup in (square_setup, fine_square_setup)]
    status = {s["slide_id"]: s["status"] for s in summary["slides"]}
    assert status == {names[0]: "ok", names[1]: "ok", "zz_gone": "failed"}
    for sid in names:
        one = json.loads((out / sid / "summary.json").read_text())
        assert one["prediction"]["task"] == "subtype" and 0 <= one["prediction"]["score"] <= 1
        assert "prediction" in (out / sid / "index.html").read_text()
        assert (out / sid / "attention.geojson").is_file()
    index = (out / "index.html").read_text()
    scores = {s["slide_id"]: s["prediction"]["score"] for s in summary["slides"] if s["prediction"]}
    first, second = sorted(scores, key=scores.get, reverse=True)
    assert index.index(f"{first}/index.html") < index.index(f"{second}/index.html")
    assert "failed: " in index and "zz_gone" in index
    assert main(args) == 1
    again = json.loads((out / "summary.json").read_text())
    assert again["totals"] == {"ok": 0, "up_to_date": 2, "failed": 1}


def test_official_model_without_task_is_one_line(square_setup: Setup, tmp_path, capsys):
    """An official HIPT file names no task: the heatmap asks for it in one line (exit 1)."""
    path = tmp_path / "s_0_checkpoint.pt"
    torch.save(build("hipt_lgp", vit4k=None, n_classes=2).state_dict(), path)
    args = [f"SLIDE={square_setup.slide.path}", f"FEATURES={square_setup.store}",
            f"OUT={tmp_path / 'hm'}", f"MODEL={path}", f"CHECKPOINT256={square_setup.ckpt256}",
            f"CHECKPOINT4K={square_setup.ckpt4k}", *QUIET]  # fmt: skip
    capsys.readouterr()
    assert main(args) == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "official HIPT file" in errors[0] and "task=" in errors[0]


def test_cohort_pages_load_in_a_real_browser(square_setup: Setup, tmp_path):
    """The cohort index and each slide's page in Chromium: every image loads, every link
    resolves, no console error (skips, saying why, where no browser is installed)."""
    from browser import check_pages, chromium

    chromium()
    stores = tmp_path / "stores"
    stores.mkdir()
    shutil.copytree(square_setup.store, stores / "a.zarr")
    model = _planted_model(tmp_path / "model", square_setup.store)
    out = tmp_path / "cohort"
    args = [f"SLIDES={stores}", f"OUT={out}", f"MODEL={model.parent}",
            f"CHECKPOINT256={square_setup.ckpt256}", f"CHECKPOINT4K={square_setup.ckpt4k}",
            *QUIET, "topk.patches=2", "topk.regions=1"]  # fmt: skip
    assert main(args) == 0
    found = check_pages(out, ["index.html", "a/index.html"])
    assert found == {"index.html": [], "a/index.html": []}
