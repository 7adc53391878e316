"""Zarr v3 store per slide: write under a temporary name, rename when complete, verify on open.

Every array chunk carries a crc32c checksum (Zarr v3's ``crc32c`` codec), so a damaged chunk (a
disk fault, a partial copy) is detected when it is read; readers turn that, and any other
decode failure, into one :class:`~hipt.errors.DamagedStoreError` line naming the store and the
fix.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import zarr
from zarr.codecs import BloscCodec, Crc32cCodec

from hipt.errors import DamagedStoreError, HiptError, StaleOutputError, one_line
from hipt.features.schema import SCHEMA_VERSION, FeatureStoreMeta
from hipt.io import TMP_SUFFIX, remove_path, tmp_path_for
from hipt.slides.inputs import strip_slide_suffix
from hipt.slides.regions import GRID

PATCHES = GRID * GRID
DTYPES = ("float16", "float32")
ARRAYS = ("feats256", "feats4k", "coords", "patch_mask")
#: ``feats4k`` is kept in float32 whatever ``dtype`` says (768 bytes per 192-d region, vs
#: ~190 KiB of float16 ``feats256``): the slide models read it as their input, and float16
#: rounding of region features that differ by a few percent is not harmless (the demo's
#: response AUROC: 0.991 from float32 region features, 0.906 from float16 ones).
FEATS4K_DTYPE = "float32"
STORE_SUFFIX = ".zarr"
R = TypeVar("R")


def store_codecs() -> dict[str, Any]:
    """Compression and the per-chunk crc32c checksum of every store array."""
    return {"compressors": [BloscCodec(cname="zstd", clevel=3, shuffle="shuffle"), Crc32cCodec()]}


def _array(group: zarr.Group, name: str) -> zarr.Array:
    """The array ``name`` of ``group`` (``KeyError`` when absent, ``TypeError`` for a subgroup)."""
    node = group[name]
    if not isinstance(node, zarr.Array):
        raise TypeError(f"'{name}' is a Zarr group, not an array")
    return node


def store_path(folder: str | Path, slide_id: str) -> Path:
    """``folder/<slide_id>.zarr``: where a slide's store is written."""
    return Path(folder) / f"{slide_id}{STORE_SUFFIX}"


def find_store(folder: str | Path, slide_id: str) -> Path:
    """The store of ``slide_id`` in ``folder``, also when the id carries a slide-file suffix.

    Official HIPT cohort CSVs list ``<uuid>.svs``; their stores are ``<uuid>.zarr``. Returns
    :func:`store_path` when neither exists.
    """
    path = store_path(folder, slide_id)
    stem = strip_slide_suffix(slide_id)
    if not path.exists() and stem is not None and store_path(folder, stem).exists():
        return store_path(folder, stem)
    return path


class StoreWriter:
    """Streams the features of one slide into ``<path>`` (written as a hidden ``.tmp`` sibling).

    Arrays: ``feats256 [M,256,D256]`` (in ``meta.dtype``), ``feats4k [M,D4k]`` (float32),
    ``coords [M,2]`` (int64 level-0 x, y),
    ``patch_mask [M,256]`` (bool). Regions are chunked ``regions_per_chunk`` at a time.

    Args:
        path: final store path, e.g. ``OUT/<slide_id>.zarr``.
        meta: store metadata; ``n_regions``, ``complete`` and ``created_at`` are set here.
        coords: ``[M,2]`` level-0 top-left of each region.
        patch_mask: ``[M,256]`` or ``[M,16,16]`` tissue mask per 256-px patch (row-major).
        regions_per_chunk: regions per Zarr chunk.
    """

    def __init__(
        self,
        path: str | Path,
        meta: FeatureStoreMeta,
        coords: np.ndarray,
        patch_mask: np.ndarray,
        regions_per_chunk: int = 1,
    ) -> None:
        if meta.dtype not in DTYPES:
            raise HiptError(f"store dtype must be one of {DTYPES}, got {meta.dtype}")
        self.path = Path(path)
        self.tmp = tmp_path_for(self.path)
        m = int(coords.shape[0])
        self.meta = dataclasses.replace(meta, n_regions=m, complete=False)
        remove_path(self.tmp)
        group = zarr.open_group(str(self.tmp), mode="w")
        rc = max(1, min(regions_per_chunk, max(m, 1)))
        d256, d4k = meta.feature_dim_256, meta.feature_dim_4k
        kw: dict[str, Any] = {**store_codecs(), "fill_value": 0}
        self.feats256 = group.create_array(
            "feats256", shape=(m, PATCHES, d256), chunks=(rc, PATCHES, d256), dtype=meta.dtype, **kw
        )
        self.feats4k = create_feats4k(group, m, d4k)
        coords = np.asarray(coords, dtype=np.int64).reshape(m, 2)
        group.create_array("coords", data=coords, **store_codecs())
        mask = np.asarray(patch_mask, dtype=bool).reshape(m, PATCHES)
        group.create_array("patch_mask", data=mask, **store_codecs())
        group.attrs.update(self.meta.to_dict())
        self.group = group
        self._feats4k = np.zeros((m, d4k), dtype=np.float32)
        self._written = np.zeros(m, dtype=bool)

    def write(self, start: int, feats256: np.ndarray, feats4k: np.ndarray) -> None:
        """Store regions ``start .. start+len(feats256)`` (``[n,256,D256]`` and ``[n,D4k]``)."""
        n = int(feats256.shape[0])
        self.feats256[start : start + n] = np.asarray(feats256, dtype=self.meta.dtype)
        self._feats4k[start : start + n] = feats4k
        self._written[start : start + n] = True

    def finalize(self) -> Path:
        """Mark complete and rename into place; raises if any region was never written."""
        missing = np.flatnonzero(~self._written)
        if missing.size:
            self.abort()
            raise HiptError(f"{self.path}: regions {missing[:10].tolist()} were never written")
        self.feats4k[:] = self._feats4k
        now = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
        self.group.attrs.update({"complete": True, "created_at": now})
        replace_store(self.tmp, self.path)
        return self.path

    def abort(self) -> None:
        """Drop the temporary store."""
        remove_path(self.tmp)


