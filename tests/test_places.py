"""Places end to end: generated georeferenced scenes with known slick polygons go through the
real app and the real ML stub, and every figure a responder relies on is checked against the
mask the user downloads and against the ground the scene was written with.

The slicks are drawn as polygons on the ground (UTM 33N metres, or lon/lat near the
antimeridian), burnt into each scene's own pixel grid, and the scene's sea damped there.
"""

from __future__ import annotations

import io
import json
import math
import uuid
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
import shapely
from affine import Affine
from aiohttp.test_utils import TestClient
from PIL import Image
from pyproj import Geod, Transformer
from rasterio.control import GroundControlPoint
from rasterio.features import rasterize
from scipy import ndimage
from shapely.geometry import LinearRing, LineString, MultiPolygon, Point, Polygon, shape

from oilspill.config import Settings
from oilspill.outlines import OUTLINE_RGB
from oilspill.web.app import create_app

from .conftest import scene_png, upload, wait_finished, zip_bytes
from .georef import UTM_TRANSFORM, amplitude_u16, band, damp, sea, write_tif

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

GEOD = Geod(ellps="WGS84")
EIGHT = np.ones((3, 3), bool)
GEOJSON = "application/geo+json"
PIXEL_M = 10.0  # UTM_TRANSFORM's pixel
UTM_TO_LONLAT = Transformer.from_crs("EPSG:32633", "EPSG:4326", always_xy=True)
LONLAT_TO_UTM = Transformer.from_crs("EPSG:4326", "EPSG:32633", always_xy=True)
LOCATED = ("area_km2", "perimeter_km", "length_km", "centroid_lon", "centroid_lat")


# --- the ground ------------------------------------------------------------------------------

@dataclass(frozen=True)
class Band:
    """A straight slick with round ends, placed by the UTM scene's pixels: centre (row, col),
    length and thickness in pixels, angle in degrees (clockwise on the picture)."""

    row: float
    col: float
    length: float
    thickness: float
    angle: float

    def ground(self) -> Polygon:
        cx, cy = UTM_TRANSFORM @ (self.col, self.row)
        half = (self.length - self.thickness) / 2 * PIXEL_M
        angle = math.radians(self.angle)
        dx, dy = half * math.cos(angle), half * math.sin(angle)
        line = LineString([(cx - dx, cy + dy), (cx + dx, cy - dy)])  # rows run south
        return line.buffer(self.thickness / 2 * PIXEL_M, quad_segs=32)


@dataclass(frozen=True)
class Ring:
    """Oil around clean water: centre (row, col), radii in pixels."""

    row: float
    col: float
    outer: float
    inner: float

    def ground(self) -> Polygon:
        centre = Point(UTM_TRANSFORM @ (self.col, self.row))
        return centre.buffer(self.outer * PIXEL_M, 64).difference(
            centre.buffer(self.inner * PIXEL_M, 64))


# 900 x 700 px of 10 m: 4 x 3 tiles of 256 px (overlap 32; cores meet at columns 240, 464,
# 688 and rows 240, 464). The long band crosses two column borders and a row border.
WIDTH, HEIGHT = 900, 700
RING = Ring(row=400, col=160, outer=72, inner=36)
SLICKS = [Band(row=200, col=560, length=420, thickness=44, angle=20), RING,
          Band(row=570, col=560, length=230, thickness=32, angle=-35),
          Band(row=130, col=180, length=130, thickness=26, angle=70)]


def ground_lonlat(polygon: Polygon) -> Polygon:
    return shapely.transform(shapely.segmentize(polygon, 10.0), lambda xy: np.column_stack(
        UTM_TO_LONLAT.transform(xy[:, 0], xy[:, 1])))


def burn(polygons: list[Polygon], transform: Affine, height: int, width: int) -> np.ndarray:
    """The pixels whose centre lies in a polygon (given in the transform's CRS)."""
    return rasterize([(p, 1) for p in polygons], out_shape=(height, width), transform=transform,
                     dtype="uint8").astype(bool)


def utm_scene(path: Path, slicks: list[Any], width: int, height: int, seed: int) -> Path:
    truth = burn([s.ground() for s in slicks], UTM_TRANSFORM, height, width)
    data = amplitude_u16(damp(sea(height, width, seed), truth))
    return write_tif(path, data, crs="EPSG:32633", transform=UTM_TRANSFORM)


def gcp_scene(path: Path, slicks: list[Any], width: int, height: int, seed: int) -> Path:
    """The UTM scene's pixels in radar geometry: no transform, a 5 x 7 grid of lon/lat GCPs
    (pixel corners) of the same ground."""
    truth = burn([s.ground() for s in slicks], UTM_TRANSFORM, height, width)
    data = amplitude_u16(damp(sea(height, width, seed), truth))
    gcps = []
    for row in np.linspace(0, height, 5):
        for col in np.linspace(0, width, 7):
            lon, lat = UTM_TO_LONLAT.transform(*(UTM_TRANSFORM @ (col, row)))
            gcps.append(GroundControlPoint(row=float(row), col=float(col), x=lon, y=lat, z=0.0))
    return write_tif(path, data, gcps=gcps, gcps_crs="EPSG:4326")


