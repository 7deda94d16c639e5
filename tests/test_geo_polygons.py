"""Slicks of a mask as polygons and places: outlines by blocks, km2, centroids, lengths, GeoJSON."""

from __future__ import annotations

import json
import tempfile
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st
from pyproj import Geod, Transformer
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.transform import Affine
from scipy import ndimage
from shapely.geometry import LinearRing, MultiPolygon, Point, Polygon, box, shape

from oilspill.geo.geojson import feature_collection
from oilspill.geo.polygons import (
    NotLocated,
    Slick,
    locate,
    located,
    places,
    slick_polygons,
    to_lonlat,
)
from oilspill.geo.stitch import NODATA, Georef

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

GEOD = Geod(ellps="WGS84")
X0, Y0, PX = 500_000.0, 6_000_000.0, 10.0  # UTM 33N on its central meridian, about 54 N
WIDTH, HEIGHT = 600, 400
UTM = Affine(PX, 0, X0, 0, -PX, Y0)
TO_LONLAT = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
LONG_SIDE_M = 2000.0


def truths() -> dict[str, Polygon]:
    """The slicks in UTM metres: a long rotated bar, a ring, an ellipse, a 3 x 3 px square."""
    bar = shapely.affinity.rotate(box(-LONG_SIDE_M / 2, -200, LONG_SIDE_M / 2, 200), 30)
    ring = Point(0, 0).buffer(600, 64).difference(Point(0, 0).buffer(300, 64))
    ellipse = shapely.affinity.rotate(shapely.affinity.scale(Point(0, 0).buffer(1, 64), 700,
                                                             300), -20)
    small = box(0, 0, 30, 30)
    at = {"bar": (1500, 1200), "ring": (4200, 1000), "ellipse": (3000, 3000),
          "small": (5500, 3500)}
    shapes = {"bar": bar, "ring": ring, "ellipse": ellipse, "small": small}
    return {name: shapely.affinity.translate(shapes[name], X0 + dx, Y0 - dy)
            for name, (dx, dy) in at.items()}


def lonlat(geometry: Any) -> Any:
    return shapely.transform(shapely.segmentize(geometry, 20.0), lambda xy: np.column_stack(
        TO_LONLAT.transform(xy[:, 0], xy[:, 1])))


def geodesic_km2(geometry: Any) -> float:
    return abs(GEOD.geometry_area_perimeter(shapely.orient_polygons(geometry))[0]) / 1e6


def write_mask(path: Path, band: np.ndarray, **georef: Any) -> Georef:
    """A mask GTiff as stitch writes it (uint8, nodata 127); georef: crs+transform or gcps."""
    gcps = georef.pop("gcps", None)
    with rasterio.open(path, "w", driver="GTiff", width=band.shape[1], height=band.shape[0],
                       count=1, dtype="uint8", nodata=NODATA, tiled=True, blockxsize=256,
                       blockysize=256, **georef) as dst:
        dst.write(band, 1)
        if gcps:
            dst.gcps = (gcps, CRS.from_epsg(4326))
    with rasterio.open(path) as src:
        return Georef.from_dataset(src)


def utm_band() -> np.ndarray:
    return np.asarray(rasterize([(g, 255) for g in truths().values()], out_shape=(HEIGHT, WIDTH),
                                transform=UTM, dtype="uint8"))


def gcp_grid(affine: Affine, to_lonlat: Transformer | None, wrap: bool = False
             ) -> list[GroundControlPoint]:
    """A 5 x 5 grid of GCPs in EPSG:4326 over the scene, from its affine transform."""
    points = []
    for row in np.linspace(0, HEIGHT, 5):
        for col in np.linspace(0, WIDTH, 5):
            x, y = affine @ (col, row)
            lon, lat = to_lonlat.transform(x, y) if to_lonlat else (x, y)
            lon = (lon + 180) % 360 - 180 if wrap else lon
            points.append(GroundControlPoint(row=row, col=col, x=lon, y=lat))
    return points


