"""The stitched mask of a tiled scene, written as a Cloud-Optimized GeoTIFF, and its statistics.

Tiles: each tile's mask (a PNG the size of its read window, see tiles.py) gives only the
pixels of its core window; the overlap, where the service saw the pixels with less context
around them, is dropped.

Context beyond one tile: a slick wider than a tile fills whole tiles, where a detector that
sees one tile at a time may find nothing (no edge, no contrast with clean sea). The optional
overview mask is the service's answer for the whole scene scaled down to one tile. Its
8-connected components are labelled at overview resolution, and only those whose bounding
box, scaled to scene pixels, has a longest side of at least large_px (the caller passes about
half a tile) are ORed into the stitched mask, upsampled (nearest) window by window. Small
slicks come from the sharp tiles alone, where the coarse overview would only fatten them or
add false alarms; big ones are never missed.

The file: one uint8 band, 0 = sea, 255 = oil, NODATA (127) where the caller's valid area is
False or no tile answered; tiled 512 x 512, DEFLATE, internal overviews (nearest), with the
scene's CRS and transform, or its GCPs, or neither for a plain picture. 127 is below the oil
threshold (128), so a reader that ignores nodata still never counts it as oil, and a viewer
shows it mid-grey, apart from black sea and white oil.

Memory: every step works on one tile's core window or one strip of rows, and GDAL's block
cache is capped at 64 MiB. Blocking: run in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import rasterio
import rasterio.shutil
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.enums import Resampling
from rasterio.errors import RasterioIOError
from rasterio.transform import Affine
from rasterio.windows import Window

from ..masks import OIL_LEVEL
from ..names import plain_message
from ..paths import partial_beside
from . import GDAL_OPTIONS
from .errors import BadMask as BadMask
from .tiles import Tile

NODATA = 127  # see the module docstring
OIL = 255
# Rows per strip when counting: ~8 bytes per pixel of a strip at once (labels are int32),
# about 27 MiB on a Sentinel-1 scene's width.
STRIP_ROWS = 128
COG_BLOCK_PX = 512  # the COG's tiles
# GDAL's threads compressing a COG: each holds blocks in flight (a 6,000 x 6,000 copy grew
# by 11 MiB on 2 threads, 27 on 16, 75 on 64), so a big host does not cost more memory.
COG_MAX_THREADS = 4
OVERVIEW_ERODE_PX = 2  # overview pixels taken off a large slick's edge (large_components)
_EIGHT = np.ones((3, 3), bool)  # a slick touching only at a corner is one slick


@dataclass(frozen=True)
class Georef:
    """Where a scene lies on Earth, copied onto its mask; all None for a plain picture.

    crs_wkt: the CRS of transform (WKT or "EPSG:n"). transform: pixel -> CRS affine in
    rasterio's order (a, b, c, d, e, f), i.e. tuple(src.transform)[:6]. gcps: ground control
    points (row, col, x, y, z), row and col in pixels, x/y/z in gcps_crs_wkt; used instead of
    a transform for scenes in radar geometry (Sentinel-1 GRD).
    """

    crs_wkt: str | None = None
    transform: tuple[float, float, float, float, float, float] | None = None
    gcps: tuple[tuple[float, float, float, float, float], ...] | None = None
    gcps_crs_wkt: str | None = None

    @classmethod
    def from_dataset(cls, dataset: Any) -> Georef:
        """The georeference of an open rasterio dataset."""
        gcps, gcps_crs = dataset.gcps
        if gcps:
            return cls(gcps=tuple((p.row, p.col, p.x, p.y, p.z or 0.0) for p in gcps),
                       gcps_crs_wkt=gcps_crs.to_wkt() if gcps_crs else None)
        crs = dataset.crs
        if crs is None and dataset.transform.is_identity:
            return cls()
        a, b, c, d, e, f = tuple(dataset.transform)[:6]
        return cls(crs_wkt=crs.to_wkt() if crs else None, transform=(a, b, c, d, e, f))


@dataclass(frozen=True)
class MaskStats:
    """What a stitched mask holds; pixel counts are in scene pixels.

    valid_pixels: pixels that are not nodata. oil_fraction: oil_pixels / valid_pixels (0.0
    when nothing is valid). slick_count: 8-connected components of oil over the whole mask;
    largest_slick_px: the biggest one's pixel count (0 without oil).
    """

    width: int
    height: int
    valid_pixels: int
    oil_pixels: int
    oil_fraction: float
    slick_count: int
    largest_slick_px: int


def stitch_mask(out_path: Path, width: int, height: int, tiles: Sequence[tuple[Tile, Path]],
                valid: Callable[[Window], np.ndarray] | None = None,
                georef: Georef | None = None, overview: Path | None = None,
                large_px: int = 0, part_path: Path | None = None,
                strip_rows: int = STRIP_ROWS) -> MaskStats:
    """Write the scene's mask from its tiles' masks as a COG at out_path (atomically)."""
    draft = partial_beside(out_path, "draft")
    try:
        create_draft(draft, width, height, georef)
        for tile, mask_png in tiles:
            write_core(draft, width, height, tile, mask_png, valid)
        return finish_mask(draft, out_path, overview=overview, large_px=large_px,
                           part_path=part_path, strip_rows=strip_rows)
    finally:
        draft.unlink(missing_ok=True)


def create_draft(draft: Path, width: int, height: int, georef: Georef | None) -> None:
    """An empty mask to fill tile by tile (the COG driver only copies a finished dataset).

    Uncompressed: it lives for the scene's processing only, and each tile's core is
    written as soon as the tile is done, so the work is spread over the scene's tiles.
    Unwritten blocks read back as nodata: a pixel no tile answered is not sea.
    """
    georef = georef or Georef()
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint8",
        "nodata": NODATA, "tiled": True, "blockxsize": 512, "blockysize": 512,
        "sparse_ok": True, "bigtiff": "IF_SAFER",
    }
    if georef.transform is not None:
        profile["transform"] = Affine(*georef.transform)
        profile["crs"] = CRS.from_user_input(georef.crs_wkt) if georef.crs_wkt else None
    with rasterio.Env(**GDAL_OPTIONS), rasterio.open(draft, "w", **profile) as dst:
        if georef.gcps:
            crs = CRS.from_user_input(georef.gcps_crs_wkt) if georef.gcps_crs_wkt else None
            dst.gcps = ([GroundControlPoint(row=r, col=c, x=x, y=y, z=z)
                         for r, c, x, y, z in georef.gcps], crs)


def write_core(draft: Path, width: int, height: int, tile: Tile, mask_png: Path | np.ndarray,
               valid: Callable[[Window], np.ndarray] | None,
               large: np.ndarray | None = None) -> None:
    """Write one tile's core into the draft (callers serialise writes to one draft); mask_png
    is the tile's mask file or its decoded band; large, the overview's large slicks."""
    core = tile_core(tile, mask_png, width, height, valid, large)
    with rasterio.Env(**GDAL_OPTIONS), rasterio.open(draft, "r+") as dst:
        dst.write(core, 1, window=tile.core_window)


def finish_mask(draft: Path, out_path: Path, *, overview: Path | None, large_px: int,
                part_path: Path | None = None, strip_rows: int = STRIP_ROWS) -> MaskStats:
    """Add the overview's large slicks to the filled draft, count, and copy it to out_path
    as a COG (atomically); the draft is left for the caller to remove."""
    if overview is not None and large_px < 1:
        raise ValueError("an overview mask needs large_px >= 1")
    part = part_path or partial_beside(out_path)
    try:
        with rasterio.Env(**GDAL_OPTIONS):
            if overview is not None:
                _add_large(draft, large_components(overview, *_size(draft), large_px))
            stats = mask_stats(draft, strip_rows)
        write_cog(draft, out_path, part)
    finally:
        part.unlink(missing_ok=True)
    return stats


def write_cog(draft: Path, out_path: Path, part_path: Path | None = None) -> None:
    """Copy a finished draft to out_path as the mask's COG (written whole, then renamed):
    add_cog_overviews, then copy_cog."""
    add_cog_overviews(draft)
    copy_cog(draft, out_path, part_path)


def add_cog_overviews(draft: Path) -> None:
    """Build a finished draft's overviews (nearest, the levels GDAL's COG driver would make),
    so that copy_cog only compresses, on several cores. Measured on a 26,000 x 17,000 mask on
    two cores: 0.6 s for the overviews and 1.5-1.9 s for the copy, against 3.3-4.1 s for
    the driver making them itself; peak memory 68 MiB against 101 (the driver's own
    overviews on several threads took 131). A lower DEFLATE level saves 0.3 s for twice
    the bytes. Readers of the draft (the quick-look) then get the COG's overviews too:
    GDAL sizes them rounding up (the COG driver alone rounds down), a pixel apart at most."""
    with rasterio.Env(**GDAL_OPTIONS), rasterio.open(draft, "r+") as dst:
        if factors := cog_overview_factors(dst.width, dst.height):
            dst.build_overviews(factors, Resampling.nearest)


def copy_cog(draft: Path, out_path: Path, part_path: Path | None = None) -> None:
    """Copy a draft to out_path as a COG (written whole, then renamed); GDAL's threads (up
    to COG_MAX_THREADS) do the work and Python's lock is released meanwhile."""
    part = part_path or partial_beside(out_path)
    try:
        with rasterio.Env(**GDAL_OPTIONS):
            rasterio.shutil.copy(draft, part, driver="COG", COMPRESS="DEFLATE",
                                 BLOCKSIZE=COG_BLOCK_PX, OVERVIEW_RESAMPLING="NEAREST",
                                 NUM_THREADS=str(min(COG_MAX_THREADS, os.cpu_count() or 1)))
        os.replace(part, out_path)
    finally:
        part.unlink(missing_ok=True)