def lonlat_scene(path: Path, slicks: list[Any], width: int, height: int, seed: int) -> Path:
    """The same ground as the UTM scene, in EPSG:4326 at about 10 m (covering its footprint)."""
    cols = np.array([0, width, width, 0])
    rows = np.array([0, 0, height, height])
    lon, lat = UTM_TO_LONLAT.transform(*(UTM_TRANSFORM @ (cols, rows)))
    dlat = 9e-5
    dlon = dlat / math.cos(math.radians(float(np.mean(lat))))
    transform = Affine(dlon, 0, float(lon.min()), 0, -dlat, float(lat.max()))
    w = math.ceil((lon.max() - lon.min()) / dlon)
    h = math.ceil((lat.max() - lat.min()) / dlat)
    truth = burn([ground_lonlat(s.ground()) for s in slicks], transform, h, w)
    data = damp(sea(h, w, seed), truth).astype(np.float32)
    return write_tif(path, data, crs="EPSG:4326", transform=transform)


# --- the service -----------------------------------------------------------------------------

async def places_client(aiohttp_client: Any, settings: Settings, **changes: Any) -> TestClient:
    changes = {"tile_px": 256, "tile_overlap_px": 32, "max_upload_bytes": 64 * 2**20,
               "min_free_bytes": 2**20, **changes}
    client: TestClient = await aiohttp_client(create_app(settings.with_changes(**changes)))
    return client


async def get_json(client: TestClient, url: str, status: int = 200) -> Any:
    resp = await client.get(url)
    assert resp.status == status, (url, resp.status, await resp.text())
    return await resp.json(content_type=None)


