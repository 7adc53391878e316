"""`make heatmap` end to end on a slide with known tissue squares, a planted-signal model and the
real sample slide: alignment, outputs, reproducibility, refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from heatmap_data import Setup, build_store, square_layout
from PIL import Image
from pipelines.heatmap import main

from hipt.features import open_store, write_store
from hipt.models import build, export_model

CANVAS_MPP = 3.0  # 6 level-0 px per canvas px: patch borders fall inside canvas pixels
QUIET = ["wandb.mode=disabled", "progress=false"]


def args(setup: Setup, out: Path, *extra: str, canvas_mpp: float = CANVAS_MPP) -> list[str]:
    return [
        f"SLIDE={setup.slide.path}", f"FEATURES={setup.store}", f"OUT={out}",
        f"CHECKPOINT256={setup.ckpt256}", f"CHECKPOINT4K={setup.ckpt4k}",
        f"canvas_mpp={canvas_mpp}", "min_canvas_side=0", *QUIET, *extra,
    ]  # fmt: skip


SQUARE_RUN = ("smoothing=true", "head_pairs=[[0,1]]", "save_arrays=true", "topk.patches=3")


@pytest.fixture(scope="module")
def squares_run(square_setup: Setup, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("hm") / "out"
    assert main(args(square_setup, out, *SQUARE_RUN)) == 0
    return out


def expected_mask(setup: Setup, canvas_mpp: float) -> np.ndarray:
    """Canvas pixels whose centre (level-0, computed independently) lies in a tissue square."""
    s = canvas_mpp / setup.mpp  # level-0 px per canvas px
    w, h = round(setup.slide.width / s), round(setup.slide.height / s)
    cy = ((np.arange(h) + 0.5) * s // setup.cell).astype(int)
    cx = ((np.arange(w) + 0.5) * s // setup.cell).astype(int)
    return square_layout()[np.ix_(cy, cx)]


def check_arrays(out: Path, want: np.ndarray) -> list[Path]:
    arrays = sorted((out / "arrays").glob("*.npy"))
    for path in arrays:
        got = ~np.isnan(np.load(path))
        assert got.shape == want.shape, path.name
        assert (got == want).all(), f"{path.name}: {np.argwhere(got != want)[:5]}"
    return arrays


def test_maps_cover_exactly_the_tissue_squares(squares_run: Path, square_setup: Setup):
    """Every level's drawn area is the tissue squares at the drawn scale, pixel for pixel."""
    want = expected_mask(square_setup, CANVAS_MPP)
    arrays = check_arrays(squares_run, want)
    assert {p.stem for p in arrays} >= {"vit256_mean", "vit4k_head1", "factorized_4kh0_256h1"}
    # The PNG shows the same: colour exactly on the squares, the untouched thumbnail elsewhere.
    png = np.asarray(Image.open(squares_run / "factorized_mean.png").convert("RGB"))
    thumb = np.asarray(Image.open(squares_run / "thumbnail.png").convert("RGB"))
    h, w = want.shape
    changed = (png[:h, :w] != thumb).any(axis=-1)
    assert not changed[~want].any() and changed[want].mean() > 0.95


def test_alignment_holds_when_regions_are_read_from_a_coarser_level(
    fine_square_setup: Setup, tmp_path: Path
):
    """0.25 µm/px slide read at level 1 (1024 level-0 px per region), 2.2 µm/px canvas."""
    out = tmp_path / "out"
    run = args(fine_square_setup, out, "save_arrays=true", "heads256=[]", "heads4k=[1]",
               "topk.patches=0", canvas_mpp=2.2)  # fmt: skip
    assert main(run) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["read_level"] == 1 and summary["region_size_level0"] == 1024
    assert summary["feature_check"]["mean_cosine"] > 0.999
    assert len(check_arrays(out, expected_mask(fine_square_setup, 2.2))) == 4


def test_outputs_have_the_right_size_are_not_constant_and_reproduce(
    squares_run: Path, square_setup: Setup, tmp_path: Path
):
    """Overlay = canvas + legend panel; maps vary; a second run writes identical bytes."""
    summary = json.loads((squares_run / "summary.json").read_text())
    w, h = summary["canvas"]["width"], summary["canvas"]["height"]
    assert (w, h) == (256, 171) and summary["feature_check"]["mean_cosine"] > 0.999
    names = list(summary["maps"])
    assert names[0] == "vit4k_mean" and "slide_attention" not in names
    for name in names:
        image = Image.open(squares_run / f"{name}.png")
        assert image.size == (w + 260, max(h, 420)), name
        values = np.load(squares_run / "arrays" / f"{name}.npy").astype(np.float32)
        assert np.nanstd(values) > 1.0, name
    assert len(summary["topk"]["patches"]) == 3 and not summary["topk"]["regions"]
    index = (squares_run / "index.html").read_text()
    assert all(f'src="{name}.png"' in index for name in names) and "topk/patch_01.png" in index
    again = tmp_path / "again"
    assert main(args(square_setup, again, *SQUARE_RUN)) == 0
    pngs = sorted(p.relative_to(squares_run) for p in squares_run.glob("**/*.png"))
    assert len(pngs) == len(names) + 1 + 3
    for rel in pngs:
        assert (again / rel).read_bytes() == (squares_run / rel).read_bytes(), rel


def test_rerun_is_a_no_op_and_other_settings_need_overwrite(squares_run: Path, square_setup):
    """Same inputs and settings: nothing to do; other settings: refused unless overwrite=true."""
    before = (squares_run / "summary.json").stat().st_mtime_ns
    assert main(args(square_setup, squares_run, *SQUARE_RUN)) == 0
    assert (squares_run / "summary.json").stat().st_mtime_ns == before
    assert main(args(square_setup, squares_run, *SQUARE_RUN, "render.alpha=0.3")) == 1


