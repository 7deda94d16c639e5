"""Stitching tile masks into a COG: exact cores, georeference, nodata, overview, statistics."""

from __future__ import annotations

import tempfile
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.shutil
from hypothesis import given, settings
from hypothesis import strategies as st
from rasterio.crs import CRS
from rasterio.windows import Window
from scipy import ndimage

from oilspill.geo.quicklook import render_quicklook
from oilspill.geo.stitch import (
    NODATA,
    OVERVIEW_ERODE_PX,
    BadMask,
    Georef,
    MaskStats,
    cog_overview_factors,
    create_draft,
    mask_stats,
    stitch_mask,
    write_cog,
)
from oilspill.geo.tiles import Tile, overview_shape, tile_grid
from oilspill.masks import OVERLAY_PALETTE

# Tile PNGs and plain pictures carry no georeference, which is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

WIDTH, HEIGHT = 517, 300
UTM = Georef(crs_wkt="EPSG:32633", transform=(10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0))
EIGHT = np.ones((3, 3), bool)


def truth_mask(width: int = WIDTH, height: int = HEIGHT, seed: int = 1) -> np.ndarray:
    """0/255: random blobs, a long diagonal slick across tiles, a ring."""
    rng = np.random.default_rng(seed)
    rows, cols = np.ogrid[:height, :width]
    oil = ndimage.binary_opening(rng.random((height, width)) < 0.5, iterations=2)
    oil &= rng.random((height, width)) < 0.995  # a few holes
    oil |= np.abs(rows - cols * height / width) < 3  # crosses every tile border
    ring = np.hypot(rows - height / 2, cols - width / 2)
    oil |= (ring > 60) & (ring < 64)
    return np.where(oil, 255, 0).astype(np.uint8)


def write_png(path: Path, band: np.ndarray) -> Path:
    with rasterio.open(path, "w", driver="PNG", width=band.shape[1], height=band.shape[0],
                       count=1, dtype="uint8") as dst:
        dst.write(band, 1)
    return path


def write_tiles(folder: Path, truth: np.ndarray, tile_px: int, overlap_px: int,
                noise: bool = True) -> list[tuple[Tile, Path]]:
    """Tile masks from the truth, each with noise outside its core that must not survive."""
    rng = np.random.default_rng(2)
    height, width = truth.shape
    out = []
    for tile in tile_grid(width, height, tile_px, overlap_px):
        band = truth[tile.row:tile.row + tile.height, tile.col:tile.col + tile.width].copy()
        if not noise:
            out.append((tile, write_png(folder / f"tile{tile.index}.png", band)))
            continue
        core = np.zeros(band.shape, bool)
        win = tile.core_in_tile
        core[win.row_off:win.row_off + win.height, win.col_off:win.col_off + win.width] = True
        band[~core] = rng.integers(0, 256, band.shape, dtype=np.uint8)[~core]
        out.append((tile, write_png(folder / f"tile{tile.index}.png", band)))
    return out


