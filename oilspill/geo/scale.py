"""One scene-wide grey scale, so that every tile of a scene is shown to the ML service alike.

Values go to decibels by what they are (DbKind): calibrated sigma0 and linear intensity as
10*log10, amplitude DNs of integer GeoTIFFs as 20*log10, and float data that is already in
dB as is. A scene's survey (scene.py) bins the dB of its valid pixels in a fixed histogram
(DB_STEP wide bins from DB_MIN to DB_MAX); its percentiles set the stretch: low_pct maps to
black, high_pct to white, and pixels outside the valid area get the grey of the median (the
sea), so that the ML service never sees a scene's border as a dark slick.

Pure functions on arrays; no I/O apart from encoding a PNG in memory.
"""

from __future__ import annotations

import struct
import zlib
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from .scene import Survey

DB_MIN = -100.0  # dB; also the value of non-positive intensities (the histogram's floor)
DB_MAX = 140.0  # uint16 amplitude reaches 96 dB, float intensities more
DB_STEP = 0.02  # dB per histogram bin: percentiles are exact to half of this
DB_BINS = round((DB_MAX - DB_MIN) / DB_STEP)
MIN_SPAN_DB = 1.0  # a flat scene still gets a usable scale instead of a division by zero
# Percentiles kept in a Stretch for the job summary.
SUMMARY_PCTS = (0.1, 1.0, 5.0, 25.0, 50.0, 75.0, 95.0, 99.0, 99.9)


class DbKind(StrEnum):
    """What a scene's values are, hence how they become dB."""

    SIGMA0 = "sigma0"  # calibrated backscatter, linear (a SAFE product with its calibration)
    AMPLITUDE = "amplitude"  # digital numbers of an integer GeoTIFF: 20*log10(DN)
    INTENSITY = "intensity"  # float32, all >= 0: linear power, 10*log10
    DB = "db"  # float32 with negative values: already in dB


def db_kind_for(dtype: str, calibrated: bool, negative_seen: bool) -> DbKind:
    """The DbKind of a scene from its dtype, whether it is calibrated, and its sign."""
    if calibrated:
        return DbKind.SIGMA0
    if dtype == "float32":
        return DbKind.DB if negative_seen else DbKind.INTENSITY
    return DbKind.AMPLITUDE


def to_db(values: npt.NDArray[Any], kind: DbKind) -> npt.NDArray[np.float32]:
    """The values in dB (float32, clipped to [DB_MIN, DB_MAX]); NaN and <= 0 give DB_MIN."""
    if kind is DbKind.DB:
        out = np.nan_to_num(values.astype(np.float32), nan=DB_MIN)
    else:
        out = np.full(values.shape, DB_MIN, np.float32)
        positive = values > 0  # False for NaN too
        np.log10(values, out=out, where=positive, dtype=np.float32)
        factor = 20.0 if kind is DbKind.AMPLITUDE else 10.0
        np.multiply(out, np.float32(factor), out=out, where=positive)
    np.clip(out, DB_MIN, DB_MAX, out=out)
    return out


def histogram_of(db: npt.NDArray[np.float32],
                 weights: npt.NDArray[np.int64] | None = None) -> npt.NDArray[np.int64]:
    """Counts of dB values (from to_db) in the DB_BINS fixed bins; each value counted
    `weights` times when given (a histogram of raw integer values, brought to dB bins)."""
    index = np.floor((db - np.float32(DB_MIN)) / np.float32(DB_STEP))
    np.clip(index, 0, DB_BINS - 1, out=index)
    counts = np.bincount(index.astype(np.intp).ravel(), weights=weights, minlength=DB_BINS)
    return np.rint(counts).astype(np.int64) if weights is not None else counts.astype(np.int64)


def histogram_percentile(histogram: npt.NDArray[np.int64], pct: float) -> float:
    """The pct-th percentile (numpy's linear method) in dB, to half a bin; needs counts."""
    total = int(histogram.sum())
    if total == 0:
        raise ValueError("percentile of an empty histogram")
    rank = min(max(pct, 0.0), 100.0) / 100.0 * (total - 1)
    below, above = int(np.floor(rank)), int(np.ceil(rank))
    cumulative = np.cumsum(histogram)
    # Bin holding the k-th smallest value (k from 0), taken at the bin's centre; the two
    # order statistics around the rank are interpolated as numpy does between the values.
    bins = np.searchsorted(cumulative, [below, above], side="right")
    centres = DB_MIN + (bins + 0.5) * DB_STEP
    return float(centres[0] + (rank - below) * (centres[1] - centres[0]))