def cog_overview_factors(width: int, height: int, block_px: int = COG_BLOCK_PX) -> list[int]:
    """The overview factors GDAL's COG driver makes for a raster of this size: halving
    (rounding down) until the overview fits in one block."""
    factors: list[int] = []
    side = max(width, height)
    while side > block_px:
        factors.append(2 ** (len(factors) + 1))
        side //= 2
    return factors


def _size(path: Path) -> tuple[int, int]:
    with rasterio.open(path) as src:
        return src.width, src.height


def _add_large(draft: Path, large: np.ndarray, strip_rows: int = 512) -> None:
    """OR the overview's large slicks into the draft's valid pixels, strip by strip."""
    if not large.any():
        return
    with rasterio.open(draft, "r+") as dst:
        width, height = dst.width, dst.height
        for top in range(0, height, strip_rows):
            window = Window(0, top, width, min(strip_rows, height - top))
            add = upsample(large, window, width, height)
            if not add.any():
                continue
            band = dst.read(1, window=window)
            band[add & (band != NODATA)] = OIL
            dst.write(band, 1, window=window)


def tile_core(tile: Tile, mask_png: Path | np.ndarray, width: int, height: int,
              valid: Callable[[Window], np.ndarray] | None,
              large: np.ndarray | None) -> np.ndarray:
    """The stitched mask's pixels in one tile's core window: 0, OIL or NODATA; mask_png is
    the tile's mask file, or its band already decoded."""
    if not (0 <= tile.col <= tile.core_col and 0 <= tile.row <= tile.core_row
            and tile.core_col + tile.core_width <= min(tile.col + tile.width, width)
            and tile.core_row + tile.core_height <= min(tile.row + tile.height, height)):
        raise ValueError(f"tile {tile.index}: core window not inside its read window and the "
                         f"{width}x{height} scene")
    if isinstance(mask_png, np.ndarray):
        if mask_png.shape != (tile.height, tile.width) or mask_png.dtype != np.uint8:
            raise BadMask(f"tile {tile.index}: a {mask_png.dtype} mask of {mask_png.shape}; "
                          f"expected uint8 of {(tile.height, tile.width)}")
        window = tile.core_in_tile
        band = mask_png[window.row_off:window.row_off + window.height,
                        window.col_off:window.col_off + window.width]
    else:
        band = read_mask(mask_png, (tile.height, tile.width), tile.core_in_tile)
    oil = band >= OIL_LEVEL
    window = tile.core_window
    if large is not None:
        oil |= upsample(large, window, width, height)
    core = oil.view(np.uint8) * np.uint8(OIL)  # 0 or OIL: a tenth of np.where's time
    if valid is not None:
        inside = np.asarray(valid(window), bool)
        if inside.shape != core.shape:
            raise ValueError(f"valid() gave {inside.shape} for a window of {core.shape}")
        core[~inside] = NODATA
    return core