def read_band(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return np.asarray(src.read(1))


def scipy_stats(mask: np.ndarray, nodata: int | None = NODATA) -> MaskStats:
    valid = mask != nodata if nodata is not None else np.ones(mask.shape, bool)
    oil = (mask >= 128) & valid
    labels, count = ndimage.label(oil, structure=EIGHT)
    sizes = np.bincount(labels.ravel())[1:]
    return MaskStats(mask.shape[1], mask.shape[0], int(valid.sum()), int(oil.sum()),
                     float(oil.sum() / valid.sum()) if valid.any() else 0.0, int(count),
                     int(sizes.max()) if count else 0)


@pytest.mark.parametrize("tile_px", [64, 128])
def test_stitched_cog_equals_the_truth_and_carries_the_crs(tmp_path: Path, tile_px: int) -> None:
    truth = truth_mask()
    tiles = write_tiles(tmp_path, truth, tile_px, 16)
    out = tmp_path / "out" / "mask.tif"
    out.parent.mkdir()
    stats = stitch_mask(out, WIDTH, HEIGHT, tiles, georef=UTM, strip_rows=7)
    assert sorted(p.name for p in out.parent.iterdir()) == ["mask.tif"]  # no leftovers
    with rasterio.open(out) as src:
        assert np.array_equal(src.read(1), truth)
        assert src.crs == CRS.from_epsg(32633)
        assert src.transform.almost_equals(rasterio.Affine(*UTM.transform or ()))
        assert src.nodata == NODATA and src.dtypes[0] == "uint8"
        assert src.profile["tiled"] and src.block_shapes == [(512, 512)]
        assert src.compression == rasterio.enums.Compression.deflate
        assert src.overviews(1)
        assert src.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert Georef.from_dataset(src) == Georef(
            crs_wkt=CRS.from_epsg(32633).to_wkt(), transform=UTM.transform)
    assert stats == scipy_stats(truth) == mask_stats(out)
    assert stats.slick_count < scipy_stats(truth[:150]).slick_count + \
        scipy_stats(truth[150:]).slick_count  # strip and tile borders do not split slicks


def test_gcps_and_their_crs_are_kept(tmp_path: Path) -> None:
    truth = truth_mask()
    gcps = ((0.0, 0.0, 10.5, 55.0, 0.0), (0.0, 516.0, 11.0, 55.1, 0.0),
            (299.0, 0.0, 10.4, 54.8, 0.0), (299.0, 516.0, 10.9, 54.9, 12.5))
    georef = Georef(gcps=gcps, gcps_crs_wkt="EPSG:4326")
    out = tmp_path / "mask.tif"
    stitch_mask(out, WIDTH, HEIGHT, write_tiles(tmp_path, truth, 128, 16), georef=georef)
    with rasterio.open(out) as src:
        points, crs = src.gcps
        assert crs == CRS.from_epsg(4326)
        assert [(p.row, p.col, p.x, p.y, p.z) for p in points] == list(gcps)
        assert src.crs is None and np.array_equal(src.read(1), truth)
        assert Georef.from_dataset(src).gcps == gcps


def test_a_plain_picture_has_no_georeference(tmp_path: Path) -> None:
    truth = truth_mask(100, 80)
    out = tmp_path / "mask.tif"
    stitch_mask(out, 100, 80, write_tiles(tmp_path, truth, 128, 16))
    with rasterio.open(out) as src:
        assert src.crs is None and src.gcps == ([], None) and src.transform.is_identity
        assert Georef.from_dataset(src) == Georef()
        assert np.array_equal(src.read(1), truth)


def test_outside_the_valid_area_is_nodata_never_oil(tmp_path: Path) -> None:
    truth = truth_mask()
    rows, cols = np.ogrid[:HEIGHT, :WIDTH]
    inside = np.hypot(rows - 150, cols - 250) < 140  # a round footprint

    def valid(window: Window) -> np.ndarray:
        return np.asarray(inside[window.row_off:window.row_off + window.height,
                                 window.col_off:window.col_off + window.width])

    out = tmp_path / "mask.tif"
    stats = stitch_mask(out, WIDTH, HEIGHT, write_tiles(tmp_path, truth, 64, 16), valid=valid,
                        strip_rows=13)
    mask = read_band(out)
    assert (mask[~inside] == NODATA).all()
    assert np.array_equal(mask[inside], truth[inside])
    assert stats == scipy_stats(mask)
    assert stats.valid_pixels == inside.sum() and stats.oil_pixels == (truth[inside] > 0).sum()


def test_a_missing_tile_is_nodata(tmp_path: Path) -> None:
    truth = truth_mask()
    tiles = write_tiles(tmp_path, truth, 128, 16)
    gone = tiles.pop(6)[0].core_window
    out = tmp_path / "mask.tif"
    stats = stitch_mask(out, WIDTH, HEIGHT, tiles)
    mask = read_band(out)
    hole = np.zeros(truth.shape, bool)
    hole[gone.row_off:gone.row_off + gone.height, gone.col_off:gone.col_off + gone.width] = True
    assert (mask[hole] == NODATA).all() and np.array_equal(mask[~hole], truth[~hole])
    assert stats.valid_pixels == WIDTH * HEIGHT - hole.sum()


def test_a_tile_mask_of_the_wrong_size_is_refused(tmp_path: Path) -> None:
    tiles = write_tiles(tmp_path, truth_mask(), 128, 16)
    write_png(tiles[3][1], np.zeros((10, 10), np.uint8))
    out = tmp_path / "mask.tif"
    with pytest.raises(BadMask, match=r"tile3\.png"):
        stitch_mask(out, WIDTH, HEIGHT, tiles)
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("tile")) == []