def check_geojson(collection: dict[str, Any], footprint: Any) -> None:
    """RFC 7946: no crs, valid geometries, CCW exteriors, CW holes, ranges, <= 7 decimals."""
    assert "crs" not in collection and collection["type"] == "FeatureCollection"
    assert json.loads(json.dumps(collection, allow_nan=False)) == collection
    for feature in collection["features"]:
        geometry = feature["geometry"]
        assert shape(geometry).is_valid and shape(geometry).within(footprint)
        polygons = ([geometry["coordinates"]] if geometry["type"] == "Polygon"
                    else geometry["coordinates"])
        for rings in polygons:
            assert LinearRing(rings[0]).is_ccw
            assert all(not LinearRing(hole).is_ccw for hole in rings[1:])
            for lon, lat in (point for ring in rings for point in ring):
                assert -180 <= lon <= 180 and -90 <= lat <= 90
                assert round(lon, 7) == lon and round(lat, 7) == lat


def utm_footprint() -> Any:
    """The UTM scene's outline in lon/lat, buffered by a pixel (in degrees, generously)."""
    return lonlat(box(X0, Y0 - HEIGHT * PX, X0 + WIDTH * PX, Y0)).buffer(PX / 60_000)


def matched(found: list[Slick]) -> dict[str, Slick]:
    """Each truth's slick: the one whose centroid is nearest the truth's."""
    out = {}
    for name, truth in truths().items():
        lon, lat = TO_LONLAT.transform(truth.centroid.x, truth.centroid.y)
        out[name] = min(found, key=lambda s: GEOD.inv(lon, lat, s.centroid_lon,
                                                      s.centroid_lat)[2])
    return out


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Georef]]:
    """The same slicks as UTM, EPSG:4326 and GCP scenes."""
    folder = tmp_path_factory.mktemp("scenes")
    band = utm_band()
    out = {"utm": (folder / "utm.tif", write_mask(folder / "utm.tif", band, crs="EPSG:32633",
                                                   transform=UTM))}
    out["gcp"] = (folder / "gcp.tif", write_mask(folder / "gcp.tif", band,
                                                  gcps=gcp_grid(UTM, TO_LONLAT)))
    west, south, east, north = utm_footprint().bounds
    wgs = Affine(1.5e-4, 0, west, 0, -9e-5, north)  # about 10 m x 10 m at 54 N
    shape_px = (round((north - south) / 9e-5), round((east - west) / 1.5e-4))
    band_4326 = rasterize([(lonlat(g), 255) for g in truths().values()], out_shape=shape_px,
                          transform=wgs, dtype="uint8")
    out["4326"] = (folder / "wgs.tif", write_mask(folder / "wgs.tif", band_4326,
                                                   crs="EPSG:4326", transform=wgs))
    return out


