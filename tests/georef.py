"""Georeferenced SAR-like scenes for the tests, written with rasterio: a speckled sea, dark
slicks with their truth, UTM and lon/lat transforms, GCP grids, a Sentinel-1 zero border,
scenes written strip by strip (never whole), and the pieces of a zipped SAFE product.

Intensity is linear backscatter (float32); files hold amplitude DNs (sqrt of it, scaled) or
the intensity itself for float32.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.windows import Window

UTM_TRANSFORM = Affine(10, 0, 500_000, 0, -10, 6_000_000)  # 10 m pixels in EPSG:32633
LONLAT_TRANSFORM = Affine(1e-4, 0, 2.0, 0, -1e-4, 55.5)  # about 6 x 11 m at 55.5 N


def sea(height: int, width: int, seed: int, looks: float = 4.0) -> np.ndarray:
    """Linear backscatter of a speckled sea: a 2 dB wind gradient across, slow swell along."""
    rng = np.random.default_rng(seed)
    intensity = rng.standard_gamma(looks, size=(height, width), dtype=np.float32)
    intensity *= np.float32(1 / looks)
    across = np.float32(-2.0) * np.arange(width, dtype=np.float32) / np.float32(width)
    along = (0.8 * np.sin(np.arange(height) / height * 5 + 1.0)).astype(np.float32)
    intensity *= np.power(np.float32(10), (across[None, :] + along[:, None]) / np.float32(10))
    return intensity


def band(shape: tuple[int, int], centre: tuple[float, float], length: float, width: float,
         angle_deg: float) -> np.ndarray:
    """A straight slick: a rectangle with round ends, centred on (row, col)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]].astype(np.float32)
    angle = np.radians(angle_deg)
    u = (xx - centre[1]) * np.cos(angle) + (yy - centre[0]) * np.sin(angle)
    v = -(xx - centre[1]) * np.sin(angle) + (yy - centre[0]) * np.cos(angle)
    along = np.maximum(np.abs(u) - (length - width) / 2, 0)
    return np.asarray(np.hypot(along, v) <= width / 2)


def damp(intensity: np.ndarray, where: np.ndarray, db: float = 8.0) -> np.ndarray:
    intensity[where] *= np.float32(10 ** (-db / 10))
    return intensity


def amplitude_u16(intensity: np.ndarray) -> np.ndarray:
    """Amplitude DNs as a GRD product has them: sea about 10,000, never 0."""
    return np.asarray(np.clip(np.sqrt(intensity) * 10_000, 1, 65_535), dtype=np.uint16)


def write_tif(path: Path, data: np.ndarray, *, crs: Any = None, transform: Affine | None = None,
              gcps: list[GroundControlPoint] | None = None, gcps_crs: Any = None) -> Path:
    profile: dict[str, Any] = {"driver": "GTiff", "width": data.shape[1],
                               "height": data.shape[0], "count": 1, "dtype": data.dtype.name,
                               "tiled": True, "blockxsize": 256, "blockysize": 256}
    if transform is not None:
        profile.update(crs=crs, transform=transform)
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(data, 1)
        if gcps:
            dst.gcps = (gcps, CRS.from_user_input(gcps_crs))
    return path


def read_tif(path: Path) -> np.ndarray:
    with rasterio.open(path) as src:
        return np.asarray(src.read(1))


def gcp_grid(width: int, height: int, lines: int = 5, pixels: int = 7
             ) -> list[GroundControlPoint]:
    """A tilted lon/lat footprint in the North Sea, as a GRD annotation gives it."""
    points = []
    for row in np.linspace(0, height - 1, lines):
        for col in np.linspace(0, width - 1, pixels):
            u, v = col / (width - 1), row / (height - 1)
            points.append(GroundControlPoint(row=float(row), col=float(col),
                                             x=2.0 + 0.3 * u + 0.04 * v,
                                             y=55.2 - 0.03 * u - 0.2 * v, z=0.0))
    return points


def s1_border(height: int, width: int, seed: int) -> np.ndarray:
    """The valid area (True) of an S1-like scene: 30 zero rows at the top, 45 at the bottom,
    and zero runs of ragged length (slowly varying plus jitter) at each row's ends."""
    rng = np.random.default_rng(seed)
    rows = np.arange(height)
    left = (40 + 30 * np.sin(rows / height * 4) + rng.integers(0, 12, height)).astype(int)
    right = (width - 35 - 25 * np.cos(rows / height * 3) - rng.integers(0, 12, height)
             ).astype(int)
    cols = np.arange(width)
    valid = (cols[None, :] >= left[:, None]) & (cols[None, :] < right[:, None])
    valid[:30] = valid[height - 45:] = False
    return valid


@dataclass(frozen=True)
class Slick:
    """A straight slick with round ends: centre (row, col), length and thickness in pixels,
    angle in degrees, damping in dB."""

    row: float
    col: float
    length: float
    thickness: float
    angle: float
    damp_db: float = 8.0

    def truth(self, top: int, rows: int, width: int) -> np.ndarray:
        """The slick's pixels in rows top..top+rows of the scene."""
        yy = np.arange(top, top + rows, dtype=np.float32)[:, None] - np.float32(self.row)
        xx = np.arange(width, dtype=np.float32)[None, :] - np.float32(self.col)
        angle = np.radians(self.angle)
        u = xx * np.float32(np.cos(angle)) + yy * np.float32(np.sin(angle))
        v = yy * np.float32(np.cos(angle)) - xx * np.float32(np.sin(angle))
        along = np.maximum(np.abs(u) - np.float32((self.length - self.thickness) / 2), 0)
        return np.asarray(along * along + v * v <= np.float32((self.thickness / 2) ** 2))


