"""Per-slide geometry decided at tiling: MPP and its source, read level and size, region/patch px.

Tiling decides how each slide is read; every later stage (extraction, pretraining, heatmaps,
prediction) reads the slide the same way. :class:`SlideGeometry` is that decision as data, stored
per slide in the tile stage's parquet files and in every feature store, and
:func:`open_slide_at` is the one way to open a slide with it: with the MPP tiling used (also when
it came from ``mpp_override`` or a manifest column, which the file itself does not know), and
refusing a file that is no longer the slide that was tiled.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np

from hipt.errors import SlideError
from hipt.slides.readers import SlideReader, open_slide

#: MPP sources that the slide file itself does not carry: they must be passed when reopening.
GIVEN_SOURCES = ("override", "manifest")
#: Relative MPP difference under which a reopened slide counts as the one tiled.
MPP_RTOL = 1e-6


@dataclasses.dataclass(frozen=True)
class SlideGeometry:
    """How one slide is read into regions of ``region_px`` target pixels.

    Attributes:
        slide_id: the slide's identifier.
        path: the slide file.
        backend: reader backend that tiled it (every backend returns the same pixels).
        width: level-0 width in pixels.
        height: level-0 height in pixels.
        mpp: level-0 µm/px used.
        mpp_source: where ``mpp`` came from: the file (``aperio``, ``tiff-resolution``, ``dicom``,
            ``openslide``), ``override`` (``mpp_override=``) or ``manifest`` (``mpp`` column).
        read_level: pyramid level the regions are read at.
        read_size: square side read at ``read_level`` (level pixels), resized to ``region_px``.
        read_downsample: level-0 pixels per ``read_level`` pixel.
        target_mpp: µm/px of the regions.
        region_px: region side at ``target_mpp``.
        patch_px: patch side at ``target_mpp``.
    """

    slide_id: str
    path: str
    backend: str
    width: int
    height: int
    mpp: float
    mpp_source: str
    read_level: int
    read_size: int
    read_downsample: float
    target_mpp: float
    region_px: int
    patch_px: int

    @property
    def grid(self) -> int:
        """Patches per region side (16 for 4096-px regions of 256-px patches)."""
        return self.region_px // self.patch_px

    @property
    def region_side_l0(self) -> float:
        """Region side in level-0 pixels (exact): ``region_px * target_mpp / mpp``."""
        return self.region_px * self.target_mpp / self.mpp

    @property
    def patch_side_l0(self) -> float:
        """Patch side in level-0 pixels (exact)."""
        return self.patch_px * self.target_mpp / self.mpp

    @property
    def patch_read_px(self) -> int:
        """Side read at ``read_level`` for one patch (resized to ``patch_px``)."""
        return max(1, round(self.read_size / self.grid))

    @property
    def mpp_override(self) -> float | None:
        """The MPP to pass when reopening: the recorded one when the file does not carry it."""
        return self.mpp if self.mpp_source in GIVEN_SOURCES else None

    def patch_origins(self, x: int, y: int) -> np.ndarray:
        """Level-0 top-left ``[grid*grid, 2]`` of every patch of the region at ``(x, y)``."""
        from hipt.slides.regions import patch_origins

        return patch_origins(x, y, self.mpp, self.target_mpp, self.patch_px, self.grid)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (JSON, parquet metadata, store attributes)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SlideGeometry:
        """Inverse of :meth:`to_dict`; raises ``KeyError`` naming a missing field."""
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in data]
        if missing:
            raise KeyError(f"slide geometry lacks {', '.join(missing)}")
        return cls(**{n: data[n] for n in names})

    def differs_from(self, other: SlideGeometry) -> list[str]:
        """``field: self != other`` for every field that changes pixels (not path or backend)."""
        out = []
        for f in dataclasses.fields(self):
            if f.name in ("path", "backend", "slide_id"):
                continue
            a, b = getattr(self, f.name), getattr(other, f.name)
            same = math.isclose(a, b, rel_tol=MPP_RTOL) if isinstance(a, float) else a == b
            if not same:
                out.append(f"{f.name}: {a!r} != {b!r}")
        return out


def open_slide_at(
    geometry: SlideGeometry, path: str | Path | None = None, backend: str = "auto"
) -> SlideReader:
    """Open the slide of ``geometry`` to read it as tiling did.

    Args:
        geometry: the slide's recorded geometry.
        path: where the slide is now (default: the recorded path).
        backend: reader backend (``auto``: the usual per-format choice).

    Returns:
        An open reader whose ``mpp`` is the recorded one.

    Raises:
        SlideError: the file cannot be opened, or it is not the slide that was tiled (other
            level-0 size or MPP); the message names the file and the fix (re-tile).
    """
    where = Path(path) if path is not None else Path(geometry.path)
    reader = open_slide(where, backend=backend, mpp_override=geometry.mpp_override)
    w, h = reader.level_dimensions[0]
    problems = []
    if (w, h) != (geometry.width, geometry.height):
        problems.append(f"level-0 size {w}x{h}, tiled {geometry.width}x{geometry.height}")
    if not math.isclose(reader.mpp, geometry.mpp, rel_tol=MPP_RTOL):
        problems.append(f"MPP {reader.mpp:.6g} from {reader.mpp_source}, tiled at "
                        f"{geometry.mpp:.6g} from {geometry.mpp_source}")  # fmt: skip
    if not 0 <= geometry.read_level < reader.level_count:
        problems.append(f"no pyramid level {geometry.read_level} (has {reader.level_count})")
    if problems:
        reader.close()
        raise SlideError(
            f"{where}: not the slide {geometry.slide_id} that was tiled ({'; '.join(problems)}); "
            "re-tile it (make tile) and re-extract its features"
        )
    return reader
