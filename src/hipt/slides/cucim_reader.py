"""cuCIM backend: multi-threaded CPU decoding of SVS / tiled TIFF, and batched GPU decoding."""

from __future__ import annotations

import contextlib
import ctypes
import logging
import math
import os
import sys
import threading
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from hipt.errors import SlideError, one_line
from hipt.slides.readers import READERS, BaseReader, whiten_outside, whiten_outside_chw
from hipt.slides.tiff_probe import TiffProbe, TileChecker

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

# Locations handed to one cuCIM batch call: tiles are checked a chunk ahead of decoding.
_CHUNK = 32
_state_lock = threading.Lock()
_cuimage: Any = None
_opened_once = False


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Send file descriptor 1 to /dev/null for the block.

    Without a CUDA driver, the cuFile library that cuCIM loads prints "dlopen error
    libcuda.so.1 ..." on stdout (not stderr) when cuCIM is imported and when it opens its first
    file. That text would corrupt the output of any command that pipes its stdout, so those two
    moments (only) run with stdout silenced. Python-level output written meanwhile by other
    threads is lost, which is why the window is kept this short.
    """
    sys.stdout.flush()
    saved = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 1)
        yield
    finally:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(None).fflush(None)  # flush C stdio buffers while they still go nowhere
        os.dup2(saved, 1)
        os.close(saved)
        os.close(devnull)


def _driver_present() -> bool:
    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def load_cuimage() -> Any:
    """Import cuCIM once, quietly, and return its ``CuImage`` class.

    Sets ``CUFILE_LOGFILE_PATH`` to the null device (unless the user set it) before cuCIM loads
    the cuFile library, which otherwise writes ``cufile.log`` into the working directory.

    Raises:
        ImportError: cuCIM is not installed.
    """
    global _cuimage
    with _state_lock:
        if _cuimage is None:
            os.environ.setdefault("CUFILE_LOGFILE_PATH", os.devnull)
            quiet = _quiet_stdout() if not _driver_present() else contextlib.nullcontext()
            with quiet:
                # cucim's __init__.pyi re-exports CuImage without listing it in __all__
                from cucim import CuImage  # type: ignore[attr-defined]

            _cuimage = CuImage
    return _cuimage


def _open(path: Path) -> Any:
    global _opened_once
    cuimage = load_cuimage()
    if _opened_once:
        return cuimage(str(path))
    with _state_lock:  # the first open initialises cuFile, which prints on stdout
        quiet = _quiet_stdout() if not _driver_present() else contextlib.nullcontext()
        with quiet:
            img = cuimage(str(path))
        _opened_once = True
    return img


@READERS.register("cucim")
class CuCIMReader(BaseReader):
    """Reads with cuCIM; every tile is checked for damage before cuCIM decodes it.

    cuCIM pads out-of-slide pixels white for Aperio files but black for generic TIFF, and
    decodes a broken tile as black without raising; this class makes both behave as the
    :class:`~hipt.slides.readers.SlideReader` contract says.

    Args:
        path: the slide file.
        probe: its TIFF structure (cuCIM only opens TIFF-based files).
    """

    backend = "cucim"

    def __init__(self, path: Path, probe: TiffProbe | None) -> None:
        try:
            self._img = _open(path)
        except ImportError as err:
            raise SlideError(f"cuCIM is not installed ({one_line(err)})") from err
        except (RuntimeError, ValueError, OSError) as err:
            raise SlideError(f"cuCIM cannot open it ({one_line(err)})") from err
        res = self._img.resolutions
        super().__init__(path, list(res["level_dimensions"]), list(res["level_downsamples"]), probe)
        self._checker = TileChecker(path) if probe is not None else None
        self._gpu_ok: bool | None = None

    def backend_mpp(self) -> tuple[float, str] | None:
        """Aperio ``MPP`` from cuCIM's metadata (its ``spacing()`` is not the MPP)."""
        try:
            return float(self._img.metadata["aperio"]["MPP"]), "aperio"
        except (KeyError, TypeError, ValueError):
            return None

    def _check_tiles(self, x: int, y: int, level: int, width: int, height: int) -> None:
        if self._checker is None or self.probe is None:
            return
        page = self.probe.page_for(*self.level_dimensions[level])
        if page is None:
            return
        ds = self.level_downsamples[level]
        lx, ly = int(x // ds), int(y // ds)
        problem = self._checker.check(
            page,
            lx // page.tile_width,
            ly // page.tile_height,
            -(-(lx + width) // page.tile_width),
            -(-(ly + height) // page.tile_height),
        )
        if problem:
            raise SlideError(
                f"{self.path}: region at level-0 x={x}, y={y} (level {level}, {width}x{height}) "
                f"is unreadable: {problem}; re-copy or re-scan the slide, or skip the region"
            )

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        if self._img is None:
            raise ValueError(f"{self.path}: the reader is closed")
        self._check_tiles(x, y, level, width, height)
        if self._larger_than_level(level, width, height):
            return self._read_inside(x, y, level, width, height)
        return np.asarray(self._img.read_region((x, y), (width, height), level))

    def _larger_than_level(self, level: int, width: int, height: int) -> bool:
        """True when the read is wider or taller than the whole level (cuCIM refuses those)."""
        lw, lh = self.level_dimensions[level]
        return width > lw or height > lh

    def _read_inside(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        """Read only the on-slide part and paste it into a white canvas of the requested size."""
        out = np.full((height, width, 3), 255, dtype=np.uint8)
        box = self._inside_box(x, y, level, width, height)
        if box is None:
            return out
        c0, r0, c1, r1 = box
        ds = self.level_downsamples[level]
        lx, ly = math.floor(x / ds), math.floor(y / ds)
        origin = (round((lx + c0) * ds), round((ly + r0) * ds))
        inner = np.asarray(self._img.read_region(origin, (c1 - c0, r1 - r0), level))
        out[r0:r1, c0:c1] = inner[..., :3]
        return out

    def read_regions(
        self,
        locations: Sequence[tuple[int, int]],
        level: int,
        width: int,
        height: int,
        num_workers: int = 2,
    ) -> Iterator[np.ndarray]:
        """Batch ``read_region`` of cuCIM with ``num_workers`` threads; see ``SlideReader``."""
        self._check_args(0, 0, level, width, height)
        locs = [(int(x), int(y)) for x, y in locations]
        return self._batched(locs, level, int(width), int(height), max(1, int(num_workers)))

    def _batched(
        self, locs: list[tuple[int, int]], level: int, width: int, height: int, workers: int
    ) -> Iterator[np.ndarray]:
        for start in range(0, len(locs), _CHUNK):
            chunk, error = self._checked_chunk(locs[start : start + _CHUNK], level, width, height)
            if len(chunk) == 1 or workers == 1 or self._larger_than_level(level, width, height):
                for x, y in chunk:
                    yield self.read_region(x, y, level, width, height)
            elif chunk:
                batch = self._img.read_region(chunk, (width, height), level, num_workers=workers)
                for (x, y), region in zip(chunk, batch, strict=True):
                    box = self._inside_box(x, y, level, width, height)
                    # The batch loader recycles its buffers once the iterator advances: copy.
                    arr = np.array(region, copy=True)
                    yield whiten_outside(arr, box) if box else np.full_like(arr, 255)
            if error is not None:
                raise error

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
        """On CUDA, decode batches of regions on the GPU with cuCIM's batch loader.

        ``read_region(locations, size, level, num_workers, batch_size, device="cuda")``
        decodes ``batch_size`` regions per call (nvJPEG; nvImageCodec with ``cuslide2``)
        straight into GPU memory; each region is copied out of the loader's recycled buffer.
        Tiles are checked for damage a chunk ahead, as on CPU. Reads larger than the level
        (cuCIM refuses them) are read on CPU without a warning. When GPU decoding is not
        available (one warning) or GPU memory runs out (one warning), the rest is decoded on
        CPU and copied: the slide does not fail.
        """
        import torch

        dev = torch.device(device)
        self._check_args(0, 0, level, width, height)
        locs = [(int(x), int(y)) for x, y in locations]
        cpu = dev.type != "cuda" or self._gpu_ok is False
        if cpu or self._larger_than_level(level, width, height):
            yield from super().read_regions_tensor(locs, level, width, height, dev, num_workers)
            return
        index = dev.index if dev.index is not None else torch.cuda.current_device()
        done = 0
        try:
            for start in range(0, len(locs), _CHUNK):
                chunk, error = self._checked_chunk(locs[start : start + _CHUNK], level, width,
                                                   height)  # fmt: skip
                for region in self._gpu_batches(chunk, level, width, height, index, dev,
                                                num_workers, batch_size):  # fmt: skip
                    done += 1
                    yield region
                if error is not None:
                    raise error
        except (MemoryError, RuntimeError, ValueError, TypeError) as err:
            oom = isinstance(err, MemoryError) or "out of memory" in str(err).lower()
            why = "GPU memory is exhausted" if oom else "cuCIM GPU decoding is unavailable"
            log.warning("%s: %s (%s); decoding the rest on CPU", self.path, why, one_line(err))
            if not oom:  # GPU decoding is broken for good; memory may free up for the next slide
                self._gpu_ok = False
            yield from super().read_regions_tensor(locs[done:], level, width, height, dev,
                                                   num_workers)  # fmt: skip

    def _checked_chunk(
        self, chunk: list[tuple[int, int]], level: int, width: int, height: int
    ) -> tuple[list[tuple[int, int]], SlideError | None]:
        """The locations before the first damaged one, and its error (or None)."""
        for i, (x, y) in enumerate(chunk):
            try:
                if self._inside_box(x, y, level, width, height) is not None:
                    self._check_tiles(x, y, level, width, height)
            except SlideError as err:
                return chunk[:i], err
        return chunk, None

    def _gpu_batches(
        self,
        chunk: list[tuple[int, int]],
        level: int,
        width: int,
        height: int,
        index: int,
        dev: torch.device,
        workers: int,
        batch_size: int,
    ) -> Iterator[torch.Tensor]:
        """One cuCIM batch-loader pass over ``chunk``: ``[3, H, W]`` copies on ``dev``."""
        if not chunk:
            return
        loader = self._img.read_region(chunk, (width, height), level, num_workers=max(1, workers),
                                       batch_size=max(1, batch_size), drop_last=False,
                                       device=f"cuda:{index}")  # fmt: skip
        pos = 0
        for batch in loader:
            hwc = self._on_device(batch, dev)
            hwc = hwc.unsqueeze(0) if hwc.ndim == 3 else hwc
            for k in range(hwc.shape[0]):
                x, y = chunk[pos]
                pos += 1
                chw = hwc[k, :, :, :3].permute(2, 0, 1).contiguous()  # a copy
                self._gpu_ok = True
                yield whiten_outside_chw(chw, self._inside_box(x, y, level, width, height))

    @staticmethod
    def _on_device(batch: Any, dev: torch.device) -> torch.Tensor:
        """A loader batch as a tensor on ``dev``.

        A view through ``__cuda_array_interface__``: no copy; the loader recycles the buffer
        on its next step.
        """
        import torch

        return torch.as_tensor(batch, device=dev)

    def close(self) -> None:
        """Close the cuCIM image and the tile checker."""
        if getattr(self, "_img", None) is not None:
            with contextlib.suppress(AttributeError, RuntimeError):
                self._img.close()
            self._img = None
        checker: TileChecker | None = getattr(self, "_checker", None)
        if checker is not None:
            checker.close()
            self._checker = None