@pytest.mark.parametrize("kind", ["utm", "4326", "gcp"])
def test_every_slick_is_found_in_the_right_place_and_size(
        scenes: dict[str, tuple[Path, Georef]], kind: str) -> None:
    path, georef = scenes[kind]
    found = places(path, georef, block_rows=64)
    assert len(found) == len(truths()) and [s.slick_id for s in found] == [1, 2, 3, 4]
    assert [s.pixels for s in found] == sorted((s.pixels for s in found), reverse=True)
    slick = matched(found)
    assert len({id(s) for s in slick.values()}) == len(truths())
    for name, truth in truths().items():
        true_km2 = geodesic_km2(lonlat(truth))
        assert true_km2 == pytest.approx(truth.area / 1e6, rel=2e-3)  # UTM scale ~ 0.9996
        lon, lat = TO_LONLAT.transform(truth.centroid.x, truth.centroid.y)
        assert GEOD.inv(lon, lat, slick[name].centroid_lon, slick[name].centroid_lat)[2] < PX
        if name != "small":  # 9 pixels: its outline is its pixels, not the truth
            assert slick[name].area_km2 == pytest.approx(true_km2, rel=0.02), name
    if kind != "4326":  # the same pixels: the rasterised count, at 100 m2 a pixel
        counts = {name: int(rasterize([(g, 1)], out_shape=(HEIGHT, WIDTH), transform=UTM,
                                      dtype="uint8").sum()) for name, g in truths().items()}
        assert {name: s.pixels for name, s in slick.items()} == counts
        for name in ("bar", "ring", "ellipse"):
            assert slick[name].area_km2 == pytest.approx(counts[name] * PX**2 / 1e6, rel=0.02)
    assert abs((slick["bar"].length_km or 0) * 1e3 - LONG_SIDE_M) < 2 * PX
    ring = slick["ring"].polygon_lonlat
    assert isinstance(ring, Polygon) and len(ring.interiors) == 1
    assert ring.exterior.is_ccw and not ring.interiors[0].is_ccw
    collection = feature_collection(found, image="scene.tif", pixel=False)
    footprint = (utm_footprint() if kind != "4326"
                 else box(*utm_footprint().bounds).buffer(1.5e-4))
    check_geojson(collection, footprint)
    ring_feature = collection["features"][found.index(slick["ring"])]
    assert ring_feature["geometry"]["type"] == "Polygon"
    assert len(ring_feature["geometry"]["coordinates"]) == 2  # the hole kept, as a hole
    assert ring_feature["properties"] == {
        "slick_id": slick["ring"].slick_id, "image": "scene.tif",
        "area_km2": pytest.approx(slick["ring"].area_km2, abs=1e-6),
        "perimeter_km": pytest.approx(slick["ring"].perimeter_km, abs=1e-6),
        "length_km": pytest.approx(slick["ring"].length_km, abs=1e-6),
        "centroid_lon": pytest.approx(slick["ring"].centroid_lon, abs=1e-7),
        "centroid_lat": pytest.approx(slick["ring"].centroid_lat, abs=1e-7),
        "pixels": slick["ring"].pixels, "mean_contrast_db": None, "confidence": None}
    # Perimeter: both circles, within the stair steps' leftovers.
    assert slick["ring"].perimeter_km == pytest.approx(2 * np.pi * 0.9, rel=0.03)


def test_utm_4326_and_gcp_scenes_agree(scenes: dict[str, tuple[Path, Georef]]) -> None:
    found = {kind: matched(places(path, georef)) for kind, (path, georef) in scenes.items()}
    for name in ("bar", "ring", "ellipse"):
        utm, wgs, gcp = (found[kind][name] for kind in ("utm", "4326", "gcp"))
        assert wgs.area_km2 == pytest.approx(utm.area_km2, rel=0.02)
        assert gcp.area_km2 == pytest.approx(utm.area_km2, rel=1e-3)  # the same pixels
        assert gcp.pixels == utm.pixels
        assert GEOD.inv(utm.centroid_lon, utm.centroid_lat, gcp.centroid_lon,
                        gcp.centroid_lat)[2] < 1.0  # metres: the spline is exact enough
        assert wgs.length_km == pytest.approx(utm.length_km, abs=2 * PX / 1e3)


def test_blocks_do_not_split_slicks(scenes: dict[str, tuple[Path, Georef]]) -> None:
    path, georef = scenes["utm"]
    whole = places(path, georef, block_rows=HEIGHT)
    for block_rows in (16, 7, 1):
        split = places(path, georef, block_rows=block_rows)
        assert [s.pixels for s in split] == [s.pixels for s in whole]
        for a, b in zip(split, whole, strict=True):
            assert a.area_km2 == pytest.approx(b.area_km2, rel=5e-3)
            assert a.polygon_px.is_valid


EIGHT = np.ones((3, 3), bool)


def write_plain(folder: Path, band: np.ndarray) -> Path:
    path = folder / "m.tif"
    with rasterio.open(path, "w", driver="GTiff", width=band.shape[1], height=band.shape[0],
                       count=1, dtype="uint8", nodata=NODATA) as dst:
        dst.write(band, 1)
    return path


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.integers(1, 40), st.floats(0.05, 0.7), st.integers(0, 2**32 - 1),
       st.integers(1, 12))
