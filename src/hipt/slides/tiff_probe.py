"""Cheap structural checks and MPP parsing for TIFF-based slides, without decoding any pixels."""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import re
import struct
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO, cast

import numpy as np

from hipt.errors import SlideError, one_line

if TYPE_CHECKING:
    import tifffile

log = logging.getLogger(__name__)

TIFF_SUFFIXES = frozenset({".svs", ".tif", ".tiff"})
# A TIFF resolution outside this range (µm/px) is a placeholder such as 72 dpi, not a scan.
PLAUSIBLE_MPP = (0.01, 50.0)
_JPEG = 7
_JPEG2000 = frozenset({33003, 33005, 34712})
_MAX_IFDS = 100_000
# Known signatures of files that are not slides, so the error names what the file really is.
_SIGNATURES = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"PK\x03\x04": "a ZIP archive",
    b"\x1f\x8b": "a gzip archive",
    b"%PDF": "a PDF document",
    b"BM": "a BMP image",
}
_APERIO_MPP = re.compile(r"\|\s*MPP\s*=\s*([0-9.eE+-]+)")
# tifffile RESUNIT values -> micrometres per unit.
_UM_PER_UNIT = {2: 25_400.0, 3: 10_000.0, 4: 1_000.0, 5: 1.0}


@dataclasses.dataclass(frozen=True)
class TilePage:
    """Tile layout of one tiled TIFF page.

    Args:
        index: page number in the file.
        width: page width in pixels.
        height: page height in pixels.
        tile_width: tile width in pixels.
        tile_height: tile height in pixels.
        compression: TIFF compression code (7 = JPEG).
        offsets: byte offset of every tile, row-major, shape [n_tiles].
        counts: byte count of every tile, shape [n_tiles]; 0 marks a sparse (absent) tile.
    """

    index: int
    width: int
    height: int
    tile_width: int
    tile_height: int
    compression: int
    offsets: np.ndarray
    counts: np.ndarray

    @property
    def tiles_across(self) -> int:
        """Number of tile columns."""
        return math.ceil(self.width / self.tile_width)


@dataclasses.dataclass(frozen=True)
class TiffProbe:
    """What the TIFF structure says about a slide.

    Args:
        vendor: ``"aperio"`` when the first ImageDescription is Aperio's, else ``"generic"``.
        mpp: level-0 µm/px from the file metadata, or None when the file has none.
        mpp_source: ``"aperio"`` or ``"tiff-resolution"``; None with ``mpp``.
        pages: the tiled pages, in file order.
        file_size: size of the file in bytes.
    """

    vendor: str
    mpp: float | None
    mpp_source: str | None
    pages: tuple[TilePage, ...]
    file_size: int

    def page_for(self, width: int, height: int) -> TilePage | None:
        """The tiled page whose size is ``width`` x ``height`` (a pyramid level), if any."""
        for page in self.pages:
            if (page.width, page.height) == (width, height):
                return page
        return None


def describe_signature(head: bytes) -> str:
    """Name what a file is from its first bytes, for error messages."""
    for magic, name in _SIGNATURES.items():
        if head.startswith(magic):
            return name
    return f"not a TIFF file (first bytes {head[:4].hex(' ')})"