def read_mask(path: Path, shape: tuple[int, int] | None,
               window: Window | None = None) -> np.ndarray:
    """Band 1 of a mask file (or a window of it), checking it is 8-bit and `shape` (h, w).
    Under GDAL_OPTIONS whoever calls: a PNG cut short raises rather than reading as whole."""
    try:
        with rasterio.Env(**GDAL_OPTIONS), rasterio.open(path) as src:
            size = (src.height, src.width)
            if src.count != 1 or src.dtypes[0] != "uint8" or size != (shape or size):
                raise BadMask(f"{path.name}: {src.count} band(s) of {src.dtypes[0]}, "
                              f"{src.width}x{src.height}; expected one uint8 band"
                              + (f" of {shape[1]}x{shape[0]}" if shape else ""))
            try:
                return np.asarray(src.read(1, window=window), np.uint8)
            except RasterioIOError:
                raise BadMask(f"{path.name}: its pixel data is truncated or corrupt") from None
    except RasterioIOError as exc:
        # GDAL's text names the file by its full path: users get it without.
        raise BadMask(f"{path.name}: {plain_message(str(exc))}") from None


def large_components(overview: Path, width: int, height: int, large_px: int) -> np.ndarray:
    """The overview's oil (bool, overview size) in components spanning >= large_px of scene."""
    # An overview is one tile's size at most: whole-array work is fine here.
    if large_px < 1:
        raise ValueError("an overview mask needs large_px >= 1")
    oil = read_mask(overview, None) >= OIL_LEVEL
    from scipy import ndimage  # loaded on first use: 0.2 s of start-up
    labels, count = ndimage.label(oil, structure=_EIGHT)
    scale_y, scale_x = height / oil.shape[0], width / oil.shape[1]
    keep = np.zeros(count + 1, bool)
    for number, box in enumerate(ndimage.find_objects(labels), start=1):
        rows, cols = box
        extent = max((rows.stop - rows.start) * scale_y, (cols.stop - cols.start) * scale_x)
        keep[number] = extent >= large_px
    # The overview's edges are coarse and fat: only its interior is added, so a big slick's
    # edges come from the sharp tiles (which see sea beside them) and its middle, where a
    # tile sees no edge, from the overview.
    # border_value=1: a slick that reaches the scene's edge is not eaten from there.
    return np.asarray(ndimage.binary_erosion(keep[labels], structure=_EIGHT,
                                             iterations=OVERVIEW_ERODE_PX, border_value=1))


