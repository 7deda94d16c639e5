"""A whole scene on disk: its header, its valid area and dB histogram, and windows of it.

Valid area: Sentinel-1 GRD scenes have an all-zero border (zero rows at top and bottom, zero
runs of varying length at each row's ends), and nodata is never sea. A row's valid extent
runs from its first to its last pixel that is neither 0, nodata nor NaN; inside it every
pixel but nodata and NaN is valid, zeros included (a dark slick can be truly 0).

Memory stays bounded whatever the scene's size: reads are by window (when surveying, by
strips of at most STRIP_BYTES of raw values and masks, whose sample is worked on
SAMPLE_WORK_BYTES at a time), GDAL's block cache is capped (geo.GDAL_OPTIONS), and blocks
over MAX_BLOCK_BYTES are refused. Blocking: run in a thread.
"""

from __future__ import annotations

import math
import mmap
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import Resampling
from rasterio.errors import RasterioError
from rasterio.io import DatasetReader
from rasterio.windows import Window

from ..names import plain_message
from . import GDAL_OPTIONS, scale
from .errors import EmptyScene as EmptyScene
from .errors import NoSuchBand as NoSuchBand
from .errors import SceneError as SceneError
from .errors import SceneTooLarge as SceneTooLarge
from .errors import UnreadableScene as UnreadableScene
from .scale import DbKind

if TYPE_CHECKING:
    from .safe import Calibration

SUPPORTED_DTYPES = frozenset({"uint8", "uint16", "int16", "float32"})
SCENE_DRIVERS = ("GTiff", "JP2OpenJPEG")  # tried in turn; never VRT & co, which open other files
MAX_BLOCK_BYTES = 64 * 2**20  # GDAL decodes a whole block even to read one pixel of it
STRIP_BYTES = 32 * 2**20  # a survey strip's raw values and masks
SAMPLE_WORK_BYTES = 16 * 2**20  # the work on its sample, a few sampled rows at a time
_WORK_BYTES_PER_PIXEL = 40  # sampled raw, masks, float32 values, calibration LUT, dB, bins
_MASK_BYTES_PER_PIXEL = 4  # a strip's masks when nodata or NaN must be looked for
SAMPLE_PIXELS = 2**24  # pixels a survey's histogram takes at least (see sample_step)
EDGE_PX = 512  # columns first looked at from each end of a row for its valid extent
_SURVEY_FORMAT = 2
# Reads never look at sidecar files (an uploaded .aux.xml or .ovr must not change a scene),
# never write any, and never use overviews (their pixels are not the scene's).

# A rasterio Window or (col_off, row_off, width, height), in whole pixels.
WindowLike: TypeAlias = "Window | tuple[int, int, int, int]"


@dataclass(frozen=True)
class SceneInfo:
    """A scene's header.

    band: the band used (1-based) of count. dtype: numpy name, one of SUPPORTED_DTYPES.
    nodata: the file's nodata value or None. driver: the GDAL driver that opened it.
    crs_wkt and transform (rasterio's Affine order a, b, c, d, e, f): the affine
    georeference, None without one. gcps: (row, col, x, y, z) ground control points in
    gcps_crs_wkt (radar geometry, e.g. Sentinel-1 GRD), None without any.
    """

    width: int
    height: int
    band: int
    count: int
    dtype: str
    nodata: float | None
    driver: str
    crs_wkt: str | None
    transform: tuple[float, float, float, float, float, float] | None
    gcps: tuple[tuple[float, float, float, float, float], ...] | None
    gcps_crs_wkt: str | None

    @property
    def georeferenced(self) -> bool:
        """True when the scene has an affine transform or ground control points."""
        return self.transform is not None or bool(self.gcps)


@contextmanager
def _open(path: Path, driver: str, for_pixels: bool = True) -> Iterator[DatasetReader]:
    # OVERVIEW_LEVEL=NONE wraps the dataset, and the wrapper hands rasterio an uninitialised
    # geotransform when the file has none: headers are read from the plain dataset.
    options = {"OVERVIEW_LEVEL": "NONE"} if for_pixels else {}
    with rasterio.Env(**GDAL_OPTIONS), rasterio.open(path, driver=driver, **options) as src:
        yield src


