"""`make encode-4k`: feats4k recomputed from the cached grids equal a fresh extraction's."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from extract_utils import extract, store_arrays

from hipt.features.store import open_store, read_meta

TINY4K = "model_4k=vit4k_tiny_test"


def encode(features: Path, checkpoint: Path, *overrides: str) -> int:
    from pipelines.encode_4k import main

    return main([f"FEATURES={features}", f"CHECKPOINT4K={checkpoint}", TINY4K,
                 "wandb.mode=disabled", *overrides])  # fmt: skip


@pytest.fixture
def random_4k_stores(synth_tiles: Path, tmp_path: Path, tiny_checkpoints) -> Path:
    """float32 stores of the three synthetic slides: trained ViT-256, *random* ViT-4K."""
    out = tmp_path / "stores"
    assert (
        extract(synth_tiles, out, "dtype=float32", f"checkpoint256={tiny_checkpoints['256']}") == 0
    )
    return out


def test_reencoded_stores_equal_a_fresh_extraction_and_count_as_current(
    random_4k_stores: Path, synth_tiles: Path, tmp_path: Path, tiny_checkpoints
):
    """Re-encoding with ViT-4K B gives the feats4k (to float32 rounding), metadata and config
    hash that extracting with B from the slides gives: a later `make extract-features
    CHECKPOINT4K=B` finds every store current and reads no slide."""
    before = {p.name: store_arrays(p) for p in random_4k_stores.glob("*.zarr")}
    assert encode(random_4k_stores, tiny_checkpoints["4k"]) == 0

    fresh = tmp_path / "fresh"
    ckpts = [f"checkpoint256={tiny_checkpoints['256']}", f"checkpoint4k={tiny_checkpoints['4k']}"]
    assert extract(synth_tiles, fresh, "dtype=float32", *ckpts) == 0
    for path in sorted(fresh.glob("*.zarr")):
        new, ref = store_arrays(random_4k_stores / path.name), store_arrays(path)
        np.testing.assert_allclose(new["feats4k"], ref["feats4k"], rtol=1e-5, atol=1e-5)
        assert not np.allclose(new["feats4k"], before[path.name]["feats4k"], atol=1e-3)
        for name in ("feats256", "coords", "patch_mask"):  # untouched, bit for bit
            np.testing.assert_array_equal(new[name], before[path.name][name])
        mine, theirs = read_meta(random_4k_stores / path.name), read_meta(path)
        assert mine is not None and theirs is not None
        for key in ("model_4k", "checkpoint_4k_sha256", "feature_dim_4k", "random_weights",
                    "config_hash", "complete"):  # fmt: skip
            assert getattr(mine, key) == getattr(theirs, key), key

    assert extract(synth_tiles, random_4k_stores, "dtype=float32", *ckpts) == 0
    totals = json.loads((random_4k_stores / "summary.json").read_text())["totals"]
    assert totals["skipped"] == 3 and totals["regions_encoded"] == 0


def test_second_run_skips_and_a_finetune_expectation_tells_old_from_new(
    random_4k_stores: Path, tiny_checkpoints
):
    """A store made with this ViT-4K is not rewritten; `expect_checkpoint_4k` (finetune's
    check) refuses the stores of the old ViT-4K and accepts the re-encoded ones."""
    from hipt.errors import StaleOutputError
    from hipt.provenance import sha256_file

    new_sha = sha256_file(tiny_checkpoints["4k"])
    store = sorted(random_4k_stores.glob("*.zarr"))[0]
    with pytest.raises(StaleOutputError, match="checkpoint_4k_sha256"):
        open_store(store, expect={"checkpoint_4k_sha256": new_sha})
    assert encode(random_4k_stores, tiny_checkpoints["4k"]) == 0
    open_store(store, expect={"checkpoint_4k_sha256": new_sha})
    stamp = (store / "zarr.json").stat().st_mtime_ns
    assert encode(random_4k_stores, tiny_checkpoints["4k"]) == 0
    summary = json.loads((random_4k_stores / "encode_4k" / "summary.json").read_text())
    assert summary["totals"]["current"] == 3 and summary["totals"]["encoded"] == 0
    assert (store / "zarr.json").stat().st_mtime_ns == stamp


def test_interrupted_rewrite_keeps_the_old_store_and_a_bad_store_is_skipped(
    random_4k_stores: Path, tiny_checkpoints, monkeypatch
):
    """Killed between assembling and renaming: the old store is intact and no temporary is left
    behind; an incomplete store is reported (exit 1) while the others are re-encoded."""
    import hipt.extract.encode4k as enc

    stores = sorted(random_4k_stores.glob("*.zarr"))
    old = store_arrays(stores[0])

    def killed(src: Path, dst: Path) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(enc, "replace_store", killed)
    assert encode(random_4k_stores, tiny_checkpoints["4k"]) == 130
    monkeypatch.undo()
    np.testing.assert_array_equal(store_arrays(stores[0])["feats4k"], old["feats4k"])
    assert read_meta(stores[0]).checkpoint_4k_sha256 is None  # type: ignore[union-attr]
    assert not [p for p in random_4k_stores.iterdir() if p.name.endswith(".tmp")]

    broken = random_4k_stores / "broken.zarr"
    shutil.copytree(stores[1], broken)
    attrs = json.loads((broken / "zarr.json").read_text())
    attrs["attributes"]["complete"] = False
    (broken / "zarr.json").write_text(json.dumps(attrs))
    assert encode(random_4k_stores, tiny_checkpoints["4k"]) == 1
    summary = json.loads((random_4k_stores / "encode_4k" / "summary.json").read_text())
    assert summary["totals"] == {**summary["totals"], "encoded": 3, "failed": 1}
    assert "broken.zarr" in summary["failed"][0]["error"]
    assert "extract-features" in summary["failed"][0]["error"]
