"""Kill a long stage at a random point, rerun it: the outputs equal an uninterrupted run's.

Each stage runs as ``python -m pipelines.<stage>`` and gets SIGKILL (no cleanup at all) at a
random moment after its first unit of work reached the disk (a slide, a store being written, a
fold); the rerun must take over the stale lock, discard partial outputs and finish with
results identical to an uninterrupted reference run.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from robust_utils import REPO, SMALL_TILING, TINY_EXTRACT, TINY_FINETUNE, cli

from hipt.slides.synthetic import make_synthetic_slide, tissue_tiles_from_sample

pytestmark = pytest.mark.slow
SEEDS = [0, 1, 2]


def _killed(module: str, args: list[str], started: Callable[[], bool], extra_s: float) -> None:
    """Start the stage, wait until ``started()`` (its first unit of work is on disk), wait
    ``extra_s`` more, then SIGKILL its process group; fail if it had already finished."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"pipelines.{module}", *args],
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not started() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(extra_s)
    assert proc.poll() is None, f"{module} finished before it could be killed"
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _run(module: str, args: list[str]) -> None:
    done = cli(module, *args)
    assert done.returncode == 0, done.stderr[-2000:]


@pytest.fixture(scope="module")
def slides(tmp_path_factory) -> Path:  # noqa: ANN001
    """Six small synthetic slides (several regions each)."""
    folder = tmp_path_factory.mktemp("kill") / "slides"
    tiles = tissue_tiles_from_sample()
    for i in range(6):
        make_synthetic_slide(
            folder / f"s{i}.svs",
            3072,
            2048,
            0.5,
            levels=(1, 4),
            source=tiles,
            seed=i,
            tissue_fraction=0.6,
        )
    return folder


def _regions(out: Path) -> pd.DataFrame:
    return pq.read_table(out / "regions.parquet").replace_schema_metadata(None).to_pandas()


def _stores(out: Path) -> dict[str, dict[str, np.ndarray]]:
    import zarr

    arrays = {}
    for store in sorted(out.glob("*.zarr")):
        group = zarr.open_group(str(store), mode="r")
        arrays[store.name] = {k: np.asarray(group[k][:]) for k in ("feats256", "feats4k", "coords")}
    return arrays


@pytest.mark.parametrize("seed", SEEDS)
def test_tile_and_extract_survive_sigkill(seed, slides, tmp_path):
    ref_tiles, ref_feats = tmp_path / "ref_tiles", tmp_path / "ref_feats"
    tile_args = [f"slides={slides}", "wandb.mode=disabled", *SMALL_TILING]
    _run("tile", [*tile_args, f"out={ref_tiles}"])
    _run("extract_features", [f"tiles={ref_tiles}", f"out={ref_feats}", *TINY_EXTRACT])
    rng = random.Random(seed)
    tiles, feats = tmp_path / "tiles", tmp_path / "feats"
    _killed(
        "tile",
        [*tile_args, f"out={tiles}"],
        lambda: any((tiles / "qc").glob("*.png")),
        rng.uniform(0, 0.6),
    )
    assert not (tiles / "regions.parquet").exists()  # killed mid-run: no final table
    assert cli("tile", *tile_args, f"out={tiles}").returncode == 0
    pd.testing.assert_frame_equal(_regions(tiles), _regions(ref_tiles))
    extract_args = [f"tiles={tiles}", f"out={feats}", *TINY_EXTRACT]
    _killed(
        "extract_features", extract_args, lambda: any(feats.glob(".*.tmp")), rng.uniform(0, 0.6)
    )
    assert not (feats / "summary.json").exists()
    assert cli("extract_features", *extract_args).returncode == 0
    got, want = _stores(feats), _stores(ref_feats)
    assert got.keys() == want.keys()
    for name in want:
        for key in want[name]:
            np.testing.assert_array_equal(got[name][key], want[name][key], err_msg=name + key)


@pytest.mark.parametrize("seed", SEEDS)
def test_finetune_survives_sigkill(seed, planted, tmp_path):
    args = [
        "task=subtype",
        f"cohort={planted.csv}",
        f"features={planted.features}",
        *TINY_FINETUNE,
        "split.n_folds=3",
        # Enough epochs that folds 1-2 cannot finish within the kill delay on an idle machine
        # (with 3 epochs the whole run could end before the SIGKILL landed).
        "train.max_epochs=20",
    ]
    _run("finetune", [*args, f"out={tmp_path / 'ref'}"])
    out = tmp_path / "run"
    _killed(
        "finetune",
        [*args, f"out={out}"],
        lambda: (out / "fold_0" / "done.json").exists(),
        random.Random(seed).uniform(0, 0.6),
    )
    assert not (out / "summary.csv").exists()
    assert cli("finetune", *args, f"out={out}").returncode == 0
    cols = ["fold", "auroc", "balanced_accuracy", "f1", "accuracy", "n_test"]
    got = pd.read_csv(out / "summary.csv")[cols]
    pd.testing.assert_frame_equal(got, pd.read_csv(tmp_path / "ref" / "summary.csv")[cols])
    for k in range(3):
        a = pd.read_csv(out / f"fold_{k}" / "predictions.csv")
        b = pd.read_csv(tmp_path / "ref" / f"fold_{k}" / "predictions.csv")
        pd.testing.assert_frame_equal(a, b)


def _tensors(path: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return load_file(str(path))


@pytest.mark.parametrize("seed", SEEDS[:2])
def test_pretrain_resumes_after_sigkill(seed, planted, tmp_path):
    """DINO (ViT-4K, tiny) killed after a checkpoint, rerun with resume=true: the exported
    teacher equals an uninterrupted run's."""
    args = [
        "config=tests/pretrain_4k_tiny.yaml",
        "level=4k",
        f"data.features={planted.features}",
        "trainer.max_steps=40",
        "checkpoint_every_n_steps=2",
        "wandb.mode=disabled",
    ]
    _run("pretrain", [*args, f"out={tmp_path / 'ref'}"])
    out = tmp_path / "run"
    _killed(
        "pretrain",
        [*args, f"out={out}"],
        lambda: (out / "checkpoints" / "last.ckpt").exists(),
        random.Random(seed).uniform(0, 0.5),
    )
    assert not (out / "backbone.safetensors").exists()
    _run("pretrain", [*args, f"out={out}", "resume=true"])
    got = _tensors(out / "backbone.safetensors")
    want = _tensors(tmp_path / "ref" / "backbone.safetensors")
    assert got.keys() == want.keys()
    for key in want:
        np.testing.assert_allclose(got[key], want[key], rtol=1e-5, atol=1e-6, err_msg=key)
