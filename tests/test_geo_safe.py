"""Sentinel-1 SAFE products: finding the measurement, its calibration, and sigma0 scenes."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS

from oilspill.geo.safe import (
    BadCalibration,
    Calibration,
    MissingPolarisation,
    SafeError,
    find_products,
    find_safe,
)
from oilspill.geo.scale import DB_MIN, DB_STEP, DbKind, Stretch
from oilspill.geo.scene import inspect_scene, read_window, survey_scene

from .test_geo_scene import H, W, s1_border, write_scene

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

ROOT = "upload/S1A_IW_GRDH_1SDV_20230101T054421_20230101T054446_046580_05951C_6A3B.SAFE"
STEM = "s1a-iw-grd-{pol}-20230101t054421-20230101t054446-046580-05951c-{n}"
VV, VH = STEM.format(pol="vv", n="001"), STEM.format(pol="vh", n="002")
PRODUCT = [
    f"{ROOT}/manifest.safe",
    f"{ROOT}/measurement/{VV}.tiff",
    f"{ROOT}/measurement/{VH}.tiff",
    f"{ROOT}/annotation/{VV}.xml",
    f"{ROOT}/annotation/calibration/calibration-{VV}.xml",
    f"{ROOT}/annotation/calibration/calibration-{VH}.xml",
    f"{ROOT}/annotation/calibration/noise-{VV}.xml",
    f"{ROOT}/preview/quick-look.png",
    f"{ROOT}/preview/thumbnail.png",
    f"{ROOT}/preview/icons/logo.png",
    f"{ROOT}/support/s1-object-types.xsd",
]


def calibration_xml(vectors: Sequence[tuple[int, Sequence[float], Sequence[float]]]) -> str:
    """An ESA-shaped calibration XML of (line, pixels, sigmaNought) vectors."""
    body = "".join(
        "<calibrationVector><azimuthTime>2023-01-01T05:44:21.000000</azimuthTime>"
        f"<line>{line}</line><pixel count=\"{len(pixels)}\">{' '.join(f'{p:g}' for p in pixels)}"
        f"</pixel><sigmaNought count=\"{len(sigma)}\">{' '.join(f'{v:g}' for v in sigma)}"
        f"</sigmaNought><betaNought count=\"{len(sigma)}\">{' '.join('237' for _ in sigma)}"
        f"</betaNought><gamma count=\"1\">1</gamma><dn count=\"1\">1</dn></calibrationVector>"
        for line, pixels, sigma in vectors)
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<calibration><adsHeader/>'
            f'<calibrationVectorList count="{len(vectors)}">{body}</calibrationVectorList>'
            "</calibration>")


# --- finding the product ---------------------------------------------------------------

def test_find_safe_picks_the_polarisation() -> None:
    product = find_safe([*PRODUCT, "upload/holiday.png"], "VV")
    assert product is not None
    assert product.directory == ROOT and product.polarisation == "vv"
    assert product.measurement == f"{ROOT}/measurement/{VV}.tiff"
    assert product.calibration == f"{ROOT}/annotation/calibration/calibration-{VV}.xml"
    assert product.polarisations == ("vv", "vh")
    assert product.members == frozenset(PRODUCT) - {product.measurement}
    assert f"{ROOT}/preview/quick-look.png" in product.members
    assert f"{ROOT}/manifest.safe" in product.members
    assert f"{ROOT}/measurement/{VH}.tiff" in product.members
    assert "upload/holiday.png" not in product.members
    vh = find_safe(PRODUCT, "vh")
    assert vh is not None
    assert vh.calibration == f"{ROOT}/annotation/calibration/calibration-{VH}.xml"


def test_missing_polarisation_names_the_setting() -> None:
    with pytest.raises(MissingPolarisation, match="OILSPILL_S1_POLARISATION") as caught:
        find_safe(PRODUCT, "hh")
    assert "VV, VH" in str(caught.value)
    with pytest.raises(SafeError, match="OILSPILL_S1_POLARISATION"):
        find_safe(PRODUCT, "xx")


def test_no_product_and_several_products() -> None:
    assert find_safe(["a.png", "b/manifest.safe", f"{ROOT}/measurement/{VV}.tiff"], "vv") is None
    other = [p.replace(ROOT, "second/S1B_IW_GRDH_X.SAFE").replace("s1a-", "s1b-")
             for p in PRODUCT]
    assert len(find_products(PRODUCT + other, "vv")) == 2
    with pytest.raises(SafeError, match="2 Sentinel-1 products"):
        find_safe(PRODUCT + other, "vv")


def test_slc_is_refused() -> None:
    files = [f"{ROOT}/manifest.safe", f"{ROOT}/measurement/{VV.replace('-grd-', '-slc-')}.tiff"]
    with pytest.raises(SafeError, match="SLC"):
        find_safe(files, "vv")


def test_calibration_found_by_polarisation_when_names_differ() -> None:
    files = [f"{ROOT}/manifest.safe", f"{ROOT}/measurement/{VV}.tiff",
             f"{ROOT}/annotation/calibration/calibration-s1a-iw-grd-vv-renamed.xml",
             f"{ROOT}/annotation/calibration/calibration-s1a-iw-grd-vh-renamed.xml"]
    product = find_safe(files, "vv")
    assert product is not None
    assert product.calibration == files[2]
    assert find_safe(files[:2], "vv") is not None


# --- the calibration LUT ---------------------------------------------------------------

GRID = [(0, [0, 4, 12], [100, 200, 300]),
        (10, [0, 4, 12], [110, 230, 350]),
        (30, [0, 4, 12], [150, 250, 450])]


def test_bilinear_at_nodes_and_midpoints(tmp_path: Path) -> None:
    path = tmp_path / "calibration.xml"
    path.write_text(calibration_xml(GRID[::-1]))  # vectors in any order
    calibration = Calibration.from_xml(path)
    at = calibration.sigma_nought_at
    nodes = at(np.array([0, 10, 30]), np.array([0, 4, 12]))
    np.testing.assert_array_equal(nodes, [[100, 200, 300], [110, 230, 350], [150, 250, 450]])
    # Midpoints of cells: the mean of the four corners.
    assert at(np.array([5]), np.array([2]))[0, 0] == pytest.approx((100 + 200 + 110 + 230) / 4)
    assert at(np.array([20]), np.array([8]))[0, 0] == pytest.approx((230 + 350 + 250 + 450) / 4)
    assert at(np.array([5]), np.array([8]))[0, 0] == pytest.approx((200 + 300 + 230 + 350) / 4)
    # A quarter of the way in both axes: 260 on line 10, 300 on line 30, then 270.
    assert at(np.array([15]), np.array([6]))[0, 0] == pytest.approx(270.0)
    # Flat beyond the last line and pixel.
    assert at(np.array([40]), np.array([20]))[0, 0] == pytest.approx(450.0)
    window = calibration.sigma_nought((1, 4, 6, 3))
    assert window.dtype == np.float32 and window.shape == (3, 6)
    np.testing.assert_allclose(window, at(np.arange(4, 7), np.arange(1, 7)), rtol=1e-6)


def test_vectors_with_different_pixels() -> None:
    calibration = Calibration.from_bytes(calibration_xml(
        [(0, [0, 10], [100, 200]), (10, [0, 5, 10], [100, 300, 100])]).encode())
    # Line 0 gives 150 at pixel 5, line 10 gives 300: halfway, 225.
    assert calibration.sigma_nought_at(np.array([5]), np.array([5]))[0, 0] == pytest.approx(225)


def test_single_vector_is_constant_over_lines() -> None:
    calibration = Calibration.from_bytes(calibration_xml([(3, [0, 10], [100, 200])]).encode())
    lut = calibration.sigma_nought((0, 0, 11, 4))
    np.testing.assert_allclose(lut, np.tile(np.linspace(100, 200, 11), (4, 1)), rtol=1e-6)


BILLION_LAUGHS = """<?xml version="1.0"?>
<!DOCTYPE calibration [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">
<!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;"><!ENTITY d "&c;&c;&c;&c;&c;&c;&c;&c;&c;&c;">]>
<calibration><calibrationVectorList><calibrationVector><line>&d;</line>
</calibrationVector></calibrationVectorList></calibration>"""
EXTERNAL = """<?xml version="1.0"?>
<!DOCTYPE calibration [<!ENTITY x SYSTEM "file:///etc/passwd">]><calibration>&x;</calibration>"""


@pytest.mark.parametrize("data", [
    BILLION_LAUGHS.encode(), EXTERNAL.encode(),
    EXTERNAL.replace('"1.0"', '"1.0" encoding="UTF-16"').encode("utf-16"),
], ids=["entities", "external", "utf16"])
def test_hostile_xml_refused(data: bytes) -> None:
    with pytest.raises(BadCalibration):
        Calibration.from_bytes(data)


@pytest.mark.parametrize(("xml", "reason"), [
    ("<calibration>", "malformed"),
    ("<noise/>", "not <calibration>"),
    (calibration_xml([]), "no calibrationVector"),
    (calibration_xml([(0, [0, 4], [1.0])]), "2 pixels but 1"),
    (calibration_xml([(0, [0, 4], [1.0, 0.0])]), "<= 0"),
    (calibration_xml([(0, [4, 0], [1.0, 2.0])]), "not increasing"),
    (calibration_xml([(0, [0], [1.0]), (0, [0], [2.0])]), "same line"),
    (calibration_xml([(0, [0], [1.0])]).replace("<line>0", "<line>x"), "bad line"),
])
def test_malformed_calibration(xml: str, reason: str) -> None:
    with pytest.raises(BadCalibration, match=reason):
        Calibration.from_bytes(xml.encode())


# --- a calibrated scene ----------------------------------------------------------------

def lut_truth(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """A bilinear LUT (a + b col + c row + d row col): interpolation reproduces it exactly."""
    lut: np.ndarray = (500.0 + 0.1 * cols[None, :] + 0.2 * rows[:, None]
                       + 0.001 * rows[:, None] * cols[None, :])
    return lut


def test_sigma0_scene(tmp_path: Path) -> None:
    data, first, last = s1_border(np.random.default_rng(5))
    points = [GroundControlPoint(r, c, 10.0 + c / 1000, 50.0 - r / 1000, 0.0)
              for r in (0, H - 1) for c in (0, W - 1)]
    path = write_scene(tmp_path / f"{VV}.tiff", data, gcps=(points, CRS.from_epsg(4326)))
    lines, pixels = [0, 150, 399], [0, 200, 300, 599]
    grid = lut_truth(np.array(lines, float), np.array(pixels, float))
    xml = tmp_path / "calibration.xml"
    xml.write_text(calibration_xml([(line, [float(p) for p in pixels], list(grid[i]))
                                    for i, line in enumerate(lines)]))
    calibration = Calibration.from_xml(xml)
    info = inspect_scene(path, band=1, max_pixels=10**9)
    survey = survey_scene(path, info, calibration, strip_rows=64)
    assert survey.db_kind is DbKind.SIGMA0
    np.testing.assert_array_equal(survey.row_first, first)
    np.testing.assert_array_equal(survey.row_last, last)

    lut = lut_truth(np.arange(H, dtype=float), np.arange(W, dtype=float))
    sigma0 = data.astype(float) ** 2 / lut**2
    columns = np.arange(W)
    inside = (columns >= first[:, None]) & (columns <= last[:, None])
    db = np.full(sigma0.shape, DB_MIN)
    np.log10(sigma0, out=db, where=sigma0 > 0)
    db = np.where(sigma0 > 0, 10 * db, DB_MIN)[inside]
    for pct in (1, 50, 99):
        assert abs(survey.percentile(pct) - np.percentile(db, pct)) <= DB_STEP

    values, valid = read_window(path, info, (100, 50, 200, 120), survey, calibration)
    np.testing.assert_allclose(values, sigma0[50:170, 100:300], rtol=1e-5)
    np.testing.assert_array_equal(valid, inside[50:170, 100:300])
    small, _ = read_window(path, info, (0, 0, W, H), survey, calibration, out_shape=(40, 60))
    rows, cols = np.arange(40) * 10 + 5, np.arange(60) * 10 + 5
    np.testing.assert_allclose(small, sigma0[np.ix_(rows, cols)], rtol=1e-5)
    assert Stretch.from_survey(survey).as_dict()["db_kind"] == "sigma0"
