"""A slide without MPP metadata, tiled with ``mpp_override``, goes through every later stage.

Every stage after tiling opens the slide through the geometry tiling recorded (MPP and its
source included), so none of them needs the override again. The slide is the real sample's
tissue rewritten as a generic pyramidal TIFF without resolution tags.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zarr
from pipelines.extract_features import main as extract
from pipelines.heatmap import main as heatmap
from pipelines.pretrain import main as pretrain
from pipelines.tile import main as tile
from rewrite import rewrite_pyramid

from hipt.features import open_store
from hipt.samples import sample_slide_path
from hipt.slides.regions import read_regions
from hipt.slides.tiles import load_tiles

MPP = 0.499  # what the scanner wrote into the original SVS, given by hand here
QUIET = ["wandb.mode=disabled"]


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """tile (mpp_override) -> extract -> pretrain-256 on the no-MPP slide."""
    root = tmp_path_factory.mktemp("nompp")
    slide = rewrite_pyramid(sample_slide_path(), root / "nompp.tif")
    paths = {"slide": slide, "tiles": root / "tiles", "features": root / "features"}
    assert tile([f"SLIDES={slide}", f"OUT={root / 'refused'}", *QUIET]) == 1  # needs the MPP
    assert tile([f"SLIDES={slide}", f"OUT={paths['tiles']}", f"mpp_override={MPP}", *QUIET]) == 0
    assert extract([f"TILES={paths['tiles']}", f"OUT={paths['features']}",
                    "model_256=vit256_tiny_test", "model_4k=vit4k_tiny_test", "batch_size=64",
                    "num_workers=0", "progress=false", *QUIET]) == 0  # fmt: skip
    return paths


def test_tiling_records_the_mpp_and_where_it_came_from(chain):
    """regions.parquet and the store carry MPP 0.499 from 'override', the read level and size."""
    df = read_regions(chain["tiles"] / "regions.parquet")
    assert set(df.mpp_source) == {"override"} and set(df.slide_mpp) == {MPP}
    (slide,) = load_tiles(chain["tiles"]).slides
    assert slide.geometry.read_size == round(4096 * 0.5 / MPP) and slide.geometry.read_level == 0
    meta = open_store(chain["features"] / "nompp.zarr").meta
    assert meta.geometry() == slide.geometry
    assert (meta.slide_mpp, meta.mpp_source) == (MPP, "override")


def test_pretrain_256_reads_the_slide_with_the_recorded_mpp(chain, tmp_path):
    out = tmp_path / "p256"
    args = ["config=tests/pretrain_256_tiny.yaml", f"TILES={chain['tiles']}", f"OUT={out}",
            "trainer.max_steps=1", "data.max_samples=8", *QUIET]  # fmt: skip
    assert pretrain(args) == 0
    assert (out / "backbone.safetensors").is_file()


def test_heatmap_needs_no_geometry_arguments(chain, tmp_path):
    """The heatmap reads the slide as extraction did: recomputed ViT-256 features equal the
    store's, with no slide_mpp or level given."""
    out = tmp_path / "hm"
    args = [f"SLIDE={chain['slide']}", f"FEATURES={chain['features'] / 'nompp.zarr'}",
            f"OUT={out}", "heads256=[]", "heads4k=[]", "topk.patches=1", "progress=false",
            *QUIET]  # fmt: skip
    assert heatmap(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["feature_check"]["mean_cosine"] > 0.999
    assert summary["region_size_level0"] == pytest.approx(4096 * 0.5 / MPP)


def test_a_store_of_another_geometry_is_refused_in_one_line(chain, tmp_path, capsys):
    """A store whose recorded slide size is not the slide's: one error line naming the fix."""
    import shutil

    store = tmp_path / "nompp.zarr"
    shutil.copytree(chain["features"] / "nompp.zarr", store)
    group = zarr.open_group(str(store), mode="r+")
    group.attrs["slide_width"] = 4440
    capsys.readouterr()
    rc = heatmap([f"SLIDE={chain['slide']}", f"FEATURES={store}", f"OUT={tmp_path / 'hm'}",
                  "progress=false", *QUIET])  # fmt: skip
    assert rc == 1
    errors = [ln for ln in capsys.readouterr().err.splitlines() if " ERROR " in ln]
    assert len(errors) == 1 and "not the slide nompp that was tiled" in errors[0]
    assert "level-0 size 2220x2967, tiled 4440x2967" in errors[0] and "re-tile" in errors[0]