def write_by_strips(path: Path, width: int, height: int, slicks: list[Slick], *,
                    dtype: str, seed: int, strip_rows: int = 512) -> Path:
    """A UTM scene written strip by strip (tiled 512 x 512), never whole in memory: sea
    speckle from a bank of 1024 rows drawn once and shifted per strip, a 2 dB wind
    gradient, the slicks; amplitude DNs (uint8: sea about 100, uint16: about 10,000)."""
    rng = np.random.default_rng(seed)
    bank = rng.standard_gamma(4.0, size=(1024, width), dtype=np.float32)
    bank *= np.float32(1 / 4.0)
    gradient = np.power(np.float32(10), np.float32(-0.2) * np.arange(width, dtype=np.float32)
                        / np.float32(width))
    scale, top_dn = (100.0, 255) if dtype == "uint8" else (10_000.0, 65_535)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 1,
               "dtype": dtype, "crs": "EPSG:32633", "transform": UTM_TRANSFORM,
               "tiled": True, "blockxsize": 512, "blockysize": 512, "BIGTIFF": "IF_SAFER"}
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, height, strip_rows):
            rows = min(strip_rows, height - top)
            start = int(rng.integers(0, 1024 - rows + 1))
            strip = np.roll(bank[start:start + rows], int(rng.integers(0, width)), axis=1)
            strip *= gradient[None, :]
            for slick in slicks:
                if abs(slick.row - (top + rows / 2)) <= rows / 2 + slick.length / 2:
                    strip[slick.truth(top, rows, width)] *= np.float32(
                        10 ** (-slick.damp_db / 10))
            np.sqrt(strip, out=strip)
            strip *= np.float32(scale)
            np.clip(strip, 1, top_dn, out=strip)
            dst.write(strip.astype(dtype), 1, window=Window(0, top, width, rows))
    return path


# --- a Sentinel-1 SAFE product ---------------------------------------------------------

SAFE = "S1A_IW_GRDH_1SDV_20230101T054421_20230101T054446_046580_05951C_6A3B.SAFE"
STEM = "s1a-iw-grd-{pol}-20230101t054421-20230101t054446-046580-05951c-00{n}"


def calibration_lut(width: int, height: int) -> np.ndarray:
    """The sigmaNought LUT A that calibration_xml describes, at every pixel (it is linear
    across and constant along, so bilinear interpolation reproduces it exactly)."""
    across = 500 + 100 * np.arange(width, dtype=np.float64) / (width - 1)
    return np.repeat(across[None, :], height, axis=0)


def calibration_xml(width: int, height: int) -> str:
    """An ESA-shaped calibration annotation: sigmaNought vectors every 200 lines, every 100
    pixels, A rising across the swath (as the incidence angle does) from 500 to 600."""
    vectors = []
    pixels = [*range(0, width, 100), width - 1]
    for line in [*range(0, height, 200), height - 1]:
        values = " ".join(f"{500 + 100 * p / (width - 1):.2f}" for p in pixels)
        vectors.append(
            "<calibrationVector><azimuthTime>2023-01-01T05:44:21.000000</azimuthTime>"
            f"<line>{line}</line><pixel count=\"{len(pixels)}\">"
            f"{' '.join(map(str, pixels))}</pixel><sigmaNought count=\"{len(pixels)}\">"
            f"{values}</sigmaNought></calibrationVector>")
    return ('<?xml version="1.0" encoding="UTF-8"?>\n<calibration><adsHeader/>'
            f'<calibrationVectorList count="{len(vectors)}">{"".join(vectors)}'
            "</calibrationVectorList></calibration>")


def measurement_name(pol: str) -> str:
    """The product's measurement TIFF of a polarisation, as ESA names it."""
    n = {"vv": 1, "vh": 2, "hh": 1, "hv": 2}[pol]
    return f"{SAFE}/measurement/{STEM.format(pol=pol, n=n)}.tiff"


def safe_product_files(measurements: dict[str, bytes], width: int, height: int,
                       pictures: dict[str, bytes]) -> dict[str, bytes]:
    """The files of a GRD product (paths inside the zip): manifest.safe, a measurement per
    polarisation with its annotation, calibration and noise XMLs, the preview pictures
    (name relative to the product: e.g. "preview/quick-look.png"), a KML and a schema."""
    files = {f"{SAFE}/manifest.safe": b"<?xml version='1.0'?><xfdu/>"}
    for pol, tiff in measurements.items():
        measurement = measurement_name(pol)
        stem = Path(measurement).stem
        files[measurement] = tiff
        files[f"{SAFE}/annotation/{stem}.xml"] = b"<product/>"
        files[f"{SAFE}/annotation/calibration/calibration-{stem}.xml"] = calibration_xml(
            width, height).encode()
        files[f"{SAFE}/annotation/calibration/noise-{stem}.xml"] = b"<noise/>"
    for name, data in pictures.items():
        files[f"{SAFE}/{name}"] = data
    files[f"{SAFE}/preview/map-overlay.kml"] = b"<kml/>"
    files[f"{SAFE}/support/s1-object-types.xsd"] = b"<xsd/>"
    return files