def create_feats4k(group: zarr.Group, m: int, d4k: int) -> zarr.Array:
    """The ``feats4k [M, D4k]`` array of a store being written (float32, one chunk)."""
    return group.create_array(
        "feats4k", shape=(m, d4k), chunks=(max(m, 1), d4k), dtype=FEATS4K_DTYPE,
        fill_value=0, **store_codecs(),
    )  # fmt: skip


def replace_store(src: Path, dst: Path) -> None:
    """Move the complete store ``src`` to ``dst``, replacing any store there.

    The old store is moved aside first, so there is always one complete store or none at
    ``dst``, never a half-deleted one.
    """
    old = dst.with_name(f".{dst.name}.old{TMP_SUFFIX}")
    if dst.exists():
        remove_path(old)
        os.replace(dst, old)
    os.replace(src, dst)
    remove_path(old)


def write_store(
    path: str | Path,
    meta: FeatureStoreMeta,
    feats256: np.ndarray,
    feats4k: np.ndarray,
    coords: np.ndarray,
    patch_mask: np.ndarray,
) -> Path:
    """Write a whole store at once (tests, synthetic cohorts); atomic like :class:`StoreWriter`."""
    writer = StoreWriter(path, meta, coords, patch_mask, regions_per_chunk=8)
    try:
        if len(coords):
            writer.write(0, feats256, feats4k)
        return writer.finalize()
    except BaseException:
        writer.abort()
        raise


class FeatureStore:
    """Read access to a complete, verified store (see :func:`open_store`).

    Every read raises :class:`~hipt.errors.DamagedStoreError` (one line naming the store and the
    fix) when a chunk fails its checksum or cannot be decoded.
    """

    def __init__(self, path: Path, group: zarr.Group, meta: FeatureStoreMeta) -> None:
        self.path = path
        self.group = group
        self.meta = meta

    @property
    def slide_id(self) -> str:
        """Slide identifier."""
        return self.meta.slide_id

    @property
    def n_regions(self) -> int:
        """Number of regions ``M``."""
        return self.meta.n_regions

    def _guard(self, name: str, read: Callable[[], R]) -> R:
        try:
            return read()
        except Exception as exc:  # noqa: BLE001 - codec errors come as many types
            raise damaged(self.path, name, exc) from None

    def feats256(self, index: Any = slice(None)) -> np.ndarray:
        """``[M,256,D256]`` float32 ViT-256 CLS features, row-major; ``index`` picks regions."""
        arr = self._guard("feats256", lambda: _array(self.group, "feats256"))
        if isinstance(index, np.ndarray):
            index = np.sort(index) if index.dtype != bool else np.flatnonzero(index)
            sel = (index,)
            return self._guard("feats256", lambda: np.asarray(arr.get_orthogonal_selection(sel),
                                                              np.float32))  # fmt: skip
        return self._guard("feats256", lambda: np.asarray(arr[index], dtype=np.float32))

    def feats4k(self) -> np.ndarray:
        """``[M,D4k]`` float32 ViT-4K CLS features."""
        return self._guard(
            "feats4k", lambda: np.asarray(_array(self.group, "feats4k")[:], np.float32)
        )

    def coords(self) -> np.ndarray:
        """``[M,2]`` int64 level-0 top-left (x, y) of each region."""
        return self._guard("coords", lambda: np.asarray(_array(self.group, "coords")[:]))

    def patch_mask(self) -> np.ndarray:
        """``[M,256]`` bool tissue mask of each region's patches (row-major)."""
        return self._guard(
            "patch_mask", lambda: np.asarray(_array(self.group, "patch_mask")[:], bool)
        )

    def verify(self) -> None:
        """Decode every chunk of every array once (checksums included); raises if one fails."""
        for name in ARRAYS:
            arr = self._guard(name, lambda n=name: _array(self.group, n))  # type: ignore[misc]
            step = arr.chunks[0]
            for start in range(0, max(arr.shape[0], 1), step):
                self._guard(name, lambda a=arr, s=start, n=step: a[s : s + n])  # type: ignore[misc]