def add_large(dst: Any, large: np.ndarray, windows: Sequence[Window]) -> None:
    """OR the overview's large slicks into the valid pixels of these windows of a draft
    open for update (a rasterio dataset)."""
    if not large.any():
        return
    for window in windows:
        add = upsample(large, window, dst.width, dst.height)
        if add.any():
            band = dst.read(1, window=window)
            band[add & (band != NODATA)] = OIL
            dst.write(band, 1, window=window)


def upsample(small: np.ndarray, window: Window, width: int, height: int) -> np.ndarray:
    """A window of `small` (bool) stretched (nearest) to width x height."""
    small_h, small_w = small.shape
    # The small pixel whose footprint holds each scene pixel's centre.
    rows = np.minimum(((np.arange(window.row_off, window.row_off + window.height) + 0.5)
                       * small_h / height).astype(np.intp), small_h - 1)
    cols = np.minimum(((np.arange(window.col_off, window.col_off + window.width) + 0.5)
                       * small_w / width).astype(np.intp), small_w - 1)
    part = small[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1]
    if not part.any():  # the usual case, and the fancy indexing below is the slow part
        return np.zeros((window.height, window.width), bool)
    return np.asarray(part[rows - rows[0]][:, cols - cols[0]])


def mask_stats(path: Path, strip_rows: int = STRIP_ROWS) -> MaskStats:
    """Statistics of a mask file (band 1; oil >= 128, nodata not valid), read by strips."""
    if strip_rows < 1:
        raise ValueError(f"strip_rows must be >= 1, got {strip_rows}")
    valid_pixels = oil_pixels = 0
    with rasterio.Env(**GDAL_OPTIONS), rasterio.open(path) as src:
        width, height, nodata = src.width, src.height, src.nodata
        slicks = _StripComponents(width)
        for top in range(0, height, strip_rows):
            strip = src.read(1, window=Window(0, top, width, min(strip_rows, height - top)))
            oil = strip >= OIL_LEVEL
            if nodata is None:
                valid_pixels += strip.size
            else:
                inside = strip != nodata
                valid_pixels += int(np.count_nonzero(inside))
                oil &= inside
            oil_pixels += int(np.count_nonzero(oil))
            slicks.add(oil)
    count, largest = slicks.finish()
    return MaskStats(width=width, height=height, valid_pixels=valid_pixels,
                     oil_pixels=oil_pixels,
                     oil_fraction=oil_pixels / valid_pixels if valid_pixels else 0.0,
                     slick_count=count, largest_slick_px=largest)