def probe_tiff(path: Path) -> TiffProbe:
    """Check the TIFF directory chain and tile table of ``path`` and read its MPP.

    Catches what the decoders do not report cleanly: a file that is not a TIFF, a directory
    chain or tile data cut off by truncation.

    Args:
        path: a file with a TIFF suffix.

    Returns:
        The probe; its ``mpp`` is None when the file carries no usable MPP.

    Raises:
        SlideError: the file is not a TIFF, is truncated, or its directories cannot be parsed.
    """
    size = path.stat().st_size
    with open(path, "rb") as fh:
        head = fh.read(16)
        if head[:4] not in (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"):
            raise SlideError(
                f"{path}: {describe_signature(head)}, not a TIFF-based slide; "
                "convert it to a pyramidal TIFF or give the file its real extension"
            )
        _walk_ifds(path, fh, head, size)
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            # TiffFile.pages yields TiffPage objects (TiffFrame only with useframes=True).
            pages = tuple(
                _tile_page(i, p)
                for i, p in enumerate(tif.pages)
                if cast("tifffile.TiffPage", p).is_tiled
            )
            if len(tif.pages) == 0:
                raise SlideError(f"{path}: a TIFF header with no image directory (truncated or "
                                 "not a slide); re-copy the file")  # fmt: skip
            first = tif.pages.first
            description = first.description or ""
            vendor = "aperio" if description.startswith("Aperio") else "generic"
            mpp, source = _mpp_from_page(path, first, description)
    except (ValueError, TypeError, OSError, struct.error, tifffile.TiffFileError) as err:
        raise SlideError(f"{path}: TIFF directories cannot be parsed ({one_line(err)}); "
                         "re-copy the file or convert it to a pyramidal TIFF") from err  # fmt: skip
    for page in pages:
        present = page.counts > 0
        ends = page.offsets[present] + page.counts[present]
        if ends.size and int(ends.max()) > size:
            raise SlideError(
                f"{path}: file is truncated: tiles of page {page.index} reach byte "
                f"{int(ends.max())} but the file has {size} bytes; re-copy or re-download it"
            )
    return TiffProbe(vendor=vendor, mpp=mpp, mpp_source=source, pages=pages, file_size=size)


def _walk_ifds(path: Path, fh: BinaryIO, head: bytes, size: int) -> None:
    """Follow the IFD chain and raise if a directory lies beyond the end of the file."""
    order = "<" if head[:2] == b"II" else ">"
    big = head[2:4] in (b"+\x00", b"\x00+")
    count_fmt, entry_size, off_fmt = ("Q", 20, "Q") if big else ("H", 12, "I")
    offset = struct.unpack(order + off_fmt, head[8:16] if big else head[4:8])[0]
    seen: set[int] = set()
    while offset and len(seen) < _MAX_IFDS:
        if offset in seen:
            raise SlideError(f"{path}: TIFF directory chain loops at byte {offset}; "
                             "the file is damaged, re-copy it")  # fmt: skip
        seen.add(offset)
        count_size = struct.calcsize(count_fmt)
        if offset + count_size > size:
            raise _truncated(path, offset, size)
        fh.seek(offset)
        (count,) = struct.unpack(order + count_fmt, fh.read(count_size))
        next_at = offset + count_size + count * entry_size
        off_size = struct.calcsize(off_fmt)
        if next_at + off_size > size:
            raise _truncated(path, offset, size)
        fh.seek(next_at)
        (offset,) = struct.unpack(order + off_fmt, fh.read(off_size))


def _truncated(path: Path, offset: int, size: int) -> SlideError:
    return SlideError(f"{path}: file is truncated: a TIFF directory at byte {offset} lies past "
                      f"the end of the file ({size} bytes); re-copy or re-download it")  # fmt: skip


def _tile_page(index: int, page: Any) -> TilePage:
    return TilePage(
        index=index,
        width=int(page.imagewidth),
        height=int(page.imagelength),
        tile_width=int(page.tilewidth),
        tile_height=int(page.tilelength),
        compression=int(page.compression),
        offsets=np.asarray(page.dataoffsets, dtype=np.int64),
        counts=np.asarray(page.databytecounts, dtype=np.int64),
    )


def _mpp_from_page(path: Path, page: Any, description: str) -> tuple[float | None, str | None]:
    """Aperio ``MPP =`` first, then XResolution/ResolutionUnit; (None, None) when neither."""
    if description.startswith("Aperio"):
        match = _APERIO_MPP.search(description)
        if match:
            mpp = _plausible(path, float(match.group(1)), "Aperio MPP")
            if mpp is not None:
                return mpp, "aperio"
    unit = int(getattr(page, "resolutionunit", 1) or 1)
    xres = float(page.resolution[0])
    if unit in _UM_PER_UNIT and xres > 0:
        mpp = _plausible(path, _UM_PER_UNIT[unit] / xres, "TIFF XResolution")
        if mpp is not None:
            return mpp, "tiff-resolution"
    return None, None


def _plausible(path: Path, mpp: float, what: str) -> float | None:
    if math.isfinite(mpp) and PLAUSIBLE_MPP[0] < mpp < PLAUSIBLE_MPP[1]:
        return mpp
    log.warning("%s: ignoring %s of %.4g µm/px (not a microscope resolution)", path, what, mpp)
    return None


class TileChecker:
    """Checks the tiles under a region before a decoder that never reports errors reads them.

    cuCIM decodes a tile with a broken JPEG stream as black or noise and only prints a message on
    stdout. This catches the common damage (a tile whose bytes were zeroed or overwritten, or whose
    stream was cut short) by checking the JPEG / JPEG 2000 start and end markers of each tile once.
    Corruption inside an otherwise well-formed entropy-coded stream is not detected (OpenSlide
    raises on it; cuCIM does not). Uses ``os.pread`` on a private descriptor: reads are not mapped
    into memory, so resident memory does not grow with the number of tiles checked.

    Args:
        path: the slide file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._fd = os.open(path, os.O_RDONLY)
        self._checked: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def check(self, page: TilePage, col0: int, row0: int, col1: int, row1: int) -> str | None:
        """Check tiles in columns [col0, col1) and rows [row0, row1) of ``page``.

        Returns:
            None when all look sound, else a description of the first bad tile.
        """
        if page.compression != _JPEG and page.compression not in _JPEG2000:
            return None
        with self._lock:
            done = self._checked.setdefault(page.index, np.zeros(page.counts.size, dtype=bool))
        across = page.tiles_across
        for row in range(max(row0, 0), row1):
            for col in range(max(col0, 0), min(col1, across)):
                i = row * across + col
                if i >= done.size or done[i]:
                    continue
                problem = self._check_one(page, int(page.offsets[i]), int(page.counts[i]))
                if problem:
                    return f"tile (column {col}, row {row}) of TIFF page {page.index} {problem}"
                done[i] = True
        return None

    def _check_one(self, page: TilePage, offset: int, count: int) -> str | None:
        if count == 0:
            return None  # sparse tile: decoders fill it with background
        if count < 4:
            return f"has only {count} bytes"
        start = os.pread(self._fd, 2, offset)
        tail = os.pread(self._fd, min(count, 16), offset + count - min(count, 16))
        jpeg = page.compression == _JPEG
        soi, codec = (b"\xff\xd8", "JPEG") if jpeg else (b"\xff\x4f", "JPEG 2000")
        if start != soi:
            return f"does not start with a {codec} start marker (bytes overwritten?)"
        if b"\xff\xd9" not in tail:
            return "is cut short (no end-of-image marker)"
        return None

    def close(self) -> None:
        """Release the file descriptor."""
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
