"""Stain normalization in extraction (recorded, makes stores stale, changes the features) and
the patch batch size (memory cap, measured choice, cache)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from pipelines.extract_features import main

from hipt.extract.batching import bytes_per_image, choose_batch_size, memory_cap
from hipt.features import open_store
from hipt.models import build
from hipt.models.preprocess import PatchPreprocess
from hipt.models.vit256 import VIT256_PREPROCESSING

TINY = ["model_256=vit256_tiny_test", "model_4k=vit4k_tiny_test", "wandb.mode=disabled",
        "progress=false", "num_workers=0"]  # fmt: skip


def _extract(tiles, out, *extra: str) -> int:
    return main([f"TILES={tiles}", f"OUT={out}", *TINY, *extra])


def test_stain_setting_is_recorded_changes_features_and_makes_stores_stale(sample_tiles, tmp_path):
    """Macenko-normalized extraction records method, reference and fitted stain vectors in
    the store; its features differ from the plain ones; a Reinhard (or plain) rerun on the
    same folder finds the store stale and recomputes it, naming the stain field."""
    plain, out = tmp_path / "plain", tmp_path / "stained"
    assert _extract(sample_tiles, plain) == 0
    assert _extract(sample_tiles, out, "stain.method=macenko") == 0
    store = next(out.glob("*.zarr"))
    meta = open_store(store).meta
    record = json.loads(meta.stain)
    assert record["method"] == "macenko" and record["reference"].startswith("shipped:")
    assert np.asarray(record["he_ref"]).shape == (3, 2)
    reference = open_store(next(plain.glob("*.zarr")))
    assert reference.meta.stain == "none"
    tissue = reference.patch_mask()
    diff = np.abs(open_store(store).feats256()[tissue] - reference.feats256()[tissue]).max()
    assert diff > 1e-2  # normalization changed the tissue patches' features
    assert _extract(sample_tiles, out, "stain.method=reinhard") == 0
    summary = json.loads((out / "summary.json").read_text())
    assert "stain" in summary["recomputed"][meta.slide_id]
    assert json.loads(open_store(store).meta.stain)["method"] == "reinhard"


def test_unknown_stain_method_is_one_line(sample_tiles, tmp_path, capsys):
    """A bad stain.method stops before anything is written, in one line naming the choices."""
    assert _extract(sample_tiles, tmp_path / "f", "stain.method=vahadane") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert any("stain.method must be one of none, macenko, reinhard" in line for line in err)
    assert not (tmp_path / "f").exists()


def test_memory_cap_scales_with_the_budget_and_the_encoder():
    """Activation bytes per image grow with the encoder (UNI > ViT-S) and the input side;
    the cap is budget / bytes, and bf16 halves the bytes."""
    with torch.device("meta"):
        small, large = build("vit256_small"), build("uni")
    assert bytes_per_image(large, 224, "32-true") > 2 * bytes_per_image(small, 224, "32-true")
    assert bytes_per_image(small, 256, "32-true") > bytes_per_image(small, 224, "32-true")
    half = bytes_per_image(large, 224, "bf16-mixed")
    assert half < bytes_per_image(large, 224, "32-true") < 2.1 * half
    assert memory_cap(large, 224, "32-true", 8.0) >= 2 * memory_cap(large, 224, "32-true", 4.0) - 1
    assert memory_cap(large, 224, "32-true", 1e-6) == 1


def test_batch_size_is_capped_measured_and_cached(monkeypatch, tmp_path):
    """A configured size is capped by the budget; ``auto`` measures candidates on a big enough
    job and caches the winner (the next run reads it without measuring); small jobs skip it."""
    monkeypatch.setenv("HIPT_CACHE_DIR", str(tmp_path))
    model = build("vit256_tiny_test").eval()
    pre = PatchPreprocess(VIT256_PREPROCESSING)
    cpu = torch.device("cpu")
    args = (model, pre, "vit256_tiny_test@256", cpu, "32-true", 256, 32)
    one = bytes_per_image(model, 256, "32-true") * 10 / 2**30  # room for 10 images
    assert choose_batch_size(64, *args, one, 10_000).batch_size == 10
    small = choose_batch_size("auto", *args, 4.0, 100)
    assert (small.how, small.batch_size) == ("small job", 8)
    measured = choose_batch_size("auto", *args, 4.0, 1_000_000)
    assert measured.how == "measured" and measured.batch_size in measured.images_per_s
    assert min(measured.images_per_s) == 8 and all(v > 0 for v in measured.images_per_s.values())
    again = choose_batch_size("auto", *args, 4.0, 1_000_000)
    assert (again.how, again.batch_size) == ("cached", measured.batch_size)
    capped = choose_batch_size("auto", *args, one, 1_000_000)
    assert capped.batch_size <= 10


@pytest.mark.parametrize("value", ["0", "-3", "big"])
def test_bad_batch_size_is_a_config_error(sample_tiles, tmp_path, value, capsys):
    """batch_size must be a positive integer or auto (exit 2, one line)."""
    assert _extract(sample_tiles, tmp_path / "f", f"batch_size={value}") == 2
    assert "batch_size must be >= 1 or auto" in capsys.readouterr().err