def test_overview_adds_only_the_big_slicks(tmp_path: Path) -> None:
    tile_px = 64
    sea = np.zeros((HEIGHT, WIDTH), np.uint8)
    tiles = write_tiles(tmp_path, sea, tile_px, 16)
    ov_w, ov_h = overview_shape(WIDTH, HEIGHT, tile_px)
    overview = np.zeros((ov_h, ov_w), np.uint8)
    scale = WIDTH / ov_w  # scene pixels per overview pixel
    band = slice(10, 10 + round(3 * tile_px / scale))  # 3 tiles wide, the whole height
    overview[:, band] = 255
    overview[30:32, 50:52] = 255  # a blob of ~16 scene pixels
    out = tmp_path / "mask.tif"
    stats = stitch_mask(out, WIDTH, HEIGHT, tiles, overview=write_png(tmp_path / "ov.png",
                        overview), large_px=tile_px // 2)
    oil = read_band(out) == 255
    # Only the band's interior comes from the coarse overview: its edges are the tiles' job.
    inset = OVERVIEW_ERODE_PX * scale
    band_cols = slice(round(band.start * scale + inset) + 1, round(band.stop * scale - inset) - 1)
    assert oil[:, band_cols].all()
    assert not oil[:, : round(band.start * scale) - 1].any()
    assert not oil[:, round(band.stop * scale) + 1:].any()  # the blob is not there
    assert stats.slick_count == 1


def test_the_overview_must_come_with_large_px(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="large_px"):
        stitch_mask(tmp_path / "m.tif", 10, 10, [], overview=tmp_path / "ov.png")


@st.composite
def masks(draw: st.DrawFn) -> np.ndarray:
    height = draw(st.integers(1, 40))
    width = draw(st.integers(1, 40))
    density = draw(st.floats(0.05, 0.7))
    seed = draw(st.integers(0, 2**32 - 1))
    oil = np.random.default_rng(seed).random((height, width)) < density
    return np.where(oil, 255, 0).astype(np.uint8)


def stats_of(mask: np.ndarray, strip_rows: int, nodata: int | None = None) -> MaskStats:
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.tif"
        with rasterio.open(path, "w", driver="GTiff", width=mask.shape[1], height=mask.shape[0],
                           count=1, dtype="uint8", nodata=nodata) as dst:
            dst.write(mask, 1)
        return mask_stats(path, strip_rows=strip_rows)


@settings(max_examples=100, deadline=None)
@given(masks(), st.integers(1, 9))
def test_streamed_stats_equal_scipy_on_the_whole_mask(mask: np.ndarray, strip_rows: int) -> None:
    assert stats_of(mask, strip_rows) == scipy_stats(mask, None)


def test_shapes_that_join_only_below_a_strip_boundary_count_once() -> None:
    mask = np.zeros((30, 30), np.uint8)
    mask[2:20, 2] = mask[2:20, 8] = mask[19, 2:9] = 255  # a U: arms meet at row 19
    mask[3:17, 12:15] = 255
    mask[16, 15] = mask[17, 16] = mask[18, 17] = 255  # diagonal steps across row 14 / 21
    for row in range(20, 29):
        mask[row, row - 8] = 255  # a diagonal line across strip boundaries
    mask[25, 0] = 127  # nodata: neither valid nor oil
    expected = scipy_stats(mask)
    assert expected.slick_count == 3
    for strip_rows in (1, 2, 7, 30):
        assert stats_of(mask, strip_rows, nodata=NODATA) == expected


def test_a_large_stitch_stays_in_bounded_memory(tmp_path: Path) -> None:
    width, height = 6000, 4000
    truth = np.zeros((height, width), np.uint8)
    for row in range(0, height, 4):  # a diagonal band 60 pixels wide, in steps
        truth[row:row + 4, row * 3 // 2:row * 3 // 2 + 60] = 255
    truth[1500:2500, 2000:2600] = 255  # a block across it
    tiles = write_tiles(tmp_path, truth, 1024, 64, noise=False)
    out = tmp_path / "mask.tif"
    tracemalloc.start()
    try:
        stats = stitch_mask(out, width, height, tiles, georef=UTM)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 60 * 2**20, f"peak {peak / 2**20:.1f} MiB"
    assert np.array_equal(read_band(out), truth)
    assert stats.slick_count == 1  # the block joins the band


def test_quicklook_tints_the_oil_on_grey(tmp_path: Path) -> None:
    truth = np.zeros((HEIGHT, WIDTH), np.uint8)
    truth[:, 200:300] = 255
    out = tmp_path / "mask.tif"
    stitch_mask(out, WIDTH, HEIGHT, write_tiles(tmp_path, truth, 128, 16))
    seen: list[tuple[Window, tuple[int, int]]] = []

    def scene_reader(window: Window, shape: tuple[int, int]) -> np.ndarray:
        seen.append((window, shape))
        return np.full(shape, 200, np.uint8)

    look = tmp_path / "look.png"
    render_quicklook(scene_reader, out, look, max_px=100, strip_rows=16)
    assert len(seen) == 4 and sum(window.height for window, _ in seen) == HEIGHT
    with rasterio.open(look) as src:
        assert (src.width, src.height) == (100, 58)
        index = src.read(1)
        colours = src.colormap(1)
    assert (index[:, 45:55] == 128 + 100).all() and (index[:, :35] == 100).all()
    assert colours[228][:3] == tuple(OVERLAY_PALETTE[3 * 228:3 * 229])
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix == ".part") == []


@pytest.mark.parametrize("size", [(517, 300), (1300, 700), (300, 2049), (512, 512)])
def test_cog_overviews_are_those_gdal_makes(tmp_path: Path, size: tuple[int, int]) -> None:
    """write_cog builds the overviews in the draft before the COG driver copies it (so the
    driver only compresses): the mask a reader gets is a COG with the levels the driver
    makes by itself, each the same size within a pixel, sampled from the mask."""
    width, height = size
    truth = truth_mask(width, height, seed=width)
    draft = tmp_path / "draft.tif"
    create_draft(draft, width, height, UTM)
    with rasterio.open(draft, "r+") as dst:
        dst.write(truth, 1)
    plain = tmp_path / "plain.tif"
    rasterio.shutil.copy(draft, plain, driver="COG", COMPRESS="DEFLATE", BLOCKSIZE=512,
                         OVERVIEW_RESAMPLING="NEAREST")  # before write_cog adds overviews
    ours = tmp_path / "mask.tif"
    write_cog(draft, ours)
    with rasterio.open(ours) as got, rasterio.open(plain) as want:
        assert len(cog_overview_factors(width, height)) == len(want.overviews(1))
        assert got.tags(ns="IMAGE_STRUCTURE").get("LAYOUT") == "COG"
        assert got.overviews(1) == want.overviews(1)
        assert np.array_equal(got.read(1), truth)
    for level in range(len(cog_overview_factors(width, height))):
        with rasterio.open(ours, overview_level=level) as got, \
                rasterio.open(plain, overview_level=level) as want:
            small, other = got.read(1), want.read(1)
        # GDAL sizes a level by rounding up here and down in the COG driver: a pixel apart
        # at most, and then sampled a little differently.
        assert abs(small.shape[0] - other.shape[0]) <= 1
        assert abs(small.shape[1] - other.shape[1]) <= 1
        if small.shape == other.shape:
            assert np.array_equal(small, other)
        assert abs(np.mean(small == 255) - np.mean(truth == 255)) < 0.02
