"""DICOM whole-slide images as slides: a series is a folder of ``.dcm`` instances.

A DICOM WSI (VL Whole Slide Microscopy) stores each pyramid level, and the label or overview,
as its own instance file; the files of one series sit in one folder. A slide is named by that
folder (or by any of its files, as a manifest may do). OpenSlide 4 reads such a series from any
one of its files; cuCIM does not read DICOM.
"""

from __future__ import annotations

from pathlib import Path

DICOM_SUFFIX = ".dcm"


def instance_files(folder: Path) -> list[Path]:
    """The ``.dcm`` files directly in ``folder``, sorted (hidden files left out)."""
    try:
        return sorted(
            p
            for p in folder.iterdir()
            if p.suffix.lower() == DICOM_SUFFIX and p.is_file() and not p.name.startswith(".")
        )
    except OSError:
        return []


def is_series_folder(path: Path) -> bool:
    """True when ``path`` is a folder holding ``.dcm`` files (one DICOM series)."""
    return path.is_dir() and bool(instance_files(path))


def series_folder(path: Path) -> Path | None:
    """The series folder of a DICOM slide named by its folder or one of its files, else None."""
    if path.is_dir():
        return path if is_series_folder(path) else None
    if path.suffix.lower() == DICOM_SUFFIX:
        return path.parent
    return None


def slide_files(path: Path) -> list[Path]:
    """Every file that makes up the slide at ``path``: its series' instances, or the file."""
    folder = series_folder(path)
    return instance_files(folder) if folder is not None else [path]


def slide_stat(path: Path) -> tuple[int, int]:
    """``(bytes, newest mtime in ns)`` of the slide at ``path``, all its files together.

    Raises:
        OSError: a file of the slide cannot be read.
    """
    stats = [f.stat() for f in slide_files(path)]
    return sum(s.st_size for s in stats), max((s.st_mtime_ns for s in stats), default=0)
