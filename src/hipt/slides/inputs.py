"""The slides a stage works on: every slide of a folder, or the rows of a manifest CSV.

A slide is a file (.svs .tif .ndpi ...) or a DICOM series folder of ``.dcm`` instances.
"""

from __future__ import annotations

import dataclasses
import math
import re
from pathlib import Path

import pandas as pd

from hipt.errors import ConfigError
from hipt.slides.dicom import DICOM_SUFFIX, instance_files, is_series_folder, series_folder
from hipt.slides.readers import SUFFIX_BACKENDS

#: File suffixes taken as slides: exactly those some reader backend opens.
SLIDE_EXTENSIONS = tuple(SUFFIX_BACKENDS)
#: Suffixes of slides that are one file (a ``.dcm`` file is one instance of a series folder).
_FILE_SUFFIXES = tuple(s for s in SLIDE_EXTENSIONS if s != DICOM_SUFFIX)
_SAFE_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._+-]*$")


def strip_slide_suffix(name: str) -> str | None:
    """``name`` without a trailing slide-file suffix (``x.svs`` -> ``x``), or None without one.

    Official HIPT cohort CSVs and split files list slides as ``<uuid>.svs``.
    """
    lower = name.lower()
    for suffix in SLIDE_EXTENSIONS:
        if lower.endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


@dataclasses.dataclass(frozen=True)
class SlideEntry:
    """One slide to process.

    Attributes:
        slide_id: unique name; also the stem of the per-slide output files.
        path: the slide file or DICOM series folder (absolute).
        mpp: level-0 µm/px from the manifest's optional ``mpp`` column, else ``None``.
        error: why this entry cannot be processed (e.g. unsupported format), else ``None``;
            such an entry is reported as failed without stopping the batch.
        annotations: the slide's QuPath GeoJSON from the manifest's optional ``annotations``
            column, else ``None``.
    """

    slide_id: str
    path: Path
    mpp: float | None = None
    error: str | None = None
    annotations: Path | None = None


def check_slide_file(path: Path) -> str | None:
    """One-line reason why ``path`` cannot be a slide (missing, not a file, format), or ``None``."""
    if not path.exists():
        return f"{path}: file not found"
    if path.is_dir():
        if series_folder(path) is None:
            return f"{path}: a folder without .dcm files (neither a slide nor a DICOM series)"
        return None
    if not path.is_file():
        return f"{path}: not a file"
    if path.suffix.lower() not in SLIDE_EXTENSIONS:
        return (
            f"{path}: unsupported slide format '{path.suffix or '(none)'}' "
            f"(supported: {' '.join(SLIDE_EXTENSIONS)})"
        )
    return None


def _folder_entries(folder: Path) -> list[SlideEntry]:
    """Slide files and DICOM series subfolders of ``folder``; a series folder is one slide."""
    loose = instance_files(folder)
    found = sorted(
        p
        for p in folder.iterdir()
        if not p.name.startswith(".")
        and ((p.is_file() and p.suffix.lower() in _FILE_SUFFIXES) or is_series_folder(p))
    )
    if loose:
        if found:
            raise ConfigError(
                f"{folder} holds {len(loose)} loose .dcm file(s) beside other slides; put each "
                "DICOM series in a folder of its own (the folder name is its slide_id)"
            )
        return [SlideEntry(slide_id=folder.name, path=folder.resolve())]  # one series
    seen: dict[str, Path] = {}
    for p in found:
        sid = p.name if p.is_dir() else p.stem
        if sid in seen:
            raise ConfigError(
                f"{seen[sid].name} and {p.name} in {folder} would both be slide_id "
                f"'{sid}'; rename one or list the slides in a manifest CSV (slide_id,path)"
            )
        seen[sid] = p
    return [SlideEntry(slide_id=sid, path=p.resolve()) for sid, p in seen.items()]


def _manifest_path(text: str, manifest: Path) -> Path:
    """A path from a manifest cell; a relative one is relative to the manifest's folder."""
    path = Path(text).expanduser()
    return (path if path.is_absolute() else manifest.parent / path).resolve()