@dataclass(frozen=True)
class Stretch:
    """A scene-wide linear map from dB to grey.

    db_kind: how values become dB. low_db, high_db: the dB shown as 0 and 255 (the scene's
    low_pct and high_pct percentiles, at least MIN_SPAN_DB apart). sea_db: the median of
    the valid pixels, the grey given to pixels outside the valid area. percentiles:
    (pct, dB) pairs of SUMMARY_PCTS, for the summary.
    """

    db_kind: DbKind
    low_db: float
    high_db: float
    sea_db: float
    low_pct: float = 1.0
    high_pct: float = 99.0
    percentiles: tuple[tuple[float, float], ...] = ()

    @classmethod
    def from_histogram(cls, histogram: npt.NDArray[np.int64], db_kind: DbKind,
                       low_pct: float = 1.0, high_pct: float = 99.0) -> Stretch:
        """The stretch of a scene from the dB histogram of its valid pixels."""
        if not 0.0 <= low_pct < high_pct <= 100.0:
            raise ValueError(f"need 0 <= low_pct < high_pct <= 100, got {low_pct}, {high_pct}")
        low = histogram_percentile(histogram, low_pct)
        high = histogram_percentile(histogram, high_pct)
        if high - low < MIN_SPAN_DB:
            middle = (low + high) / 2.0
            low, high = middle - MIN_SPAN_DB / 2.0, middle + MIN_SPAN_DB / 2.0
        return cls(db_kind=db_kind, low_db=low, high_db=high,
                   sea_db=histogram_percentile(histogram, 50.0),
                   low_pct=low_pct, high_pct=high_pct,
                   percentiles=tuple((p, histogram_percentile(histogram, p))
                                     for p in SUMMARY_PCTS))

    @classmethod
    def from_survey(cls, survey: Survey, low_pct: float = 1.0,
                    high_pct: float = 99.0) -> Stretch:
        """The stretch of a surveyed scene."""
        return cls.from_histogram(survey.histogram, survey.db_kind, low_pct, high_pct)

    def grey_of(self, db: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
        """Grey levels of dB values on this scale."""
        scaled = (db - np.float32(self.low_db)) * np.float32(255.0 / (self.high_db - self.low_db))
        np.clip(scaled, 0.0, 255.0, out=scaled)
        grey: npt.NDArray[np.uint8] = np.rint(scaled).astype(np.uint8)
        return grey

    def grey_table(self, dtype: str) -> npt.NDArray[np.uint8] | None:
        """Grey of every raw value of an 8- or 16-bit unsigned scene (uncalibrated), so a
        tile is one table lookup; None for other types."""
        if dtype not in ("uint8", "uint16"):
            return None
        raw = np.arange(256 if dtype == "uint8" else 65536, dtype=np.float32)
        return self.grey_of(to_db(raw, self.db_kind))

    @property
    def sea_grey(self) -> int:
        """The grey of the scene's sea (its median), given to invalid pixels."""
        return int(self.grey_of(np.array([self.sea_db], np.float32))[0])

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (dB rounded to 0.01)."""
        return {
            "db_kind": self.db_kind.value,
            "low_pct": self.low_pct, "high_pct": self.high_pct,
            "low_db": round(self.low_db, 2), "high_db": round(self.high_db, 2),
            "sea_db": round(self.sea_db, 2),
            "percentiles_db": {f"{p:g}": round(v, 2) for p, v in self.percentiles},
        }


def to_grey(values: npt.NDArray[Any], valid: npt.NDArray[np.bool_],
            stretch: Stretch) -> npt.NDArray[np.uint8]:
    """The values as 8-bit grey on the scene's scale; invalid pixels at the sea's grey."""
    if values.shape != valid.shape:
        raise ValueError(f"values {values.shape} and valid {valid.shape} differ in shape")
    grey = stretch.grey_of(to_db(values, stretch.db_kind))
    grey[~valid] = stretch.sea_grey
    return grey


def encode_tile(values: npt.NDArray[Any], valid: npt.NDArray[np.bool_],
                stretch: Stretch) -> bytes:
    """An 8-bit greyscale PNG of a window on the scene's scale (see to_grey)."""
    return grey_png(to_grey(values, valid, stretch))


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def grey_png(grey: npt.NDArray[np.uint8]) -> bytes:
    """An 8-bit greyscale PNG, rows unfiltered and stored uncompressed.

    Speckled sea does not compress (deflate saves about 8% at 20 times the CPU), and a tile
    is sent once to a service near by: encoding must cost less than the call itself.
    Pillow picks a filter per row whatever the level, which costs more than the rest.
    """
    height, width = grey.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 0  # filter type None
    rows[:, 1:] = grey
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header)
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 0)) + _chunk(b"IEND", b""))
