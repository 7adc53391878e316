"""The tile stage end to end: sample slide, known layouts, bad inputs, resume, W&B, exit codes."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from pipelines.tile import main

from hipt.config import load_config
from hipt.provenance import REPO_ROOT
from hipt.slides.regions import patch_masks, read_metadata, read_regions
from hipt.tile.config import TileConfig, tiling_hash, validate

BAD = {"zero_bytes", "truncated", "random_bytes", "png_as_svs", "no_mpp", "corrupt_tile"}


@pytest.fixture
def no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


def summary(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


def ids(items: list[dict]) -> set[str]:
    return {i["slide_id"] for i in items}


def test_config_file_loads_and_hash_ignores_non_result_keys():
    cfg = load_config(TileConfig, "tile.yaml", ["slides=x"])
    validate(cfg)
    assert (cfg.target_mpp, cfg.region_px, cfg.patch_px) == (0.5, 4096, 256)
    base = tiling_hash(cfg)
    same = ["out=/elsewhere", "num_workers=7", "overwrite=true", "wandb.mode=disabled", "slides=y"]
    assert tiling_hash(load_config(TileConfig, "tile.yaml", ["slides=x", *same])) == base
    for change in ("min_tissue=0.2", "tissue.median_px=5", "mpp_override=0.25", "patch_px=128"):
        assert tiling_hash(load_config(TileConfig, "tile.yaml", ["slides=x", change])) != base


def test_sample_slide_gives_one_region_qc_and_wandb(tmp_path, sample_slide, monkeypatch):
    """The real sample: exactly one 4096 region at (0, 0) read as 4104 level-0 px."""
    from wandb_runs import find_offline_runs, read_offline_run

    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "out"
    assert main([f"SLIDES={sample_slide}", f"OUT={out}"]) == 0
    df = read_regions(out / "regions.parquet")
    assert len(df) == 1
    row = df.iloc[0]
    assert (row.slide_id, row.x, row.y, row.read_level, row.read_size) == (
        "cmu_small_region", 0, 0, 0, 4104)  # fmt: skip
    assert abs(row.slide_mpp - 0.499) < 1e-3 and row.target_mpp == 0.5
    mask = patch_masks(df)[0]
    assert mask.dtype == np.bool_ and mask.shape == (16, 16) and mask.any()
    assert not mask[12:].any() and not mask[:, 9:].any()  # beyond the slide's 2220 x 2967 px
    assert 0.01 <= row.tissue_fraction < 0.4 and row.n_tissue_patches == mask.sum()
    s = summary(out)
    assert ids(s["ok"]) == {"cmu_small_region"} and not s["failed"] and not s["skipped"]
    assert s["ok"][0]["n_regions"] == 1 and s["ok"][0]["seconds"] > 0
    assert (out / "qc" / "cmu_small_region.png").stat().st_size > 1000
    run = json.loads((out / "run.json").read_text())
    assert run["stage"] == "tile" and run["config_hash"] == s["config_hash"]
    assert any(i["path"] == str(sample_slide) and i["size_bytes"] for i in run["inputs"])
    assert (out / "resolved_config.yaml").is_file() and not (out / ".hipt.lock").exists()
    assert read_metadata(out / "slides" / "cmu_small_region.parquet")["config_hash"] == (
        s["config_hash"])  # fmt: skip
    (run_dir,) = find_offline_runs(out)
    # wandb-core may still be flushing the run log when finish() returns: poll briefly.
    deadline = time.monotonic() + 20
    while "total/regions" not in (logged := read_offline_run(run_dir)["summary"]):
        if time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert logged["regions/cmu_small_region"] == 1 and logged["total/regions"] == 1
    assert logged["total/ok"] == 1 and logged["total/failed"] == 0
    assert any(k.startswith("qc/cmu_small_region") for k in logged)


def test_bad_inputs_rerun_overwrite_and_stale(tmp_path, bad_folder, no_wandb, capsys):
    out = tmp_path / "out"
    assert main([f"SLIDES={bad_folder}", f"OUT={out}"]) == 1
    s = summary(out)
    assert ids(s["ok"]) == {"sample"} and ids(s["failed"]) == BAD  # .xyz is not a slide: ignored
    err = capsys.readouterr().err
    for item in s["failed"]:
        name = Path(item["path"]).name
        assert "\n" not in item["error"] and name in item["error"]
        assert f"slide {item['slide_id']} failed: " in err and name in err
        assert not (out / "slides" / f"{item['slide_id']}.parquet").exists()
        assert not (out / "qc" / f"{item['slide_id']}.png").exists()
    assert "JPEG" in next(i["error"] for i in s["failed"] if i["slide_id"] == "corrupt_tile")
    assert "MPP" in next(i["error"] for i in s["failed"] if i["slide_id"] == "no_mpp")
    assert set(read_regions(out / "regions.parquet").slide_id) == {"sample"}
    assert sorted(p.name for p in (out / "slides").iterdir()) == ["sample.parquet"]
    mtime = (out / "slides" / "sample.parquet").stat().st_mtime_ns

    assert main([f"SLIDES={bad_folder}", f"OUT={out}"]) == 1  # rerun: skip what is done
    s = summary(out)
    assert ids(s["skipped"]) == {"sample"} and not s["ok"] and ids(s["failed"]) == BAD
    assert s["skipped"][0]["n_regions"] == 1 and s["totals"]["regions"] == 1
    assert (out / "slides" / "sample.parquet").stat().st_mtime_ns == mtime
    assert len(read_regions(out / "regions.parquet")) == 1

    assert main([f"SLIDES={bad_folder}", f"OUT={out}", "overwrite=true"]) == 1
    s = summary(out)
    assert ids(s["ok"]) == {"sample"} and not s["skipped"] and not s["stale"]

    assert main([f"SLIDES={bad_folder}", f"OUT={out}", "min_tissue=0.02"]) == 1
    s = summary(out)
    assert ids(s["ok"]) == {"sample"} and s["stale"] == ["sample"]
    assert "earlier output is stale" in capsys.readouterr().err


def test_manifest_rows_mpp_column_and_unsupported_row(tmp_path, bad_folder, no_wandb):
    """Relative paths, per-slide MPP for a file without one, a .xyz row fails alone."""
    csv = tmp_path / "m.csv"
    rel = os.path.relpath(bad_folder, tmp_path)
    csv.write_text(
        "slide_id,path,mpp\n"
        f"s1,{rel}/sample.svs,\n"
        f"nompp,{rel}/no_mpp.tif,2.0\n"
        f"odd,{rel}/unsupported_ext.xyz,\n"
    )
    out = tmp_path / "out"
    assert main([f"SLIDES={csv}", f"OUT={out}"]) == 1
    s = summary(out)
    assert ids(s["ok"]) == {"s1", "nompp"} and ids(s["failed"]) == {"odd"}
    assert "unsupported slide format '.xyz'" in s["failed"][0]["error"]
    nompp = next(i for i in s["ok"] if i["slide_id"] == "nompp")
    assert any("coarser than target_mpp" in w for w in nompp["warnings"])  # 2 µm/px, enlarged
    df = read_regions(out / "regions.parquet")
    assert list(df.slide_id) == ["s1", "nompp"]
    assert df.set_index("slide_id").loc["nompp", "read_size"] == 1024  # 4096 * 0.5 / 2.0


def test_known_layout_gives_expected_regions_and_masks(tmp_path, tiles, no_wandb):
    """Cells of one 256-px target patch: masks equal the layout cut into 16 x 16 blocks."""
    from hipt.slides.synthetic import make_synthetic_slide

    layout = np.zeros((16, 40), bool)  # three region columns; the middle one has no tissue
    layout[2:9, 1:7] = True
    layout[10:16, 10:15] = True
    layout[5, 0] = True  # a single-cell fragment (128 µm square) is still tissue
    layout[0:6, 34:40] = True  # the third region is 8 columns wide: half of it is off-slide
    slide = make_synthetic_slide(tmp_path / "in" / "lay.svs", 10240, 4096, 0.5, levels=(1, 4),
                                 layout=layout, cell_px=256, source=tiles, seed=3)  # fmt: skip
    out = tmp_path / "out"
    assert main([f"SLIDES={slide.path}", f"OUT={out}"]) == 0
    df = read_regions(out / "regions.parquet")
    assert list(zip(df.x, df.y, strict=True)) == [(0, 0), (8192, 0)]
    assert list(df.grid_index) == [0, 2]
    padded = np.zeros((16, 48), bool)
    padded[:, :40] = layout
    np.testing.assert_array_equal(patch_masks(df)[0], padded[:, 0:16])
    np.testing.assert_array_equal(patch_masks(df)[1], padded[:, 32:48])


def test_40x_and_20x_twins_give_the_same_physical_regions(tmp_path, tiles, no_wandb):
    from hipt.slides.synthetic import blob_layout, make_synthetic_slide

    layout = blob_layout(16, 24, fraction=0.35, seed=5)
    folder = tmp_path / "in"
    for name, mpp, cell in (("x40", 0.25, 128), ("x20", 0.5, 64)):
        n = cell * 24, cell * 16
        make_synthetic_slide(folder / f"{name}.svs", *n, mpp, levels=(1, 4), layout=layout,
                             cell_px=cell, source=tiles, seed=7)  # fmt: skip
    out = tmp_path / "out"
    small = ["region_px=1024", "patch_px=64", "thumbnail_px=768", "verify_read=false"]
    assert main([f"SLIDES={folder}", f"OUT={out}", *small]) == 0
    df = read_regions(out / "regions.parquet")
    a, b = df[df.slide_id == "x40"], df[df.slide_id == "x20"]
    assert len(a) == len(b) > 1
    np.testing.assert_allclose(a.x * 0.25, b.x * 0.5)
    np.testing.assert_allclose(a.y * 0.25, b.y * 0.5)
    assert list(a.read_size) == [2048] * len(a) and list(b.read_size) == [1024] * len(b)
    np.testing.assert_array_equal(patch_masks(a), patch_masks(b))


def test_corrupt_tile_under_tissue_is_caught_by_verify_read(
    tmp_path, tiles, no_wandb, corrupt_level0_tile
):
    """The thumbnail comes from level 1 and is fine; only the level-0 decode check sees it."""
    from hipt.slides.synthetic import make_synthetic_slide

    layout = np.ones((8, 8), bool)
    slide = make_synthetic_slide(tmp_path / "in" / "bad0.svs", 2048, 2048, 0.5, levels=(1, 4),
                                 layout=layout, cell_px=256, source=tiles, seed=4)  # fmt: skip
    corrupt_level0_tile(slide.path, 1024, 1024)
    out = tmp_path / "out"
    assert main([f"SLIDES={slide.path}", f"OUT={out}", "thumbnail_px=512"]) == 1
    (failed,) = summary(out)["failed"]
    assert "bad0.svs" in failed["error"] and not list((out / "slides").glob("*.parquet"))
    assert main([f"SLIDES={slide.path}", f"OUT={out}", "thumbnail_px=512",
                 "verify_read=false"]) == 0  # fmt: skip


def test_config_errors_exit_2_with_one_line(tmp_path, capsys, no_wandb):
    assert main(["SLIDES=x", f"OUT={tmp_path}", "min_tisue=0.1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown config key 'min_tisue'" in err[0]
    assert "did you mean min_tissue" in err[0]
    csv = tmp_path / "dup.csv"
    csv.write_text("slide_id,path\na,x.svs\na,y.svs\n")
    assert main([f"SLIDES={csv}", f"OUT={tmp_path / 'o'}"]) == 2
    assert "'a' on lines 2, 3" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()  # nothing written on a config error
    assert main([f"SLIDES={csv}", f"OUT={tmp_path}", "region_px=1000"]) == 2


def test_locked_output_exits_3(tmp_path, sample_slide, no_wandb, capsys):
    from hipt.lock import RunLock

    with RunLock(tmp_path):
        assert main([f"SLIDES={sample_slide}", f"OUT={tmp_path}"]) == 3
    assert "in use by pid" in capsys.readouterr().err


def test_subprocess_exit_code_for_unknown_key(tmp_path):
    env = {**os.environ, "PYTHONPATH": f"{REPO_ROOT / 'src'}:{REPO_ROOT}", "WANDB_MODE": "disabled"}
    res = subprocess.run(
        [sys.executable, "-m", "pipelines.tile", f"SLIDES={tmp_path}", f"OUT={tmp_path}",
         "tissue.bogus=1"],
        capture_output=True, text=True, cwd=REPO_ROOT, env=env, timeout=120,
    )  # fmt: skip
    assert res.returncode == 2, res.stderr
    lines = [ln for ln in res.stderr.splitlines() if "ERROR" in ln]
    assert len(lines) == 1 and "tissue.bogus" in lines[0]