def inspect_scene(path: Path, band: int, max_pixels: int) -> SceneInfo:
    """The header of a scene, refused before any pixel is read if unusable."""
    if not path.is_file():
        raise FileNotFoundError(path)  # our bug, not the uploader's: not a SceneError
    for driver in SCENE_DRIVERS:
        try:
            with _open(path, driver, for_pixels=False) as src:
                return _inspect(src, path, band, max_pixels)
        except RasterioError:
            continue
    raise UnreadableScene("not a GeoTIFF or JPEG 2000 raster that GDAL can read")


def _inspect(src: DatasetReader, path: Path, band: int, max_pixels: int) -> SceneInfo:
    width, height = src.width, src.height
    if width * height > max_pixels:
        raise SceneTooLarge(f"the scene is {width} x {height} = {width * height} pixels, over "
                            f"the limit of {max_pixels} (OILSPILL_MAX_SCENE_PIXELS)")
    if not 1 <= band <= src.count:
        raise NoSuchBand(f"band {band} (OILSPILL_SCENE_BAND) asked for, but the scene has "
                         f"{src.count} band(s)")
    dtype = src.dtypes[band - 1]
    if dtype not in SUPPORTED_DTYPES:
        raise UnreadableScene(f"band {band} holds {dtype} values; supported: "
                              f"{', '.join(sorted(SUPPORTED_DTYPES))}")
    block_rows, block_cols = src.block_shapes[band - 1]
    block_bytes = block_rows * block_cols * np.dtype(dtype).itemsize
    if block_bytes > MAX_BLOCK_BYTES:
        raise UnreadableScene(f"the scene is stored in blocks of {block_bytes // 2**20} MiB "
                              f"(over {MAX_BLOCK_BYTES // 2**20}); save it tiled")
    if src.driver == "GTiff":
        _check_not_truncated(src, path, band)
    gcps, gcps_crs = src.gcps
    transform = None if src.transform.is_identity else tuple(src.transform)[:6]
    return SceneInfo(
        width=width, height=height, band=band, count=src.count, dtype=dtype,
        nodata=None if src.nodatavals[band - 1] is None else float(src.nodatavals[band - 1]),
        driver=src.driver, crs_wkt=src.crs.to_wkt() if src.crs else None,
        transform=transform,
        gcps=tuple((p.row, p.col, p.x, p.y, p.z or 0.0) for p in gcps) or None,
        gcps_crs_wkt=gcps_crs.to_wkt() if gcps and gcps_crs else None)


