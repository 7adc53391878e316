"""OpenSlide backend: the fallback for formats cuCIM cannot open (.ndpi .mrxs .scn .bif, DICOM)."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np

from hipt.errors import SlideError, one_line
from hipt.slides.readers import READERS, BaseReader
from hipt.slides.tiff_probe import TiffProbe

if TYPE_CHECKING:
    import openslide

log = logging.getLogger(__name__)


def rgba_on_white(rgba: np.ndarray) -> np.ndarray:
    """Composite un-premultiplied RGBA ``[H, W, 4]`` onto white; returns RGB uint8 ``[H, W, 3]``.

    OpenSlide marks pixels outside the scanned area with alpha 0; dropping alpha (PIL's
    ``convert("RGB")``) would turn them black.
    """
    alpha = rgba[..., 3]
    if alpha.min() == 255:
        return np.ascontiguousarray(rgba[..., :3])
    a = alpha[..., None].astype(np.uint16)
    rgb = rgba[..., :3].astype(np.uint16)
    return ((rgb * a + 255 * (255 - a) + 127) // 255).astype(np.uint8)


@READERS.register("openslide")
class OpenSlideReader(BaseReader):
    """Reads with OpenSlide; regions from a thread pool (OpenSlide handles are thread-safe).

    An OpenSlide handle stays in an error state after a decode error, so the handle is replaced
    after one: the failing region raises :class:`SlideError` and later reads still work.

    Args:
        path: the slide file.
        probe: its TIFF structure, when it is a TIFF.
    """

    backend = "openslide"

    def __init__(self, path: Path, probe: TiffProbe | None) -> None:
        try:
            import openslide
        except ImportError as err:  # openslide-bin missing raises ImportError too
            raise SlideError(f"OpenSlide is not installed ({one_line(err)})") from err
        self._openslide = openslide
        try:
            self._slide: openslide.OpenSlide | None = openslide.OpenSlide(str(path))
        except (openslide.OpenSlideError, OSError, ValueError) as err:
            raise SlideError(f"OpenSlide cannot open it ({one_line(err)})") from err
        super().__init__(
            path, list(self._slide.level_dimensions), list(self._slide.level_downsamples), probe
        )
        self._lock = threading.Lock()

    def _open_slide(self) -> openslide.OpenSlide:
        # The handle as typed while open; unchecked (a closed reader fails on use, as before).
        return cast("openslide.OpenSlide", self._slide)

    @property
    def properties(self) -> dict[str, str]:
        """OpenSlide's property map (vendor metadata)."""
        return dict(self._open_slide().properties)

    def backend_mpp(self) -> tuple[float, str] | None:
        """``openslide.mpp-x`` when OpenSlide knows it; from a DICOM file the source is ``dicom``.

        For DICOM, OpenSlide takes it from the Pixel Spacing of the level-0 instance.
        """
        props = self._open_slide().properties
        value = props.get("openslide.mpp-x")
        try:
            mpp = float(value) if value is not None else 0.0
        except ValueError:
            return None
        source = "dicom" if props.get("openslide.vendor") == "dicom" else "openslide"
        return (mpp, source) if mpp > 0 else None

    def _read(self, x: int, y: int, level: int, width: int, height: int) -> np.ndarray:
        slide = self._slide
        if slide is None:
            raise ValueError(f"{self.path}: the reader is closed")
        errors = self._openslide.OpenSlideError
        try:
            image = slide.read_region((x, y), level, (width, height))
        except errors:
            # The shared handle is now unusable for every thread. Swap in a fresh one, and retry
            # on a private handle: a read that failed only because another thread broke the
            # handle succeeds there, a truly damaged region fails again.
            self._replace(slide)
            try:
                private = self._openslide.OpenSlide(str(self.path))
                try:
                    image = private.read_region((x, y), level, (width, height))
                finally:
                    private.close()
            except errors as err:
                raise SlideError(
                    f"{self.path}: region at level-0 x={x}, y={y} (level {level}, "
                    f"{width}x{height}) is unreadable ({one_line(err)}); re-copy or re-scan the "
                    "slide, or skip the region"
                ) from err
        return rgba_on_white(np.asarray(image))

    def _replace(self, failed: Any) -> None:
        with self._lock:
            if self._slide is failed:
                # Not closed here: other threads may still be inside it. The last reference
                # going away closes it (openslide-python closes handles on garbage collection).
                self._slide = self._openslide.OpenSlide(str(self.path))
                log.debug("%s: replaced the OpenSlide handle after a read error", self.path)

    def close(self) -> None:
        """Close the OpenSlide handle."""
        # Dropping the reference closes the handle once no reading thread still holds it.
        self._slide = None