def test_slicks_are_scipys_8_connected_components(height: int, width: int, density: float,
                                                  seed: int, block_rows: int) -> None:
    oil = np.random.default_rng(seed).random((height, width)) < density
    band = np.where(oil, 255, 0).astype(np.uint8)
    band[np.random.default_rng(seed + 1).random(band.shape) < 0.05] = NODATA  # never oil
    oil = band == 255
    labels, _ = ndimage.label(oil, structure=EIGHT)
    sizes = sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True)
    with tempfile.TemporaryDirectory() as folder:
        path = write_plain(Path(folder), band)
        raw = slick_polygons(path, block_rows=block_rows, simplify_px=0)
        simple = slick_polygons(path, block_rows=block_rows)
    assert [s.pixels for s in raw] == sizes == [s.pixels for s in simple]
    xs, ys = np.meshgrid(np.arange(width) + 0.5, np.arange(height) + 0.5)
    for slick in raw:  # unsimplified, the outline is the component's pixels exactly
        assert slick.polygon.is_valid and slick.polygon.area == slick.pixels
        rows, cols = np.nonzero(shapely.contains_xy(slick.polygon, xs, ys))
        assert np.unique(labels[rows, cols]).size == 1 and len(rows) == slick.pixels
    for slick in simple:  # simplified near one raw outline of its size (see near())
        assert slick.polygon.is_valid
        assert any(near(slick.polygon, other.polygon) for other in raw
                   if other.pixels == slick.pixels)


def near(a: Any, b: Any) -> bool:
    """Each within 2 px of the other: Douglas-Peucker keeps to 1 px, but GEOS may then drop a
    ring's start vertex (up to 1 px more), and parts of speckle that overlap are unioned."""
    return bool(a.within(b.buffer(2.01)) and b.within(a.buffer(2.01)))


def test_shapes_joined_below_a_block_boundary_and_at_corners_are_one(tmp_path: Path) -> None:
    band = np.zeros((40, 40), np.uint8)
    band[2:30, 2:5] = band[2:30, 20:23] = band[27:30, 2:23] = 255  # a U: arms meet at row 27
    for row in range(0, 40):
        band[row, 30 + row % 2] = 255  # a zigzag: 8-connected at every row boundary
    path = write_plain(tmp_path, band)
    found = slick_polygons(path, block_rows=4)
    assert [s.pixels for s in found] == [int((band[:, :25] > 0).sum()), 40]
    assert found[0].polygon.is_valid and found[1].polygon.is_valid


def test_ties_are_numbered_by_row_then_column(tmp_path: Path) -> None:
    band = np.zeros((30, 30), np.uint8)
    band[20:24, 2:6] = band[2:6, 20:24] = band[2:6, 2:6] = 255
    found = slick_polygons(write_plain(tmp_path, band), block_rows=3)
    assert [(s.polygon.centroid.x, s.polygon.centroid.y) for s in found] == [
        (4, 4), (22, 4), (4, 22)]
    assert [s.polygon.area for s in found] == [16, 16, 16]  # 4 x 4 squares stay squares


def test_a_plain_picture_gives_pixel_slicks(tmp_path: Path) -> None:
    band = np.zeros((50, 80), np.uint8)
    band[10:20, 10:60] = 255
    band[30, 5] = 255  # one pixel: kept a square, not a triangle
    path = write_plain(tmp_path, band)
    with rasterio.open(path) as src:
        georef = Georef.from_dataset(src)
    assert not located(georef)
    with pytest.raises(NotLocated):
        to_lonlat(georef)
    found = places(path, georef)
    assert [s.pixels for s in found] == [500, 1] and found[1].polygon_px.area == 1
    assert all(s.area_km2 is None and s.polygon_lonlat is None for s in found)
    collection = feature_collection(found, image="a.png", pixel=True)
    assert collection["properties"] == {"coordinates": "pixel"}
    first = collection["features"][0]
    assert first["geometry"]["coordinates"][0][0] in ([10, 10], [60, 10], [60, 20], [10, 20])
    assert first["properties"]["area_km2"] is None and first["properties"]["pixels"] == 500
    check_geojson(collection, box(0, 0, 80, 50))
    with pytest.raises(ValueError, match="lon/lat"):
        feature_collection(found, image="a.png", pixel=False)


def test_callers_measures_are_carried(tmp_path: Path) -> None:
    band = np.zeros((40, 40), np.uint8)
    band[5:15, 5:15] = 255
    path = tmp_path / "m.tif"
    georef = write_mask(path, band, crs="EPSG:32633", transform=UTM)
    found = locate(slick_polygons(path), georef, contrast_db={1: -6.25}, confidence={1: 0.9})
    properties = feature_collection(found, image=None, pixel=False)["features"][0]["properties"]
    assert properties["mean_contrast_db"] == -6.25 and properties["confidence"] == 0.9
    assert properties["area_km2"] == pytest.approx(0.01, rel=1e-3)


