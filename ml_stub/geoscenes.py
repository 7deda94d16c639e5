"""Georeferenced SAR test scenes with known slicks, written strip by strip (never whole).

A scene is sigma0 (linear backscatter) of a sea with a smooth wind gradient, damped under
each slick (a shapely polygon in pixel coordinates x = column, y = row, holes allowed) by
its dB, times gamma speckle of LOOKS looks. Files hold amplitude DNs for integer types
(sqrt of sigma0 relative to the sea, scaled so the sea is about 10,000 in uint16 and 100 in
uint8) and sigma0 itself for float32. Speckle is seeded per row, so a scene depends on its
seed only, not on how many rows are written at once. The truth (SceneTruth) is rasterised
on demand, window by window, by the same code that damps the written pixels.

write_safe_zip packs a Sentinel-1 GRD product whose measurements are DNs that calibrate
(sigma0 = DN^2 / A^2, A the calibration's sigmaNought interpolated bilinearly) to the scene.
"""

from __future__ import annotations

import io
import tempfile
import warnings
import xml.etree.ElementTree as ET
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import numpy as np
import rasterio
import rasterio.features
import rasterio.transform
from affine import Affine
from PIL import Image
from pyproj import Transformer
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from rasterio.windows import Window
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box

Dtype = Literal["uint16", "uint8", "float32"]

LOOKS = 4  # of the gamma speckle, as a GRD product's
SEA_SIGMA0 = 0.05  # linear, about -13 dB: a VV sea in a moderate wind
SEA_DN = {"uint16": 10_000.0, "uint8": 100.0}  # amplitude DN of SEA_SIGMA0
VH_BELOW_VV_DB = 8.0  # cross-polarised sea is this much darker
GCP_GRID = 10  # GCPs per side
TILE_PX = 512  # the GeoTIFF's internal tiles, and the default strip height
LUT_EVERY_PX = 40  # calibration vectors sample every this many columns, as ESA's do
LUT_VECTORS = 10  # and there are about this many vectors down the scene
BURST_ROWS = 1500  # rows per IW burst, where a GRD's border jumps
# Where the SAFE product lies: a descending pass's tilted footprint in the North Sea.
SAFE_CRS = "EPSG:32631"
SAFE_TRANSFORM = (Affine.translation(520_000, 6_120_000) @ Affine.rotation(-12)
                  @ Affine.scale(10, -10))
SAFE_START, SAFE_STOP = "20230101T054421", "20230101T054446"
SAFE_ORBIT, SAFE_TAKE = "046580", "05951C"


class SceneSpecError(ValueError):
    """A scene that cannot be written as asked."""


@dataclass(frozen=True)
class SlickSpec:
    """A slick: its outline in pixel coordinates (x = column, y = row; holes are clean
    water) and how much it damps the sea's backscatter, in dB (> 0)."""

    polygon: Polygon | MultiPolygon
    damping_db: float = 8.0

    def __post_init__(self) -> None:
        if self.polygon.is_empty or not self.polygon.is_valid:
            raise SceneSpecError("a slick's polygon is empty or invalid")
        if not self.damping_db > 0:
            raise SceneSpecError(f"a slick damps by {self.damping_db} dB; it must be > 0")

    @classmethod
    def band(cls, centre: tuple[float, float], length: float, width: float,
             angle_deg: float = 0.0, damping_db: float = 8.0) -> SlickSpec:
        """An elongated band with round ends around centre (col, row); angle_deg turns its
        axis from the columns towards the rows (clockwise as displayed)."""
        if not 0 < width <= length:
            raise SceneSpecError("a band needs 0 < width <= length")
        half = (length - width) / 2
        dx, dy = half * np.cos(np.radians(angle_deg)), half * np.sin(np.radians(angle_deg))
        x, y = centre
        axis = LineString([(x - dx, y - dy), (x + dx, y + dy)]) if half > 0 else Point(x, y)
        return cls(axis.buffer(width / 2, quad_segs=32), damping_db)

    @classmethod
    def ring(cls, centre: tuple[float, float], outer_radius: float, inner_radius: float,
             damping_db: float = 8.0) -> SlickSpec:
        """A ring of oil around clean water, centred on (col, row)."""
        if not 0 < inner_radius < outer_radius:
            raise SceneSpecError("a ring needs 0 < inner_radius < outer_radius")
        disc = Point(centre).buffer(outer_radius, quad_segs=64)
        return cls(disc.difference(Point(centre).buffer(inner_radius, quad_segs=64)),
                   damping_db)

    @classmethod
    def rectangle(cls, col_off: float, row_off: float, width: float, height: float,
                  angle_deg: float = 0.0, damping_db: float = 8.0) -> SlickSpec:
        """A rectangle from (col_off, row_off), turned by angle_deg about its centre."""
        shape = box(col_off, row_off, col_off + width, row_off + height)
        return cls(affinity.rotate(shape, angle_deg, origin="centroid"), damping_db)