def _check_not_truncated(src: DatasetReader, path: Path, band: int) -> None:
    """Refuse a TIFF whose first or last block of the band lies past the end of the file."""
    # An upload cut short still has a whole header; without this it would fail half-way
    # through the survey. The blocks in between are caught when read.
    block_rows, block_cols = src.block_shapes[band - 1]
    last = ((src.width - 1) // block_cols, (src.height - 1) // block_rows)
    file_bytes = path.stat().st_size
    for x, y in ((0, 0), last):
        offset = src.get_tag_item(f"BLOCK_OFFSET_{x}_{y}", "TIFF", bidx=band)
        size = src.get_tag_item(f"BLOCK_SIZE_{x}_{y}", "TIFF", bidx=band)
        if offset and size and int(offset) + int(size) > file_bytes:
            raise UnreadableScene(f"the file is truncated: {file_bytes} bytes, but its pixel "
                                  f"data runs to byte {int(offset) + int(size)}")


@dataclass(frozen=True, eq=False)
class Survey:
    """The valid area and dB histogram of a scene, from one pass over it.

    width: the scene's width. row_first, row_last: per row (int32, length height), the first
    and last column of its valid extent; first > last (0, -1) for a row with none.
    valid_pixels: how many pixels are valid (exactly). db_kind: how values became dB.
    histogram: counts of the valid pixels' dB in the fixed bins of scale.py (DB_BINS of
    DB_STEP), over the pixels of every sample_step-th row and column (1: every pixel; see
    sample_step()). overview: the raw values of the scene brought down (nearest, at
    sample_positions) to the overview's shape, or None when the survey was not asked for it.
    """

    width: int
    row_first: npt.NDArray[np.int32]
    row_last: npt.NDArray[np.int32]
    valid_pixels: int
    db_kind: DbKind
    histogram: npt.NDArray[np.int64]
    sample_step: int = 1
    overview: npt.NDArray[Any] | None = None

    @property
    def height(self) -> int:
        """The scene's height."""
        return len(self.row_first)

    def percentile(self, pct: float) -> float:
        """The pct-th percentile of the valid pixels in dB, to half a histogram bin (of the
        sampled pixels when sample_step > 1)."""
        return scale.histogram_percentile(self.histogram, pct)

    def valid_mask(self, window: WindowLike,
                   out_shape: tuple[int, int] | None = None) -> npt.NDArray[np.bool_]:
        """Which pixels of a window lie in the rows' valid extents (nodata not checked)."""
        col_off, row_off, width, height = _window_tuple(window, self.width, self.height)
        if out_shape is None or out_shape == (height, width):
            if self.covers(col_off, row_off, width, height):
                return np.ones((height, width), bool)  # most tiles: no comparison per pixel
            out_shape = (height, width)
        rows_n, cols_n = out_shape
        return self.valid_at(sample_positions(row_off, height, rows_n),
                             sample_positions(col_off, width, cols_n))

    def covers(self, col_off: int, row_off: int, width: int, height: int) -> bool:
        """True when every row of the window has the whole window in its valid extent."""
        rows = slice(row_off, row_off + height)
        return bool((self.row_first[rows] <= col_off).all()
                    and (self.row_last[rows] >= col_off + width - 1).all())

    def valid_at(self, rows: npt.NDArray[np.intp],
                 cols: npt.NDArray[np.intp]) -> npt.NDArray[np.bool_]:
        """Which pixels of the grid rows x cols (scene indices) lie in the valid extents."""
        return ((cols[None, :] >= self.row_first[rows][:, None])
                & (cols[None, :] <= self.row_last[rows][:, None]))

    def save(self, path: Path) -> None:
        """Write the survey as an .npz file (at path exactly, whatever its name)."""
        arrays: dict[str, Any] = {
            "format": np.array(_SURVEY_FORMAT), "bins": _bins(), "width": np.array(self.width),
            "row_first": self.row_first, "row_last": self.row_last,
            "valid_pixels": np.array(self.valid_pixels), "db_kind": np.array(self.db_kind.value),
            "histogram": self.histogram, "sample_step": np.array(self.sample_step)}
        if self.overview is not None:
            arrays["overview"] = self.overview
        with path.open("wb") as out:  # a file object: np.savez would append ".npz" to a name
            np.savez(out, **arrays)

    @classmethod
    def load(cls, path: Path) -> Survey:
        """A survey written by save(); SceneError if it is unreadable or of another format."""
        try:
            with np.load(path, allow_pickle=False) as data:
                if int(data["format"]) != _SURVEY_FORMAT or data["bins"].tolist() != _bins():
                    raise ValueError("another format")
                survey = cls(width=int(data["width"]), row_first=data["row_first"].astype(np.int32),
                             row_last=data["row_last"].astype(np.int32),
                             valid_pixels=int(data["valid_pixels"]),
                             db_kind=DbKind(str(data["db_kind"])),
                             histogram=data["histogram"].astype(np.int64),
                             sample_step=int(data["sample_step"]),
                             overview=data["overview"] if "overview" in data else None)
            if (survey.row_last.shape != survey.row_first.shape
                    or survey.histogram.shape != (scale.DB_BINS,) or survey.sample_step < 1
                    or (survey.overview is not None and survey.overview.ndim != 2)):
                raise ValueError("inconsistent arrays")
        except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
            raise SceneError(f"the survey file is unusable: {plain_message(str(exc))}") from None
        return survey


def _bins() -> list[float]:
    """The histogram's binning, saved with a survey so that a change is noticed on load."""
    return [scale.DB_MIN, scale.DB_STEP, float(scale.DB_BINS)]


def sample_positions(offset: int, size: int, count: int) -> npt.NDArray[np.intp]:
    """Scene indices sampled along one axis when size pixels are read as count (nearest)."""
    # Pixel centres, as GDAL's nearest-neighbour decimation picks them: count == size gives
    # offset, offset + 1, ... exactly.
    positions: npt.NDArray[np.intp] = np.floor((np.arange(count) + 0.5) * (size / count)
                                               ).astype(np.intp)
    return positions + offset


def _window_tuple(window: WindowLike, scene_width: int,
                  scene_height: int) -> tuple[int, int, int, int]:
    if isinstance(window, Window):
        window = (int(window.col_off), int(window.row_off), int(window.width),
                  int(window.height))
    col_off, row_off, width, height = window
    if (width < 1 or height < 1 or col_off < 0 or row_off < 0
            or col_off + width > scene_width or row_off + height > scene_height):
        raise ValueError(f"window {window} is not inside the {scene_width} x {scene_height} "
                         "scene")
    return col_off, row_off, width, height


def _usable(raw: npt.NDArray[Any], nodata: float | None) -> npt.NDArray[np.bool_]:
    """Pixels that are neither nodata nor NaN."""
    usable = np.isfinite(raw) if raw.dtype.kind == "f" else np.ones(raw.shape, bool)
    if nodata is not None:
        usable &= raw != nodata
    return usable


def sample_step(width: int, height: int) -> int:
    """Every how many rows and columns a survey's histogram takes a pixel: 1 (every pixel)
    for a scene of up to 2 x SAMPLE_PIXELS, else the largest step leaving SAMPLE_PIXELS."""
    # A percentile scale needs no more: over 2**24 pixels spread evenly across the scene, the
    # 1st and 99th percentiles are within a few hundredths of a dB of every pixel's.
    return max(1, math.isqrt(width * height // SAMPLE_PIXELS))


def survey_scene(path: Path, info: SceneInfo, calibration: Calibration | None = None,
                 strip_rows: int | None = None, overview: tuple[int, int] | None = None,
                 step: int | None = None) -> Survey:
    """One pass over the scene by strips of rows: its valid extents, its dB histogram (of
    every step-th row and column: sample_step() by default) and, given the overview's
    (width, height), the raw values the overview is made of. A scene with valid pixels
    but none on the sampled grid is passed over again, every pixel taken."""
    step = sample_step(info.width, info.height) if step is None else step
    survey = _survey(path, info, calibration, strip_rows, overview, step)
    if survey is None:  # the first pass's strip buffer is gone with its frame
        survey = _survey(path, info, calibration, strip_rows, overview, 1)
    assert survey is not None  # every valid pixel is sampled at step 1
    return survey


def _survey(path: Path, info: SceneInfo, calibration: Calibration | None,
            strip_rows: int | None, overview: tuple[int, int] | None, step: int
            ) -> Survey | None:
    """survey_scene's pass at one step; None when step > 1 sampled no valid pixel."""
    first = np.zeros(info.height, np.int32)
    last = np.full(info.height, -1, np.int32)
    histogram = np.zeros(scale.DB_BINS, np.int64)
    as_db = np.zeros(scale.DB_BINS, np.int64)  # float32 only: the values taken as dB already
    negative_seen = False
    valid_pixels = 0
    kind = scale.db_kind_for(info.dtype, calibration is not None, negative_seen=False)
    unsigned = {"uint8": 256, "uint16": 65536}.get(info.dtype)
    raw_counts = (np.zeros(unsigned, np.int64)
                  if unsigned is not None and calibration is None else None)
    # Integer values without a nodata value are all usable: the extents alone say what is valid.
    extents_only = info.dtype != "float32" and info.nodata is None
    offset = step // 2  # the sampled rows and columns: offset, offset + step, ...
    sample_cols = np.arange(offset, info.width, step)
    # The sample's work is done a few of its rows at a time, whatever the strip's size.
    chunk = max(1, SAMPLE_WORK_BYTES // (_WORK_BYTES_PER_PIXEL * max(1, sample_cols.size)))
    picked: npt.NDArray[Any] | None = None
    if overview is not None:
        picked = np.zeros((overview[1], overview[0]), info.dtype)
        overview_rows = sample_positions(0, info.height, overview[1])
        overview_cols = sample_positions(0, info.width, overview[0])
    with _open(path, info.driver) as src:
        block_rows = src.block_shapes[info.band - 1][0]
        strip = strip_rows or _strip_rows(info, extents_only, block_rows)
        strips = _strip_buffer(strip, info.width, info.dtype)
        for top in range(0, info.height, strip):
            rows = min(strip, info.height - top)
            raw = _read(src, info, Window(0, top, info.width, rows), None, out=strips[:rows])
            strip_first, strip_last = _row_extents(raw, info.nodata)
            first[top:top + rows], last[top:top + rows] = strip_first, strip_last
            if picked is not None:
                wanted = (overview_rows >= top) & (overview_rows < top + rows)
                picked[wanted] = raw[overview_rows[wanted] - top][:, overview_cols]
            if extents_only:
                valid_pixels += int(np.maximum(strip_last - strip_first + 1, 0).sum())
            else:
                columns = np.arange(info.width, dtype=np.int32)
                inside = _usable(raw, info.nodata)
                inside &= columns[None, :] >= strip_first[:, None]
                inside &= columns[None, :] <= strip_last[:, None]
                valid_pixels += int(np.count_nonzero(inside))
                if info.dtype == "float32" and not negative_seen:
                    negative_seen = bool((inside & (raw < 0)).any())
                del inside
            local = (offset - top) % step  # the strip's first sampled row
            sampled = raw[local::step, offset::step]
            sampled_rows = np.arange(top + local, top + rows, step)  # scene rows
            for at in range(0, sampled.shape[0] if sampled.size else 0, chunk):
                sample = sampled[at:at + chunk]
                sample_rows = sampled_rows[at:at + chunk]
                usable = _usable(sample, info.nodata)
                usable &= sample_cols[None, :] >= first[sample_rows, None]
                usable &= sample_cols[None, :] <= last[sample_rows, None]
                if raw_counts is not None:
                    # Integer DN: count each raw value; the dB bins are filled once at the end.
                    raw_counts += np.bincount(sample[usable].ravel(), minlength=raw_counts.size)
                    continue
                values = sample[usable].astype(np.float32)
                if calibration is not None:
                    lut = calibration.sigma_nought_at(sample_rows, sample_cols)[usable]
                    values = _sigma0(values, lut)
                histogram += scale.histogram_of(scale.to_db(values, kind))
                if info.dtype == "float32":
                    as_db += scale.histogram_of(scale.to_db(values, DbKind.DB))
    if raw_counts is not None:
        raw_db = scale.to_db(np.arange(raw_counts.size, dtype=np.float32), kind)
        histogram = scale.histogram_of(raw_db, weights=raw_counts)
    if negative_seen:
        kind, histogram = DbKind.DB, as_db
    if valid_pixels == 0:
        raise EmptyScene("the scene has no valid pixel: it is all border, nodata or NaN")
    if not histogram.any() and step > 1:  # valid pixels, but none on the sampled grid
        return None
    return Survey(width=info.width, row_first=first, row_last=last, valid_pixels=valid_pixels,
                  db_kind=kind, histogram=histogram, sample_step=step, overview=picked)


def _strip_rows(info: SceneInfo, extents_only: bool, block_rows: int) -> int:
    """Rows per survey strip: as many as STRIP_BYTES of the strip's raw values and masks
    hold, rounded down to whole blocks of the file when that leaves one. GDAL then copies
    each block once: reading a 26,000 x 17,000 uint16 scene tiled 512 x 512 by strips of
    512 rows took 0.51 s, by strips of 160 rows 0.94 s."""
    per_pixel = np.dtype(info.dtype).itemsize + (0 if extents_only else _MASK_BYTES_PER_PIXEL)
    rows = max(1, STRIP_BYTES // (per_pixel * info.width))
    return rows // block_rows * block_rows if rows >= block_rows else rows


def _strip_buffer(rows: int, width: int, dtype: str) -> npt.NDArray[Any]:
    """The array every survey strip is read into: a memory mapping of its own, unmapped once
    the survey drops it. Allocated by malloc, an array this size (26 MB for a Sentinel-1
    scene's 512 rows) would raise glibc's threshold for giving memory back, and later
    arrays of tiles would stay in the heap once freed: 40 MB more RSS while the tiles ran."""
    size = max(1, rows * width * np.dtype(dtype).itemsize)
    return np.frombuffer(mmap.mmap(-1, size), dtype, rows * width).reshape(rows, width)


def _row_extents(raw: npt.NDArray[Any], nodata: float | None
                 ) -> tuple[npt.NDArray[np.int32], npt.NDArray[np.int32]]:
    """Each row's first and last pixel that is neither 0, nodata nor NaN; (0, -1) for a row
    with none. Looks at EDGE_PX columns from each end first, then further only for the rows
    that need it: the border is narrow, and the rest of the row is never compared."""
    height, width = raw.shape
    first = np.zeros(height, np.int32)
    last = np.full(height, -1, np.int32)
    todo = np.arange(height)
    start, size = 0, EDGE_PX
    while todo.size and start < width:
        part = raw[todo, start:start + size]
        edge = _usable(part, nodata) & (part != 0)
        has = edge.any(axis=1)
        first[todo[has]] = start + edge[has].argmax(axis=1)
        todo, start, size = todo[~has], start + size, 2 * size
    todo = np.setdiff1d(np.arange(height), todo, assume_unique=True)  # rows with an edge
    end, size = width, EDGE_PX
    while todo.size:  # every row here has an edge pixel, so this ends
        begin = max(0, end - size)
        part = raw[todo, begin:end]
        edge = _usable(part, nodata) & (part != 0)
        has = edge.any(axis=1)
        last[todo[has]] = end - 1 - edge[has][:, ::-1].argmax(axis=1)
        todo, end, size = todo[~has], begin, 2 * size
    return first, last


def _sigma0(dn: npt.NDArray[np.float32], lut: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """sigma0 = DN^2 / A^2 (ESA's calibration of GRD products), in place in dn."""
    dn /= lut
    dn *= dn
    return dn


def _read(src: DatasetReader, info: SceneInfo, window: Window,
          out_shape: tuple[int, int] | None, out: npt.NDArray[Any] | None = None
          ) -> npt.NDArray[Any]:
    try:
        raw: npt.NDArray[Any] = src.read(info.band, window=window, out_shape=out_shape,
                                         out=out, resampling=Resampling.nearest)
    except RasterioError:
        top, bottom = int(window.row_off), int(window.row_off + window.height) - 1
        raise UnreadableScene(f"the scene's pixel data is truncated or corrupt (rows {top} to "
                              f"{bottom} cannot be read)") from None
    return raw


class SceneReader:
    """Open handles on one scene's file for reading windows from several threads: a GDAL
    dataset is not thread-safe, so each read takes a handle no other thread holds (opened
    when none is free; as many as threads read at once), and gives it back. Opening a
    scene with a grid of GCPs costs more than reading a tile of it. close() closes the
    free handles, and a handle given back after it."""

    def __init__(self, path: Path, info: SceneInfo) -> None:
        self.path, self.info = path, info
        self._free: list[DatasetReader] = []
        self._lock = threading.Lock()
        self._closed = False

    @contextmanager
    def _handle(self) -> Iterator[DatasetReader]:
        with self._lock:
            src = self._free.pop() if self._free else None
        with rasterio.Env(**GDAL_OPTIONS):
            if src is None:
                src = rasterio.open(self.path, driver=self.info.driver, OVERVIEW_LEVEL="NONE")
            try:
                yield src
            finally:
                with self._lock:
                    keep = not self._closed
                    if keep:
                        self._free.append(src)
                if not keep:
                    src.close()

    def read_raw(self, window: WindowLike, survey: Survey,
                 out_shape: tuple[int, int] | None = None
                 ) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
        """A window's raw values (nearest to out_shape) and its valid mask."""
        info = self.info
        if (survey.width, survey.height) != (info.width, info.height):
            raise ValueError("the survey is of another scene")
        col_off, row_off, width, height = _window_tuple(window, info.width, info.height)
        rows_n, cols_n = out_shape or (height, width)
        if rows_n < 1 or cols_n < 1:
            raise ValueError(f"out_shape {out_shape} is empty")
        with self._handle() as src:
            raw = _read(src, info, Window(col_off, row_off, width, height), (rows_n, cols_n))
        valid = survey.valid_mask((col_off, row_off, width, height), (rows_n, cols_n))
        return raw, _and_usable(valid, raw, info.nodata)

    def close(self) -> None:
        with self._lock:
            self._closed = True
            free, self._free = self._free, []
        with rasterio.Env(**GDAL_OPTIONS):
            for src in free:
                src.close()


def read_raw(path: Path, info: SceneInfo, window: WindowLike, survey: Survey,
             out_shape: tuple[int, int] | None = None
             ) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """A window's raw values (nearest to out_shape) and its valid mask (the file opened
    for this read only)."""
    reader = SceneReader(path, info)
    try:
        return reader.read_raw(window, survey, out_shape)
    finally:
        reader.close()


def overview_raw(info: SceneInfo, survey: Survey
                 ) -> tuple[npt.NDArray[Any], npt.NDArray[np.bool_]]:
    """The overview's raw values that the survey kept (the whole scene, nearest to the
    overview's shape, as read_raw would give them) and its valid mask."""
    if survey.overview is None:
        raise ValueError("the survey kept no overview")
    raw = survey.overview
    valid = survey.valid_mask((0, 0, info.width, info.height), raw.shape)
    return raw, _and_usable(valid, raw, info.nodata)


def _and_usable(valid: npt.NDArray[np.bool_], raw: npt.NDArray[Any],
                nodata: float | None) -> npt.NDArray[np.bool_]:
    """valid, less the pixels that are nodata or NaN (in place)."""
    if raw.dtype.kind == "f" or nodata is not None:
        valid &= _usable(raw, nodata)
    return valid


def to_values(raw: npt.NDArray[Any], info: SceneInfo, window: WindowLike,
              calibration: Calibration | None = None) -> npt.NDArray[np.float32]:
    """Raw values of a window (nearest to raw's shape) as float32, sigma0 if calibrated."""
    values = raw.astype(np.float32)
    if calibration is not None:
        col_off, row_off, width, height = _window_tuple(window, info.width, info.height)
        rows = sample_positions(row_off, height, raw.shape[0])
        cols = sample_positions(col_off, width, raw.shape[1])
        values = _sigma0(values, calibration.sigma_nought_at(rows, cols))
    return values


def read_window(path: Path, info: SceneInfo, window: WindowLike, survey: Survey,
                calibration: Calibration | None = None, out_shape: tuple[int, int] | None = None
                ) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]]:
    """A window's float32 values (sigma0 if calibrated; nearest to out_shape) and valid mask."""
    raw, valid = read_raw(path, info, window, survey, out_shape)
    return to_values(raw, info, window, calibration), valid
