"""Whole-slide readers: the SlideReader protocol, shared behaviour, and the open_slide factory."""

from __future__ import annotations

import abc
import collections
import concurrent.futures
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import numpy as np

from hipt.errors import ConfigError, SlideError
from hipt.registry import Registry
from hipt.slides.dicom import DICOM_SUFFIX, instance_files, series_folder
from hipt.slides.tiff_probe import TIFF_SUFFIXES, TiffProbe, probe_tiff

if TYPE_CHECKING:  # torch loads lazily: tiling and tissue masks do not need it
    import torch

log = logging.getLogger(__name__)

READERS: Registry[Callable[[Path, TiffProbe | None], BaseReader]] = Registry("reader")
"""Backend classes by name (``"cucim"``, ``"openslide"``), filled by their modules."""

# Suffix -> backends that can open it, in the order ``backend="auto"`` tries them.
SUFFIX_BACKENDS: dict[str, tuple[str, ...]] = {
    **{s: ("cucim", "openslide") for s in sorted(TIFF_SUFFIXES)},
    **{s: ("openslide",) for s in (".ndpi", ".mrxs", ".scn", ".bif", ".vms", ".vmu", ".svslide")},
    DICOM_SUFFIX: ("openslide",),  # a series folder, or any of its instance files
}
# Level pixels per side of the blocks a thumbnail is assembled from (bounds its memory).
_THUMB_BLOCK = 4096


