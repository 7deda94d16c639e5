"""Whole scenes end to end, as a user sends them: GeoTIFFs in a map projection, in lon/lat,
in radar geometry (GCPs), with a Sentinel-1 border, zipped SAFE products, headers that lie
about their size, a slick larger than a tile, and the server's memory on a big scene.

Each test runs the real app (in process, or `oilspill serve` where the process matters)
against the real ML stub (the dark-spot detector), and checks the stitched mask the user
downloads against the truth the scene was written with.
"""

from __future__ import annotations

import io
import sqlite3
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import rasterio
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage

from ml_stub.scenes import encode, make_scene, to_uint8
from oilspill.config import Settings
from oilspill.geo.tiles import tile_grid
from oilspill.web.app import create_app

from .conftest import form, upload, wait_finished, zip_bytes
from .georef import (
    LONLAT_TRANSFORM,
    SAFE,
    UTM_TRANSFORM,
    Slick,
    amplitude_u16,
    band,
    calibration_lut,
    damp,
    gcp_grid,
    measurement_name,
    read_tif,
    s1_border,
    safe_product_files,
    sea,
    write_by_strips,
    write_tif,
)
from .procs import Api, poll, warm_up

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

NODATA = 127
EIGHT = np.ones((3, 3), bool)


# --- the truth ---------------------------------------------------------------------------

def slick_masks(truth: np.ndarray) -> list[np.ndarray]:
    """Each 8-connected slick of a truth mask, alone."""
    labels, count = ndimage.label(truth, structure=EIGHT)
    return [labels == n for n in range(1, count + 1)]


def strip_iou(mask_path: Path, slicks: list[Slick], strip_rows: int = 1024) -> float:
    """IoU of a mask file against the slicks, by strips."""
    both = either = 0
    with rasterio.open(mask_path) as src:
        for top in range(0, src.height, strip_rows):
            rows = min(strip_rows, src.height - top)
            oil = src.read(1, window=Window(0, top, src.width, rows)) == 255
            truth = np.zeros_like(oil)
            for slick in slicks:
                truth |= slick.truth(top, rows, src.width)
            both += int((oil & truth).sum())
            either += int((oil | truth).sum())
    return both / either if either else 1.0


# --- the service ---------------------------------------------------------------------------

async def scene_client(aiohttp_client: Any, settings: Settings, **changes: Any) -> TestClient:
    """The real app with small tiles, room for scenes, and the stub the settings point at."""
    changes = {"tile_px": 256, "tile_overlap_px": 32, "max_upload_bytes": 256 * 2**20,
               "min_free_bytes": 2**20, **changes}
    client: TestClient = await aiohttp_client(create_app(settings.with_changes(**changes)))
    return client


@dataclass
class Done:
    job: dict[str, Any]
    task: dict[str, Any]
    mask: bytes | None


async def run(client: TestClient, data: bytes, filename: str = "scene.tif",
              timeout_s: float = 60.0) -> Done:
    """Upload, wait for the job, and fetch its one task and that task's mask."""
    status, body = await upload(client, data, filename)
    assert status == 202, body
    job = await wait_finished(client, body["job_id"], timeout_s)
    (task_id,) = body["task_ids"]
    task = await (await client.get(f"/api/task/{task_id}")).json()
    mask = None
    if task["result"] and task["result"]["mask_url"]:
        resp = await client.get(task["result"]["mask_url"])
        assert resp.status == 200
        mask = await resp.read()
    return Done(job, task, mask)


def read_mask(data: bytes) -> tuple[np.ndarray, dict[str, Any]]:
    with rasterio.open(io.BytesIO(data)) as src:
        gcps, gcps_crs = src.gcps
        info = {"crs": src.crs, "transform": src.transform, "width": src.width,
                "height": src.height, "dtype": src.dtypes[0], "nodata": src.nodata,
                "count": src.count, "block_shapes": src.block_shapes,
                "overviews": src.overviews(1), "gcps": gcps, "gcps_crs": gcps_crs,
                "layout": src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT"),
                "compression": src.compression}
        return src.read(1), info


def iou(mask: np.ndarray, truth: np.ndarray, valid: np.ndarray | None = None) -> float:
    oil = mask == 255
    if valid is not None:
        oil, truth = oil & valid, truth & valid
    union = int((oil | truth).sum())
    return int((oil & truth).sum()) / union if union else 1.0


def components(oil: np.ndarray) -> list[int]:
    """Sizes of the 8-connected pieces of oil, largest first."""
    labels, count = ndimage.label(oil, structure=EIGHT)
    return sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True) if count else []


