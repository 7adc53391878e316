"""Slides twice, as given and as DICOM WSI: the sample SVS, and a pyramid of its tissue.

The TIFF is built from the sample slide's tissue (16384 x 8192 at 0.25 µm/px, levels 1, 2, 4,
so tiling at 0.5 µm/px reads level 1); wsidicomizer converts it to a DICOM series (one ``.dcm``
instance per level) through its ``TiffSlideSource``, which needs no system turbojpeg. The
conversion decodes and re-encodes every tile as JPEG, so pixels differ by that re-encoding.
"""

from __future__ import annotations

from pathlib import Path

WIDTH, HEIGHT, MPP, LEVELS = 16384, 8192, 0.25, (1, 2, 4)


def to_dicom(slide: Path, series: Path) -> Path:
    """Convert ``slide`` into the DICOM series folder ``series`` (pyramid levels only)."""
    import warnings

    from wsidicomizer import WsiDicomizer
    from wsidicomizer.sources import TiffSlideSource

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # pydicom 3 deprecations
        WsiDicomizer.convert(slide, series, preferred_source=TiffSlideSource,
                             include_label=False, include_overview=False,
                             include_thumbnail=False, workers=1)  # fmt: skip
    return series


def make_dicom_pair(sample: Path, folder: Path) -> tuple[Path, Path]:
    """``(tiff, series folder)`` of the same slide, written under ``folder``."""
    from hipt.slides.synthetic import make_synthetic_slide

    tiff = folder / "pair.tif"
    make_synthetic_slide(tiff, WIDTH, HEIGHT, MPP, levels=LEVELS, source=sample, seed=5,
                         flavor="generic")  # fmt: skip
    return tiff, to_dicom(tiff, folder / "pair_dcm")
