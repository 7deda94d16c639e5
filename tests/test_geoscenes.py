"""Georeferenced test scenes: what is written reads back with rasterio as promised, the truth
matches the damping in the pixels, SAFE products calibrate to the scene, and memory stays
bounded by a strip."""

from __future__ import annotations

import re
import tracemalloc
import xml.etree.ElementTree as ET
import zipfile

import numpy as np
import pytest
import rasterio
from affine import Affine
from pyproj import Transformer
from rasterio.windows import Window
from scipy.interpolate import RegularGridInterpolator

from ml_stub.geoscenes import (
    SceneSpecError,
    SlickSpec,
    ValidArea,
    write_safe_zip,
    write_scene,
)

UTM = "EPSG:32633"
TRANSFORM = Affine(10, 0, 500_000, 0, -10, 6_000_000)
# Plain pixel scenes are not georeferenced on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")
SLICKS = (SlickSpec.band((250, 180), 300, 60, 30, damping_db=8.0),
          SlickSpec.ring((520, 300), 120, 60, damping_db=6.0),
          SlickSpec.rectangle(100, 350, 200, 80, damping_db=10.0))


def read(path) -> tuple[np.ndarray, dict]:
    with rasterio.open(path) as src:
        return src.read(1), {"profile": src.profile, "crs": src.crs,
                             "transform": src.transform, "gcps": src.gcps,
                             "blocks": src.block_shapes}


def whole(truth) -> Window:
    return Window(0, 0, truth.width, truth.height)


def test_a_utm_scene_reads_back_tiled_with_its_georeference(tmp_path):
    path = tmp_path / "utm.tif"
    write_scene(path, 700, 500, crs=UTM, transform=TRANSFORM, slicks=SLICKS, nodata=0,
                seed=1)
    data, meta = read(path)
    assert data.shape == (500, 700) and data.dtype == np.uint16
    assert meta["crs"].to_epsg() == 32633 and meta["transform"] == TRANSFORM
    assert meta["profile"]["tiled"] and meta["profile"]["nodata"] == 0
    assert meta["blocks"] == [(256, 256)]
    assert data.min() >= 1
    assert 7_000 < np.median(data) < 11_000  # amplitude DNs: the sea about 10,000


@pytest.mark.parametrize(("dtype", "low", "high"), [("uint8", 60, 110),
                                                    ("float32", 0.02, 0.06)])
def test_other_types_hold_amplitude_or_sigma0(tmp_path, dtype, low, high):
    write_scene(tmp_path / "s.tif", 300, 200, dtype=dtype, seed=2)
    data, _ = read(tmp_path / "s.tif")
    assert data.dtype == np.dtype(dtype)
    assert low < np.median(data) < high


def test_gcps_like_a_grd_measurement_and_no_affine(tmp_path):
    path = tmp_path / "gcps.tif"
    write_scene(path, 640, 480, crs=UTM, transform=TRANSFORM, gcps=True, seed=3)
    _, meta = read(path)
    gcps, gcp_crs = meta["gcps"]
    assert meta["crs"] is None and meta["transform"].is_identity
    assert gcp_crs.to_epsg() == 4326 and len(gcps) == 100
    to_lonlat = Transformer.from_crs(UTM, "EPSG:4326", always_xy=True)
    for gcp in gcps:
        lon, lat = to_lonlat.transform(*(TRANSFORM @ (gcp.col, gcp.row)))
        assert (gcp.x, gcp.y) == pytest.approx((lon, lat), abs=1e-9)
    assert {(g.row, g.col) for g in gcps} >= {(0, 0), (0, 640), (480, 0), (480, 640)}


def test_georeference_needs_both_crs_and_transform(tmp_path):
    with pytest.raises(SceneSpecError):
        write_scene(tmp_path / "x.tif", 10, 10, gcps=True, crs=UTM)


