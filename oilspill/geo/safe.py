"""Sentinel-1 SAFE products in an upload: which file is the scene, and its calibration.

A product is a directory <name>.SAFE holding manifest.safe, one measurement TIFF per
polarisation (measurement/s1a-iw-grd-vv-....tiff), their calibration XMLs
(annotation/calibration/calibration-s1a-iw-grd-vv-....xml) and many more files (other
annotations, preview PNGs, a logo) that are not scenes. The measurement's digital numbers
become sigma0 = DN^2 / A^2, A being the calibration's sigmaNought LUT interpolated
bilinearly between its vectors (irregular lines, and per vector irregular pixels).

Blocking (reads one XML file); no other I/O.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from .errors import SceneError

if TYPE_CHECKING:
    from .scene import WindowLike

POLARISATIONS = ("vv", "vh", "hh", "hv")
MAX_XML_BYTES = 64 * 2**20  # real calibration files are a few MB
_MANIFEST = "manifest.safe"
# s1a-iw-grd-vv-20230101t054421-20230101t054446-046580-05951c-001.tiff: mission, mode,
# product type, polarisation, then times and ids.
_MEASUREMENT = re.compile(
    r"^s1[a-z]-(?P<mode>[a-z0-9]+)-(?P<product>[a-z]+)-(?P<pol>hh|hv|vh|vv)-.*\.tiff?$",
    re.IGNORECASE)


class SafeError(SceneError):
    """A Sentinel-1 product that cannot be used as it is."""


class MissingPolarisation(SafeError):
    """The product has no measurement in the polarisation OILSPILL_S1_POLARISATION names."""


class BadCalibration(SafeError):
    """A calibration XML that is hostile, malformed or not what ESA writes."""


@dataclass(frozen=True)
class SafeProduct:
    """One Sentinel-1 product among an upload's files (paths relative, '/'-separated).

    directory: the <name>.SAFE directory. measurement: the GRD TIFF of polarisation.
    calibration: its calibration XML, None if the product lacks it. members: every other
    file of the product (manifest, annotations, calibration, previews, other polarisations),
    which are not scenes. polarisations: those the product has measurements for.
    """

    directory: str
    polarisation: str
    measurement: str
    calibration: str | None
    members: frozenset[str]
    polarisations: tuple[str, ...]


def find_products(files: Sequence[str], polarisation: str) -> list[SafeProduct]:
    """Every Sentinel-1 product among the files (a <name>.SAFE/manifest.safe at any depth)."""
    pol = polarisation.lower()
    if pol not in POLARISATIONS:
        raise SafeError(f"polarisation {polarisation!r} (OILSPILL_S1_POLARISATION) is not "
                        f"one of {', '.join(POLARISATIONS)}")
    directories = sorted({str(p.parent) for p in map(PurePosixPath, files)
                          if p.name == _MANIFEST and p.parent.suffix.upper() == ".SAFE"})
    return [_product(d, [f for f in files if f.startswith(d + "/")], pol) for d in directories]


def find_safe(files: Sequence[str], polarisation: str) -> SafeProduct | None:
    """The Sentinel-1 product among the files, None without one; SafeError if several."""
    products = find_products(files, polarisation)
    if len(products) > 1:
        raise SafeError(f"{len(products)} Sentinel-1 products in one upload; send one per "
                        "upload")
    return products[0] if products else None


def _product(directory: str, files: list[str], pol: str) -> SafeProduct:
    name = PurePosixPath(directory).name
    measurements: dict[str, list[str]] = {}
    for path in files:
        relative = PurePosixPath(path[len(directory) + 1:])
        match = _MEASUREMENT.match(relative.name)
        if match and relative.parent == PurePosixPath("measurement"):
            if match["product"].lower() != "grd":
                raise SafeError(f"{name} is a {match['product'].upper()} product; only GRD "
                                "(detected, ground range) products are supported")
            measurements.setdefault(match["pol"].lower(), []).append(path)
    present = tuple(p for p in POLARISATIONS if p in measurements)
    if pol not in measurements:
        raise MissingPolarisation(
            f"{name} has no {pol.upper()} measurement (OILSPILL_S1_POLARISATION); it has "
            f"{', '.join(p.upper() for p in present) or 'none'}")
    if len(measurements[pol]) > 1:
        raise SafeError(f"{name} has {len(measurements[pol])} {pol.upper()} measurements")
    measurement = measurements[pol][0]
    return SafeProduct(directory=directory, polarisation=pol, measurement=measurement,
                       calibration=_calibration_of(directory, measurement, files, pol),
                       members=frozenset(files) - {measurement}, polarisations=present)


def _calibration_of(directory: str, measurement: str, files: list[str], pol: str
                    ) -> str | None:
    """calibration-<measurement's stem>.xml, else the one calibration XML of that pol."""
    folder = f"{directory}/annotation/calibration/"
    exact = f"{folder}calibration-{PurePosixPath(measurement).stem}.xml"
    if exact in files:
        return exact
    pattern = re.compile(rf"^calibration-.*-{pol}-.*\.xml$", re.IGNORECASE)
    candidates = [f for f in files
                  if f.startswith(folder) and pattern.match(f[len(folder):])]
    return candidates[0] if len(candidates) == 1 else None