async def run_job(client: TestClient, files: dict[str, bytes], timeout_s: float = 60.0
                  ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Upload (one file bare, several zipped), wait; the job and its tasks in upload order."""
    if len(files) == 1:
        ((name, data),) = files.items()
        status, body = await upload(client, data, name)
    else:
        status, body = await upload(client, zip_bytes(files))
    assert status == 202, body
    job = await wait_finished(client, body["job_id"], timeout_s)
    tasks = [await get_json(client, f"/api/task/{t}") for t in body["task_ids"]]
    assert [t["status"] for t in tasks] == ["done"] * len(tasks), tasks
    return job, tasks


async def spills(client: TestClient, task: dict[str, Any]) -> dict[str, Any]:
    resp = await client.get(task["result"]["spills_url"])
    assert resp.status == 200, await resp.text()
    assert resp.content_type == GEOJSON
    collection: dict[str, Any] = json.loads(await resp.read())
    return collection


async def mask_of(client: TestClient, task: dict[str, Any]) -> np.ndarray:
    resp = await client.get(task["result"]["mask_url"])
    assert resp.status == 200
    with rasterio.open(io.BytesIO(await resp.read())) as src:
        return np.asarray(src.read(1))


# --- measuring -------------------------------------------------------------------------------

@dataclass
class Component:
    pixels: int
    row: float  # centroid, pixel centres
    col: float
    alone: np.ndarray  # its pixels


def components(mask: np.ndarray) -> list[Component]:
    """The mask's 8-connected slicks, largest first (ties: by centroid row, then column)."""
    labels, count = ndimage.label(mask == 255, structure=EIGHT)
    if not count:
        return []
    index = np.arange(1, count + 1)
    sizes = ndimage.sum_labels(np.ones(mask.shape), labels, index)
    centres = ndimage.center_of_mass(np.ones(mask.shape), labels, index)
    found = [Component(int(n), r + 0.5, c + 0.5, labels == i)
             for i, n, (r, c) in zip(index, sizes, centres, strict=True)]
    return sorted(found, key=lambda c: (-c.pixels, c.row, c.col))


def metres_apart(lon1: float, lat1: float, lon2: float, lat2: float) -> float:
    return float(GEOD.inv(lon1, lat1, lon2, lat2)[2])


def geodesic_km2(geometry: Any) -> float:
    return abs(GEOD.geometry_area_perimeter(shapely.orient_polygons(geometry))[0]) / 1e6


def rings(geometry: dict[str, Any]) -> list[tuple[bool, list[list[float]]]]:
    """(is exterior, coordinates) of every ring of a GeoJSON (Multi)Polygon."""
    polygons = ([geometry["coordinates"]] if geometry["type"] == "Polygon"
                else geometry["coordinates"])
    return [(i == 0, ring) for polygon in polygons for i, ring in enumerate(polygon)]


def check_rfc7946(collection: dict[str, Any], bounds: list[float] | None = None) -> None:
    """Lon/lat in range, at most 7 decimals, no crs, rings the RFC's way, valid, and (with
    bounds [west, south, east, north], west > east across the antimeridian) inside them."""
    assert collection["type"] == "FeatureCollection"
    assert "crs" not in collection and "properties" not in collection
    for feature in collection["features"]:
        assert feature["type"] == "Feature" and "crs" not in feature
        geometry = feature["geometry"]
        assert geometry["type"] in ("Polygon", "MultiPolygon")
        assert shapely.is_valid(shape(geometry)), feature["properties"]
        for exterior, ring in rings(geometry):
            assert ring[0] == ring[-1] and len(ring) >= 4
            assert LinearRing(ring).is_ccw == exterior, "exterior CCW, holes CW"
            for lon, lat in ring:
                assert -180 <= lon <= 180 and -90 <= lat <= 90
                assert round(lon, 7) == lon and round(lat, 7) == lat
                if bounds is not None:
                    west, south, east, north = bounds
                    slack = 1e-4
                    assert south - slack <= lat <= north + slack
                    if west <= east:
                        assert west - slack <= lon <= east + slack
                    else:  # across the antimeridian
                        assert lon >= west - slack or lon <= east + slack


# --- 1. a UTM scene: count, areas, pixels, centroids, the hole, RFC 7946 ------------------

async def test_each_slick_of_a_utm_scene_is_a_faithful_place(aiohttp_client, settings, tmp_path):
    path = utm_scene(tmp_path / "utm.tif", SLICKS, WIDTH, HEIGHT, seed=11)
    client = await places_client(aiohttp_client, settings)
    _, (task,) = await run_job(client, {"utm.tif": path.read_bytes()})
    result = task["result"]
    assert result["crs"] == "EPSG:32633"
    assert result["spills_url"] == f"/api/task/{task['task_id']}/spills.geojson"
    collection = await spills(client, task)
    check_rfc7946(collection, result["bounds_lonlat"])
    features = collection["features"]
    props = [f["properties"] for f in features]

    # Every true slick, and nothing else.
    truth_lonlat = [ground_lonlat(s.ground()).centroid for s in SLICKS]
    print(f"\nUTM scene: {len(features)} features for {len(SLICKS)} slicks")
    assert len(features) == len(SLICKS) == result["slick_count"]
    matched = set()
    for slick, centre in zip(SLICKS, truth_lonlat, strict=True):
        off, slick_id = min((metres_apart(p["centroid_lon"], p["centroid_lat"], centre.x,
                                          centre.y), p["slick_id"]) for p in props)
        print(f"  {type(slick).__name__} at ({slick.row}, {slick.col}): slick {slick_id}, "
              f"centroid {off:.1f} m from the truth's")
        assert off <= 3 * PIXEL_M
        matched.add(slick_id)
    assert len(matched) == len(SLICKS)  # one feature each

    # slick_id 1..n by decreasing area.
    assert [p["slick_id"] for p in props] == list(range(1, len(features) + 1))
    assert [p["area_km2"] for p in props] == sorted((p["area_km2"] for p in props),
                                                    reverse=True)
    assert all(p["image"] == "utm.tif" for p in props)

    # Faithful to the downloaded mask: one component per feature, same pixels, same area,
    # same centroid.
    pieces = components(await mask_of(client, task))
    assert len(pieces) == len(features)
    for feature, piece in zip(features, pieces, strict=True):
        p = feature["properties"]
        geodesic = geodesic_km2(shape(feature["geometry"]))
        mask_km2 = piece.pixels * PIXEL_M**2 / 1e6
        lon, lat = UTM_TO_LONLAT.transform(*(UTM_TRANSFORM @ (piece.col, piece.row)))
        centroid_m = metres_apart(p["centroid_lon"], p["centroid_lat"], lon, lat)
        print(f"  slick {p['slick_id']}: {p['pixels']} px, area {p['area_km2']:.6f} km2; vs "
              f"geodesic of its geometry {p['area_km2'] / geodesic - 1:+.3%}, vs mask pixels "
              f"x 100 m2 {p['area_km2'] / mask_km2 - 1:+.3%}; centroid {centroid_m:.2f} m "
              f"from the component's")
        assert p["pixels"] == piece.pixels
        assert p["area_km2"] == pytest.approx(geodesic, rel=0.005)
        assert p["area_km2"] == pytest.approx(mask_km2, rel=0.02)
        assert centroid_m <= PIXEL_M
        assert p["perimeter_km"] > 0 and p["length_km"] > 0

    # The ring: one feature with one hole (clockwise: checked above), clean water inside.
    ring_centre = truth_lonlat[SLICKS.index(RING)]
    ring_feature = min(features, key=lambda f: metres_apart(
        f["properties"]["centroid_lon"], f["properties"]["centroid_lat"], ring_centre.x,
        ring_centre.y))
    geometry = ring_feature["geometry"]
    assert geometry["type"] == "Polygon"
    assert len(geometry["coordinates"]) == 2, "the ring's hole is missing"
    hole = Polygon(geometry["coordinates"][1])
    assert hole.contains(ring_centre)
    hole_m2 = abs(GEOD.geometry_area_perimeter(hole)[0])
    piece = pieces[ring_feature["properties"]["slick_id"] - 1]
    hole_px = int((ndimage.binary_fill_holes(piece.alone) & ~piece.alone).sum())
    print(f"  ring: hole {hole_m2:.0f} m2, {hole_m2 / (hole_px * PIXEL_M**2) - 1:+.2%} from the "
          f"mask's ({hole_px} px; drawn {math.pi * RING.inner ** 2:.0f} px)")
    assert hole_m2 == pytest.approx(hole_px * PIXEL_M**2, rel=0.03)
    assert hole_px >= 0.5 * math.pi * RING.inner ** 2
    assert sum(f["properties"]["area_km2"] for f in features) == pytest.approx(
        result["total_area_km2"], abs=1e-5)


# --- 2. the same ground in lon/lat and by GCPs ---------------------------------------------

def lonlat_pixel_km2(transform: Affine, rows: np.ndarray) -> np.ndarray:
    """The geodesic area of an EPSG:4326 pixel of each row."""
    out = []
    for row in rows:
        left, top = transform @ (0, row)
        right, bottom = transform @ (1, row + 1)
        out.append(abs(GEOD.polygon_area_perimeter([left, right, right, left],
                                                   [top, top, bottom, bottom])[0]) / 1e6)
    return np.array(out)


async def test_the_same_ground_in_lonlat_or_by_gcps_gives_the_same_places(
        aiohttp_client, settings, tmp_path):
    files = {name: make(tmp_path / name, SLICKS, WIDTH, HEIGHT, seed=11).read_bytes()
             for name, make in (("utm.tif", utm_scene), ("lonlat.tif", lonlat_scene),
                                ("gcps.tif", gcp_scene))}
    client = await places_client(aiohttp_client, settings)
    _, tasks = await run_job(client, files)
    found = {}
    for task in tasks:
        collection = await spills(client, task)
        check_rfc7946(collection, task["result"]["bounds_lonlat"])
        found[task["filename"]] = (task, collection["features"])
    utm_task, utm = found["utm.tif"]
    assert [t["result"]["scene"]["georeference"] for t in tasks] == ["affine", "affine", "gcps"]
    assert [t["result"]["crs"] for t in tasks] == ["EPSG:32633", "EPSG:4326", "EPSG:4326"]
    print()
    for name in ("lonlat.tif", "gcps.tif"):
        task, features = found[name]
        total, utm_total = task["result"]["total_area_km2"], utm_task["result"]["total_area_km2"]
        assert len(features) == len(utm) == len(SLICKS)
        offsets, ratios = [], []
        for one in utm:
            p = one["properties"]
            other = min(features, key=lambda f: metres_apart(
                f["properties"]["centroid_lon"], f["properties"]["centroid_lat"],
                p["centroid_lon"], p["centroid_lat"]))["properties"]
            offsets.append(metres_apart(other["centroid_lon"], other["centroid_lat"],
                                        p["centroid_lon"], p["centroid_lat"]))
            ratios.append(other["area_km2"] / p["area_km2"] - 1)
            assert other["slick_id"] == p["slick_id"]
        print(f"{name}: total {total:.6f} km2 vs UTM {utm_total:.6f} "
              f"({total / utm_total - 1:+.3%}); per slick {[f'{r:+.2%}' for r in ratios]}; "
              f"centroids {[round(o, 2) for o in offsets]} m from the UTM run's")
        assert total == pytest.approx(utm_total, rel=0.02)
        assert max(offsets) <= PIXEL_M

        # Each feature is faithful to its own mask (pixel areas: 100 m2 in radar geometry,
        # each row's geodesic cell in lon/lat).
        mask = await mask_of(client, task)
        pieces = components(mask)
        assert len(pieces) == len(features)
        if name == "gcps.tif":
            km2 = [piece.pixels * PIXEL_M**2 / 1e6 for piece in pieces]
        else:
            with rasterio.open(tmp_path / name) as src:
                transform = src.transform
            cell = lonlat_pixel_km2(transform, np.arange(mask.shape[0]))
            km2 = [float((piece.alone.sum(axis=1) * cell).sum()) for piece in pieces]
        errors = [f["properties"]["area_km2"] / k - 1 for f, k in zip(features, km2, strict=True)]
        print(f"  vs its mask's pixels: {[f'{e:+.3%}' for e in errors]}")
        assert max(map(abs, errors)) <= 0.02
        assert [f["properties"]["pixels"] for f in features] == [p.pixels for p in pieces]


# --- 3. across the antimeridian ------------------------------------------------------------

AM_WIDTH, AM_HEIGHT = 600, 400
AM_LONLAT = Affine(1e-4, 0, 179.97, 0, -1e-4, -16.98)  # 179.97 E to 179.97 W; 180 at col 300
UTM60S = Transformer.from_crs("EPSG:32760", "EPSG:4326", always_xy=True)


def am_utm60() -> Affine:
    """10 m pixels in UTM 60S (central meridian 177 E) whose column 300, row 0 is 180, -16.98."""
    x, y = UTM60S.transform(180.0, -16.98, direction="INVERSE")
    return Affine(10, 0, x - 3000, 0, -10, y)


def am_to_lonlat(georef: str) -> Any:
    """Pixel (col, row) -> WGS84 (lon, lat) in [-180, 180], as the scene is written."""
    def convert(col: Any, row: Any) -> tuple[Any, Any]:
        if georef == "utm60":
            lon, lat = UTM60S.transform(*(am_utm60() @ (np.asarray(col), np.asarray(row))))
        else:
            lon, lat = AM_LONLAT @ (np.asarray(col), np.asarray(row))
        return (np.asarray(lon) + 180) % 360 - 180, np.asarray(lat)
    return convert


def am_scene(path: Path, georef: str, data: np.ndarray) -> Path:
    if georef == "lonlat":
        return write_tif(path, data, crs="EPSG:4326", transform=AM_LONLAT)
    if georef == "utm60":
        return write_tif(path, data, crs="EPSG:32760", transform=am_utm60())
    convert = am_to_lonlat(georef)  # GCPs with longitudes wrapped, as an annotation has them
    gcps = [GroundControlPoint(row=float(r), col=float(c), x=float(convert(c, r)[0]),
                               y=float(convert(c, r)[1]), z=0.0)
            for r in np.linspace(0, AM_HEIGHT, 5) for c in np.linspace(0, AM_WIDTH, 7)]
    return write_tif(path, data, gcps=gcps, gcps_crs="EPSG:4326")


def cell_km2(convert: Any, col: float, row: float) -> float:
    """The geodesic area of the pixel at (col, row)."""
    lon, lat = convert(np.array([col, col + 1, col + 1, col]), np.array([row, row, row + 1,
                                                                         row + 1]))
    lon = np.where(lon < 0, lon + 360, lon)
    return abs(GEOD.polygon_area_perimeter(lon, lat)[0]) / 1e6


@pytest.mark.parametrize("georef", ["lonlat", "gcps", "utm60"])
async def test_a_slick_across_the_antimeridian_is_split_and_keeps_its_area(
        aiohttp_client, settings, tmp_path, georef):
    shape_ = (AM_HEIGHT, AM_WIDTH)
    across = band(shape_, (200, 300), 300, 50, 25)
    east = band(shape_, (320, 120), 150, 30, -10)  # all at east longitudes (< 180)
    west = band(shape_, (90, 480), 120, 26, 40)  # all at west longitudes (past 180)
    data = damp(sea(AM_HEIGHT, AM_WIDTH, 13), across | east | west).astype(np.float32)
    path = am_scene(tmp_path / "fiji.tif", georef, data)
    convert = am_to_lonlat(georef)
    client = await places_client(aiohttp_client, settings)
    _, (task,) = await run_job(client, {"fiji.tif": path.read_bytes()})
    bounds = task["result"]["bounds_lonlat"]
    edge = np.linspace(0, 1, 101)
    lon, _ = convert(np.concatenate([edge * AM_WIDTH, np.full(101, AM_WIDTH),
                                     edge * AM_WIDTH, np.zeros(101)]),
                     np.concatenate([np.zeros(101), edge * AM_HEIGHT, np.full(101, AM_HEIGHT),
                                     edge * AM_HEIGHT]))
    print(f"\nantimeridian scene ({georef}): bounds {bounds}")
    assert bounds[0] == pytest.approx(lon[lon > 0].min(), abs=1e-5)
    assert bounds[2] == pytest.approx(lon[lon < 0].max(), abs=1e-5)
    collection = await spills(client, task)
    check_rfc7946(collection, bounds)
    features = collection["features"]
    pieces = components(await mask_of(client, task))
    assert len(features) == len(pieces) == 3
    for feature, piece in zip(features, pieces, strict=True):
        p, geometry = feature["properties"], feature["geometry"]
        lon, lat = convert(piece.col, piece.row)
        centroid_m = metres_apart(p["centroid_lon"], p["centroid_lat"], float(lon), float(lat))
        mask_km2 = piece.pixels * cell_km2(convert, piece.col, piece.row)
        rows, cols = np.nonzero(piece.alone)
        lons = convert(cols + 0.5, rows + 0.5)[0]
        crosses = bool((lons > 0).any() and (lons < 0).any())
        side = "across 180" if crosses else "east" if (lons > 0).all() else "west"
        print(f"  slick {p['slick_id']} ({side}): "
              f"{geometry['type']}, area {p['area_km2']:.6f} km2, "
              f"{p['area_km2'] / mask_km2 - 1:+.3%} from its mask's pixels; centroid "
              f"({p['centroid_lon']}, {p['centroid_lat']}), {centroid_m:.2f} m from the "
              f"component's")
        assert p["pixels"] == piece.pixels
        assert p["area_km2"] == pytest.approx(mask_km2, rel=0.02)
        assert centroid_m <= 11.0  # a pixel: 10.6 x 11.1 m in lon/lat, 10 m in UTM
        if not crosses:
            assert geometry["type"] == "Polygon"
            assert len({lon > 0 for _, ring in rings(geometry) for lon, _ in ring}) == 1
            continue
        assert geometry["type"] == "MultiPolygon" and len(geometry["coordinates"]) == 2
        sides = sorted((shape({"type": "Polygon", "coordinates": c})
                        for c in geometry["coordinates"]), key=lambda g: g.bounds[0])
        west_side, east_side = sides  # by longitude value: the part at -180 first
        assert east_side.bounds[0] > 179.9 and east_side.bounds[2] == 180
        assert west_side.bounds[0] == -180 and west_side.bounds[2] < -179.9
        # Put together again on a 0..360 frame: one polygon, whose geodesic area it keeps.
        whole = shapely.unary_union([east_side, shapely.affinity.translate(west_side, 360)])
        assert isinstance(whole, Polygon), "the two halves do not meet along 180"
        unsplit = geodesic_km2(whole)
        halves = geodesic_km2(west_side) + geodesic_km2(east_side)
        print(f"    vs the unsplit polygon's geodesic area {p['area_km2'] / unsplit - 1:+.4%}, "
              f"the halves' sum {halves / unsplit - 1:+.4%}")
        assert p["area_km2"] == pytest.approx(unsplit, rel=0.01)
        assert halves == pytest.approx(unsplit, rel=0.001)
    assert sum(f["geometry"]["type"] == "MultiPolygon" for f in features) == 1


# --- 4. a job: its GeoJSON, the result zip, the summary --------------------------------------

JOB_SLICKS = {"north/utm.tif": [Band(row=150, col=200, length=260, thickness=40, angle=15),
                                Band(row=320, col=420, length=140, thickness=28, angle=-60)],
              "south/gcps.tif": [Ring(row=220, col=300, outer=64, inner=32)]}


async def test_a_jobs_places_the_zip_and_the_summary_agree(aiohttp_client, settings, tmp_path):
    files = {
        "north/utm.tif": utm_scene(tmp_path / "a.tif", JOB_SLICKS["north/utm.tif"], 600, 450,
                                   seed=21).read_bytes(),
        "photo.png": scene_png(200, 150, seed=5),
        "south/gcps.tif": gcp_scene(tmp_path / "b.tif", JOB_SLICKS["south/gcps.tif"], 600, 450,
                                    seed=22).read_bytes(),
    }
    client = await places_client(aiohttp_client, settings)
    status, body = await upload(client, zip_bytes(files))
    assert status == 202, body
    job_id = body["job_id"]
    early = await client.get(f"/api/job/{job_id}/spills.geojson")
    still_running = (await get_json(client, f"/api/job/{job_id}"))["finished_at"] is None
    assert still_running, "the job finished before it could be asked early"
    assert early.status == 409, await early.text()
    assert (await early.json())["error"]["code"] == "job_not_finished"
    await wait_finished(client, job_id, 60)
    tasks = [await get_json(client, f"/api/task/{t}") for t in body["task_ids"]]
    assert [t["filename"] for t in tasks] == list(files)
    assert [t["status"] for t in tasks] == ["done"] * 3
    by_name = {t["filename"]: t for t in tasks}
    collections = {t["filename"]: await spills(client, t) for t in tasks}

    # The task results.
    for name in JOB_SLICKS:
        result = by_name[name]["result"]
        assert result["crs"] == ("EPSG:32633" if name.startswith("north") else "EPSG:4326")
        assert len(result["bounds_lonlat"]) == 4
        assert result["spills_url"] == f"/api/task/{by_name[name]['task_id']}/spills.geojson"
        features = collections[name]["features"]
        assert len(features) == len(JOB_SLICKS[name]) == result["slick_count"]
        assert result["total_area_km2"] == pytest.approx(
            sum(f["properties"]["area_km2"] for f in features), abs=1e-5)
        check_rfc7946(collections[name], result["bounds_lonlat"])
    photo = by_name["photo.png"]["result"]
    assert photo["spills_url"] == f"/api/task/{by_name['photo.png']['task_id']}/spills.geojson"
    assert (photo["crs"], photo["bounds_lonlat"], photo["total_area_km2"]) == (None, None, None)
    pixel = collections["photo.png"]
    assert pixel["properties"] == {"coordinates": "pixel"}
    assert pixel["features"], "the photo's slicks are missing"
    for feature in pixel["features"]:
        assert all(feature["properties"][k] is None for k in LOCATED)

    # The job's file: the two scenes' features, in upload order; not the photo's.
    resp = await client.get(f"/api/job/{job_id}/spills.geojson")
    assert resp.status == 200 and resp.content_type == GEOJSON
    job_bytes = await resp.read()
    job_file = json.loads(job_bytes)
    expected = (collections["north/utm.tif"]["features"]
                + collections["south/gcps.tif"]["features"])
    assert job_file == {"type": "FeatureCollection", "features": expected}
    print(f"\njob: {len(expected)} lon/lat features from 2 scenes, "
          f"{len(pixel['features'])} pixel features in the photo's own file")

    # The result zip.
    archive = await get_json(client, f"/api/archive/{job_id}")
    resp = await client.get(archive["archive_url"])
    assert resp.status == 200
    with zipfile.ZipFile(io.BytesIO(await resp.read())) as zf:
        names = set(zf.namelist())
        assert {"spills/north/utm.geojson", "spills/south/gcps.geojson", "spills/photo.geojson",
                "spills.geojson"} <= names
        for name, stem in (("north/utm.tif", "north/utm"), ("south/gcps.tif", "south/gcps"),
                           ("photo.png", "photo")):
            assert json.loads(zf.read(f"spills/{stem}.geojson")) == collections[name]
        assert json.loads(zf.read("spills.geojson")) == job_file
        summary = {row["filename"]: row for row in json.loads(zf.read("summary.json"))}
    resp = await client.get(f"/api/job/{job_id}/spills.geojson")
    assert await resp.read() == job_bytes  # built once, the same after the zip

    for name, task in by_name.items():
        row, features = summary[name], collections[name]["features"]
        result = task["result"]
        assert row["slick_count"] == len(features) == result["slick_count"]
        assert row["spills"] == f"spills/{Path(name).with_suffix('')}.geojson"
        if name == "photo.png":
            assert (row["crs"], row["bounds"], row["total_area_km2"], row["largest_slick_km2"],
                    row["largest_slick_centroid"]) == (None, None, None, None, None)
            continue
        assert row["crs"] == result["crs"] and row["bounds"] == result["bounds_lonlat"]
        assert row["total_area_km2"] == result["total_area_km2"]
        assert row["total_area_km2"] == pytest.approx(
            sum(f["properties"]["area_km2"] for f in features), abs=len(features) * 1e-6)
        (first,) = [f["properties"] for f in features if f["properties"]["slick_id"] == 1]
        assert first["area_km2"] == max(f["properties"]["area_km2"] for f in features)
        assert row["largest_slick_km2"] == pytest.approx(first["area_km2"], abs=1e-6)
        assert row["largest_slick_centroid"] == pytest.approx(
            [first["centroid_lat"], first["centroid_lon"]], abs=1e-7)
        print(f"  {name}: {row['slick_count']} slicks, {row['total_area_km2']} km2, largest "
              f"{row['largest_slick_km2']} km2 at {row['largest_slick_centroid']}")


# --- 5. the overlay draws every slick's outline -----------------------------------------------

def to_overlay(lon: Any, lat: Any, scale_x: float, scale_y: float) -> np.ndarray:
    """Lon/lat -> (x, y) on the UTM scene's overlay."""
    col, row = ~UTM_TRANSFORM @ LONLAT_TO_UTM.transform(np.asarray(lon), np.asarray(lat))
    return np.column_stack([np.asarray(col) * scale_x, np.asarray(row) * scale_y])


def overlay_polygons(geometry: dict[str, Any], scale_x: float, scale_y: float
                     ) -> list[Polygon]:
    """A GeoJSON (Multi)Polygon's parts on the UTM scene's overlay."""
    polygons = ([geometry["coordinates"]] if geometry["type"] == "Polygon"
                else geometry["coordinates"])
    return [Polygon(to_overlay(*np.array(rings_[0]).T, scale_x, scale_y),
                    [to_overlay(*np.array(ring).T, scale_x, scale_y) for ring in rings_[1:]])
            for rings_ in polygons]


async def test_the_overlay_outlines_every_slick_where_the_geojson_puts_it(
        aiohttp_client, settings, tmp_path):
    path = utm_scene(tmp_path / "utm.tif", SLICKS, WIDTH, HEIGHT, seed=11)
    client = await places_client(aiohttp_client, settings, overlay_max_px=512)
    _, (task,) = await run_job(client, {"utm.tif": path.read_bytes()})
    features = (await spills(client, task))["features"]
    resp = await client.get(task["result"]["overlay_url"])
    assert resp.status == 200
    with Image.open(io.BytesIO(await resp.read())) as picture:
        rgb = np.asarray(picture.convert("RGB"))
    height, width = rgb.shape[:2]
    assert max(width, height) == 512
    scale_x, scale_y = width / task["result"]["width"], height / task["result"]["height"]
    outline = (rgb == np.array(OUTLINE_RGB, np.uint8)).all(axis=2)
    near_outline = ndimage.binary_dilation(outline, iterations=2)  # within 2 px
    drawn = []
    print()
    for feature in features:
        p = feature["properties"]
        # The feature's rings on the overlay, sampled every 2 px.
        parts = overlay_polygons(feature["geometry"], scale_x, scale_y)
        seen = total = 0
        for part in parts:
            for ring in (part.exterior, *part.interiors):
                for d in np.arange(0, ring.length, 2.0):
                    point = ring.interpolate(d)
                    x, y = min(int(point.x), width - 1), min(int(point.y), height - 1)
                    seen += bool(near_outline[y, x])
                    total += 1
        cx, cy = to_overlay(p["centroid_lon"], p["centroid_lat"], scale_x, scale_y)[0]
        radius = 0.5 * math.sqrt(p["pixels"] * scale_x * scale_y)
        yy, xx = np.mgrid[0:height, 0:width]
        near_centre = int((outline & (np.hypot(xx - cx, yy - cy) <= radius)).sum())
        print(f"overlay slick {p['slick_id']}: outline colour at {seen}/{total} points of its "
              f"rings (within 2 px), {near_centre} outline px within {radius:.0f} px of its "
              f"centroid ({cx:.0f}, {cy:.0f})")
        assert seen >= 0.95 * total
        assert near_centre > 0
        drawn.append(MultiPolygon(parts))
    # And nothing is outlined where there is no slick: every outline pixel (and label box)
    # lies on or within 3 px of a feature.
    slicks = shapely.unary_union(drawn).buffer(3)
    ys, xs = np.nonzero(outline)
    stray = int((~shapely.contains_xy(slicks, xs + 0.5, ys + 0.5)).sum())
    print(f"outline pixels {len(xs)}, off every slick {stray}")
    assert stray == 0


# --- 6. deleted, unknown, and pictures without a georeference -----------------------------

async def test_deleted_unknown_and_picture_spills(aiohttp_client, settings):
    client = await places_client(aiohttp_client, settings)
    data = scene_png(200, 150, seed=5)
    job, (task,) = await run_job(client, {"photo.png": data})
    job_id, task_id = job["job_id"], task["task_id"]
    collection = await spills(client, task)
    assert collection["properties"] == {"coordinates": "pixel"}
    assert "crs" not in collection
    resp = await client.get(task["result"]["mask_url"])
    with Image.open(io.BytesIO(await resp.read())) as mask:
        pieces = components(np.asarray(mask))
    features = collection["features"]
    assert features and len(features) == len(pieces) == task["result"]["slick_count"]
    for feature, piece in zip(features, pieces, strict=True):
        p = feature["properties"]
        assert p["image"] == "photo.png" and p["pixels"] == piece.pixels
        assert all(p[k] is None for k in LOCATED)
        outline = shape(feature["geometry"])
        assert outline.is_valid
        assert outline.area == pytest.approx(piece.pixels, rel=0.1)  # pixels, simplified
        xmin, ymin, xmax, ymax = outline.bounds
        assert 0 <= xmin and 0 <= ymin and xmax <= 200 and ymax <= 150
        centre = outline.centroid
        assert math.hypot(centre.x - piece.col, centre.y - piece.row) <= 1.0
    # A job of pictures only: its file is their pixel features.
    job_file = await get_json(client, f"/api/job/{job_id}/spills.geojson")
    assert job_file == collection

    resp = await client.delete(f"/api/job/{job_id}")
    assert resp.status == 200
    for url in (f"/api/task/{task_id}/spills.geojson", f"/api/job/{job_id}/spills.geojson"):
        resp = await client.get(url)
        assert resp.status == 410, (url, resp.status)
        assert (await resp.json())["error"]["code"] == "gone"
    unknown = str(uuid.uuid4())
    for url in (f"/api/task/{unknown}/spills.geojson", f"/api/job/{unknown}/spills.geojson",
                "/api/task/not-an-id/spills.geojson"):
        resp = await client.get(url)
        assert resp.status == 404, (url, resp.status)
        assert (await resp.json())["error"]["code"] == "not_found"