def damaged(path: Path, name: str, exc: BaseException) -> DamagedStoreError:
    """The one-line error of a store whose ``name`` array cannot be read."""
    return DamagedStoreError(
        f"{path}: damaged feature store ({name}: {one_line(exc)}); re-extract it: "
        "`make extract-features` recomputes damaged stores"
    )


def read_meta(path: str | Path) -> FeatureStoreMeta | None:
    """Metadata of a store, or ``None`` if there is no readable store at ``path``."""
    try:
        group = zarr.open_group(str(path), mode="r")
    except Exception:  # noqa: BLE001 - any unreadable store counts as absent
        return None
    try:
        return FeatureStoreMeta.from_dict(dict(group.attrs))
    except StaleOutputError as err:
        raise StaleOutputError(f"{path}: {err}") from None


def mismatches(meta: FeatureStoreMeta, expect: dict[str, Any]) -> list[str]:
    """``key: stored != expected`` for every expected key that differs."""
    stored = meta.to_dict()
    out = []
    for key, want in expect.items():
        if key not in stored:
            raise HiptError(f"unknown store metadata key '{key}' in expect=")
        have = stored[key]
        if isinstance(want, float) and isinstance(have, (int, float)):
            same = abs(float(have) - want) <= 1e-9 * max(1.0, abs(want))
        else:
            same = have == want
        if not same:
            out.append(f"{key}: store has {have!r}, expected {want!r}")
    return out


def provenance_problem(meta: FeatureStoreMeta, trained_on: dict[str, Any] | None) -> str | None:
    """How a store differs from the stores a model was trained on (its card's ``trained_on``).

    Returns:
        ``None`` when every recorded value matches, else the first ``key: store has X,
        expected Y``.
    """
    bad = mismatches(meta, dict(trained_on or {}))
    return bad[0] if bad else None


def needs_recompute(
    path: str | Path, expect: dict[str, Any] | None = None, verify: bool = False
) -> str | None:
    """Why the store at ``path`` cannot be reused; ``None`` when it is complete and matches.

    Args:
        path: ``<slide_id>.zarr`` folder.
        expect: metadata values the store must have (as in :func:`open_store`).
        verify: also decode every chunk (checksums), so a damaged store is recomputed.

    Returns:
        ``None``, ``"absent"``, ``"unreadable"``, ``"incomplete"``, a schema note, the
        ``key: store has X, expected Y`` mismatches joined by ``"; "``, or ``"damaged: ..."``.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        return "absent"
    try:
        meta = read_meta(path)
    except StaleOutputError as err:
        return str(err)
    if meta is None:
        return "unreadable"
    if not meta.complete:
        return "incomplete"
    if meta.schema_version != SCHEMA_VERSION:
        return f"schema_version: store has {meta.schema_version}, expected {SCHEMA_VERSION}"
    bad = mismatches(meta, expect or {})
    if bad:
        return "; ".join(bad)
    if verify:
        try:
            open_store(path).verify()
        except DamagedStoreError as err:
            return f"damaged: {err}"
    return None


def open_store(path: str | Path, expect: dict[str, Any] | None = None) -> FeatureStore:
    """Open a store for reading after checking it is complete and matches ``expect``.

    Args:
        path: ``<slide_id>.zarr`` folder.
        expect: metadata values the caller relies on, e.g.
            ``{"checkpoint_4k_sha256": "...", "feature_dim_256": 384}``.

    Raises:
        HiptError: no store, or an incomplete one (a killed run).
        StaleOutputError: the store was made with other settings than ``expect``.
    """
    path = Path(path)
    if not (path / "zarr.json").is_file():
        raise HiptError(f"{path}: no feature store here; run `make extract-features` first")
    meta = read_meta(path)
    if meta is None or not meta.complete:
        raise HiptError(f"{path}: incomplete feature store (interrupted run); rerun extraction")
    if meta.schema_version != SCHEMA_VERSION:
        raise StaleOutputError(
            f"{path}: store schema v{meta.schema_version}, this code reads v{SCHEMA_VERSION}; "
            "re-extract features"
        )
    bad = mismatches(meta, expect or {})
    if bad:
        raise StaleOutputError(
            f"{path}: feature store does not match ({'; '.join(bad)}); re-extract with the "
            "expected settings or point to the right store"
        )
    return FeatureStore(path, zarr.open_group(str(path), mode="r"), meta)