def test_wrong_weights_or_other_slide_are_refused(square_setup: Setup, tmp_path: Path, capsys):
    """A checkpoint that did not make the store, or a slide it was not made from: one line."""
    bad = args(square_setup, tmp_path / "a")
    bad[3] = f"CHECKPOINT256={square_setup.ckpt4k}"
    assert main(bad) == 1
    assert "is not the ViT-256 the store was made with" in capsys.readouterr().err
    other = tmp_path / "other.tif"
    other.write_bytes(square_setup.slide.path.read_bytes() + b"\0")
    wrong = args(square_setup, tmp_path / "b")
    wrong[0] = f"SLIDE={other}"
    assert main(wrong) == 1
    assert "is not the slide squares the store was made from" in capsys.readouterr().err
    assert main([*args(square_setup, tmp_path / "c"), "combine=max"]) == 2


def train_planted(dim: int, scale: np.ndarray, signal: np.ndarray, steps: int = 120):
    """ABMIL on bags of Gaussian regions; positive bags hide ``signal`` in one region."""
    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    model = build("abmil_tiny_test", input_dim=dim, dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for step in range(steps):
        bag = rng.standard_normal((int(rng.integers(3, 9)), dim)) * scale
        label = step % 2
        if label:
            bag[rng.integers(len(bag))] += signal
        logits = model(torch.tensor(bag, dtype=torch.float32)).logits
        loss = torch.nn.functional.cross_entropy(logits, torch.tensor([label]))
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.eval()


def test_planted_signal_model_puts_its_top_region_on_the_planted_region(
    square_setup: Setup, tmp_path: Path
):
    """A slide model trained to find a planted region feature ranks that region first."""
    store = open_store(square_setup.store)
    f4k = store.feats4k()
    scale = f4k.std(axis=0) + 1e-3
    signal = 4.0 * scale * np.sign(np.random.default_rng(1).standard_normal(f4k.shape[1]))
    model = train_planted(f4k.shape[1], scale, signal)
    planted = 2
    f4k = (f4k - f4k.mean(axis=0)).copy()
    f4k[planted] += signal
    shutil.copytree(square_setup.store, tmp_path / "squares.zarr")
    write_store(tmp_path / "squares.zarr", store.meta, store.feats256(), f4k,
                store.coords(), store.patch_mask())  # fmt: skip
    export_model(
        model, tmp_path / "fold_0" / "model", consumes="feats4k", trained_on=store.meta.provenance()
    )  # the finetune stage's fold layout; fmt: skip
    out = tmp_path / "out"
    run = args(square_setup, out, f"MODEL={tmp_path / 'fold_0'}", "topk.regions=2")
    run[1] = f"FEATURES={tmp_path / 'squares.zarr'}"
    assert main(run) == 0
    summary = json.loads((out / "summary.json").read_text())
    att = np.asarray(summary["slide_attention"])
    assert summary["model"]["input"] == "feats4k" and int(att.argmax()) == planted
    top = summary["topk"]["regions"][0]
    assert top["region"] == planted and tuple(square_setup.coords[planted]) == (top["x"], top["y"])
    assert (out / "slide_attention.png").is_file() and (out / top["file"]).is_file()
    assert summary["topk"]["patches"][0]["region"] == planted  # slide x 4K mass follows it
    assert list(summary["maps"])[0] == "slide_attention"


def test_sample_slide_from_tiles_with_wandb_images(tmp_path: Path, monkeypatch):
    """The real sample: tile stage -> tiny-encoder store -> heatmap; W&B offline gets images."""
    from pipelines.tile import main as tile
    from wandb_runs import find_offline_runs

    from hipt.samples import sample_slide_path
    from hipt.slides.regions import patch_masks, read_regions

    slide = sample_slide_path()
    tiled = [f"SLIDES={slide}", f"OUT={tmp_path / 'tiles'}", "verify_read=false"]
    assert tile(tiled) == 0
    df = read_regions(tmp_path / "tiles" / "regions.parquet")
    coords = df[["x", "y"]].to_numpy(np.int64)
    masks = patch_masks(df).reshape(len(df), -1)
    store, ck256, ck4k = build_store(
        slide, tmp_path, coords, masks, region_px=4096, target_mpp=0.5,
        read_level=int(df.read_level[0]), read_size=int(df.read_size[0]),
    )  # fmt: skip
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "heatmap"
    rc = main([f"SLIDE={slide}", f"FEATURES={store}", f"OUT={out}", f"CHECKPOINT256={ck256}",
               f"CHECKPOINT4K={ck4k}", "heads256=[0]", "heads4k=[]", "progress=false"])  # fmt: skip
    assert rc == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["canvas"]["height"] == 1024 and summary["tokens_per_patch"] == 16
    assert summary["feature_check"]["mean_cosine"] > 0.999  # same pixels as the store saw
    files = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert {"index.html", "summary.json", "run.json", "resolved_config.yaml", "thumbnail.png",
            "vit256_mean.png", "vit256_head0.png", "vit4k_mean.png", "factorized_mean.png",
            "topk/patch_01.png"} <= files  # fmt: skip
    # W&B copies every logged image into the offline run's media folder as it is logged.
    media = find_offline_runs(out / "wandb")[0] / "files" / "media" / "images"
    for name in ("vit4k_mean", "vit256_mean", "vit256_head0", "factorized_mean"):
        assert len(list((media / "heatmap").glob(f"{name}_*.png"))) == 1, name
    assert len(list((media / "topk").glob("patches_*.png"))) == len(summary["topk"]["patches"])