class _StripComponents:
    """8-connected components of a mask fed strip by strip, top to bottom.

    Each strip is labelled alone; its components are joined to those touching the last row
    seen (across the boundary, 8-neighbourhood) through a graph's connected components, which
    is a union-find done in bulk. Only components that reach the last row seen stay "open";
    the others are finished, counted and forgotten, so memory depends on the width alone.
    """

    def __init__(self, width: int) -> None:
        self.width = width
        self.last_row = np.zeros(width, np.int64)  # open component (1..k) per pixel, 0: none
        self.open_sizes = np.zeros(0, np.int64)  # pixel count of open component i + 1
        self.count = 0
        self.largest = 0

    def add(self, oil: np.ndarray) -> None:
        """Take the next strip of rows (bool, this width)."""
        # Labelled as uint8: the same components, faster than as bool.
        from scipy import ndimage  # loaded on first use: see large_components
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
        labels, new = ndimage.label(oil.view(np.uint8), structure=_EIGHT)
        old = len(self.open_sizes)
        if old + new == 0:
            return
        # Graph nodes: 0..old-1 the open components, old..old+new-1 this strip's.
        above, first, w = self.last_row, labels[0], self.width
        ends: list[np.ndarray] = []
        for shift in (-1, 0, 1):  # pixel c above touches c + shift below
            up = above[max(0, -shift):w - max(0, shift)]
            down = first[max(0, shift):w - max(0, -shift)]
            touch = (up > 0) & (down > 0)
            ends.append(np.stack([up[touch] - 1, down[touch] - 1 + old]))
        edges = np.concatenate(ends, axis=1)
        graph = coo_matrix((np.ones(edges.shape[1], np.int8), (edges[0], edges[1])),
                           shape=(old + new, old + new))
        merged_count, merged = connected_components(graph, directed=False)
        sizes = np.concatenate([self.open_sizes,
                                np.bincount(labels.ravel(), minlength=new + 1)[1:]])
        # float64 weights are exact far beyond any scene's pixel count (2**53).
        merged_sizes = np.bincount(merged, weights=sizes, minlength=merged_count).astype(np.int64)
        last = labels[-1]
        node_below = merged[last[last > 0] - 1 + old]
        still_open = np.zeros(merged_count, bool)
        still_open[node_below] = True
        self._finish(merged_sizes[~still_open])
        renumber = np.zeros(merged_count, np.int64)
        renumber[still_open] = np.arange(1, int(np.count_nonzero(still_open)) + 1)
        self.open_sizes = merged_sizes[still_open]
        self.last_row = np.zeros(w, np.int64)
        self.last_row[last > 0] = renumber[node_below]

    def finish(self) -> tuple[int, int]:
        """(component count, largest component's pixel count) once every strip is in."""
        self._finish(self.open_sizes)
        self.open_sizes = np.zeros(0, np.int64)
        return self.count, self.largest

    def _finish(self, sizes: np.ndarray) -> None:
        if sizes.size:
            self.count += int(sizes.size)
            self.largest = max(self.largest, int(sizes.max()))
