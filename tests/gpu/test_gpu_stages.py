"""Every stage on a GPU: pretrain-4k (1 GPU, and 2-rank NCCL where 2 GPUs exist), finetune,
predict, heatmap, and extraction with ``torch.compile``. Skipped without CUDA, failed under
``HIPT_REQUIRE_CUDA=1`` (``make test-gpu``, ``make gpu-check``).

Each test checks what a GPU run must get right beyond "it ran": the device and precision it
recorded, that its results agree with the CPU path within bf16's precision, and that nothing
fell back to the CPU silently.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from finetune_helpers import ft_config, reload_predictions
from planted import make_planted_cohort

pytestmark = pytest.mark.gpu
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _no_wandb(monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "disabled")


@pytest.fixture(scope="module")
def planted(tmp_path_factory):
    return make_planted_cohort(tmp_path_factory.mktemp("planted"), n_patients=40, seed=0)


def _pretrain_args(features: Path, out: Path, *extra: str) -> list[str]:
    return ["config=tests/pretrain_4k_tiny.yaml", f"FEATURES={features}", f"OUT={out}",
            "trainer.max_steps=3", "data.batch_size=4", *extra]  # fmt: skip


def test_pretrain_4k_on_one_gpu_runs_bf16_and_exports(planted, tmp_path):
    from pipelines.pretrain import main

    out = tmp_path / "p4k"
    assert main(_pretrain_args(planted.features, out, "trainer.accelerator=gpu")) == 0
    run = json.loads((out / "run.json").read_text())["extra"]
    assert run["precision"] == "bf16-mixed" and run["world_size"] == 1
    assert (out / "backbone.safetensors").is_file()


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs 2 GPUs for NCCL")
def test_pretrain_4k_two_ranks_nccl_keep_replicas_equal(planted, tmp_path):
    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "pipelines.pretrain",
           *_pretrain_args(planted.features, out, "trainer.accelerator=gpu", "trainer.devices=2",
                           "trainer.strategy=ddp")]  # fmt: skip
    res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                         env={**os.environ, "WANDB_MODE": "disabled"})  # fmt: skip
    assert res.returncode == 0, res.stderr[-3000:]
    run = json.loads((out / "run.json").read_text())["extra"]
    assert run["world_size"] == 2 and len(set(run["rank_digests"])) == 1


def test_finetune_on_gpu_learns_and_its_models_reload(planted, tmp_path):
    """On CUDA (bf16, TF32) the planted signal is learned as on CPU and each fold's model,
    reloaded on CPU, reproduces its predictions within bf16 rounding."""
    from hipt.finetune.runner import run_finetune

    cfg = ft_config("subtype", planted.csv, planted.features, tmp_path,
                    "model.name=abmil_tiny_test", "train.max_epochs=10",
                    "train.accelerator=gpu")  # fmt: skip
    summary = run_finetune(cfg)
    assert float(summary.loc[summary["fold"] == "mean", "auroc"].iloc[0]) >= 0.9
    for fold in sorted(tmp_path.glob("fold_*")):
        written, again = reload_predictions(fold, planted.features)
        for column, values in again.items():
            if column.startswith("prob_"):
                np.testing.assert_allclose(values, written[column], atol=0.02)


def test_predict_on_gpu_equals_predict_on_cpu(planted, tmp_path):
    from pipelines.predict import main as predict

    from hipt.finetune.runner import run_finetune

    run_finetune(ft_config("subtype", planted.csv, planted.features, tmp_path / "ft",
                           "model.name=meanpool_tiny_test", "train.max_epochs=3"))  # fmt: skip
    outs = {}
    for acc in ("cpu", "cuda"):
        outs[acc] = tmp_path / acc
        assert predict([f"MODEL={tmp_path / 'ft'}", f"COHORT={planted.csv}",
                        f"FEATURES={planted.features}", f"OUT={outs[acc]}", f"accelerator={acc}",
                        "bootstrap=0"]) == 0  # fmt: skip
    import pandas as pd

    a = pd.read_csv(outs["cpu"] / "predictions.csv")
    b = pd.read_csv(outs["cuda"] / "predictions.csv")
    probs = [c for c in a.columns if c.startswith("prob_")]
    np.testing.assert_allclose(a[probs], b[probs], atol=0.02)
    assert json.loads((outs["cuda"] / "summary.json").read_text())["device"].startswith("cuda")


@pytest.fixture(scope="module")
def sample_tiles(tmp_path_factory):
    from pipelines.tile import main as tile

    from hipt.samples import sample_slide_path

    out = tmp_path_factory.mktemp("tiles")
    assert tile([f"SLIDES={sample_slide_path()}", f"OUT={out}", "wandb.mode=disabled"]) == 0
    return out


def test_extract_with_torch_compile_on_gpu_equals_eager(sample_tiles, tmp_path):
    from pipelines.extract_features import main as extract

    from hipt.features import open_store

    stores = {}
    for mode in ("false", "true"):
        stores[mode] = tmp_path / mode
        assert extract([f"TILES={sample_tiles}", f"OUT={stores[mode]}", "accelerator=gpu",
                        "model_256=vit256_small", "model_4k=vit4k_xs", "batch_size=64",
                        f"compile={mode}", "progress=false", "dtype=float32"]) == 0  # fmt: skip
    a = open_store(next(stores["false"].glob("*.zarr"))).feats256()
    b = open_store(next(stores["true"].glob("*.zarr"))).feats256()
    cos = (a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))
    assert cos.mean() > 0.999, cos.mean()


def test_heatmap_on_gpu_recomputes_the_stores_features(sample_tiles, tmp_path):
    """The heatmap's own ViT-256 pass on the GPU agrees with the store (made on the GPU)."""
    from pipelines.extract_features import main as extract
    from pipelines.heatmap import main as heatmap

    from hipt.samples import sample_slide_path

    feats = tmp_path / "f"
    assert extract([f"TILES={sample_tiles}", f"OUT={feats}", "accelerator=gpu",
                    "model_256=vit256_tiny_test", "model_4k=vit4k_tiny_test",
                    "progress=false"]) == 0  # fmt: skip
    out = tmp_path / "hm"
    assert heatmap([f"SLIDE={sample_slide_path()}", f"FEATURES={next(feats.glob('*.zarr'))}",
                    f"OUT={out}", "device=cuda", "heads256=[0]", "heads4k=[0]",
                    "progress=false"]) == 0  # fmt: skip
    summary = json.loads((out / "summary.json").read_text())
    assert summary["feature_check"]["mean_cosine"] > 0.99