@dataclass(frozen=True, eq=False)
class Calibration:
    """The sigmaNought LUT of a measurement, as ESA's calibration vectors.

    lines: each vector's image line, strictly increasing. pixels[i], sigma[i]: vector i's
    image columns (strictly increasing) and its LUT values A there (all > 0).
    """

    lines: npt.NDArray[np.float64]
    pixels: tuple[npt.NDArray[np.float64], ...]
    sigma: tuple[npt.NDArray[np.float64], ...]

    @classmethod
    def from_xml(cls, path: Path) -> Calibration:
        """Parse an ESA calibration XML; BadCalibration if hostile or malformed."""
        if path.stat().st_size > MAX_XML_BYTES:
            raise BadCalibration(f"calibration XML over {MAX_XML_BYTES // 2**20} MiB")
        return cls.from_bytes(path.read_bytes())

    @classmethod
    def from_bytes(cls, data: bytes) -> Calibration:
        """Parse the bytes of an ESA calibration XML (see from_xml)."""
        try:
            text = data.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise BadCalibration("calibration XML is not UTF-8") from None
        # xml.etree expands internal entities (billion laughs); ESA's files never declare
        # any, so a DTD is refused outright. Parsing a str, not bytes, makes expat ignore
        # any encoding declaration, so the check above sees what expat will see.
        if "<!DOCTYPE" in text or "<!ENTITY" in text:
            raise BadCalibration("calibration XML declares a DTD or entities; refused")
        try:
            root = ET.fromstring(text)
        except ET.ParseError as exc:
            raise BadCalibration(f"calibration XML is malformed: {exc}") from None
        if root.tag != "calibration":
            raise BadCalibration(f"root element is <{root.tag}>, not <calibration>")
        vectors = [_vector(v) for v in root.iterfind("calibrationVectorList/calibrationVector")]
        if not vectors:
            raise BadCalibration("calibration XML has no calibrationVector")
        vectors.sort(key=lambda v: v[0])
        lines = np.array([v[0] for v in vectors], np.float64)
        if np.any(np.diff(lines) <= 0):
            raise BadCalibration("two calibration vectors are for the same line")
        return cls(lines=lines, pixels=tuple(v[1] for v in vectors),
                   sigma=tuple(v[2] for v in vectors))

    def sigma_nought(self, window: WindowLike) -> npt.NDArray[np.float32]:
        """The LUT A over a window (col_off, row_off, width, height), bilinear."""
        if isinstance(window, tuple):
            col_off, row_off, width, height = window
        else:
            col_off, row_off = int(window.col_off), int(window.row_off)
            width, height = int(window.width), int(window.height)
        return self.sigma_nought_at(np.arange(row_off, row_off + height),
                                    np.arange(col_off, col_off + width))

    def sigma_nought_at(self, rows: npt.NDArray[np.intp],
                        cols: npt.NDArray[np.intp]) -> npt.NDArray[np.float32]:
        """The LUT A on the grid rows x cols (scene indices), bilinear, flat beyond the ends."""
        # Each vector is first interpolated to the columns (vectors may sample different
        # pixels), then rows are interpolated between the two vectors around them. Only the
        # vectors these rows need are expanded, so a strip costs a few rows of columns.
        if len(self.lines) == 1:
            only = np.interp(cols, self.pixels[0], self.sigma[0]).astype(np.float32)
            return np.repeat(only[None, :], len(rows), axis=0)
        below = np.clip(np.searchsorted(self.lines, rows, side="right") - 1,
                        0, len(self.lines) - 2)
        step = (rows - self.lines[below]) / (self.lines[below + 1] - self.lines[below])
        weight = np.clip(step, 0.0, 1.0).astype(np.float32)[:, None]
        start = int(below.min())
        expanded = np.stack([np.interp(cols, self.pixels[k], self.sigma[k])
                             for k in range(start, int(below.max()) + 2)]).astype(np.float32)
        out = expanded[below - start]
        out *= 1.0 - weight
        upper = expanded[below + 1 - start]
        upper *= weight
        out += upper
        return out


def _vector(element: ET.Element) -> tuple[float, npt.NDArray[np.float64],
                                          npt.NDArray[np.float64]]:
    """(line, pixels, sigmaNought values) of one calibrationVector element."""
    try:
        line = float(int(element.findtext("line", "")))
        pixels = np.array(element.findtext("pixel", "").split(), np.float64)
        sigma = np.array(element.findtext("sigmaNought", "").split(), np.float64)
    except ValueError:
        raise BadCalibration("a calibrationVector has a bad line, pixel or sigmaNought"
                             ) from None
    if len(pixels) == 0 or len(pixels) != len(sigma):
        raise BadCalibration(f"a calibrationVector has {len(pixels)} pixels but "
                             f"{len(sigma)} sigmaNought values")
    if np.any(np.diff(pixels) <= 0):
        raise BadCalibration("a calibrationVector's pixels are not increasing")
    if not np.all(np.isfinite(sigma) & (sigma > 0)):
        raise BadCalibration("a calibrationVector has a sigmaNought value <= 0")
    return line, pixels, sigma