@pytest.mark.parametrize("gcps", [False, True])
def test_a_slick_across_the_antimeridian_is_split(tmp_path: Path, gcps: bool) -> None:
    affine = Affine(0.001, 0, 179.9, 0, -0.001, -60.0)  # 179.9 E .. 179.9 W, 60 S
    band = np.zeros((HEIGHT, WIDTH), np.uint8)
    band[50:150, 30:170] = 255  # lon 179.93 .. 180.07: across
    band[200:260, 10:40] = 255  # lon 179.91 .. 179.94: not split
    path = tmp_path / "m.tif"
    if gcps:
        georef = write_mask(path, band, gcps=gcp_grid(affine, None, wrap=True))
    else:
        georef = write_mask(path, band, crs="EPSG:4326", transform=affine)
    across, aside = places(path, georef)
    true_km2 = geodesic_km2(box(179.93, -60.15, 180.07, -60.05))
    assert across.area_km2 == pytest.approx(true_km2, rel=5e-3)
    assert abs(abs(across.centroid_lon or 0) - 180) < 1e-3
    collection = feature_collection([across, aside], image=None, pixel=False)
    footprint = box(179.9, -60.5, 180, -59.9).union(box(-180, -60.5, -179.7, -59.9))
    check_geojson(collection, footprint)
    split, whole = (feature["geometry"] for feature in collection["features"])
    assert split["type"] == "MultiPolygon" and len(split["coordinates"]) == 2
    assert whole["type"] == "Polygon"
    parts = shape(split)
    assert isinstance(parts, MultiPolygon)
    assert sorted(round(p.bounds[0]) for p in parts.geoms) == [-180, 180]
    assert sum(geodesic_km2(p) for p in parts.geoms) == pytest.approx(true_km2, rel=5e-3)


def test_a_large_mask_is_polygonised_in_bounded_memory(tmp_path: Path) -> None:
    width, height = 6000, 4000
    path = tmp_path / "big.tif"
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint8", nodata=NODATA, tiled=True, blockxsize=512,
                       blockysize=512, compress="deflate", crs="EPSG:32633",
                       transform=UTM) as dst:
        for top in range(0, height, 500):
            rows, cols = np.ogrid[top:top + 500, :width]
            strip = (np.abs(cols - rows * 1.5) < 30)  # a diagonal band across every block
            strip |= np.hypot(rows % 700 - 350, cols % 900 - 450) < 120  # disks
            dst.write(np.where(strip, 255, 0).astype(np.uint8), 1,
                      window=rasterio.windows.Window(0, top, width, 500))
    tracemalloc.start()
    started = time.perf_counter()
    try:
        found = slick_polygons(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 60 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert time.perf_counter() - started < 10
    # The band joins the disks it crosses; the others stay apart (6 x 7 disks in all).
    assert 1 < len(found) < 6 * 7 and all(s.polygon.is_valid for s in found)


def test_slick_ids_follow_the_area_on_the_ground_not_the_pixel_count(tmp_path):
    """In degrees, a pixel far north covers less ground: the slick with fewer pixels in the
    south is the larger one, and it is slick 1 (the summary's largest)."""
    band = np.zeros((2000, 400), np.uint8)  # 0.002 degree pixels, 62 N down to 58 N
    band[100:150, 100:200] = 255  # 5,000 pixels near 61.75 N
    band[1800:1849, 100:200] = 255  # 4,900 pixels near 58.35 N
    georef = write_mask(tmp_path / "m.tif", band, crs="EPSG:4326",
                        transform=Affine(0.002, 0, 10.0, 0, -0.002, 62.0))
    first, second = places(tmp_path / "m.tif", georef)
    assert (first.slick_id, second.slick_id) == (1, 2)
    assert first.pixels == 4900 and first.area_km2 > second.area_km2
    assert first.centroid_lat < 59 < 61 < second.centroid_lat