def tile_count(width: int, height: int, tile_px: int, overlap_px: int) -> int:
    def along(size: int) -> int:
        return 1 if size <= tile_px else -(-(size - tile_px) // (tile_px - overlap_px)) + 1
    return along(width) * along(height)


# --- 1. a bare GeoTIFF in UTM ---------------------------------------------------------------

def two_slicks(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Intensity and truth of a sea with two slicks, each across several 256 px tiles."""
    shape = (height, width)
    truth = (band(shape, (0.33 * height, 0.33 * width), 0.45 * width, 50, 20)
             | band(shape, (0.7 * height, 0.72 * width), 0.35 * width, 80, -50))
    assert ndimage.label(truth, structure=EIGHT)[1] == 2
    return damp(sea(height, width, seed), truth), truth


async def test_a_bare_utm_geotiff_gives_a_georeferenced_cog_with_both_slicks(
        aiohttp_client, settings, tmp_path):
    width, height = 1200, 1000
    intensity, truth = two_slicks(height, width, seed=1)
    path = write_tif(tmp_path / "utm.tif", amplitude_u16(intensity), crs="EPSG:32633",
                     transform=UTM_TRANSFORM)
    client = await scene_client(aiohttp_client, settings)
    started = time.monotonic()
    done = await run(client, path.read_bytes(), "utm.tif")
    elapsed = time.monotonic() - started
    assert (done.job["done"], done.job["failed"]) == (1, 0), done.job
    grid = tile_count(width, height, 256, 32)
    assert done.task["tiles_total"] == done.task["tiles_done"] == grid + 1  # + the overview
    result = done.task["result"]
    scene = result["scene"]
    assert scene["crs"] == "EPSG:32633" and scene["georeference"] == "affine"
    assert scene["tiles"] == grid and scene["dtype"] == "uint16"
    assert scene["calibrated"] is False and scene["scale"]["db_kind"] == "amplitude"
    assert (result["width"], result["height"]) == (width, height)

    assert done.mask is not None
    mask, info = read_mask(done.mask)
    assert info["crs"] == CRS.from_epsg(32633)
    assert info["transform"].almost_equals(UTM_TRANSFORM)
    assert (info["width"], info["height"], info["count"]) == (width, height, 1)
    assert (info["dtype"], info["nodata"]) == ("uint8", NODATA)
    assert info["block_shapes"] == [(512, 512)] and info["layout"] == "COG"
    assert info["overviews"], "the mask has no internal overviews"
    assert info["compression"] is not None and info["compression"].name == "deflate"
    assert set(np.unique(mask)) <= {0, 255}  # no border in this scene: all valid

    found = iou(mask, truth)
    slicks = components(mask == 255)
    print(f"\nUTM uint16 {width}x{height}: IoU {found:.3f}, slicks {result['slick_count']} "
          f"{slicks[:4]}, {elapsed:.1f} s")
    # Measured 0.75: the tiles alone give 0.95, the overview's coarse mask ORed over every
    # slick longer than half a tile fattens both (see the tile-size test).
    assert found >= 0.7
    assert result["slick_count"] == len(slicks) == 2
    for one in slick_masks(truth):
        assert (mask[one] == 255).mean() >= 0.8, "a slick was missed"
    assert result["oil_pixels"] == int((mask == 255).sum())
    assert result["oil_fraction"] == pytest.approx(result["oil_pixels"] / (width * height))
    resp = await client.get(result["overlay_url"])
    assert resp.status == 200 and resp.content_type == "image/png"
    with Image.open(io.BytesIO(await resp.read())) as overlay:
        assert max(overlay.size) <= 1024
        assert overlay.size[0] / overlay.size[1] == pytest.approx(width / height, rel=0.01)


# --- 2. lon/lat and radar geometry ---------------------------------------------------------

@pytest.mark.parametrize("georef", ["lonlat_float32", "gcps_uint16"])
async def test_a_scene_in_lonlat_or_by_gcps_is_found_and_its_mask_keeps_the_georeference(
        aiohttp_client, settings, tmp_path, georef):
    width, height = 1000, 800
    intensity, truth = two_slicks(height, width, seed=2)
    if georef == "lonlat_float32":  # sigma0 in linear power, as SNAP exports it
        path = write_tif(tmp_path / "scene.tif", intensity.astype(np.float32),
                         crs="EPSG:4326", transform=LONLAT_TRANSFORM)
    else:  # a GRD measurement: amplitude DNs in radar geometry, lon/lat tie points
        path = write_tif(tmp_path / "scene.tif", amplitude_u16(intensity),
                         gcps=gcp_grid(width, height), gcps_crs="EPSG:4326")
    client = await scene_client(aiohttp_client, settings)
    done = await run(client, path.read_bytes())
    assert (done.job["done"], done.job["failed"]) == (1, 0), done.job
    scene = done.task["result"]["scene"]
    assert scene["crs"] == "EPSG:4326"
    assert done.mask is not None
    mask, info = read_mask(done.mask)
    assert (info["width"], info["height"]) == (width, height)
    if georef == "lonlat_float32":
        assert scene["georeference"] == "affine" and scene["scale"]["db_kind"] == "intensity"
        assert info["crs"] == CRS.from_epsg(4326)
        assert info["transform"].almost_equals(LONLAT_TRANSFORM)
        assert not info["gcps"]
    else:
        assert scene["georeference"] == "gcps" and scene["scale"]["db_kind"] == "amplitude"
        expected = gcp_grid(width, height)
        assert len(info["gcps"]) == len(expected)
        assert info["gcps_crs"] == CRS.from_epsg(4326)
        for got, want in zip(info["gcps"], expected, strict=True):
            assert (got.row, got.col) == pytest.approx((want.row, want.col))
            assert (got.x, got.y) == pytest.approx((want.x, want.y))
        assert info["transform"].is_identity  # no affine invented for radar geometry
    found = iou(mask, truth)
    print(f"\n{georef} {width}x{height}: IoU {found:.3f}, slicks "
          f"{done.task['result']['slick_count']}")
    assert found >= 0.7
    assert done.task["result"]["slick_count"] == 2


# --- 3. a slick across a corner where four tiles meet ---------------------------------------

def whole_scene_detection(path: Path) -> np.ndarray:
    """The stub's detector on the whole scene at once, on the grey scale the server sends
    its tiles in (the scene's dB between its 1st and 99th percentiles)."""
    from ml_stub.detector import DetectorOptions, detect_array
    from oilspill.geo.scale import Stretch, to_grey
    from oilspill.geo.scene import inspect_scene, read_window, survey_scene

    info = inspect_scene(path, band=1, max_pixels=10**9)
    survey = survey_scene(path, info)
    values, valid = read_window(path, info, (0, 0, info.width, info.height), survey)
    grey = to_grey(values, valid, Stretch.from_survey(survey))
    return np.asarray(detect_array(grey.astype(np.float32), DetectorOptions()))


CORNER = 240  # with 256 px tiles overlapping by 32, the cores of tiles 0 and 1 meet here


def seam_breaks(oil: np.ndarray) -> int:
    """Pixels that differ from their neighbour across the core boundaries at CORNER."""
    across_rows = oil[CORNER - 1] != oil[CORNER]
    across_cols = oil[:, CORNER - 1] != oil[:, CORNER]
    return int(across_rows.sum() + across_cols.sum())


@pytest.mark.parametrize(("length", "thickness"), [(120, 40), (520, 70)],
                         ids=["tiles_only", "with_overview"])
async def test_a_slick_over_a_four_tile_corner_is_one_slick_without_a_seam(
        aiohttp_client, settings, tmp_path, length, thickness):
    """The short slick (extent under half a tile) comes from the four tiles alone; the long
    one also from the overview. Either way: one slick, and the mask the whole scene gets."""
    size = 256 + 2 * 224  # 3 x 3 tiles
    shape = (size, size)
    truth = band(shape, (CORNER, CORNER), length, thickness, 35)
    assert all(truth[r, c].any() for r, c in ((slice(0, CORNER), slice(0, CORNER)),
                                              (slice(0, CORNER), slice(CORNER, size)),
                                              (slice(CORNER, size), slice(0, CORNER)),
                                              (slice(CORNER, size), slice(CORNER, size))))
    path = write_tif(tmp_path / "corner.tif", amplitude_u16(damp(sea(size, size, 3), truth)),
                     crs="EPSG:32633", transform=UTM_TRANSFORM)
    client = await scene_client(aiohttp_client, settings)
    done = await run(client, path.read_bytes())
    assert done.job["done"] == 1, done.job
    assert done.task["tiles_total"] == 9 + 1
    assert done.mask is not None
    mask, _ = read_mask(done.mask)
    oil = mask == 255
    pieces = components(oil)
    whole = whole_scene_detection(path)
    agree = iou(mask, whole)
    seam = np.zeros(shape, bool)
    seam[CORNER - 8:CORNER + 8, :] = seam[:, CORNER - 8:CORNER + 8] = True
    near_seam = iou(np.where(seam, mask, 0), whole & seam)
    print(f"\ncorner slick {length}x{thickness}: IoU truth {iou(mask, truth):.3f}, "
          f"vs whole-scene detection {agree:.3f} (within 8 px of the seams {near_seam:.3f}), "
          f"seam breaks {seam_breaks(oil)} (whole {seam_breaks(whole)}), "
          f"pieces {pieces[:5]}, slick_count {done.task['result']['slick_count']}")
    assert done.task["result"]["slick_count"] == 1
    assert len(pieces) == 1
    # No seam: across each core boundary the mask changes no more often than the whole
    # scene's detection does there (a seam would cut the slick along the boundary).
    assert seam_breaks(oil) <= seam_breaks(whole) + 4, (seam_breaks(oil), seam_breaks(whole))
    assert iou(mask, truth) >= 0.7
    if length < 128:  # tiles only: the tiles' mosaic is the whole scene's mask
        assert agree >= 0.95
        assert near_seam >= 0.9


# --- 4. the zero border of a Sentinel-1 scene --------------------------------------------

def border_scene(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    """A 1000 x 800 uint16 UTM scene with an S1 border, two slicks, and a third slick so
    dark it is 0 in the file, well inside the rows' valid extents (valid, and oil).
    Returns the file, the valid area, the truth and the 0-valued slick."""
    width, height = 1000, 800
    intensity, truth = two_slicks(height, width, seed=4)
    valid = s1_border(height, width, seed=4)
    data = amplitude_u16(intensity)
    data[~valid] = 0
    zero_slick = band((height, width), (0.8 * height, 0.25 * width), 260, 30, 5)
    assert valid[zero_slick].all()
    data[zero_slick] = 0
    path = write_tif(tmp_path / "border.tif", data, crs="EPSG:32633", transform=UTM_TRANSFORM)
    return path, valid, (truth | zero_slick) & valid, zero_slick


async def test_the_zero_border_is_nodata_never_oil_and_not_counted(
        aiohttp_client, settings, tmp_path):
    path, valid, truth, zero_slick = border_scene(tmp_path)
    client = await scene_client(aiohttp_client, settings)
    done = await run(client, path.read_bytes())
    assert done.job["done"] == 1, done.job
    result = done.task["result"]
    assert done.mask is not None
    mask, _ = read_mask(done.mask)
    assert (mask[~valid] == NODATA).all(), "the border is not all nodata"
    assert (mask[valid] != NODATA).all(), "valid pixels written as nodata"
    assert result["scene"]["valid_pixels"] == int(valid.sum())
    oil = int((mask == 255).sum())
    assert result["oil_pixels"] == oil
    assert result["oil_fraction"] == pytest.approx(oil / int(valid.sum()))
    assert result["oil_fraction"] > oil / valid.size  # not over the whole raster
    zero_found = float((mask[zero_slick] == 255).mean())
    recall = [float((mask[one] == 255).mean()) for one in slick_masks(truth)]
    print(f"\nS1 border: border {1 - valid.mean():.1%} of the raster, all nodata; "
          f"slicks found {[f'{r:.0%}' for r in recall]} (the 0-valued one {zero_found:.0%}), "
          f"oil_fraction {result['oil_fraction']:.4f} over {int(valid.sum())} valid pixels")
    assert zero_found >= 0.9
    assert len(recall) == 3 and min(recall) >= 0.8


async def test_the_sea_beside_the_border_is_not_oil(aiohttp_client, settings, tmp_path):
    """The same scene: the valid sea next to the border is not taken for oil. A tile that
    is part border must give the mask the whole scene gives there (the border is shown to
    the ML service as the sea beside it, mirrored, so it has the sea's texture)."""
    path, valid, truth, _ = border_scene(tmp_path)
    client = await scene_client(aiohttp_client, settings)
    done = await run(client, path.read_bytes())
    assert done.mask is not None
    mask, _ = read_mask(done.mask)
    oil = mask == 255
    false_oil = int((oil & ~truth).sum())
    whole = whole_scene_detection(path) & valid
    found = iou(mask, truth, valid)
    print(f"\nS1 border: IoU over the valid area {found:.3f} (whole-scene detection "
          f"{iou(np.where(whole, 255, 0), truth, valid):.3f}), false oil {false_oil} px "
          f"({false_oil / valid.sum():.1%} of the sea), slick_count "
          f"{done.task['result']['slick_count']} for 3 slicks")
    # A flat grey border fill gave 0.39-0.52 here (8-13 % of the sea taken for oil): a
    # detector that estimates the sea's spread from the tile's brightest windows found ~0.
    assert found >= 0.9 and false_oil < 0.02 * valid.sum(), f"false oil: {false_oil} px"
    # The three slicks; what the tiles find beyond the whole-scene detection is specks (a few
    # near the border's tiles: 12 components against 4 when this was written), tiny in area.
    assert done.task["result"]["slick_count"] >= 3
    extra = oil & ~ndimage.binary_dilation(whole, iterations=3)
    assert extra.sum() < 0.002 * valid.sum(), int(extra.sum())


# --- 5. the answer does not depend on the tile size --------------------------------------

def many_slicks(height: int, width: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A sea with slicks from 150 px to 1,100 px long, some across tile borders."""
    shape = (height, width)
    truth = np.zeros(shape, bool)
    for row, col, length, thickness, angle in [
            (0.25, 0.2, 1100, 70, 15), (0.6, 0.55, 700, 110, -40), (0.8, 0.2, 400, 40, 80),
            (0.3, 0.75, 150, 30, 60), (0.78, 0.85, 260, 45, 0), (0.5, 0.4, 180, 60, 120)]:
        truth |= band(shape, (row * height, col * width), length, thickness, angle)
    return damp(sea(height, width, seed), truth, 7.0), truth


async def test_the_stitched_mask_does_not_depend_on_the_tile_size(
        aiohttp_client, settings, tmp_path):
    width, height = 2500, 2000
    intensity, truth = many_slicks(height, width, seed=5)
    data = write_tif(tmp_path / "scene.tif", amplitude_u16(intensity), crs="EPSG:32633",
                     transform=UTM_TRANSFORM).read_bytes()
    masks, counts = {}, {}
    for tile_px in (512, 1024):
        client = await scene_client(aiohttp_client, settings, tile_px=tile_px,
                                    tile_overlap_px=128, data_dir=tmp_path / f"data{tile_px}")
        started = time.monotonic()
        done = await run(client, data, timeout_s=90)
        assert done.job["done"] == 1, done.job
        assert done.task["tiles_total"] == tile_count(width, height, tile_px, 128) + 1
        assert done.mask is not None
        masks[tile_px] = read_mask(done.mask)[0]
        counts[tile_px] = done.task["result"]["slick_count"]
        print(f"\ntile {tile_px}: IoU truth {iou(masks[tile_px], truth):.3f}, slicks "
              f"{counts[tile_px]} {components(masks[tile_px] == 255)[:8]}, "
              f"{time.monotonic() - started:.1f} s")
        await client.close()
    agree = iou(masks[512], masks[1024] == 255)
    print(f"tile 512 vs 1024: IoU {agree:.3f}")
    # Fails today (0.89): the tiles' mosaics agree to 0.9997, but the overview (the scene
    # at 512 or 1024 px, so 4.9x or 2.4x coarser) is ORed over every slick longer than
    # half a tile and fattens it by an amount that depends on the tile size.
    assert agree >= 0.97
    assert counts[512] == counts[1024]


# --- 6. a zipped Sentinel-1 SAFE product ------------------------------------------------

def safe_zip(tmp_path: Path, width: int, height: int) -> tuple[bytes, np.ndarray, list[str]]:
    """A dual-polarisation (VV+VH) GRD product as ESA ships it, zipped: both measurements
    (uint16 DN, GCPs, zero border), their calibration, annotations, previews and a logo.
    Returns the zip, the VV truth and the names of the product's PNGs and VH measurement."""
    from ml_stub.scenes import scene_png

    intensity, truth = two_slicks(height, width, seed=6)
    valid = s1_border(height, width, seed=6)
    measurements = {}
    for pol, values in (("vv", intensity), ("vh", sea(height, width, seed=60))):
        dn = amplitude_u16(values)
        dn[~valid] = 0
        measurements[pol] = write_tif(tmp_path / f"{pol}.tiff", dn, gcps=gcp_grid(width, height),
                                      gcps_crs="EPSG:4326").read_bytes()
    pictures = {name: scene_png(120, 80, seed=i) for i, name in enumerate(
        ("preview/quick-look.png", "preview/thumbnail.png", "preview/icons/logo.png"))}
    files = safe_product_files(measurements, width, height, pictures)
    return (zip_bytes(files), truth & valid,
            [*(f"{SAFE}/{name}" for name in pictures), measurement_name("vh")])


@pytest.fixture
async def counted_stub(aiohttp_server: Any) -> tuple[str, list[tuple[int, int]]]:
    """The real stub, with a note of every image it answers: (width, height)."""
    from ml_stub.app import StubOptions
    from ml_stub.app import create_app as create_stub

    calls: list[tuple[int, int]] = []
    app = create_stub(StubOptions())

    @web.middleware
    async def count(request: web.Request, handler: Any) -> web.StreamResponse:
        response: web.StreamResponse = await handler(request)
        if request.path == "/segment" and isinstance(response, web.Response):
            # The answer is a mask of the image's size: the image is never read twice.
            assert isinstance(response.body, bytes)
            with Image.open(io.BytesIO(response.body)) as mask:
                calls.append(mask.size)
        return response

    app.middlewares.append(count)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/"), calls


async def test_a_zipped_sentinel1_product_is_one_calibrated_scene(
        aiohttp_client, settings, tmp_path, counted_stub):
    url, calls = counted_stub
    width, height = 1000, 800
    data, truth, not_scenes = safe_zip(tmp_path, width, height)
    client = await scene_client(aiohttp_client, settings, ml_service_url=url)
    status, body = await upload(client, data, "S1A_product.zip")
    assert status == 202, body
    skipped = {s["filename"]: s["reason"] for s in body["skipped"]}
    for name in not_scenes:
        assert skipped.get(name) == "part of a Sentinel-1 product", (name, skipped)
    job = await wait_finished(client, body["job_id"], 60)
    assert (job["total"], job["done"], job["failed"]) == (1, 1, 0), job
    assert {s["filename"]: s["reason"] for s in job["skipped"]} == skipped
    (task_id,) = body["task_ids"]
    task = await (await client.get(f"/api/task/{task_id}")).json()
    assert task["filename"] == measurement_name("vv")
    scene = task["result"]["scene"]
    assert scene["calibrated"] is True and scene["scale"]["db_kind"] == "sigma0"
    assert scene["georeference"] == "gcps" and scene["crs"] == "EPSG:4326"
    # Only the VV measurement's tiles (and its overview) reached the ML service: no PNG of
    # the product, no VH tile.
    grid = tile_count(width, height, 256, 32)
    assert task["tiles_total"] == grid + 1
    overview = (256, round(height * 256 / width))
    assert len(calls) <= grid + 1 and calls.count(overview) == 1
    assert all(size == (256, 256) for size in calls if size != overview), calls
    assert (120, 80) not in calls
    resp = await client.get(task["result"]["mask_url"])
    mask, info = read_mask(await resp.read())
    assert len(info["gcps"]) == len(gcp_grid(width, height))
    assert (mask != NODATA).sum() == scene["valid_pixels"]
    # Calibrated: the sea's level is the median of DN^2 / A^2 (A from the XML), in dB.
    dn = read_tif(tmp_path / "vv.tiff").astype(np.float64)
    sigma0 = (dn / calibration_lut(width, height)) ** 2
    expected_sea_db = 10 * np.log10(np.median(sigma0[mask != NODATA]))
    assert scene["scale"]["sea_db"] == pytest.approx(expected_sea_db, abs=0.05)
    recall = [float((mask[one] == 255).mean()) for one in slick_masks(truth)]
    print(f"\nSAFE VV {width}x{height}: {len(calls)} calls for {grid} tiles + overview, "
          f"slicks found {[f'{r:.0%}' for r in recall]}, IoU {iou(mask, truth, mask != NODATA):.3f}"
          f", slick_count {task['result']['slick_count']}, sea {scene['scale']['sea_db']} dB "
          f"sigma0 (expected {expected_sea_db:.2f})")
    assert len(recall) == 2 and min(recall) >= 0.8


async def test_a_polarisation_the_product_lacks_is_refused(
        aiohttp_client, settings, tmp_path):
    data, _, _ = safe_zip(tmp_path, 300, 200)
    client = await scene_client(aiohttp_client, settings, s1_polarisation="hh")
    status, body = await upload(client, data, "S1A_product.zip")
    assert status == 422, body
    assert body["error"]["code"] == "bad_sentinel1_product"
    assert "OILSPILL_S1_POLARISATION" in body["error"]["message"]
    assert "VV, VH" in body["error"]["message"]
    assert job_rows(settings.data_dir) == 0
    assert not any(settings.jobs_dir.iterdir())


# --- 7. a header that declares 10^12 pixels ------------------------------------------------

def huge_tiff_header(width: int = 1_000_000, height: int = 1_000_000) -> bytes:
    """A 150-byte little-endian TIFF whose one IFD declares width x height 8-bit pixels in
    one DEFLATE strip: a header that costs nothing to send and would cost a terabyte."""
    ifd_entries = 10
    data_offset = 8 + 2 + ifd_entries * 12 + 4
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 8), (262, 3, 1),
               (273, 4, data_offset), (277, 3, 1), (278, 4, height), (279, 4, 16),
               (284, 3, 1)]  # (tag, type: 3 SHORT / 4 LONG, value), sorted by tag
    assert len(entries) == ifd_entries
    ifd = struct.pack("<H", ifd_entries)
    for tag, kind, value in entries:
        ifd += struct.pack("<HHI", tag, kind, 1)
        ifd += struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
    ifd += struct.pack("<I", 0)  # no next IFD
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\x78\x9c" + bytes(14)


def job_rows(data_dir: Path) -> int:
    with sqlite3.connect(data_dir / "oilspill.sqlite3") as db:
        return int(db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0])


async def test_a_header_of_a_million_by_a_million_is_refused_at_once(client, settings):
    header = huge_tiff_header()
    started = time.monotonic()
    form = aiohttp.FormData()
    form.add_field("file", header, filename="huge.tif", content_type="image/tiff")
    resp = await client.post("/api/upload/", data=form)
    elapsed = time.monotonic() - started
    body = await resp.json()
    print(f"\n10^6 x 10^6 header ({len(header)} bytes): {resp.status} in {elapsed * 1000:.0f} ms")
    assert resp.status == 413, body
    assert body["error"]["code"] == "scene_too_large"
    assert "OILSPILL_MAX_SCENE_PIXELS" in body["error"]["message"]
    assert elapsed < 0.5
    assert job_rows(settings.data_dir) == 0
    assert not any(settings.jobs_dir.iterdir())


async def test_a_huge_header_in_a_zip_fails_its_task_and_the_png_is_done(client, settings):
    from ml_stub.scenes import scene_png

    data = zip_bytes({"huge.tif": huge_tiff_header(), "good.png": scene_png(96, 64, 3)})
    status, body = await upload(client, data)
    assert status == 202, body
    job = await wait_finished(client, body["job_id"])
    assert (job["total"], job["done"], job["failed"]) == (2, 1, 1)
    tasks = {}
    for task_id in body["task_ids"]:
        task = await (await client.get(f"/api/task/{task_id}")).json()
        tasks[task["filename"]] = task
    huge, good = tasks["huge.tif"], tasks["good.png"]
    assert huge["status"] == "failed" and huge["result"] is None
    assert "OILSPILL_MAX_SCENE_PIXELS" in huge["error"]
    assert good["status"] == "done" and good["result"]["width"] == 96


# --- 8. a slick wider than a tile ------------------------------------------------------

async def test_a_slick_wider_than_a_tile_in_a_big_scene_is_found(
        aiohttp_client, settings, tmp_path):
    """Big on purpose: a 1,500 x 6,000 px slick is wider than a default 1024 px tile, so
    whole tiles are all oil and only the overview sees its edges; the scene has to be big
    (12,000 x 12,000 = 144 Mpx, 196 tiles of the default size) for the slick to be that
    size against a sea around it. Written as uint8 by strips, uploaded from disk."""
    width = height = 12_000
    slicks = [Slick(row=6000, col=6000, length=6000, thickness=1500, angle=30, damp_db=8)]
    started = time.monotonic()
    path = write_by_strips(tmp_path / "big.tif", width, height, slicks, dtype="uint8", seed=8)
    written = time.monotonic()
    client = await scene_client(aiohttp_client, settings, tile_px=1024, tile_overlap_px=128,
                                concurrency=2)
    form = aiohttp.FormData()
    with path.open("rb") as scene:
        form.add_field("file", scene, filename="big.tif", content_type="image/tiff")
        resp = await client.post("/api/upload/", data=form)
        body = await resp.json()
    assert resp.status == 202, body
    path.unlink()
    job = await wait_finished(client, body["job_id"], 150)
    processed = time.monotonic()
    assert (job["done"], job["failed"]) == (1, 0), job
    task = await (await client.get(f"/api/task/{body['task_ids'][0]}")).json()
    assert task["tiles_total"] == tile_count(width, height, 1024, 128) + 1 == 197
    resp = await client.get(task["result"]["mask_url"])
    mask_path = tmp_path / "mask.tif"
    mask_path.write_bytes(await resp.read())
    found = strip_iou(mask_path, slicks)
    result = task["result"]
    print(f"\n12,000^2 uint8, slick 1,500 x 6,000: IoU {found:.3f}, slick_count "
          f"{result['slick_count']}, largest {result['largest_slick_px']} px of "
          f"{result['oil_pixels']} oil px; written {written - started:.1f} s, processed "
          f"{processed - written:.1f} s")
    assert found >= 0.6
    # One slick, or a few pieces of which one holds nearly all the oil.
    assert result["slick_count"] <= 5
    assert result["largest_slick_px"] >= 0.9 * result["oil_pixels"]


# --- 9. the server's memory on a scene ---------------------------------------------------

def status_kib(pid: int, field: str) -> int:
    """A VmRSS/VmHWM line of /proc/<pid>/status, in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1])
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_the_servers_memory_stays_bounded_on_a_scene(stack_factory, tmp_path):
    """The real `oilspill serve` (default 1024 px tiles) and a stub that answers at once: a
    6,000 x 4,000 uint16 scene (46 MiB of pixels, 35 tiles) must not be held whole. The
    target is 256 MiB of growth for a 26,000 x 17,000 Sentinel-1 scene; 160 MiB here."""
    width, height = 6_000, 4_000
    slicks = [Slick(1200, 1500, 2000, 120, 20), Slick(3000, 4200, 1500, 300, -45)]
    path = write_by_strips(tmp_path / "scene.tif", width, height, slicks, dtype="uint16",
                           seed=9)
    stack = await stack_factory(["--mode", "ready"], OILSPILL_LOG_LEVEL="WARNING")
    assert stack.server and stack.server.proc
    pid = stack.server.proc.pid
    # What an idle server that has worked holds: the raster libraries load with the first
    # scene, once.
    await warm_up(stack.base, write_by_strips(tmp_path / "warm.tif", 64, 64, [],
                                              dtype="uint16", seed=1))
    idle_kib = status_kib(pid, "VmRSS")
    started = time.monotonic()
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base)
        form = aiohttp.FormData()
        with path.open("rb") as scene:
            form.add_field("file", scene, filename="scene.tif", content_type="image/tiff")
            async with session.post(f"{stack.base}/api/upload/", data=form) as resp:
                body = await resp.json()
                assert resp.status == 202, body
        job = await api.wait_job(body["job_id"], timeout_s=120)
    elapsed = time.monotonic() - started
    assert (job["done"], job["failed"]) == (1, 0), job
    assert job["tiles_total"] == tile_count(width, height, 1024, 128) + 1
    peak_kib = status_kib(pid, "VmHWM")
    growth_mib = (peak_kib - idle_kib) / 1024
    print(f"\nserver on {width} x {height} uint16: idle {idle_kib / 1024:.0f} MiB, peak "
          f"{peak_kib / 1024:.0f} MiB, growth {growth_mib:.0f} MiB (bound 160), {elapsed:.1f} s")
    assert growth_mib < 160


def gdal_mapped(pid: int) -> bool:
    """Whether the process has GDAL's library mapped: loaded by its first raster work."""
    return "libgdal" in Path(f"/proc/{pid}/maps").read_text()


async def test_the_raster_libraries_load_with_the_first_scene_not_before(
        stack_factory, tmp_path):
    """The real `oilspill serve`: idle, it holds under 80 MiB (the first batch's target) and
    no GDAL; a job of pictures (a JPEG and PNGs, one TIFF-free zip) loads none either; the
    first scene loads them, and is done."""
    stack = await stack_factory(["--mode", "ready"], OILSPILL_LOG_LEVEL="WARNING")
    assert stack.server and stack.server.proc
    pid = stack.server.proc.pid
    idle_mib = status_kib(pid, "VmRSS") / 1024
    print(f"\nidle server: {idle_mib:.1f} MiB")
    assert idle_mib < 80
    assert not gdal_mapped(pid)
    pictures = {f"sea{n}.png": encode(to_uint8(make_scene(200, 150, seed=n).intensity), "PNG")
                for n in range(3)}
    pictures["sea.jpg"] = encode(to_uint8(make_scene(300, 200, seed=7).intensity), "JPEG")
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base)
        job = await api.wait_job((await api.upload(zip_bytes(pictures)))["job_id"])
    assert (job["done"], job["failed"]) == (4, 0), job
    assert not gdal_mapped(pid)
    await warm_up(stack.base, write_by_strips(tmp_path / "first.tif", 1500, 1200, [],
                                              dtype="uint16", seed=1))
    assert gdal_mapped(pid)


async def test_a_picture_larger_than_a_tile_is_tiled_and_keeps_a_png_mask(
        aiohttp_client, settings):
    """A 1,500 x 1,200 PNG is cut into tiles like a scene (read by GDAL, never decoded whole
    by the server), and its stitched mask comes back as a PNG of its size."""
    scene = make_scene(1500, 1200, seed=3, lookalikes=0, ships=0)
    client = await aiohttp_client(create_app(settings.with_changes(
        tile_px=512, tile_overlap_px=64)))
    resp = await client.post("/api/upload/", data=form(encode(to_uint8(scene.intensity), "PNG"),
                                                       "big.png"))
    assert resp.status == 202, await resp.text()
    body = await resp.json()
    job = await wait_finished(client, body["job_id"], 120)
    tiles = len(tile_grid(1500, 1200, 512, 64))
    assert tiles > 1 and (job["done"], job["tiles_total"]) == (1, tiles + 1)  # + overview
    task = await (await client.get(f"/api/task/{body['task_ids'][0]}")).json()
    mask_resp = await client.get(task["result"]["mask_url"])
    assert mask_resp.content_type == "image/png"
    mask = np.asarray(Image.open(io.BytesIO(await mask_resp.read()))) == 255
    assert mask.shape == (1200, 1500)
    found = (mask & scene.truth).sum() / (mask | scene.truth).sum()
    assert found >= 0.7, found


async def test_a_scene_whose_tiles_fail_fails_cleanly_and_leaves_no_working_files(
        aiohttp_client, settings, start_stub, tmp_path):
    """A service that answers pictures, not masks (the original YOLO service), cannot be
    stitched: the scene fails with that reason, its other tiles are passed over, and its
    working folder (survey, tile masks, a draft the size of the scene) is removed."""
    path, _, _, _ = border_scene(tmp_path)
    annotating = await start_stub(mode="annotated")
    client = await scene_client(aiohttp_client, settings.with_changes(
        ml_service_url=annotating, data_dir=tmp_path / "data"))
    done = await run(client, path.read_bytes())
    assert (done.job["done"], done.job["failed"]) == (0, 1), done.job
    assert "mask" in done.task["error"] and "internal error" not in done.task["error"]
    scenes = tmp_path / "data" / "jobs" / done.job["job_id"] / "scenes"

    async def cleaned() -> bool | None:
        return True if not any(scenes.iterdir()) else None
    await poll(cleaned, "the failed scene's working folder to go", 30)


@pytest.mark.parametrize("cut", ["tile", "overview"])
async def test_a_mask_whose_pixels_do_not_decode_fails_the_scene_with_why(
        aiohttp_client, aiohttp_server, settings, tmp_path, cut):
    """An ML service whose masks have the right header but pixel data cut short (for every
    tile, or for the overview alone): the scene fails with that reason, not an internal
    error and not a mask of garbage."""
    path, _, _, _ = border_scene(tmp_path)

    async def cut_mask(request: web.Request) -> web.Response:
        form = await request.post()
        field = form["file"]
        assert isinstance(field, web.FileField)
        with Image.open(field.file) as image:
            size = image.size
        noisy = np.random.default_rng(0).integers(0, 2, (size[1], size[0]), np.uint8) * 255
        out = io.BytesIO()
        Image.fromarray(noisy, mode="L").save(out, format="PNG")
        whole = out.getvalue()
        if f".{cut}" not in field.filename:  # the others get whole masks
            return web.Response(body=whole, content_type="image/png")
        return web.Response(body=whole[:len(whole) // 2], content_type="image/png")

    app = web.Application()
    app.router.add_post("/segment", cut_mask)
    ml = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    client = await scene_client(aiohttp_client, settings.with_changes(
        ml_service_url=ml, data_dir=tmp_path / "data"))
    done = await run(client, path.read_bytes())
    assert (done.job["done"], done.job["failed"]) == (0, 1), done.job
    error = done.task["error"]
    assert error.startswith(cut), error
    assert "cannot be decoded" in error or "truncated or corrupt" in error, error
    assert "internal error" not in error
