"""Extraction fixtures: tiled sample and synthetic slides, tiny exported checkpoints."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from extract_utils import SMALL_TILING, extract, tile

from hipt.errors import HiptError


@pytest.fixture(autouse=True)
def _no_wandb_files(monkeypatch: pytest.MonkeyPatch) -> None:
    # The suite default is offline W&B; these tests check stores, not W&B runs.
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="session")
def sample_path() -> Path:
    from hipt.samples import sample_slide_path

    try:
        return sample_slide_path()
    except HiptError as err:
        pytest.skip(f"sample slide unavailable: {err}")


@pytest.fixture(scope="session")
def sample_tiles(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Path:
    """The real SVS tiled with the default settings (one 4096 region, read at 4104 px)."""
    root = tmp_path_factory.mktemp("sample")
    (root / "slides").mkdir()
    shutil.copy(sample_path, root / "slides" / sample_path.name)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        return tile(root / "slides", root / "tiles")


@pytest.fixture(scope="session")
def synth_slides(tmp_path_factory: pytest.TempPathFactory, sample_path: Path) -> Path:
    """Three small synthetic slides: two at 0.5 µm/px, one at 0.25 (read 2048 px, resized)."""
    from hipt.slides.synthetic import make_synthetic_slide, tissue_tiles_from_sample

    folder = tmp_path_factory.mktemp("synth") / "slides"
    folder.mkdir()
    tiles = tissue_tiles_from_sample(sample_path)
    specs = [("a", 2048, 2048, 0.5, (1, 4)), ("b", 3072, 2048, 0.5, (1, 4)),
             ("c", 4096, 2048, 0.25, (1, 4))]  # fmt: skip
    for i, (name, w, h, mpp, levels) in enumerate(specs):
        make_synthetic_slide(
            folder / f"{name}.svs", w, h, mpp, levels=levels, source=tiles, seed=10 + i,
            tissue_fraction=0.5,
        )  # fmt: skip
    return folder


@pytest.fixture(scope="session")
def synth_tiles(tmp_path_factory: pytest.TempPathFactory, synth_slides: Path) -> Path:
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        return tile(synth_slides, tmp_path_factory.mktemp("synth_tiles"), *SMALL_TILING)


@pytest.fixture(scope="session")
def synth_reference(synth_tiles: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An uninterrupted float32 run over the three synthetic slides (random tiny weights)."""
    out = tmp_path_factory.mktemp("synth_reference")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("WANDB_MODE", "disabled")
        assert extract(synth_tiles, out, "dtype=float32") == 0
    return out


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two exported tiny weight sets (seeds 1 and 2): keys ``256``, ``4k``, ``256b``."""
    from hipt.models import build, export_model

    folder = tmp_path_factory.mktemp("ckpt")
    out = {}
    for key, name, seed in (("256", "vit256_tiny_test", 1), ("4k", "vit4k_tiny_test", 1),
                            ("256b", "vit256_tiny_test", 2)):  # fmt: skip
        torch.manual_seed(seed)
        out[key] = export_model(build(name), folder / f"{name}_{seed}")
    return out
