"""What a GPU run records and refuses, proven on CPU: the driver check at stage start and
the precision / TF32 / decode fields of every store (a CPU fp32 store is stale for bf16)."""

from __future__ import annotations

import pytest
import torch

from hipt.models import runtime


@pytest.fixture
def old_driver(monkeypatch):
    """A machine with an R535 driver where this torch (CUDA 13 build) sees no device."""
    monkeypatch.setattr(runtime, "nvidia_driver", lambda p=None: "535.104.05")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "13.0")


def test_extract_stage_exits_1_with_the_driver_line(old_driver, sample_tiles, tmp_path, capsys):
    from pipelines.extract_features import main

    code = main([f"TILES={sample_tiles}", f"OUT={tmp_path / 'f'}", "model_256=vit256_tiny_test",
                 "model_4k=vit4k_tiny_test", "wandb.mode=disabled"])  # fmt: skip
    assert code == 1
    assert "driver >= 580" in capsys.readouterr().err
    assert not (tmp_path / "f").exists()


def test_precision_and_tf32_are_part_of_a_stores_staleness_key(sample_tiles, tmp_path):
    """A CPU fp32 store is stale for a bf16 (or TF32) run: stores of both never mix."""
    import dataclasses

    from pipelines.extract_features import main

    from hipt.extract.plan import EncoderInfo, expect_dict, expected_meta
    from hipt.features.store import needs_recompute
    from hipt.slides.tiles import load_tiles

    out = tmp_path / "f"
    assert main([f"TILES={sample_tiles}", f"OUT={out}", "model_256=vit256_tiny_test",
                 "model_4k=vit4k_tiny_test", "wandb.mode=disabled", "progress=false",
                 "num_workers=0"]) == 0  # fmt: skip
    store = next(out.glob("*.zarr"))
    from hipt.features import open_store

    meta = open_store(store).meta
    assert (meta.precision, meta.fp32_matmul, meta.decode) == ("32-true", "ieee", "cpu")
    tiles = load_tiles(sample_tiles)
    info = EncoderInfo("vit256_tiny_test", "vit4k_tiny_test", None, None, 32, 16, "float16",
                       False, 0, "32-true", "ieee", "cpu")  # fmt: skip
    same = expect_dict(expected_meta(tiles.slides[0], info, tiles.tiling_hash, None))
    assert needs_recompute(store, same) is None
    for change in ({"precision": "bf16-mixed"}, {"fp32_matmul": "tf32"}):
        other = dataclasses.replace(info, **change)
        want = expect_dict(expected_meta(tiles.slides[0], other, tiles.tiling_hash, None))
        reason = needs_recompute(store, want)
        assert reason is not None and next(iter(change)) in reason
    decoded = dataclasses.replace(info, decode="gpu_batch")  # recorded, not a staleness key
    assert (
        needs_recompute(
            store, expect_dict(expected_meta(tiles.slides[0], decoded, tiles.tiling_hash, None))
        )
        is None
    )