def test_the_zero_border_is_where_the_valid_area_says(tmp_path):
    path = tmp_path / "border.tif"
    truth = write_scene(path, 900, 600, zero_border=True, slicks=SLICKS, seed=4)
    data, _ = read(path)
    valid = truth.valid.window(whole(truth))
    assert (data[~valid] == 0).all() and (data[valid] > 0).all()
    assert not data[0].any() and not data[-1].any()
    live = valid.any(axis=1)
    starts = valid[live].argmax(axis=1)
    ends = valid.shape[1] - valid[live][:, ::-1].argmax(axis=1)
    assert starts.min() >= 1 and ends.max() <= 899  # every row starts and ends with zeros
    assert len(set(starts)) > 3 and len(set(ends)) > 3  # ragged, not straight


def test_truth_is_the_written_damping(tmp_path):
    """The same seed with and without slicks: sigma0 drops by each slick's dB exactly
    where the truth says, and nowhere else; a ring's clean water is not oil."""
    damped = write_scene(tmp_path / "oil.tif", 700, 500, dtype="float32", slicks=SLICKS,
                         zero_border=True, seed=5)
    write_scene(tmp_path / "sea.tif", 700, 500, dtype="float32", zero_border=True, seed=5)
    oil, _ = read(tmp_path / "oil.tif")
    sea, _ = read(tmp_path / "sea.tif")
    valid = damped.valid.window(whole(damped))
    ratio_db = np.zeros(oil.shape)
    ratio_db[valid] = 10 * np.log10(oil[valid] / sea[valid])
    expected = -damped.damping_window(whole(damped))
    np.testing.assert_allclose(ratio_db[valid], expected[valid], atol=1e-4)
    truth = damped.truth_window(whole(damped))
    assert truth.sum() == (ratio_db < -1).sum() and not truth[~valid].any()
    assert not truth[300, 520]  # the ring's middle
    window = Window(150, 120, 400, 250)
    np.testing.assert_array_equal(damped.truth_window(window), truth[120:370, 150:550])


def test_a_scene_does_not_depend_on_its_strip_height(tmp_path):
    write_scene(tmp_path / "a.tif", 400, 300, slicks=SLICKS, zero_border=True, seed=6)
    write_scene(tmp_path / "b.tif", 400, 300, slicks=SLICKS, zero_border=True, seed=6,
                block_rows=37)
    np.testing.assert_array_equal(read(tmp_path / "a.tif")[0], read(tmp_path / "b.tif")[0])


def calibration_lut(xml: bytes, height: int, width: int) -> np.ndarray:
    """A from a calibration XML, bilinear on its (regular) grid of lines and pixels."""
    root = ET.fromstring(xml)
    vectors = root.findall("calibrationVectorList/calibrationVector")
    lines = np.array([int(v.findtext("line")) for v in vectors])
    pixels = np.array(vectors[0].findtext("pixel").split(), float)
    sigma = np.array([v.findtext("sigmaNought").split() for v in vectors], float)
    rows, cols = np.meshgrid(np.arange(height), np.arange(width), indexing="ij")
    lut = RegularGridInterpolator((lines, pixels), sigma)
    return lut(np.stack([rows.ravel(), cols.ravel()], axis=1)).reshape(height, width)


