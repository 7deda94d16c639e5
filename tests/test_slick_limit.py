"""OILSPILL_MAX_SLICKS: a mask with more slicks than that keeps the outlines of the largest,
counts every slick, and a mask of speckle (a model's noise) is not outlined speck by speck.

The truth is scipy's 8-connected labelling of the whole mask; the outlines kept are compared
with those the tracer gives without a limit."""

from __future__ import annotations

import io
import zlib
from pathlib import Path

import numpy as np
import pytest
import rasterio
import shapely
from aiohttp import web
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image
from scipy import ndimage

from oilspill.geo.polygons import SlickTracer, slick_polygons

from .conftest import scene_png
from .test_places import mask_of, places_client, run_job, spills
from .test_scenes import border_scene

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

EIGHT = np.ones((3, 3), bool)


def truth(oil: np.ndarray) -> list[int]:
    """Every 8-connected slick's pixel count, largest first."""
    labels, count = ndimage.label(oil, structure=EIGHT)
    return sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True) if count else []


def traced(oil: np.ndarray, block_rows: int, max_slicks: int | None) -> SlickTracer:
    tracer = SlickTracer(max_slicks=max_slicks)
    for top in range(0, oil.shape[0], block_rows):
        tracer.add(oil[top:top + block_rows], top)
    return tracer


def check_limit(oil: np.ndarray, block_rows: int, most: int) -> None:
    sizes = truth(oil)
    whole = traced(oil, block_rows, None)
    every = whole.finish()
    capped = traced(oil, block_rows, most)
    kept = capped.finish()
    assert (capped.count, capped.largest) == (len(sizes), sizes[0] if sizes else 0)
    assert (whole.count, whole.largest) == (capped.count, capped.largest)
    # The largest `most`, as a multiset of sizes (which of equal ones is open), numbered
    # 1.. by size, each outline the one traced without a limit.
    assert [s.pixels for s in kept] == sizes[:most]
    assert [s.slick_id for s in kept] == list(range(1, len(kept) + 1))
    outlines = {shapely.to_wkb(s.polygon) for s in every}
    assert all(shapely.to_wkb(s.polygon) in outlines for s in kept)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(oil=hnp.arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40)),
                      elements=st.booleans()),
       block_rows=st.integers(1, 12), most=st.integers(0, 12))
def test_the_largest_are_outlined_and_every_slick_is_counted(oil, block_rows, most):
    check_limit(oil, block_rows, most)


def sized_slicks(seed: int) -> np.ndarray:
    """A 300 x 400 mask: 60 squares of many sizes (some equal), some across the block rows
    of 64, a long band through every block, one with a hole."""
    rng = np.random.default_rng(seed)
    oil = np.zeros((300, 400), bool)
    for n in range(60):
        side = int(rng.integers(1, 12)) if n % 5 else 4
        row, col = int(rng.integers(0, 290)), int(rng.integers(0, 390))
        oil[row:row + side, col:col + side] = True
    oil[10:290, 395:398] = True
    oil[100:140, 200:240] = True
    oil[110:130, 210:230] = False
    return oil


@pytest.mark.parametrize("most", [0, 1, 5, 17, 1000])
@pytest.mark.parametrize("seed", [0, 1])
def test_squares_bands_and_holes_across_blocks(seed, most):
    check_limit(sized_slicks(seed), 64, most)


def test_a_mask_of_speckle_is_counted_not_outlined_speck_by_speck(tmp_path: Path):
    """One 512 x 1,024 mask file of specks (5% of pixels at random): what the overlay and
    the GeoJSON trace of a picture the model answered with noise."""
    oil = np.random.default_rng(3).random((512, 1024)) < 0.05
    path = tmp_path / "speckle.tif"
    with rasterio.open(path, "w", driver="GTiff", width=1024, height=512, count=1,
                       dtype="uint8") as dst:
        dst.write(oil.astype(np.uint8) * 255, 1)
    sizes = truth(oil)
    assert len(sizes) > 15_000
    kept = slick_polygons(path, block_rows=128, max_slicks=50)
    assert [s.pixels for s in kept] == sizes[:50]
    # Without a limit each speck would be a polygon. With one, only the candidates and the
    # specks on the blocks' first and last rows (which may go on in the next block) are;
    # also with a limit that falls among the many specks of one pixel.
    ties = sum(1 for size in sizes if size > 1) + 10
    for most in (50, ties):
        capped = traced(oil, 128, most)
        assert [s.pixels for s in capped.finish()] == sizes[:most]
        assert capped.count == len(sizes)
        # Polygons made: those kept, those that later gave way to larger ones, and the
        # specks on the blocks' edge rows (about 2 x 4 x 1,024 x 0.05); never one a speck.
        larger = sum(1 for size in sizes if size > sizes[most - 1])
        assert capped.pieces < most + larger + 2 * 4 * 1024 * 0.05 * 2, most


# --- through the service ---------------------------------------------------------------------

async def test_a_model_answering_speckle_gets_the_largest_outlined_and_all_counted(
        aiohttp_client, aiohttp_server, settings, tmp_path):
    """An ML service whose every answer is speckle (3% of pixels, and a few larger specks):
    for a tiled UTM scene and for a plain picture, the job finishes, the summary counts
    every slick of the mask the user downloads, and the GeoJSON and the overlay hold the
    OILSPILL_MAX_SLICKS largest."""
    most = 25

    async def speckle(request: web.Request) -> web.Response:
        form = await request.post()
        field = form["file"]
        assert isinstance(field, web.FileField)
        with Image.open(field.file) as image:
            width, height = image.size
        rng = np.random.default_rng(zlib.crc32(field.filename.encode()))
        oil = rng.random((height, width)) < 0.03
        for _ in range(8):  # a few specks of several pixels, so that sizes differ
            row, col = int(rng.integers(0, height)), int(rng.integers(0, width))
            oil[row:row + int(rng.integers(2, 6)), col:col + int(rng.integers(2, 6))] = True
        out = io.BytesIO()
        Image.fromarray(oil.astype(np.uint8) * 255, mode="L").save(out, format="PNG")
        return web.Response(body=out.getvalue(), content_type="image/png")

    app = web.Application()
    app.router.add_post("/segment", speckle)
    ml = str((await aiohttp_server(app)).make_url("")).rstrip("/")
    client = await places_client(aiohttp_client, settings.with_changes(
        ml_service_url=ml, data_dir=tmp_path / "data", max_slicks=most))
    scene, _, _, _ = border_scene(tmp_path)
    _, tasks = await run_job(client, {"scene.tif": scene.read_bytes(),
                                      "sea.png": scene_png(300, 200)})
    for task in tasks:
        result = task["result"]
        mask = await mask_of(client, task)
        labels, count = ndimage.label(mask == 255, structure=EIGHT)
        sizes = sorted(np.bincount(labels.ravel())[1:].tolist(), reverse=True)
        assert count > 10 * most, (task["filename"], count)
        assert result["slick_count"] == count, task["filename"]
        assert result["largest_slick_px"] == sizes[0]
        features = (await spills(client, task))["features"]
        # (numbered by area on the ground, which simplified outlines can order otherwise)
        assert sorted((f["properties"]["pixels"] for f in features), reverse=True) == sizes[
            :most], task["filename"]
        if result.get("scene"):
            assert result["scene"]["slick_polygons"] == most
        overlay = await client.get(result["overlay_url"])
        assert overlay.status == 200, await overlay.text()
