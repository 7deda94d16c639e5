"""Whole scenes: headers, refusals, the valid area, percentiles, windows and the grey scale."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from affine import Affine
from PIL import Image
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.windows import Window

from oilspill.geo.scale import DB_MIN, DB_STEP, DbKind, Stretch, encode_tile, to_grey
from oilspill.geo.scene import (
    SAMPLE_PIXELS,
    EmptyScene,
    NoSuchBand,
    SceneError,
    SceneReader,
    SceneTooLarge,
    Survey,
    UnreadableScene,
    inspect_scene,
    overview_raw,
    read_raw,
    read_window,
    sample_step,
    survey_scene,
)

# Scenes in radar geometry (GCPs) or with no georeference at all are expected here.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

W, H = 600, 400
BIG = 10**12


def write_scene(path: Path, data: np.ndarray, **profile: Any) -> Path:
    """A GeoTIFF of data (rows, cols) or (bands, rows, cols); profile adds crs, nodata..."""
    bands = data if data.ndim == 3 else data[None]
    gcps = profile.pop("gcps", None)
    with rasterio.open(path, "w", driver="GTiff", width=bands.shape[2], height=bands.shape[1],
                       count=bands.shape[0], dtype=bands.dtype.name, **profile) as dst:
        dst.write(bands)
        if gcps is not None:
            dst.gcps = gcps
    return path


def traced_survey(path: Path) -> tuple[Survey, int]:
    """A scene's survey and the peak of the memory Python traced meanwhile (numpy's arrays
    included; the strip buffer, a memory mapping, is not)."""
    info = inspect_scene(path, band=1, max_pixels=BIG)
    tracemalloc.start()
    try:
        survey = survey_scene(path, info)
        return survey, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def sea(rng: np.random.Generator, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    """Speckled uint16 sea, never 0."""
    return np.clip(rng.gamma(4.0, 60.0, shape), 1, 65535).astype(np.uint16)


def s1_border(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """An S1-like scene: zero rows top and bottom, ragged zero runs, interior zeros.

    Returns the data and the expected first and last valid column of each row."""
    data = sea(rng)
    first = rng.integers(0, 40, H).astype(np.int32)
    last = (W - 1 - rng.integers(0, 30, H)).astype(np.int32)
    for row in range(H):
        data[row, :first[row]] = 0
        data[row, last[row] + 1:] = 0
    first[:5], last[:5] = 0, -1
    first[-7:], last[-7:] = 0, -1
    data[:5] = 0
    data[-7:] = 0
    data[100:110, 200:260] = 0  # a dark patch inside: still valid
    data[50, 300] = 0
    return data, first, last


@pytest.fixture
def border_scene(tmp_path: Path) -> tuple[Path, np.ndarray, np.ndarray, np.ndarray]:
    data, first, last = s1_border(np.random.default_rng(1))
    return write_scene(tmp_path / "border.tif", data), data, first, last


def amplitude_db(values: np.ndarray) -> np.ndarray:
    out = np.full(values.shape, DB_MIN)
    positive = values > 0
    out[positive] = 20 * np.log10(values[positive].astype(np.float64))
    return out


# --- inspect_scene ---------------------------------------------------------------------

def test_utm_uint16_header(tmp_path: Path) -> None:
    transform = Affine(10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)
    path = write_scene(tmp_path / "utm.tif", sea(np.random.default_rng(0)),
                       crs=CRS.from_epsg(32633), transform=transform)
    info = inspect_scene(path, band=1, max_pixels=BIG)
    assert (info.width, info.height, info.band, info.count) == (W, H, 1, 1)
    assert info.dtype == "uint16" and info.nodata is None and info.driver == "GTiff"
    assert CRS.from_wkt(info.crs_wkt or "").to_epsg() == 32633
    assert info.transform == (10.0, 0.0, 500000.0, 0.0, -10.0, 6000000.0)
    assert info.gcps is None and info.georeferenced


def test_float32_geographic(tmp_path: Path) -> None:
    data = np.random.default_rng(0).random((H, W), np.float32)
    path = write_scene(tmp_path / "f.tif", data, crs=CRS.from_epsg(4326),
                       transform=Affine(0.001, 0.0, 10.0, 0.0, -0.001, 50.0))
    info = inspect_scene(path, band=1, max_pixels=BIG)
    assert info.dtype == "float32"
    assert CRS.from_wkt(info.crs_wkt or "").to_epsg() == 4326
    assert info.transform == pytest.approx((0.001, 0.0, 10.0, 0.0, -0.001, 50.0))


def test_gcps_round_trip(tmp_path: Path) -> None:
    points = [GroundControlPoint(0, 0, 10.0, 50.0, 0.0),
              GroundControlPoint(0, 599, 11.0, 50.1, 0.0),
              GroundControlPoint(399, 0, 9.9, 49.0, 5.0)]
    path = write_scene(tmp_path / "gcp.tif", sea(np.random.default_rng(0)),
                       gcps=(points, CRS.from_epsg(4326)))
    info = inspect_scene(path, band=1, max_pixels=BIG)
    assert info.transform is None and info.crs_wkt is None
    assert info.gcps == ((0, 0, 10.0, 50.0, 0.0), (0, 599, 11.0, 50.1, 0.0),
                         (399, 0, 9.9, 49.0, 5.0))
    assert CRS.from_wkt(info.gcps_crs_wkt or "").to_epsg() == 4326
    assert info.georeferenced


def test_plain_picture_is_not_georeferenced(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "plain.tif", np.full((20, 30), 7, np.uint8))
    info = inspect_scene(path, band=1, max_pixels=BIG)
    assert info.transform is None and info.gcps is None and not info.georeferenced


def test_third_band_and_missing_band(tmp_path: Path) -> None:
    data = np.stack([np.full((H, W), v, np.uint16) for v in (10, 20, 30)])
    path = write_scene(tmp_path / "rgb.tif", data)
    info = inspect_scene(path, band=2, max_pixels=BIG)
    assert (info.band, info.count) == (2, 3)
    survey = survey_scene(path, info)
    values, valid = read_window(path, info, (0, 0, 8, 8), survey)
    assert np.all(values == 20) and valid.all()
    with pytest.raises(NoSuchBand, match="OILSPILL_SCENE_BAND"):
        inspect_scene(path, band=4, max_pixels=BIG)


def test_garbage_is_unreadable_without_server_paths(tmp_path: Path) -> None:
    path = tmp_path / "garbage.tif"
    path.write_bytes(np.random.default_rng(0).bytes(5000))
    with pytest.raises(UnreadableScene) as caught:
        inspect_scene(path, band=1, max_pixels=BIG)
    assert str(tmp_path) not in str(caught.value)


def test_truncated_file_is_unreadable(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "cut.tif", sea(np.random.default_rng(0)))
    path.write_bytes(path.read_bytes()[:200_000])
    with pytest.raises(UnreadableScene, match="truncated") as caught:
        inspect_scene(path, band=1, max_pixels=BIG)
    assert str(tmp_path) not in str(caught.value)


def test_corrupt_block_fails_the_survey_cleanly(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "deflate.tif", sea(np.random.default_rng(0)), tiled=True,
                       blockxsize=128, blockysize=128, compress="deflate")
    info = inspect_scene(path, band=1, max_pixels=BIG)
    with rasterio.open(path) as src:
        offset = int(src.get_tag_item("BLOCK_OFFSET_2_1", "TIFF", bidx=1))
    raw = bytearray(path.read_bytes())
    raw[offset:offset + 16] = bytes(16)  # no longer a zlib stream
    path.write_bytes(bytes(raw))
    with pytest.raises(UnreadableScene, match="corrupt") as caught:
        survey_scene(path, info)
    assert str(tmp_path) not in str(caught.value)


def test_unsupported_dtype(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "f64.tif", np.zeros((10, 10), np.float64))
    with pytest.raises(UnreadableScene, match="float64"):
        inspect_scene(path, band=1, max_pixels=BIG)


def test_too_large_names_the_setting(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "s.tif", sea(np.random.default_rng(0)))
    with pytest.raises(SceneTooLarge, match="OILSPILL_MAX_SCENE_PIXELS") as caught:
        inspect_scene(path, band=1, max_pixels=W * H - 1)
    assert "600 x 400" in str(caught.value)


def tiff_header(width: int, height: int) -> bytes:
    """A little-endian 8-bit greyscale TIFF header with one strip and no pixel data."""
    entries = [(256, 4, width), (257, 4, height), (258, 3, 8), (259, 3, 1), (262, 3, 1),
               (273, 4, 8 + 2 + 12 * 9 + 4), (277, 3, 1), (278, 4, height),
               (279, 4, (width * height) % 2**32)]
    out = struct.pack("<2sHI", b"II", 42, 8) + struct.pack("<H", len(entries))
    for tag, kind, value in entries:
        packed = struct.pack("<HH", value, 0) if kind == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, kind, 1) + packed
    return out + struct.pack("<I", 0)


def test_huge_header_refused_fast(tmp_path: Path) -> None:
    path = tmp_path / "huge.tif"
    path.write_bytes(tiff_header(10**6, 10**6))
    started = time.monotonic()
    with pytest.raises((SceneTooLarge, UnreadableScene)):
        inspect_scene(path, band=1, max_pixels=10**9)
    assert time.monotonic() - started < 1.0


# --- survey_scene ----------------------------------------------------------------------

def test_survey_finds_the_s1_border(border_scene: tuple[Path, Any, Any, Any]) -> None:
    path, data, first, last = border_scene
    info = inspect_scene(path, band=1, max_pixels=BIG)
    survey = survey_scene(path, info)
    assert survey.db_kind is DbKind.AMPLITUDE
    np.testing.assert_array_equal(survey.row_first, first)
    np.testing.assert_array_equal(survey.row_last, last)
    columns = np.arange(W)
    inside = (columns >= first[:, None]) & (columns <= last[:, None])
    assert survey.valid_pixels == int(inside.sum())
    # Strips of any height give the same survey.
    small = survey_scene(path, info, strip_rows=7)
    np.testing.assert_array_equal(small.row_first, first)
    np.testing.assert_array_equal(small.histogram, survey.histogram)
    # Percentiles of the histogram match numpy's on the valid pixels, interior zeros included.
    expected = np.percentile(amplitude_db(data[inside]), [1, 50, 99])
    for pct, want in zip((1, 50, 99), expected, strict=True):
        assert abs(survey.percentile(pct) - want) <= DB_STEP


def test_nodata_is_never_valid(tmp_path: Path) -> None:
    data = sea(np.random.default_rng(2))
    data[:, :3] = 9  # a nodata border
    data[200, 100:110] = 9  # and nodata inside
    path = write_scene(tmp_path / "nd.tif", data, nodata=9)
    info = inspect_scene(path, band=1, max_pixels=BIG)
    assert info.nodata == 9.0
    survey = survey_scene(path, info)
    assert np.all(survey.row_first == 3) and np.all(survey.row_last == W - 1)
    _, valid = read_window(path, info, (0, 190, 200, 20), survey)
    np.testing.assert_array_equal(valid, data[190:210, :200] != 9)
    assert survey.valid_pixels == int((data != 9).sum())


def test_float32_kinds(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    power = rng.gamma(2.0, 0.05, (H, W)).astype(np.float32) + np.float32(1e-4)
    path = write_scene(tmp_path / "p.tif", power)
    survey = survey_scene(path, inspect_scene(path, band=1, max_pixels=BIG))
    assert survey.db_kind is DbKind.INTENSITY
    assert abs(survey.percentile(50) - np.median(10 * np.log10(power))) <= DB_STEP
    db = (10 * np.log10(power)).astype(np.float32)
    db[0, :10] = np.nan  # NaN is never valid
    path = write_scene(tmp_path / "db.tif", db)
    info = inspect_scene(path, band=1, max_pixels=BIG)
    survey = survey_scene(path, info)
    assert survey.db_kind is DbKind.DB
    assert survey.row_first[0] == 10
    assert abs(survey.percentile(50) - np.nanmedian(db[np.isfinite(db)])) <= DB_STEP


def test_blank_scene_is_empty(tmp_path: Path) -> None:
    path = write_scene(tmp_path / "blank.tif", np.zeros((50, 60), np.uint16))
    with pytest.raises(EmptyScene):
        survey_scene(path, inspect_scene(path, band=1, max_pixels=BIG))


def test_survey_save_load(tmp_path: Path, border_scene: tuple[Path, Any, Any, Any]) -> None:
    path = border_scene[0]
    survey = survey_scene(path, inspect_scene(path, band=1, max_pixels=BIG))
    survey.save(tmp_path / "survey.cache")
    again = Survey.load(tmp_path / "survey.cache")
    np.testing.assert_array_equal(again.row_first, survey.row_first)
    np.testing.assert_array_equal(again.row_last, survey.row_last)
    np.testing.assert_array_equal(again.histogram, survey.histogram)
    assert (again.width, again.valid_pixels, again.db_kind) == (
        survey.width, survey.valid_pixels, survey.db_kind)
    (tmp_path / "bad.cache").write_bytes(b"not a survey")
    with pytest.raises(SceneError):
        Survey.load(tmp_path / "bad.cache")


def test_survey_memory_is_bounded_by_strips(tmp_path: Path) -> None:
    side = 4000
    path = tmp_path / "big.tif"
    rng = np.random.default_rng(4)
    with rasterio.open(path, "w", driver="GTiff", width=side, height=side, count=1,
                       dtype="uint16") as dst:
        for top in range(0, side, 500):
            strip = rng.integers(1, 3000, (500, side), np.uint16)
            dst.write(strip, 1, window=Window(0, top, side, 500))
    survey, peak = traced_survey(path)
    assert survey.valid_pixels == side * side
    assert peak < 40 * 2**20, f"peak {peak / 2**20:.1f} MiB"


# --- read_window -----------------------------------------------------------------------

def test_read_window_matches_numpy(border_scene: tuple[Path, Any, Any, Any]) -> None:
    path, data, first, last = border_scene
    info = inspect_scene(path, band=1, max_pixels=BIG)
    survey = survey_scene(path, info)
    columns = np.arange(W)
    inside = (columns >= first[:, None]) & (columns <= last[:, None])
    for window in ((0, 0, 128, 96), (470, 300, 130, 100), (190, 95, 80, 20)):
        col, row, width, height = window
        values, valid = read_window(path, info, window, survey)
        assert values.dtype == np.float32 and values.shape == (height, width)
        np.testing.assert_array_equal(values, data[row:row + height, col:col + width])
        np.testing.assert_array_equal(valid, inside[row:row + height, col:col + width])
    values, valid = read_window(path, info, Window(190, 95, 80, 20), survey)
    assert valid[10, 20]  # the interior dark patch: zero, and valid
    assert values[10, 20] == 0


def test_decimated_read(border_scene: tuple[Path, Any, Any, Any]) -> None:
    path, data, first, last = border_scene
    info = inspect_scene(path, band=1, max_pixels=BIG)
    survey = survey_scene(path, info)
    values, valid = read_window(path, info, (0, 0, W, H), survey, out_shape=(100, 150))
    assert values.shape == valid.shape == (100, 150)
    rows, cols = np.arange(100) * 4 + 2, np.arange(150) * 4 + 2  # pixel centres
    np.testing.assert_array_equal(values, data[np.ix_(rows, cols)])
    expected = (cols[None, :] >= first[rows][:, None]) & (cols[None, :] <= last[rows][:, None])
    np.testing.assert_array_equal(valid, expected)
    np.testing.assert_array_equal(survey.valid_mask(Window(0, 0, W, H), (100, 150)), expected)


def test_window_outside_scene(border_scene: tuple[Path, Any, Any, Any]) -> None:
    path = border_scene[0]
    info = inspect_scene(path, band=1, max_pixels=BIG)
    survey = survey_scene(path, info)
    with pytest.raises(ValueError, match="not inside"):
        read_window(path, info, (550, 0, 100, 10), survey)


# --- the grey scale --------------------------------------------------------------------

def test_encode_tile_uses_one_scale(border_scene: tuple[Path, Any, Any, Any]) -> None:
    path, data, _, _ = border_scene
    info = inspect_scene(path, band=1, max_pixels=BIG)
    survey = survey_scene(path, info)
    stretch = Stretch.from_survey(survey)
    assert stretch.low_db == pytest.approx(survey.percentile(1))
    assert stretch.high_db == pytest.approx(survey.percentile(99))
    assert stretch.as_dict()["db_kind"] == "amplitude"
    sea_grey = stretch.sea_grey
    assert 50 < sea_grey < 200
    # Tile 1 holds the top border; the same DN in two tiles must give the same grey.
    tile_a, tile_b = (0, 0, 64, 48), (400, 250, 64, 48)
    dn = int(data[260, 420])
    values_a, valid_a = read_window(path, info, tile_a, survey)
    values_a[20, 30] = dn
    values_b, valid_b = read_window(path, info, tile_b, survey)
    png = Image.open(io.BytesIO(encode_tile(values_a, valid_a, stretch)))
    assert png.format == "PNG" and png.mode == "L" and png.size == (64, 48)
    grey_a = np.asarray(png)
    assert np.all(grey_a[~valid_a] == sea_grey) and not valid_a[:5].any()
    grey_b = np.asarray(Image.open(io.BytesIO(encode_tile(values_b, valid_b, stretch))))
    assert grey_a[20, 30] == grey_b[10, 20]
    np.testing.assert_array_equal(grey_b, to_grey(values_b, valid_b, stretch))
    low, high = stretch.low_db, stretch.high_db
    expected = np.clip(np.rint((amplitude_db(values_b) - low) / (high - low) * 255), 0, 255)
    assert np.abs(grey_b.astype(int) - expected).max() <= 1


def test_flat_scene_gets_a_usable_scale() -> None:
    histogram = np.zeros(8000, np.int64)
    histogram[5000] = 100
    stretch = Stretch.from_histogram(histogram, DbKind.AMPLITUDE)
    assert stretch.high_db - stretch.low_db == pytest.approx(1.0)
    assert stretch.sea_grey == 128


# --- a survey of a large scene ---------------------------------------------------------

def test_a_large_scenes_histogram_is_sampled_evenly() -> None:
    assert sample_step(600, 400) == 1  # a scene up to twice SAMPLE_PIXELS: every pixel
    assert sample_step(26_000, 17_000) == 5  # a Sentinel-1 scene: 17.7 M of its 442 M pixels
    assert (26_000 // 5) * (17_000 // 5) >= SAMPLE_PIXELS
    assert sample_step(10**6, 10**6) >= 200


def test_sampled_percentiles_stay_within_a_tolerance_of_the_exact_ones(tmp_path: Path) -> None:
    # Speckled sea with a wind gradient, dark slicks (the 1st percentile's pixels) and bright
    # ships, in an S1-like border: taking every 4th row and column (1/16 of the pixels)
    # moves the scale's percentiles by a few hundredths of a dB, extents and counts not at all.
    rng = np.random.default_rng(7)
    height, width = 1200, 1500
    rows, cols = np.ogrid[:height, :width]
    intensity = rng.gamma(4.4, 1 / 4.4, (height, width)) * 10 ** ((-3.0 * cols / width) / 10)
    for centre in (300, 700, 1000):  # slicks damped 8 dB
        intensity[np.abs(rows - cols * 0.5 - centre + 400) < 12] *= 10 ** -0.8
    intensity[rng.random((height, width)) < 1e-4] *= 300  # ships
    data = np.clip(np.sqrt(intensity) * 150, 1, 65535).astype(np.uint16)
    data[:, :rng.integers(10, 60)] = 0
    data[:4] = 0
    path = write_scene(tmp_path / "large.tif", data)
    info = inspect_scene(path, band=1, max_pixels=BIG)
    exact = survey_scene(path, info, step=1)
    sampled = survey_scene(path, info, step=4)
    assert sampled.sample_step == 4 and exact.sample_step == 1
    assert sampled.histogram.sum() < exact.histogram.sum() / 15
    np.testing.assert_array_equal(sampled.row_first, exact.row_first)
    np.testing.assert_array_equal(sampled.row_last, exact.row_last)
    assert sampled.valid_pixels == exact.valid_pixels == int((data > 0).sum())
    # The scale (1st and 99th percentiles) and the sea (the median): within 0.05 dB.
    for pct in (1, 5, 50, 95, 99):
        assert abs(sampled.percentile(pct) - exact.percentile(pct)) <= 0.05, pct
    want, got = Stretch.from_survey(exact), Stretch.from_survey(sampled)
    assert abs(got.low_db - want.low_db) <= 0.05 and abs(got.high_db - want.high_db) <= 0.05
    assert got.sea_grey == want.sea_grey
    # The summary's extremes lean on a few hundred samples: within one DN step (0.34 dB
    # at their DN of about 25).
    for pct in (0.1, 99.9):
        assert abs(sampled.percentile(pct) - exact.percentile(pct)) <= 0.5, pct


def test_extents_are_found_past_the_first_columns_looked_at(
        border_scene: tuple[Path, Any, Any, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    path, _, first, last = border_scene
    info = inspect_scene(path, band=1, max_pixels=BIG)
    monkeypatch.setattr("oilspill.geo.scene.EDGE_PX", 3)  # borders are up to 40 wide
    survey = survey_scene(path, info)
    np.testing.assert_array_equal(survey.row_first, first)
    np.testing.assert_array_equal(survey.row_last, last)


def test_the_survey_keeps_the_overviews_pixels(border_scene: tuple[Path, Any, Any, Any],
                                               tmp_path: Path) -> None:
    path = border_scene[0]
    info = inspect_scene(path, band=1, max_pixels=BIG)
    survey = survey_scene(path, info, overview=(150, 100), strip_rows=7)
    raw, valid = overview_raw(info, survey)
    # What a decimated read of the whole scene gives (GDAL's nearest pixels), without it.
    want, want_valid = read_raw(path, info, (0, 0, W, H), survey, (100, 150))
    np.testing.assert_array_equal(raw, want)
    np.testing.assert_array_equal(valid, want_valid)
    survey.save(tmp_path / "survey.cache")
    again = Survey.load(tmp_path / "survey.cache")
    assert again.overview is not None and again.sample_step == survey.sample_step
    np.testing.assert_array_equal(again.overview, survey.overview)
    with pytest.raises(ValueError, match="no overview"):
        overview_raw(info, survey_scene(path, info))


def test_one_reader_serves_many_threads_at_once_and_after_it_is_closed(
        border_scene: tuple[Path, Any, Any, Any]) -> None:
    """The worker reads a scene's tiles from several threads through one SceneReader (its
    handles kept open between tiles): every window is the scene's own pixels, whichever
    thread and handle read it, and a read after close() still works (a tile in flight when
    its scene ended)."""
    from concurrent.futures import ThreadPoolExecutor

    path, data = border_scene[0], border_scene[1]
    info = inspect_scene(path, band=1, max_pixels=BIG)
    survey = survey_scene(path, info)
    windows = [(col, row, 97, 61) for row in range(0, H - 61, 29) for col in range(0, W - 97, 83)]
    reader = SceneReader(path, info)

    def read(window: tuple[int, int, int, int]) -> bool:
        raw, valid = reader.read_raw(window, survey)
        col, row, width, height = window
        _, want_valid = read_raw(path, info, window, survey)
        return bool(np.array_equal(raw, data[row:row + height, col:col + width])
                    and np.array_equal(valid, want_valid))

    with ThreadPoolExecutor(6) as pool:
        assert all(pool.map(read, windows * 3))
    reader.close()
    assert read(windows[-1])


def test_a_scene_valid_only_off_the_sample_grid_is_surveyed_in_bounded_memory(
        tmp_path: Path) -> None:
    """A large scene (sampled every other pixel) whose sea lies only between the sampled
    rows is surveyed again pixel by pixel, by strips sized for that work: strips sized
    for sampling would hold a hundred MB and more of work arrays at once."""
    height = width = 8200
    assert sample_step(width, height) == 2  # offset 1: odd rows and columns are sampled
    path = tmp_path / "striped.tif"
    strip = np.zeros((512, width), np.uint16)
    strip[::2] = 900  # even rows only: never sampled
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint16", tiled=True, blockxsize=512, blockysize=512,
                       compress="deflate") as dst:
        for top in range(0, height, 512):
            rows = min(512, height - top)
            dst.write(strip[:rows], 1, window=Window(0, top, width, rows))
    survey, peak = traced_survey(path)
    assert survey.sample_step == 1
    assert survey.valid_pixels == survey.histogram.sum() == height // 2 * width
    assert peak < 48 * 2**20, f"{peak / 2**20:.0f} MiB traced"