def _parse_mpp(value: str, line: int, manifest: Path) -> float | None:
    if not value.strip():
        return None
    try:
        mpp = float(value)
    except ValueError:
        mpp = math.nan
    if not math.isfinite(mpp) or mpp <= 0:
        raise ConfigError(f"{manifest} line {line}: mpp '{value}' is not a positive number")
    return mpp


def _manifest_entries(manifest: Path) -> list[SlideEntry]:
    try:
        df = pd.read_csv(manifest, dtype=str, keep_default_na=False, skipinitialspace=True)
    except (OSError, ValueError, pd.errors.ParserError) as exc:
        raise ConfigError(f"cannot read manifest {manifest}: {exc}") from None
    missing = [c for c in ("slide_id", "path") if c not in df.columns]
    if missing:
        raise ConfigError(
            f"manifest {manifest} lacks column(s) {', '.join(missing)} "
            f"(has: {', '.join(map(str, df.columns))}); expected slide_id,path[,mpp]"
        )
    lines: dict[str, list[int]] = {}
    for i, sid in enumerate(df["slide_id"]):
        lines.setdefault(sid.strip(), []).append(i + 2)  # line 1 is the header
    dups = {sid: rows for sid, rows in lines.items() if len(rows) > 1}
    if dups:
        desc = "; ".join(f"'{sid}' on lines {', '.join(map(str, r))}" for sid, r in dups.items())
        raise ConfigError(f"duplicate slide_id in {manifest}: {desc}")
    entries = []
    for i, row in enumerate(df.itertuples(index=False)):
        line = i + 2
        sid, raw = str(row.slide_id).strip(), str(row.path).strip()
        if not _SAFE_ID.match(sid):
            raise ConfigError(
                f"{manifest} line {line}: slide_id '{sid}' must start with a letter or digit "
                "and use only letters, digits and . _ + -"
            )
        if not raw:
            raise ConfigError(f"{manifest} line {line}: empty path for slide_id '{sid}'")
        path = _manifest_path(raw, manifest)
        mpp = _parse_mpp(str(getattr(row, "mpp", "")), line, manifest)
        cell = str(getattr(row, "annotations", "")).strip()
        notes = _manifest_path(cell, manifest) if cell else None
        entries.append(SlideEntry(sid, path, mpp, check_slide_file(path), notes))
    return entries


def discover_slides(source: str | Path) -> list[SlideEntry]:
    """List the slides named by ``source``.

    Args:
        source: a folder (every file with a slide extension and every DICOM series subfolder,
            not recursive; other files are ignored; ``slide_id`` is the file stem or the
            series folder's name; a folder of ``.dcm`` files is itself one slide), a ``.csv``
            manifest with columns ``slide_id,path`` and optionally ``mpp`` and
            ``annotations`` (relative paths are resolved against the CSV's folder; ``path``
            may name a DICOM series folder or one of its files), or a single slide file. A
            manifest row naming a missing or unsupported file becomes an entry with ``error``
            set, reported as that slide's failure.

    Returns:
        The entries in folder (sorted) or manifest order.

    Raises:
        ConfigError: ``source`` is missing or empty, the manifest is malformed, or slide ids
            clash.
    """
    src = Path(source).expanduser()
    if src.is_dir():
        entries = _folder_entries(src)
        if not entries:
            raise ConfigError(
                f"no slides in {src} (looked for {' '.join(SLIDE_EXTENSIONS)}); "
                "point SLIDES at a folder of slides or a manifest CSV"
            )
        return entries
    if src.is_file():
        if src.suffix.lower() == DICOM_SUFFIX:  # one file of a series: the series
            return [SlideEntry(slide_id=src.parent.name, path=src.parent.resolve())]
        if src.suffix.lower() in SLIDE_EXTENSIONS:  # a single slide: handy for a quick look
            return [SlideEntry(slide_id=src.stem, path=src.resolve())]
        if src.suffix.lower() != ".csv":
            raise ConfigError(
                f"slides={src} is neither a slide nor a .csv manifest (slide_id,path[,mpp])"
            )
        entries = _manifest_entries(src.resolve())
        if not entries:
            raise ConfigError(f"manifest {src} has no rows")
        return entries
    raise ConfigError(f"slides={src} does not exist (give a folder of slides or a manifest CSV)")
