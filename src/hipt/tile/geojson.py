"""A tiled slide as QuPath objects: its tissue outline and its kept regions, in level-0 pixels.

``OUT/geojson/<slide_id>.geojson`` opens in QuPath (File > Import objects) over the slide, and
tiling reads it back as annotations: ``roi.include=[Tissue]`` keeps exactly the same regions and
patches, so a user can correct the tissue outline in QuPath and tile again.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from shapely.geometry import box

from hipt.slides.geometry import SlideGeometry
from hipt.slides.qupath import feature, write_collection
from hipt.slides.tiling import RegionSelection

FOLDER = "geojson"
TISSUE = "Tissue"
REGION = "Region"


def write_tiling_objects(
    path: Path, tissue: Any, geometry: SlideGeometry, selection: RegionSelection
) -> Path:
    """Write the tissue outline (class ``Tissue``) and one ``Region`` square per kept region.

    Args:
        path: the ``.geojson`` file to write (atomically).
        tissue: level-0 shapely geometry of the tissue the regions were chosen from.
        geometry: the slide's geometry (region side in level-0 pixels).
        selection: the kept regions.
    """
    features = []
    if not tissue.is_empty:
        features.append(feature(tissue, "annotation", "tissue", TISSUE))
    side = geometry.region_side_l0
    for i, (x, y) in enumerate(selection.origins):
        values = {
            "tissue_fraction": float(selection.tissue_fraction[i]),
            "tissue_patches": int(selection.patch_masks[i].sum()),
            "grid_index": selection.grid_index[i],
        }
        square = box(x, y, x + side, y + side)
        features.append(feature(square, "annotation", f"region {i}", REGION, values))
    return write_collection(path, features)