@dataclass(frozen=True, eq=False)
class ValidArea:
    """Where a scene holds data: row r has it in columns first[r] <= c < stop[r]; a row with
    first == stop is all zero (a Sentinel-1 border). Elsewhere pixels are 0."""

    first: np.ndarray
    stop: np.ndarray

    @classmethod
    def everywhere(cls, width: int, height: int) -> ValidArea:
        """No border: every pixel holds data."""
        return cls(np.zeros(height, np.int64), np.full(height, width, np.int64))

    @classmethod
    def sentinel1_border(cls, width: int, height: int, rng: np.random.Generator
                         ) -> ValidArea:
        """A few all-zero rows top and bottom, and at each row's start and end a zero run
        that drifts down the scene, jumps at burst boundaries and jitters by a pixel or two,
        as a GRD product's edges do."""
        rows = np.arange(height)
        zero_top = int(rng.integers(1, max(2, height // 400) + 2))
        zero_bottom = int(rng.integers(1, max(2, height // 400) + 2))
        widest = max(2, width // 60)

        def ragged() -> np.ndarray:
            drift = rng.uniform(0.2, 0.6) * widest + rng.uniform(-0.3, 0.3) * widest * (
                rows / max(height - 1, 1))
            bursts = rng.uniform(0, 0.2 * widest, size=height // BURST_ROWS + 1)[
                rows // BURST_ROWS]
            jitter = rng.integers(0, 3, size=height)
            return np.asarray(np.clip(drift + bursts + jitter, 1, widest), np.int64)

        first, stop = ragged(), width - ragged()
        dead = (rows < zero_top) | (rows >= height - zero_bottom)
        first[dead], stop[dead] = 0, 0
        return cls(first, stop)

    def window(self, window: Window) -> np.ndarray:
        """Where the window (in scene pixels) holds data, as a bool array."""
        col_off, row_off, width, height = _bounds(window)
        cols = np.arange(col_off, col_off + width)[None, :]
        rows = slice(row_off, row_off + height)
        return np.asarray((cols >= self.first[rows, None]) & (cols < self.stop[rows, None]))


@dataclass(frozen=True, eq=False)
class SceneTruth:
    """What a written scene holds: its size, slicks and valid area; truth by window."""

    width: int
    height: int
    slicks: tuple[SlickSpec, ...]
    valid: ValidArea

    @property
    def polygons(self) -> tuple[Polygon | MultiPolygon, ...]:
        """The slicks' outlines, in pixel coordinates (x = column, y = row)."""
        return tuple(s.polygon for s in self.slicks)

    def damping_window(self, window: Window) -> np.ndarray:
        """Each pixel's damping in dB over the window (0: clean sea), the strongest slick
        where slicks overlap; a pixel is under a slick when its centre is."""
        col_off, row_off, width, height = _bounds(window)
        out = np.zeros((height, width), np.float32)
        area = box(col_off, row_off, col_off + width, row_off + height)
        # Weakest first, so where slicks overlap the strongest is burnt last and stays.
        shapes = [(s.polygon, s.damping_db)
                  for s in sorted(self.slicks, key=lambda s: s.damping_db)
                  if s.polygon.intersects(area)]
        if shapes:
            rasterio.features.rasterize(shapes, out=out,
                                        transform=Affine.translation(col_off, row_off))
        return out

    def truth_window(self, window: Window) -> np.ndarray:
        """Oil over the window: under a slick and inside the valid area (bool)."""
        return np.asarray((self.damping_window(window) > 0) & self.valid.window(window))


@dataclass(frozen=True, eq=False)
class _Calibration:
    """A sigmaNought table as ESA's calibration vectors give it: per line in lines, the
    values at pixels (the same columns for every vector here)."""

    lines: np.ndarray
    pixels: np.ndarray
    sigma: np.ndarray  # (len(lines), len(pixels))

    @classmethod
    def smooth(cls, width: int, height: int) -> _Calibration:
        """500 near range to 700 far range, not linearly, and a few units down the scene."""
        lines = np.unique(np.linspace(0, height - 1, LUT_VECTORS + 1).round()).astype(int)
        pixels = np.unique(np.append(np.arange(0, width, LUT_EVERY_PX), width - 1))
        across = 500.0 + 200.0 * (pixels / max(width - 1, 1)) ** 1.3
        along = 4.0 * np.sin(lines / max(height - 1, 1) * np.pi)
        return cls(lines, pixels, across[None, :] + along[:, None])

    def lut(self, window: Window) -> np.ndarray:
        """A over the window, bilinear between vectors and pixels, flat beyond them."""
        col_off, row_off, width, height = _bounds(window)
        cols = np.arange(col_off, col_off + width)
        rows = np.arange(row_off, row_off + height)
        across = np.stack([np.interp(cols, self.pixels, v) for v in self.sigma])
        if len(self.lines) == 1:
            return np.repeat(across[:1], height, axis=0).astype(np.float32)
        upper = np.clip(np.searchsorted(self.lines, rows, side="right"), 1, len(self.lines) - 1)
        lower = upper - 1
        weight = np.clip((rows - self.lines[lower]) / (self.lines[upper] - self.lines[lower]),
                         0.0, 1.0)[:, None]
        return np.asarray(across[lower] * (1 - weight) + across[upper] * weight, np.float32)

    def xml(self, polarisation: str, image: int) -> bytes:
        """ESA's calibration XML of these vectors for one measurement."""
        root = ET.Element("calibration")
        _header(root, polarisation, image)
        info = ET.SubElement(root, "calibrationInformation")
        ET.SubElement(info, "absoluteCalibrationConstant").text = "1.000000e+00"
        vectors = ET.SubElement(root, "calibrationVectorList", count=str(len(self.lines)))
        pixels = " ".join(str(int(p)) for p in self.pixels)
        for line, sigma in zip(self.lines, self.sigma, strict=True):
            vector = ET.SubElement(vectors, "calibrationVector")
            ET.SubElement(vector, "azimuthTime").text = _iso(SAFE_START, float(line) / 500)
            ET.SubElement(vector, "line").text = str(int(line))
            ET.SubElement(vector, "pixel", count=str(len(self.pixels))).text = pixels
            for name, values in (("sigmaNought", sigma), ("betaNought", np.full_like(sigma, 237.0)),
                                 ("gamma", sigma * 0.95), ("dn", np.full_like(sigma, 237.0))):
                ET.SubElement(vector, name, count=str(len(values))).text = " ".join(
                    f"{v:.6e}" for v in values)
        return _xml_bytes(root)


def _bounds(window: Window) -> tuple[int, int, int, int]:
    return (int(window.col_off), int(window.row_off), int(window.width), int(window.height))


def _sea_sigma0(width: int, height: int, seed: int, channel: int = 0, cross: bool = False
                ) -> Callable[[Window], np.ndarray]:
    """The speckled, undamped sea's sigma0 over a window of whole rows, as a function.

    The wind: 2 to 4 dB darker from near to far range (across the columns) and a slow swell
    of up to 1 dB down the rows, both drawn from the seed; the speckle, from the seed, the
    channel and the row. Channel 0 is write_scene's and a product's first polarisation's,
    so a float32 scene is what a product of the same seed calibrates to. cross: a
    cross-polarised (darker) sea.
    """
    rng = np.random.default_rng((seed, 0x5EA))
    cols, rows = np.arange(width) / max(width - 1, 1), np.arange(height) / max(height - 1, 1)
    across_db = -rng.uniform(2.0, 4.0) * cols
    along_db = rng.uniform(0.5, 1.0) * np.sin(2 * np.pi * (rng.uniform(1, 3) * rows
                                                            + rng.uniform(0, 1)))
    base = SEA_SIGMA0 * 10 ** (-VH_BELOW_VV_DB / 10 if cross else 0.0)
    across = (base * 10 ** (across_db / 10)).astype(np.float32)
    along = (10 ** (along_db / 10)).astype(np.float32)

    def sigma0(window: Window) -> np.ndarray:
        _, row_off, _, count = _bounds(window)
        out = np.empty((count, width), np.float32)
        for i in range(count):  # one generator per row: the same scene whatever the strips
            row_rng = np.random.default_rng((seed, channel, row_off + i))
            row_rng.standard_gamma(LOOKS, dtype=np.float32, out=out[i])
        out *= across / np.float32(LOOKS)
        out *= along[row_off:row_off + count, None]
        return out

    return sigma0


def _damped(sigma0: np.ndarray, truth: SceneTruth, window: Window) -> np.ndarray:
    """sigma0 under the slicks damped by their dB, in place."""
    damping = truth.damping_window(window)
    oil = damping > 0  # slicks are a small part of a scene: only their pixels are powered
    sigma0[oil] *= np.power(np.float32(10), damping[oil] * np.float32(-0.1))
    return sigma0


def _to_dtype(values: np.ndarray, dtype: Dtype, nodata: float | None) -> np.ndarray:
    """Float values to the file's type, 0 (the border's value) and nodata never among them."""
    if dtype == "float32":
        out = values
    else:
        high = float(np.iinfo(dtype).max)
        if nodata is not None and nodata == high:
            high -= 1
        out = np.clip(np.rint(values, out=values), 1, high, out=values).astype(dtype)
    if nodata is not None and nodata != 0:
        out[out == nodata] = nodata - 1
    return out


def _gcps(crs: str, transform: Affine, width: int, height: int) -> list[GroundControlPoint]:
    """A GCP_GRID x GCP_GRID grid of lon/lat GCPs (EPSG:4326) from the affine's pixels."""
    cols, rows = np.meshgrid(np.linspace(0, width, GCP_GRID), np.linspace(0, height, GCP_GRID))
    xs, ys = rasterio.transform.xy(transform, rows.ravel(), cols.ravel(), offset="ul")
    lons, lats = Transformer.from_crs(crs, "EPSG:4326", always_xy=True).transform(xs, ys)
    return [GroundControlPoint(row=float(r), col=float(c), x=float(lon), y=float(lat), z=0.0,
                               id=str(i + 1))
            for i, (r, c, lon, lat) in enumerate(zip(rows.ravel(), cols.ravel(), lons, lats,
                                                     strict=True))]


def _write_strips(path: Path, profile: dict[str, Any], block_rows: int,
                  strip: Callable[[Window], np.ndarray],
                  gcps: list[GroundControlPoint] | None) -> None:
    """Write the file strip by strip: strip(window) gives the pixels of block_rows rows."""
    width, height = profile["width"], profile["height"]
    if gcps is not None:  # given at creation, GDAL never sees a dataset without georeference
        profile = {**profile, "gcps": gcps, "crs": CRS.from_epsg(4326)}
    with warnings.catch_warnings():
        # A scene without crs and transform is meant to be plain pixels.
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            for row_off in range(0, height, block_rows):
                window = Window(0, row_off, width, min(block_rows, height - row_off))
                dst.write(strip(window), 1, window=window)


def _profile(width: int, height: int, dtype: str, nodata: float | None) -> dict[str, Any]:
    block = TILE_PX if min(width, height) >= TILE_PX else 256
    # Uncompressed: the fastest to write and to read back, which is what benchmarks want.
    return {"driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": dtype,
            "nodata": nodata, "tiled": True, "blockxsize": block, "blockysize": block,
            "compress": "none", "BIGTIFF": "IF_SAFER"}


def write_scene(path: Path, width: int, height: int, *, dtype: Dtype = "uint16",
                crs: str | None = None, transform: Affine | None = None, gcps: bool = False,
                slicks: Sequence[SlickSpec] = (), zero_border: bool = False,
                nodata: float | None = None, seed: int = 0, block_rows: int = TILE_PX
                ) -> SceneTruth:
    """Write a tiled GeoTIFF scene strip by strip and return its truth.

    crs and transform georeference it; with gcps, they only place a grid of lon/lat GCPs
    (EPSG:4326) and the file has no affine, as a Sentinel-1 GRD measurement. zero_border
    gives it a GRD's ragged all-zero border; nodata is only the file's tag.
    """
    if dtype not in ("uint16", "uint8", "float32"):
        raise SceneSpecError(f"dtype {dtype!r} is not uint16, uint8 or float32")
    if width <= 0 or height <= 0 or block_rows <= 0:
        raise SceneSpecError("width, height and block_rows must be positive")
    if (gcps or crs is not None or transform is not None) and (crs is None
                                                              or transform is None):
        raise SceneSpecError("georeferencing (and GCPs) needs both crs and transform")
    rng = np.random.default_rng((seed, 0xB0))
    valid = (ValidArea.sentinel1_border(width, height, rng) if zero_border
             else ValidArea.everywhere(width, height))
    truth = SceneTruth(width, height, tuple(slicks), valid)
    profile = _profile(width, height, dtype, nodata)
    if transform is not None and not gcps:
        profile.update(crs=CRS.from_user_input(crs), transform=transform)
    sea = _sea_sigma0(width, height, seed)

    def strip(window: Window) -> np.ndarray:
        sigma0 = _damped(sea(window), truth, window)
        if dtype != "float32":
            np.sqrt(sigma0 / np.float32(SEA_SIGMA0), out=sigma0)
            sigma0 *= np.float32(SEA_DN[dtype])
        out = _to_dtype(sigma0, dtype, nodata)
        out[~valid.window(window)] = 0
        return out

    _write_strips(path, profile, block_rows, strip,
                  _gcps(str(crs), transform, width, height)
                  if gcps and transform is not None else None)
    return truth


def write_safe_zip(zip_path: Path, width: int, height: int, *,
                   slicks: Sequence[SlickSpec] = (), seed: int = 0,
                   polarisations: Sequence[str] = ("vv", "vh"), block_rows: int = TILE_PX
                   ) -> SceneTruth:
    """Write a zipped Sentinel-1 IW GRD product (SAFE layout) and return its truth.

    Each polarisation's measurement is a uint16 DN GeoTIFF with lon/lat GCPs and a zero
    border, written by strips to a temporary file and stored in the zip unread; its DNs are
    sqrt(sigma0) * A, so that its calibration XML gives back the scene's sigma0.
    """
    pols = [p.lower() for p in polarisations]
    if not pols or len(set(pols)) != len(pols) or not set(pols) <= {"vv", "vh", "hh", "hv"}:
        raise SceneSpecError(f"polarisations {polarisations!r}: distinct vv, vh, hh or hv")
    valid = ValidArea.sentinel1_border(width, height, np.random.default_rng((seed, 0xB0)))
    truth = SceneTruth(width, height, tuple(slicks), valid)
    product = (f"S1A_IW_GRDH_1S{'D' if len(pols) > 1 else 'S'}{pols[0][0].upper()}_"
               f"{SAFE_START}_{SAFE_STOP}_{SAFE_ORBIT}_{SAFE_TAKE}_{seed % 0x10000:04X}.SAFE")
    calibration = _Calibration.smooth(width, height)
    gcps = _gcps(SAFE_CRS, SAFE_TRANSFORM, width, height)
    sizes: dict[str, int] = {}
    with tempfile.TemporaryDirectory(dir=zip_path.parent) as tmp, \
            zipfile.ZipFile(zip_path, "w", zipfile.ZIP_DEFLATED) as zf:
        for index, pol in enumerate(pols, start=1):
            stem = (f"s1a-iw-grd-{pol}-{SAFE_START.lower()}-{SAFE_STOP.lower()}-"
                    f"{SAFE_ORBIT}-{SAFE_TAKE.lower()}-{index:03d}")
            sea = _sea_sigma0(width, height, seed, channel=index - 1, cross=pol[0] != pol[1])

            # sea is bound now: the loop goes on to the next polarisation's.
            def strip(window: Window, sea: Callable[[Window], np.ndarray] = sea
                      ) -> np.ndarray:
                dn = np.sqrt(_damped(sea(window), truth, window), dtype=np.float32)
                dn *= calibration.lut(window)
                out = _to_dtype(dn, "uint16", None)
                out[~valid.window(window)] = 0
                return out

            tiff = Path(tmp) / f"{stem}.tiff"
            _write_strips(tiff, _profile(width, height, "uint16", None), block_rows, strip,
                          gcps)
            member = f"measurement/{stem}.tiff"
            zf.write(tiff, f"{product}/{member}", compress_type=zipfile.ZIP_STORED)
            sizes[member] = tiff.stat().st_size
            tiff.unlink()
            for member, data in ((f"annotation/{stem}.xml",
                                  _annotation_xml(pol, index, width, height)),
                                 (f"annotation/calibration/calibration-{stem}.xml",
                                  calibration.xml(pol, index))):
                zf.writestr(f"{product}/{member}", data)
                sizes[member] = len(data)
        for member, data in (("preview/quick-look.png", _png(96, 64, seed)),
                             ("preview/icons/logo.png", _png(32, 32, seed + 1)),
                             ("support/s1-level-1-calibration.xsd",
                              b'<?xml version="1.0"?>\n<xsd:schema '
                              b'xmlns:xsd="http://www.w3.org/2001/XMLSchema"/>\n')):
            zf.writestr(f"{product}/{member}", data)
            sizes[member] = len(data)
        zf.writestr(f"{product}/manifest.safe", _manifest_xml(sizes))
    return truth


def _iso(compact: str, offset_s: float = 0.0) -> str:
    """20230101T054421 as ESA's 2023-01-01T05:44:21.000000, offset_s later."""
    when = datetime.strptime(compact, "%Y%m%dT%H%M%S") + timedelta(seconds=offset_s)
    return when.isoformat(timespec="microseconds")


def _header(root: ET.Element, polarisation: str, image: int) -> None:
    header = ET.SubElement(root, "adsHeader")
    for name, text in (("missionId", "S1A"), ("productType", "GRD"),
                       ("polarisation", polarisation.upper()), ("mode", "IW"),
                       ("swath", "IW"), ("startTime", _iso(SAFE_START)),
                       ("stopTime", _iso(SAFE_STOP)),
                       ("absoluteOrbitNumber", str(int(SAFE_ORBIT))),
                       ("missionDataTakeId", str(int(SAFE_TAKE, 16))),
                       ("imageNumber", f"{image:03d}")):
        ET.SubElement(header, name).text = text


def _annotation_xml(polarisation: str, image: int, width: int, height: int) -> bytes:
    """A minimal product annotation: its header and the image's size and spacing."""
    root = ET.Element("product")
    _header(root, polarisation, image)
    info = ET.SubElement(ET.SubElement(root, "imageAnnotation"), "imageInformation")
    for name, text in (("productFirstLineUtcTime", _iso(SAFE_START)),
                       ("productLastLineUtcTime", _iso(SAFE_STOP)),
                       ("rangePixelSpacing", "1.000000e+01"),
                       ("azimuthPixelSpacing", "1.000000e+01"),
                       ("numberOfSamples", str(width)), ("numberOfLines", str(height))):
        ET.SubElement(info, name).text = text
    return _xml_bytes(root)


def _manifest_xml(sizes: dict[str, int]) -> bytes:
    """A minimal XFDU manifest listing the product's files and their sizes."""
    root = ET.Element("xfdu:XFDU", {"xmlns:xfdu": "urn:ccsds:schema:xfdu:1",
                                    "version": "esa/safe/sentinel-1.0/sentinel-1/sar/"
                                               "level-1/standard"})
    ET.SubElement(ET.SubElement(root, "informationPackageMap"), "xfdu:contentUnit",
                  unitType="SAFE Archive Information Package",
                  textInfo="Sentinel-1 IW Level-1 GRD Product")
    objects = ET.SubElement(root, "dataObjectSection")
    for member, size in sorted(sizes.items()):
        data = ET.SubElement(objects, "dataObject",
                             ID=Path(member).stem.replace("-", ""))
        stream = ET.SubElement(data, "byteStream", mimeType="application/octet-stream",
                               size=str(size))
        ET.SubElement(stream, "fileLocation", locatorType="URL", href=f"./{member}")
    return _xml_bytes(root)


def _xml_bytes(root: ET.Element) -> bytes:
    ET.indent(root)
    text = ET.tostring(root, encoding="unicode")
    return f'<?xml version="1.0" encoding="UTF-8"?>\n{text}\n'.encode()


def _png(width: int, height: int, seed: int) -> bytes:
    """A small grey picture: previews are not scenes, but are PNGs."""
    grey = np.random.default_rng(seed).integers(60, 200, size=(height, width), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(grey).save(out, format="PNG")
    return out.getvalue()
