import numpy as np
import pytest
from stores import store_meta

from hipt.errors import HiptError, StaleOutputError
from hipt.features import StoreWriter, open_store, write_store
from hipt.features.store import read_meta


def _meta(**kw):
    base = dict(
        slide_id="s1", source_path="s1.svs", source_size_bytes=10, model_256="vit256_tiny_test",
        model_4k="vit4k_tiny_test", checkpoint_256_sha256=None, checkpoint_4k_sha256="a" * 64,
        random_weights=True, feature_dim_256=8, feature_dim_4k=4, target_mpp=0.5, region_px=4096,
        patch_px=256, tiling_config_hash="t", dtype="float32",
    )  # fmt: skip
    base.update(kw)
    return store_meta(**base)  # type: ignore[arg-type]


def _arrays(m, rng):
    return (rng.normal(size=(m, 256, 8)).astype(np.float32), rng.normal(size=(m, 4)),
            rng.integers(0, 10**6, size=(m, 2)), rng.random((m, 256)) > 0.5)  # fmt: skip


def test_round_trip_float32_exact(tmp_path):
    """float32 stores return exactly what was written, in region order."""
    rng = np.random.default_rng(0)
    f256, f4k, coords, mask = _arrays(5, rng)
    write_store(tmp_path / "s1.zarr", _meta(), f256, f4k, coords, mask)
    s = open_store(tmp_path / "s1.zarr", expect={"feature_dim_256": 8, "target_mpp": 0.5})
    assert s.n_regions == 5 and s.meta.complete and s.meta.created_at
    np.testing.assert_array_equal(s.feats256(), f256)
    np.testing.assert_array_equal(s.feats4k(), f4k.astype(np.float32))
    np.testing.assert_array_equal(s.coords(), coords)
    np.testing.assert_array_equal(s.patch_mask(), mask)
    np.testing.assert_array_equal(s.feats256(np.array([3, 1])), f256[[1, 3]])


def test_float16_error_is_bounded(tmp_path):
    """float16 storage moves unit-scale features by at most half an fp16 ulp (~5e-4 near 1)."""
    rng = np.random.default_rng(1)
    f256, f4k, coords, mask = _arrays(2, rng)
    write_store(tmp_path / "h.zarr", _meta(dtype="float16"), f256, f4k, coords, mask)
    store = open_store(tmp_path / "h.zarr")
    got = store.feats256()
    assert np.max(np.abs(got - f256) / np.maximum(np.abs(f256), 1)) <= 2**-11
    # the region features stay float32: bit-exact, whatever dtype the grids are stored in
    assert store.group["feats4k"].dtype == np.float32
    np.testing.assert_array_equal(store.feats4k(), f4k.astype(np.float32))


def test_streamed_writes_and_incomplete_store_refused(tmp_path):
    """A store is invisible until finalized; a missing region fails finalize, leaving nothing."""
    rng = np.random.default_rng(2)
    f256, f4k, coords, mask = _arrays(3, rng)
    w = StoreWriter(tmp_path / "s.zarr", _meta(), coords, mask)
    w.write(0, f256[:2], f4k[:2])
    with pytest.raises(HiptError, match="no feature store"):
        open_store(tmp_path / "s.zarr")
    with pytest.raises(HiptError, match=r"regions \[2\] were never written"):
        w.finalize()
    assert list(tmp_path.iterdir()) == []
    w = StoreWriter(tmp_path / "s.zarr", _meta(), coords, mask)
    w.write(0, f256[:2], f4k[:2])
    w.write(2, f256[2:], f4k[2:])
    w.finalize()
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").feats256(), f256)


def test_stale_or_incomplete_metadata_is_refused(tmp_path):
    """A different checkpoint, or a store without the complete flag, gives one clear error."""
    rng = np.random.default_rng(3)
    write_store(tmp_path / "s.zarr", _meta(), *_arrays(1, rng))
    with pytest.raises(StaleOutputError, match="checkpoint_4k_sha256: store has 'aaaa"):
        open_store(tmp_path / "s.zarr", expect={"checkpoint_4k_sha256": "b" * 64})
    import zarr

    zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").attrs["complete"] = False
    assert read_meta(tmp_path / "s.zarr").complete is False
    with pytest.raises(HiptError, match="incomplete feature store"):
        open_store(tmp_path / "s.zarr")


def test_empty_slide_store(tmp_path):
    """A slide with zero kept regions still yields a valid, empty store."""
    write_store(tmp_path / "e.zarr", _meta(), np.zeros((0, 256, 8)), np.zeros((0, 4)),
                np.zeros((0, 2)), np.zeros((0, 256), bool))  # fmt: skip
    s = open_store(tmp_path / "e.zarr")
    assert s.n_regions == 0 and s.feats256().shape == (0, 256, 8)


def test_rewrite_swaps_and_old_metadata_is_refused(tmp_path):
    """Finalizing over an existing store replaces it whole (no leftovers); a store whose
    metadata lacks required fields (another version) is refused with the fix, not a crash."""
    rng = np.random.default_rng(4)
    first, second = _arrays(2, rng), _arrays(3, rng)
    write_store(tmp_path / "s.zarr", _meta(), *first)
    write_store(tmp_path / "s.zarr", _meta(), *second)
    np.testing.assert_array_equal(open_store(tmp_path / "s.zarr").feats256(), second[0])
    assert [p.name for p in tmp_path.iterdir()] == ["s.zarr"]
    import zarr

    attrs = zarr.open_group(str(tmp_path / "s.zarr"), mode="r+").attrs
    del attrs["model_4k"]
    with pytest.raises(StaleOutputError, match="lacks model_4k.*re-extract"):
        open_store(tmp_path / "s.zarr")
    from hipt.features.store import needs_recompute

    assert "lacks model_4k" in needs_recompute(tmp_path / "s.zarr")
