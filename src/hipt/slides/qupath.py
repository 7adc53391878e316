"""QuPath objects as GeoJSON, both ways: what File > Export objects writes and Import objects reads.

QuPath (0.3 and later) exports a ``FeatureCollection`` (0.2: a bare list of features) whose
features carry ``properties.objectType`` (``annotation``, ``detection``, ...),
``properties.classification`` (``{"name": ..., "color": [r, g, b]}``; derived classes as
``{"names": [...]}``) and optional ``measurements``. Coordinates are level-0 pixels.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import shapely
from shapely.errors import ShapelyError
from shapely.geometry import mapping, shape

from hipt.errors import HiptError
from hipt.io import atomic_write_text

#: Colours (RGB) of the classes hipt writes; other classes get QuPath's own.
COLORS = {
    "Tissue": [0, 170, 0],
    "Region": [20, 60, 255],
    "Patch": [255, 190, 0],
}
#: Geometry types that bound an area (the others, e.g. points and lines, are not regions).
AREA_TYPES = ("Polygon", "MultiPolygon")


class AnnotationError(HiptError):
    """An annotation file cannot be used for this slide; the message names the file and fix."""


@dataclasses.dataclass(frozen=True)
class QuPathObject:
    """One object of a QuPath GeoJSON file.

    Attributes:
        geometry: shapely geometry in level-0 pixels (made valid).
        classification: the class name (``"Tumor"``; derived classes joined as ``"A: B"``),
            or ``None`` when unclassified.
        kind: ``objectType`` (``annotation`` when the file does not say).
        name: the object's name, if any.
    """

    geometry: Any
    classification: str | None
    kind: str
    name: str | None


def feature(
    geometry: Any,
    kind: str,
    name: str,
    classification: str,
    measurements: dict[str, float] | None = None,
) -> dict[str, Any]:
    """A GeoJSON feature QuPath imports as an object of ``kind`` with its class and values.

    Coordinates are written at full precision, so reading the file back gives the same
    geometry; measurements are rounded to 4 decimals and non-finite ones left out.
    """
    values = {
        k: round(float(v), 4) for k, v in (measurements or {}).items() if math.isfinite(float(v))
    }
    cls: dict[str, Any] = {"name": classification}
    if classification in COLORS:
        cls["color"] = COLORS[classification]
    props: dict[str, Any] = {"objectType": kind, "name": name, "classification": cls}
    if values:
        props["measurements"] = values
    return {"type": "Feature", "geometry": mapping(geometry), "properties": props}


def write_collection(path: Path, features: list[dict[str, Any]]) -> Path:
    """Write ``features`` as a ``FeatureCollection`` to ``path`` atomically."""
    atomic_write_text(path, json.dumps({"type": "FeatureCollection", "features": features}))
    return path


def _class_name(props: dict[str, Any]) -> str | None:
    cls = props.get("classification")
    if isinstance(cls, str):
        return cls.strip() or None
    if isinstance(cls, dict):
        if isinstance(cls.get("name"), str) and cls["name"].strip():
            return str(cls["name"]).strip()
        names = cls.get("names")
        if isinstance(names, list) and names:
            return ": ".join(str(n) for n in names)
    return None


def _features(data: Any, path: Path) -> list[dict[str, Any]]:
    if isinstance(data, list):  # QuPath 0.2 writes a bare list of features
        return data
    if isinstance(data, dict):
        kind = data.get("type")
        if kind == "FeatureCollection" and isinstance(data.get("features"), list):
            return list(data["features"])
        if kind == "Feature":
            return [data]
    raise AnnotationError(
        f"{path}: not a GeoJSON FeatureCollection, Feature or list of features; export it from "
        "QuPath with File > Export objects as GeoJSON"
    )


def read_objects(path: Path) -> list[QuPathObject]:
    """The objects of a QuPath GeoJSON file, geometries made valid.

    Raises:
        AnnotationError: the file cannot be read, is not GeoJSON, or has a feature without a
            readable geometry; the message names the file (and the feature) and the fix.
    """
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as err:
        msg = " ".join(str(err).split())
        raise AnnotationError(f"{path}: not readable as GeoJSON ({msg}); re-export it") from None
    objects = []
    for i, feat in enumerate(_features(data, path)):
        if not isinstance(feat, dict) or not isinstance(feat.get("geometry"), dict):
            raise AnnotationError(f"{path}: feature {i} has no geometry; re-export the file")
        try:
            geom = shape(feat["geometry"])
        except (ValueError, TypeError, AttributeError, KeyError, ShapelyError) as err:
            msg = " ".join(str(err).split())
            raise AnnotationError(
                f"{path}: feature {i} has an unreadable geometry ({msg}); re-export the file"
            ) from None
        if not geom.is_valid:
            geom = shapely.make_valid(geom)
        props = feat.get("properties") or {}
        objects.append(
            QuPathObject(
                geometry=geom,
                classification=_class_name(props),
                kind=str(props.get("objectType", "annotation")),
                name=props.get("name") if isinstance(props.get("name"), str) else None,
            )
        )
    return objects


def area_part(geometry: Any) -> Any:
    """The polygonal part of ``geometry`` (points and lines dropped; may be empty)."""
    if geometry.geom_type in AREA_TYPES:
        return geometry
    parts = shapely.get_parts(geometry)
    polys = [p for p in parts if p.geom_type in AREA_TYPES]
    return shapely.union_all(polys) if polys else shapely.Polygon()
