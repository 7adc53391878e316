"""Regions of interest and exclusions from QuPath annotations: where on a slide tissue may be kept.

A slide's annotation file (QuPath GeoJSON, level-0 pixels) names areas by class: ``roi.include``
classes (e.g. ``Tumor``) restrict tiling to the tissue inside them, ``roi.exclude`` classes (e.g.
``Pen``, ``Artifact``) remove the tissue inside them, and unclassified polygons follow
``roi.unclassified``. Class names match case-insensitively; polygons of other classes are
ignored and counted. The result, :class:`Roi`, is one shapely geometry: include minus exclude.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import shapely

from hipt.errors import ConfigError
from hipt.provenance import sha256_file
from hipt.slides.qupath import AnnotationError, area_part, read_objects

log = logging.getLogger(__name__)

UNCLASSIFIED = ("include", "exclude", "ignore")


@dataclasses.dataclass
class RoiConfig:
    """How annotation classes act on tiling.

    Attributes:
        include: classes whose polygons bound the tissue kept (none: the whole slide).
        exclude: classes whose polygons remove tissue (pen marks, artefacts, folds).
        unclassified: what unclassified polygons do: ``include``, ``exclude`` or ``ignore``.
        required: a slide without an annotation file fails (is reported and skipped) instead of
            being tiled whole.
    """

    include: list[str] = dataclasses.field(default_factory=list)
    exclude: list[str] = dataclasses.field(default_factory=list)
    unclassified: str = "include"
    required: bool = False

    @property
    def active(self) -> bool:
        """True when any setting asks for annotations."""
        return bool(self.include or self.exclude or self.required)


def validate_roi_config(cfg: RoiConfig) -> None:
    """Raise :class:`ConfigError` naming the first invalid ``roi.*`` value."""
    if cfg.unclassified not in UNCLASSIFIED:
        raise ConfigError(
            f"roi.unclassified must be one of {', '.join(UNCLASSIFIED)}, got '{cfg.unclassified}'"
        )
    both = {c.lower() for c in cfg.include} & {c.lower() for c in cfg.exclude}
    if both:
        raise ConfigError(
            f"class(es) {', '.join(sorted(both))} in both roi.include and roi.exclude; keep one"
        )


@dataclasses.dataclass(frozen=True)
class Roi:
    """Where tissue may be kept on one slide, from its annotation file.

    Attributes:
        path: the annotation file.
        sha256: its sha256 (part of the slide's tiling key: editing it makes tiles stale).
        keep: level-0 geometry where tissue is kept, inside the slide; ``None`` when the file
            restricts nothing (no include and no exclude polygon).
        include: union of the include polygons (``None``: none), for drawing.
        exclude: union of the exclude polygons (``None``: none), for drawing.
        counts: polygons used per class (``"(unclassified)"`` for none) and ignored per class.
    """

    path: Path
    sha256: str
    keep: Any
    include: Any
    exclude: Any
    counts: dict[str, dict[str, int]]

    def describe(self) -> str:
        """One line: what the file contributed."""
        used = ", ".join(f"{k} {v}" for k, v in sorted(self.counts["used"].items())) or "none"
        text = f"{self.path.name}: polygons used: {used}"
        if self.counts["ignored"]:
            ignored = ", ".join(f"{k} {v}" for k, v in sorted(self.counts["ignored"].items()))
            text += f"; ignored (class not in roi.include/roi.exclude): {ignored}"
        return text


def _role(cls: str | None, cfg: RoiConfig) -> str:
    """``include`` / ``exclude`` / ``ignore`` for a polygon of class ``cls``."""
    if cls is None:
        return cfg.unclassified
    low = cls.lower()
    if low in {c.lower() for c in cfg.include}:
        return "include"
    if low in {c.lower() for c in cfg.exclude}:
        return "exclude"
    return "ignore"


def _check_bounds(path: Path, polys: list[tuple[str, Any]], width: int, height: int) -> None:
    """Refuse polygons outside the slide: all of them (another image's or level's pixels) or one."""
    slide = shapely.box(0, 0, width, height)
    outside = [(cls, g) for cls, g in polys if not g.intersects(slide)]
    if not outside:
        return
    if len(outside) == len(polys):
        x0, y0, x1, y1 = shapely.union_all([g for _, g in polys]).bounds
        raise AnnotationError(
            f"{path}: all {len(polys)} polygon(s) lie outside the {width}x{height} slide "
            f"(they span x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f}); the coordinates look like "
            "another image's or pyramid level's pixels: export the objects from this slide, "
            "opened in QuPath, in level-0 pixels"
        )
    cls, geom = outside[0]
    x0, y0, x1, y1 = geom.bounds
    raise AnnotationError(
        f"{path}: a '{cls}' polygon at x {x0:.0f}..{x1:.0f}, y {y0:.0f}..{y1:.0f} lies outside "
        f"the {width}x{height} slide ({len(outside)} of {len(polys)} outside); fix or delete it "
        "in QuPath"
    )


def load_roi(path: Path, cfg: RoiConfig, width: int, height: int) -> Roi:
    """Read a slide's annotation file into the area where its tissue may be kept.

    Args:
        path: QuPath GeoJSON of the slide (level-0 pixels).
        cfg: which classes include and exclude.
        width: level-0 width of the slide.
        height: level-0 height of the slide.

    Raises:
        AnnotationError: the file is missing or malformed, or a used polygon (or every one)
            lies outside the slide; one line naming the file and the fix.
    """
    if not path.is_file():
        raise AnnotationError(f"{path}: annotation file not found; check the path")
    objects = read_objects(path)
    used: dict[str, int] = {}
    ignored: dict[str, int] = {}
    parts: dict[str, list[Any]] = {"include": [], "exclude": []}
    placed: list[tuple[str, Any]] = []
    for obj in objects:
        area = area_part(obj.geometry)
        if area.is_empty:
            continue  # points and lines bound no area
        name = obj.classification or "(unclassified)"
        role = _role(obj.classification, cfg)
        if role == "ignore":
            ignored[name] = ignored.get(name, 0) + 1
            continue
        used[name] = used.get(name, 0) + 1
        parts[role].append(area)
        placed.append((name, area))
    if placed:
        _check_bounds(path, placed, width, height)
    slide = shapely.box(0, 0, width, height)
    include = shapely.union_all(parts["include"]) if parts["include"] else None
    exclude = shapely.union_all(parts["exclude"]) if parts["exclude"] else None
    restrict = bool(cfg.include) or include is not None
    keep = None
    if restrict or exclude is not None:
        base = include.intersection(slide) if include is not None else shapely.Polygon()
        keep = base if restrict else slide
        if exclude is not None:
            keep = keep.difference(exclude)
        shapely.prepare(keep)
    return Roi(
        path=path,
        sha256=sha256_file(path),
        keep=keep,
        include=include,
        exclude=exclude,
        counts={"used": used, "ignored": ignored},
    )