def test_a_safe_zip_is_laid_out_like_sentinel1_and_calibrates_to_the_scene(tmp_path):
    path = tmp_path / "product.zip"
    truth = write_safe_zip(path, 600, 450, slicks=SLICKS[:1], seed=7)
    scene = tmp_path / "scene.tif"
    write_scene(scene, 600, 450, dtype="float32", slicks=SLICKS[:1], zero_border=True, seed=7)
    with zipfile.ZipFile(path) as zf:
        names = zf.namelist()
        product = names[0].split("/")[0]
        assert re.fullmatch(r"S1A_IW_GRDH_1SDV_\d{8}T\d{6}_\d{8}T\d{6}_\d{6}_[0-9A-F]{6}_"
                            r"[0-9A-F]{4}\.SAFE", product)
        members = {n[len(product) + 1:] for n in names}
        for pol, number in (("vv", "001"), ("vh", "002")):
            stem = next(m for m in members if re.fullmatch(
                rf"measurement/s1a-iw-grd-{pol}-[0-9t]+-[0-9t]+-\d{{6}}-[0-9a-f]{{6}}-"
                rf"{number}\.tiff", m))[len("measurement/"):-len(".tiff")]
            assert f"annotation/{stem}.xml" in members
            assert f"annotation/calibration/calibration-{stem}.xml" in members
            info = zf.getinfo(f"{product}/measurement/{stem}.tiff")
            assert info.compress_type == zipfile.ZIP_STORED
        assert {"manifest.safe", "preview/quick-look.png", "preview/icons/logo.png"} <= members
        ET.fromstring(zf.read(f"{product}/manifest.safe"))
        vv = next(m for m in members if m.startswith("measurement/s1a-iw-grd-vv-"))
        xml = zf.read(f"{product}/annotation/calibration/calibration-{vv[12:-5]}.xml")
    root = ET.fromstring(xml)
    assert root.tag == "calibration"
    vectors = root.findall("calibrationVectorList/calibrationVector")
    assert 8 <= len(vectors) <= 12
    pixels = np.array(vectors[0].findtext("pixel").split(), float)
    assert np.median(np.diff(pixels)) == 40 and pixels[-1] == 599
    lut = calibration_lut(xml, 450, 600)
    assert 490 < lut.min() and lut.max() < 710 and lut[:, -1].mean() / lut[:, 0].mean() > 1.3
    with rasterio.open(f"zip://{path}!{product}/{vv}") as src:
        dn = src.read(1).astype(np.float64)
        gcps, gcp_crs = src.gcps
        assert src.dtypes[0] == "uint16" and gcp_crs.to_epsg() == 4326 and len(gcps) == 100
    valid = truth.valid.window(Window(0, 0, 600, 450))
    assert (dn[~valid] == 0).all() and (dn[valid] > 0).all()
    sigma0, _ = read(scene)
    calibrated = dn**2 / lut**2
    bright = valid & (dn >= 30)  # where rounding DNs to integers costs under 4% of sigma0
    np.testing.assert_allclose(calibrated[bright], sigma0[bright], rtol=0.04)


def test_a_3000_by_2000_scene_is_written_in_bounded_memory(tmp_path):
    tracemalloc.start()
    try:
        write_scene(tmp_path / "big.tif", 3000, 2000, crs=UTM, transform=TRANSFORM, gcps=True,
                    slicks=SLICKS, zero_border=True, seed=8)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 50 * 2**20, f"{peak / 2**20:.1f} MiB"
    assert (tmp_path / "big.tif").stat().st_size > 3000 * 2000 * 2  # uncompressed uint16


def test_slick_helpers_and_their_checks():
    band = SlickSpec.band((100, 100), 200, 40, 90)
    minx, miny, maxx, maxy = band.polygon.bounds
    assert (maxx - minx, maxy - miny) == pytest.approx((40, 200), abs=0.5)
    ring = SlickSpec.ring((0, 0), 200, 100).polygon
    assert len(ring.interiors) == 1
    assert ring.area == pytest.approx(np.pi * (200**2 - 100**2), rel=0.01)
    assert SlickSpec.rectangle(10, 20, 30, 40).polygon.bounds == (10, 20, 40, 60)
    for make in (lambda: SlickSpec.band((0, 0), 10, 20), lambda: SlickSpec.ring((0, 0), 5, 5),
                 lambda: SlickSpec(ring, damping_db=0)):
        with pytest.raises(SceneSpecError):
            make()
    assert ValidArea.everywhere(5, 3).window(Window(0, 0, 5, 3)).all()