@runtime_checkable
class SlideReader(Protocol):
    """A whole-slide image opened for reading; what every stage codes against.

    Coordinates: ``(x, y)`` is the top-left in level-0 pixels; ``width``/``height`` are pixels of
    the level read. Pixels outside the slide are white (255), never black or transparent.
    """

    path: Path
    backend: str
    level_dimensions: list[tuple[int, int]]
    level_downsamples: list[float]
    mpp: float
    mpp_source: str

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        ...

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """RGB uint8 ``[height, width, 3]`` region."""
        ...

    def read_regions(
        self,
        locations: Sequence[tuple[int, int]],
        level: int,
        width: int,
        height: int,
        num_workers: int = 2,
    ) -> Iterator[np.ndarray]:
        """``read_region`` for many locations, in order, read in parallel with bounded memory."""
        ...

    def read_region_tensor(
        self,
        x: int,
        y: int,
        level: int,
        width: int,
        height: int,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """uint8 ``[3, height, width]`` region on ``device``."""
        ...

    def read_regions_tensor(
        self,
        locations: Sequence[tuple[int, int]],
        level: int,
        width: int,
        height: int,
        device: str | torch.device,
        num_workers: int = 2,
        batch_size: int = 4,
    ) -> Iterator[torch.Tensor]:
        """uint8 ``[3, height, width]`` regions on ``device``, in order (GPU batch decode)."""
        ...

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """Whole-slide RGB thumbnail and its level-0 px per thumbnail px."""
        ...

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file."""
        ...

    def __enter__(self) -> SlideReader: ...

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None: ...


class BaseReader(abc.ABC):
    """Behaviour shared by the backends; a backend implements ``_read`` (and may override more).

    Args:
        path: the slide file.
        level_dimensions: (width, height) of every level.
        level_downsamples: level-0 pixels per level pixel, per level.
        probe: TIFF structure of the file, when it is a TIFF.
    """

    backend = ""

    def __init__(
        self,
        path: Path,
        level_dimensions: list[tuple[int, int]],
        level_downsamples: list[float],
        probe: TiffProbe | None,
    ) -> None:
        self.path = path
        self.level_dimensions = [(int(w), int(h)) for w, h in level_dimensions]
        self.level_downsamples = [float(d) for d in level_downsamples]
        self.probe = probe
        self.mpp = math.nan
        self.mpp_source = ""
        self._mpp_override: float | None = None

    @property
    def level_count(self) -> int:
        """Number of pyramid levels."""
        return len(self.level_dimensions)

    @abc.abstractmethod
    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Backend read of a region that intersects the slide; RGB uint8 [height, width, 3]."""

    def backend_mpp(self) -> tuple[float, str] | None:
        """MPP and its source from the backend's own metadata, if it has one."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release the file."""

    def read_region(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Read a region; see :class:`SlideReader`.

        Args:
            x: left edge in level-0 pixels (may be negative or past the slide).
            y: top edge in level-0 pixels.
            level: pyramid level.
            width: width in pixels of ``level``.
            height: height in pixels of ``level``.

        Returns:
            RGB uint8 ``[height, width, 3]``; outside the slide is white.

        Raises:
            SlideError: the region covers a tile that cannot be decoded.
        """
        x, y, level, width, height = self._check_args(x, y, level, width, height)
        box = self._inside_box(x, y, level, width, height)
        if box is None:
            return np.full((height, width, 3), 255, dtype=np.uint8)
        return whiten_outside(self._read(x, y, level, width, height), box)

    def read_regions(
        self,
        locations: Sequence[tuple[int, int]],
        level: int,
        width: int,
        height: int,
        num_workers: int = 2,
    ) -> Iterator[np.ndarray]:
        """Regions at ``locations`` (level-0 top-lefts), in order, from a bounded thread pool.

        At most ``2 * num_workers`` regions are in flight. The first unreadable region raises
        :class:`SlideError` from the iterator; the reader stays usable.
        """
        self._check_args(0, 0, level, width, height)
        locs = [(int(x), int(y)) for x, y in locations]
        if num_workers <= 1 or len(locs) <= 1:
            return (self.read_region(x, y, level, width, height) for x, y in locs)
        return self._pooled(locs, level, width, height, num_workers)

    def _pooled(
        self, locs: list[tuple[int, int]], level: int, width: int, height: int, workers: int
    ) -> Iterator[np.ndarray]:
        pool = concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="hipt-read")
        pending: collections.deque[concurrent.futures.Future[np.ndarray]] = collections.deque()
        todo = iter(locs)
        try:
            for x, y in todo:
                pending.append(pool.submit(self.read_region, x, y, level, width, height))
                if len(pending) >= 2 * workers:
                    break
            while pending:
                done = pending.popleft()
                nxt = next(todo, None)
                if nxt is not None:
                    pending.append(pool.submit(self.read_region, *nxt, level, width, height))
                yield done.result()
        finally:
            for fut in pending:
                fut.cancel()
            pool.shutdown(wait=True)

    def read_region_tensor(
        self,
        x: int,
        y: int,
        level: int,
        width: int,
        height: int,
        device: str | torch.device = "cpu",
    ) -> torch.Tensor:
        """The region as a contiguous uint8 ``[3, height, width]`` tensor on ``device``."""
        import torch

        region = torch.from_numpy(self.read_region(x, y, level, width, height))
        return region.permute(2, 0, 1).contiguous().to(device)

    def read_regions_tensor(
        self,
        locations: Sequence[tuple[int, int]],
        level: int,
        width: int,
        height: int,
        device: str | torch.device,
        num_workers: int = 2,
        batch_size: int = 4,
    ) -> Iterator[torch.Tensor]:
        """Regions as uint8 ``[3, height, width]`` tensors on ``device``, in order.

        Here: decoded on CPU (``read_regions``' threads) and copied; the cuCIM backend decodes
        batches on the GPU instead. ``batch_size`` is its regions per GPU decode call.
        """
        import torch

        for region in self.read_regions(locations, level, width, height, num_workers):
            yield self._upload(torch.from_numpy(region).permute(2, 0, 1), device)

    @staticmethod
    def _upload(chw: torch.Tensor, device: str | torch.device) -> torch.Tensor:
        """A CPU-decoded ``[3, H, W]`` region, contiguous on ``device``."""
        return chw.to(device).contiguous()

    def thumbnail(self, max_size: int = 2048) -> tuple[np.ndarray, float]:
        """Whole-slide thumbnail whose longer side is at most ``max_size``.

        Reads the coarsest level that is at least the thumbnail's size, block by block, and
        area-averages each block, so memory is bounded by the thumbnail, never by the slide.

        Returns:
            (RGB uint8 ``[th, tw, 3]``, level-0 pixels per thumbnail pixel along x).
        """
        if max_size < 1:
            raise ValueError(f"max_size must be >= 1, got {max_size}")
        from PIL import Image

        w0, h0 = self.level_dimensions[0]
        scale = max(w0, h0) / max_size if max(w0, h0) > max_size else 1.0
        tw, th = max(1, round(w0 / scale)), max(1, round(h0 / scale))
        level = max(
            (i for i, (w, h) in enumerate(self.level_dimensions) if w >= tw and h >= th),
            key=lambda i: self.level_downsamples[i],
        )
        (lw, lh), ds = self.level_dimensions[level], self.level_downsamples[level]
        out = np.empty((th, tw, 3), dtype=np.uint8)
        rx, ry = lw / tw, lh / th  # level px per thumbnail px
        step_x, step_y = max(1, int(_THUMB_BLOCK / rx)), max(1, int(_THUMB_BLOCK / ry))
        for ty0 in range(0, th, step_y):
            ty1 = min(th, ty0 + step_y)
            ly0, ly1 = math.floor(ty0 * ry), min(lh, math.ceil(ty1 * ry))
            for tx0 in range(0, tw, step_x):
                tx1 = min(tw, tx0 + step_x)
                lx0, lx1 = math.floor(tx0 * rx), min(lw, math.ceil(tx1 * rx))
                # ceil: the level-0 x whose level pixel (floor(x / ds)) is exactly lx0.
                block = self.read_region(
                    math.ceil(lx0 * ds), math.ceil(ly0 * ds), level, lx1 - lx0, ly1 - ly0
                )
                if block.shape[:2] != (ty1 - ty0, tx1 - tx0):
                    # Fractional source box: blocks resample exactly as one whole-level resize.
                    box = (tx0 * rx - lx0, ty0 * ry - ly0, tx1 * rx - lx0, ty1 * ry - ly0)
                    small = Image.fromarray(block).resize(
                        (tx1 - tx0, ty1 - ty0), Image.Resampling.BOX, box=box
                    )
                    block = np.asarray(small)
                out[ty0:ty1, tx0:tx1] = block
        return out, w0 / tw

    def __enter__(self) -> BaseReader:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __reduce__(self) -> tuple[Any, ...]:
        # Pickles as "open it again" so readers can cross into DataLoader worker processes.
        return (open_slide, (self.path, self.backend, self._mpp_override))

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({str(self.path)!r}, levels={self.level_dimensions}, "
                f"mpp={self.mpp:.4f} from {self.mpp_source})")  # fmt: skip

    def _check_args(
        self, x: int, y: int, level: int, width: int, height: int
    ) -> tuple[int, int, int, int, int]:
        x, y, level, width, height = int(x), int(y), int(level), int(width), int(height)
        if not 0 <= level < self.level_count:
            raise ValueError(f"{self.path}: level {level} out of range 0..{self.level_count - 1}")
        if width < 1 or height < 1:
            raise ValueError(f"region size must be positive, got {width}x{height}")
        return x, y, level, width, height

    def _inside_box(
        self, x: int, y: int, level: int, width: int, height: int
    ) -> tuple[int, int, int, int] | None:
        """Output-pixel box (c0, r0, c1, r1) that lies on the slide, or None when none does."""
        lw, lh = self.level_dimensions[level]
        ds = self.level_downsamples[level]
        lx, ly = math.floor(x / ds), math.floor(y / ds)
        c0, c1 = max(0, -lx), min(width, lw - lx)
        r0, r1 = max(0, -ly), min(height, lh - ly)
        if c1 <= c0 or r1 <= r0:
            return None
        return c0, r0, c1, r1


def whiten_outside(region: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Set every pixel of ``region`` ([H, W, 3]) outside ``box`` (c0, r0, c1, r1) to white."""
    c0, r0, c1, r1 = box
    h, w = region.shape[:2]
    if (c0, r0, c1, r1) == (0, 0, w, h):
        return region
    if not region.flags.writeable:
        region = region.copy()
    region[:r0] = 255
    region[r1:] = 255
    region[:, :c0] = 255
    region[:, c1:] = 255
    return region


def whiten_outside_chw(region: torch.Tensor, box: tuple[int, int, int, int] | None) -> torch.Tensor:
    """:func:`whiten_outside` for a ``[3, H, W]`` tensor (in place; ``None``: all outside)."""
    if box is None:
        return region.fill_(255)
    c0, r0, c1, r1 = box
    region[:, :r0] = 255
    region[:, r1:] = 255
    region[:, :, :c0] = 255
    region[:, :, c1:] = 255
    return region


def open_slide(
    path: str | Path, backend: str = "auto", mpp_override: float | None = None
) -> SlideReader:
    """Open a whole-slide image.

    ``auto`` tries cuCIM first for .svs/.tif/.tiff and falls back to OpenSlide when cuCIM is not
    installed or cannot open the file; other formats (.ndpi .mrxs .scn .bif ...) and DICOM go to
    OpenSlide.

    Args:
        path: the slide file, or for DICOM the series folder (or any ``.dcm`` file of it).
        backend: ``"auto"``, ``"cucim"`` or ``"openslide"``.
        mpp_override: level-0 µm/px to use instead of the file's metadata.

    Returns:
        An open reader; use it as a context manager or call ``close()``.

    Raises:
        SlideError: the file is missing, empty, of an unsupported type, damaged, or has no MPP
            and no override; the message is one line naming the file, the cause and the fix.
        ConfigError: ``backend`` or ``mpp_override`` is invalid.
    """
    path = Path(path)
    _load_backends()
    if backend != "auto" and backend not in READERS:
        choices = ", ".join(["auto", *READERS.keys()])
        raise ConfigError(f"unknown slide backend '{backend}'; choose one of {choices}")
    if mpp_override is not None and not (math.isfinite(mpp_override) and mpp_override > 0):
        raise ConfigError(f"mpp_override must be a positive number of µm/px, got {mpp_override}")
    target = _check_file(path)
    suffix = target.suffix.lower()
    probe = probe_tiff(target) if suffix in TIFF_SUFFIXES else None
    order = SUFFIX_BACKENDS[suffix] if backend == "auto" else (backend,)
    failures: list[str] = []
    for name in order:
        try:
            reader = READERS.get(name)(target, probe)
        except SlideError as err:
            failures.append(f"{name}: {err}")
            continue
        if failures:
            log.info("%s: opened with %s after %s", path, name, "; ".join(failures))
        reader.path = path  # a DICOM slide is named by its series folder, not the file opened
        return _with_mpp(reader, mpp_override)
    hint = "install cuCIM/OpenSlide or convert the file to a pyramidal TIFF"
    raise SlideError(f"{path}: cannot be opened ({'; '.join(failures)}); {hint}")


def _with_mpp(reader: BaseReader, override: float | None) -> BaseReader:
    """Resolve MPP: override, then TIFF metadata (Aperio / resolution tags), then the backend."""
    found = None
    if reader.probe is not None and reader.probe.mpp is not None:
        found = (reader.probe.mpp, str(reader.probe.mpp_source))
    found = found or reader.backend_mpp()
    if override is not None:
        if found and abs(found[0] - override) > 0.01 * override:
            log.warning(
                "%s: mpp_override %.4f replaces %.4f from %s", reader.path, override, *found
            )
        found = (float(override), "override")
        reader._mpp_override = float(override)
    if found is None:
        reader.close()
        raise SlideError(f"{reader.path}: no MPP metadata; pass mpp_override=<µm/px>")
    reader.mpp, reader.mpp_source = found
    log.debug("opened %r", reader)
    return reader


def _check_file(path: Path) -> Path:
    """The file to open for ``path`` (a DICOM series folder gives its first instance)."""
    if not path.exists():
        raise SlideError(f"{path}: no such file; check the path")
    if path.is_dir():
        if series_folder(path) is None:
            raise SlideError(f"{path}: a folder without .dcm files; give the slide file itself "
                             "or a DICOM series folder")  # fmt: skip
        return instance_files(path)[0]
    if not path.is_file():
        raise SlideError(f"{path}: not a regular file; give the slide file itself")
    if path.stat().st_size == 0:
        raise SlideError(f"{path}: file is empty (0 bytes); re-copy or re-download it")
    if path.suffix.lower() not in SUFFIX_BACKENDS:
        known = " ".join(sorted(SUFFIX_BACKENDS))
        raise SlideError(f"{path}: unsupported slide type '{path.suffix}' (supported: {known}); "
                         "convert it to a pyramidal TIFF")  # fmt: skip
    return path


def _load_backends() -> None:
    # The backend modules register themselves; importing them loads neither cuCIM nor OpenSlide.
    from hipt.slides import cucim_reader, openslide_reader  # noqa: F401
