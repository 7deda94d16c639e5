"""Slicks as RFC 7946 GeoJSON: one FeatureCollection per image, merged into one per job.

Geometry: lon/lat (WGS84) with no `crs` member, exterior rings counter-clockwise and holes
clockwise, coordinates rounded to 7 decimals (about 1 cm). A polygon across the antimeridian
is cut there into a MultiPolygon (RFC 7946 section 3.1.9), so no ring jumps by 360 degrees.
Polygons around a pole are not handled: a slick never is one.

A picture without georeference gives its slicks in pixel coordinates (x = column, y = row of
pixel corners), marked by the foreign member "properties": {"coordinates": "pixel"} on the
collection (section 6.1), with the located properties null.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import shapely
from shapely.geometry import MultiPolygon, Polygon, box

from ..paths import partial_beside
from .polygons import Outline, Slick

DECIMALS = 7  # coordinates: 1e-7 degree is about 1 cm
KM_DECIMALS = 6  # km and km2: to the millimetre, and the square metre
PIXEL = {"coordinates": "pixel"}  # the collection's properties for pixel coordinates


def feature_collection(slicks: Iterable[Slick], *, image: str | None,
                       pixel: bool) -> dict[str, Any]:
    """A FeatureCollection of one image's slicks, in lon/lat or (pixel=True) pixels."""
    features = []
    for slick in slicks:
        if pixel:
            geometry = _geometry(slick.polygon_px)
        elif slick.polygon_lonlat is None:
            raise ValueError(f"slick {slick.slick_id} has no lon/lat outline")
        else:
            geometry = _geometry(split_at_antimeridian(slick.polygon_lonlat))
        features.append({"type": "Feature", "geometry": geometry,
                         "properties": _properties(slick, image, pixel)})
    collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if pixel:
        collection["properties"] = dict(PIXEL)
    return collection


def merge_collections(collections: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """One FeatureCollection with the features of all, in order; all lon/lat or all pixels."""
    kinds = {collection.get("properties") == PIXEL for collection in collections}
    if len(kinds) > 1:
        raise ValueError("cannot merge collections in pixel coordinates with lon/lat ones")
    merged: dict[str, Any] = {"type": "FeatureCollection",
                              "features": [feature for collection in collections
                                           for feature in collection["features"]]}
    if kinds == {True}:
        merged["properties"] = dict(PIXEL)
    return merged


def write_geojson(path: Path, collection: dict[str, Any]) -> None:
    """Write a collection as UTF-8 JSON at path, atomically (no NaN: RFC 8259 has none)."""
    data = json.dumps(collection, ensure_ascii=False, allow_nan=False,
                      separators=(",", ":")).encode()
    part = partial_beside(path)
    try:
        with open(part, "wb") as out:
            out.write(data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


def split_at_antimeridian(outline: Outline) -> Outline:
    """The outline cut at lon +-180 where a ring jumps across it, lons within [-180, 180]."""
    parts: list[Polygon] = []
    for polygon in shapely.get_parts(outline):
        if not _crosses(polygon):
            parts.append(polygon)
            continue
        # In a 0..360 frame the polygon is continuous; cut it at 180 and bring the east back.
        shifted = shapely.transform(polygon, lambda xy: np.column_stack(
            (np.where(xy[:, 0] < 0, xy[:, 0] + 360, xy[:, 0]), xy[:, 1])))
        west = shifted.intersection(box(0, -90, 180, 90))
        east = shapely.transform(shifted.intersection(box(180, -90, 360, 90)),
                                 lambda xy: xy - np.array([360.0, 0.0]))
        parts += [part for part in shapely.get_parts([west, east])
                  if isinstance(part, Polygon) and part.area > 0]
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def _crosses(polygon: Polygon) -> bool:
    """True when a ring's consecutive longitudes jump by more than 180 degrees."""
    return any(np.any(np.abs(np.diff(np.asarray(ring.coords)[:, 0])) > 180)
               for ring in (polygon.exterior, *polygon.interiors))


def _geometry(outline: Outline) -> dict[str, Any]:
    """A GeoJSON Polygon or MultiPolygon, rings oriented the RFC 7946 way and rounded."""
    oriented = shapely.orient_polygons(outline)
    if isinstance(oriented, Polygon):
        return {"type": "Polygon", "coordinates": _rings(oriented)}
    return {"type": "MultiPolygon", "coordinates": [_rings(part) for part in oriented.geoms]}


def _rings(polygon: Polygon) -> list[list[list[float]]]:
    return [np.round(np.asarray(ring.coords)[:, :2], DECIMALS).tolist()
            for ring in (polygon.exterior, *polygon.interiors)]


def _properties(slick: Slick, image: str | None, pixel: bool) -> dict[str, Any]:
    located = not pixel
    return {
        "slick_id": slick.slick_id,
        "image": image,
        "area_km2": _number(slick.area_km2, KM_DECIMALS, located),
        "perimeter_km": _number(slick.perimeter_km, KM_DECIMALS, located),
        "length_km": _number(slick.length_km, KM_DECIMALS, located),
        "centroid_lon": _number(slick.centroid_lon, DECIMALS, located),
        "centroid_lat": _number(slick.centroid_lat, DECIMALS, located),
        "pixels": slick.pixels,
        "mean_contrast_db": _number(slick.mean_contrast_db, 3, True),
        "confidence": _number(slick.confidence, 4, True),
    }


def _number(value: float | None, decimals: int, wanted: bool) -> float | None:
    """value rounded, or None when absent, not finite, or not wanted."""
    if value is None or not wanted or not math.isfinite(value):
        return None
    return round(float(value), decimals)
