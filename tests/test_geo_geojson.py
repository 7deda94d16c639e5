"""GeoJSON of slicks: RFC 7946 rings and rounding, the antimeridian cut, merging, atomic writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from shapely.geometry import LinearRing, MultiPolygon, Polygon, box, shape

from oilspill.geo.geojson import (
    feature_collection,
    merge_collections,
    split_at_antimeridian,
    write_geojson,
)
from oilspill.geo.polygons import Slick


def slick(slick_id: int, lonlat: Polygon | None, **fields: float) -> Slick:
    return Slick(slick_id=slick_id, polygon_px=box(0, 0, 3, 2), pixels=6,
                 polygon_lonlat=lonlat, **fields)


def test_rings_are_oriented_and_rounded() -> None:
    # Given clockwise outside and counter-clockwise inside: the opposite of RFC 7946.
    outer = [(10.123456789, 50.0), (10.123456789, 50.1), (10.3, 50.1), (10.3, 50.0)]
    inner = [(10.2, 50.02), (10.25, 50.02), (10.25, 50.05), (10.2, 50.05)]
    polygon = Polygon(outer, [inner])
    assert not polygon.exterior.is_ccw and polygon.interiors[0].is_ccw
    collection = feature_collection([slick(1, polygon, area_km2=1.23456789, centroid_lon=float(
        "nan"))], image="x.tif", pixel=False)
    feature = collection["features"][0]
    rings = feature["geometry"]["coordinates"]
    assert LinearRing(rings[0]).is_ccw and not LinearRing(rings[1]).is_ccw
    assert [10.1234568, 50.0] in rings[0]
    assert feature["properties"]["area_km2"] == 1.234568
    assert feature["properties"]["centroid_lon"] is None  # NaN is not JSON
    assert "crs" not in collection and "properties" not in collection


def test_a_polygon_across_the_antimeridian_is_cut_there() -> None:
    across = Polygon([(179.5, 1), (-179.5, 1), (-179.5, 2), (179.5, 2)], [
        [(179.8, 1.2), (-179.8, 1.2), (-179.8, 1.4), (179.8, 1.4)]])  # a hole across too
    cut = split_at_antimeridian(across)
    assert isinstance(cut, MultiPolygon) and cut.is_valid
    west, east = sorted(cut.geoms, key=lambda p: -p.bounds[0])
    assert west.bounds == pytest.approx((179.5, 1, 180, 2))
    assert east.bounds == pytest.approx((-180, 1, -179.5, 2))
    assert west.area == pytest.approx(0.5 - 0.2 * 0.2) and east.area == west.area
    aside = box(170, 1, 171, 2)
    assert split_at_antimeridian(aside).equals(aside)  # nothing to cut
    geometry = feature_collection([slick(1, across)], image=None, pixel=False)["features"][0][
        "geometry"]
    assert geometry["type"] == "MultiPolygon" and shape(geometry).is_valid
    assert all(-180 <= x <= 180 for part in geometry["coordinates"] for ring in part
               for x, _ in ring)


def test_merging_keeps_order_and_refuses_mixed_coordinates() -> None:
    one = feature_collection([slick(1, box(0, 0, 1, 1)), slick(2, box(2, 0, 3, 1))],
                             image="a.tif", pixel=False)
    two = feature_collection([slick(1, box(5, 5, 6, 6))], image="b.tif", pixel=False)
    merged = merge_collections([one, two])
    assert [(f["properties"]["image"], f["properties"]["slick_id"])
            for f in merged["features"]] == [("a.tif", 1), ("a.tif", 2), ("b.tif", 1)]
    assert merge_collections([]) == {"type": "FeatureCollection", "features": []}
    pixels = feature_collection([slick(1, None)], image="c.png", pixel=True)
    assert merge_collections([pixels, pixels])["properties"] == {"coordinates": "pixel"}
    with pytest.raises(ValueError, match="pixel"):
        merge_collections([one, pixels])


def test_writing_is_atomic_and_strict_json(tmp_path: Path) -> None:
    collection = feature_collection([slick(1, box(0, 0, 1, 1))], image="é.tif", pixel=False)
    target = tmp_path / "slicks.geojson"
    write_geojson(target, collection)
    assert json.loads(target.read_text("utf-8")) == collection
    assert [p.name for p in tmp_path.iterdir()] == ["slicks.geojson"]
    with pytest.raises(ValueError):
        write_geojson(target, {"type": "FeatureCollection", "bad": float("inf")})
    assert [p.name for p in tmp_path.iterdir()] == ["slicks.geojson"]  # old file intact
    assert json.loads(target.read_text("utf-8")) == collection
