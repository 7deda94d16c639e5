"""Every slick of a stitched mask as a polygon, first in scene pixels, then as a place on Earth.

Outlines: the mask is read by blocks of rows and each block is polygonised by GDAL
(rasterio.features.shapes, 8-connected, on the oil pixels), in scene pixel coordinates
(x = column, y = row, corners of pixels). A slick that crosses a block boundary comes out in
pieces; pieces 8-connected across the boundary row touch there (along an edge, or at a
corner), so they are joined by geometric intersection and unioned once the slick is complete.
Memory depends on the block and on the vertices of the slicks still open, not on the scene.

Simplification: Douglas-Peucker removes the stair steps of the pixel edges, first from each
piece within PRE_SIMPLIFY x simplify_px (before the union, which is then cheap: a 45 degree
edge has a vertex per pixel), then from the joined outline within simplify_px, keeping
topology and holes (where plain Douglas-Peucker would break a polygon or lose a ring, the
topology-preserving simplifier is used). A pixel corner may end up to 2 x simplify_px from
the outline. A part that loses over MAX_AREA_CHANGE of its area that way (a slick one or two
pixels wide, or a few pixels in all) keeps its pixel outline instead.

Places: vertices go to WGS84 lon/lat through the scene's affine transform and CRS, or through
a thin-plate spline on its GCPs (exact at every GCP, which suits Sentinel-1's dense grid).
Area and perimeter are geodesic on WGS84. Centroid and length are computed in one Lambert
azimuthal equal-area projection centred on the scene's slicks (area weights stay right, and
within 150 km of the centre distances are off by under 1e-4), then taken back to lon/lat.
Blocking: run in a thread.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
import numpy.typing as npt
import rasterio
import shapely
from pyproj import CRS, Geod, Transformer
from pyproj.enums import TransformDirection
from rasterio.control import GroundControlPoint
from rasterio.features import shapes
from rasterio.transform import Affine, AffineTransformer, GCPTransformer
from rasterio.windows import Window
from shapely.geometry import MultiPolygon, Polygon

from ..masks import OIL_LEVEL
from . import GDAL_OPTIONS
from .stitch import BadMask, Georef

Outline: TypeAlias = Polygon | MultiPolygon
Coords: TypeAlias = npt.NDArray[np.float64]
LonLat: TypeAlias = Callable[[Coords, Coords], tuple[Coords, Coords]]

MAX_AREA_CHANGE = 0.1  # see the module docstring
PRE_SIMPLIFY = 0.75  # of simplify_px, for each piece: 45 degree stairs are 0.71 px off
RUN_GAP_PX = 8  # closer runs of oil columns are polygonised as one (fewer, longer runs)
_WGS84 = Geod(ellps="WGS84")


class NotLocated(ValueError):
    """The georeference cannot place pixels on Earth (no CRS, or neither transform nor GCPs)."""


@dataclass(frozen=True)
class PixelSlick:
    """One 8-connected slick of a mask, in scene pixels.

    slick_id: 1..n by decreasing pixel count, ties by centroid row then column. polygon: its
    simplified outline, x = column and y = row of pixel corners. pixels: its oil pixel count.
    """

    slick_id: int
    polygon: Outline
    pixels: int


@dataclass(frozen=True)
class Slick:
    """One slick as a place; the located fields are None for a picture without georeference.

    polygon_px: the outline in scene pixels (PixelSlick.polygon). polygon_lonlat: the same
    vertices in WGS84 lon/lat in [-180, 180] (a slick across the antimeridian jumps there),
    exteriors counter-clockwise and holes clockwise. area_km2, perimeter_km: geodesic, holes
    excluded from the area and included in the perimeter. length_km: the geodesic distance
    between the midpoints of the short sides of the outline's minimum rotated rectangle.
    centroid_lon, centroid_lat: the area centroid (see the module docstring). pixels: oil
    pixel count. mean_contrast_db, confidence: as the caller measured them, or None.
    """

    slick_id: int
    polygon_px: Outline
    pixels: int
    polygon_lonlat: Outline | None = None
    area_km2: float | None = None
    perimeter_km: float | None = None
    length_km: float | None = None
    centroid_lon: float | None = None
    centroid_lat: float | None = None
    mean_contrast_db: float | None = None
    confidence: float | None = None


def slick_polygons(mask_path: Path, *, block_rows: int = 1024, simplify_px: float = 1.0,
                   max_slicks: int | None = None) -> list[PixelSlick]:
    """The slicks of a mask file (band 1, oil >= 128, nodata never oil), read by blocks:
    all, or the max_slicks largest (see SlickTracer)."""
    if block_rows < 1:
        raise ValueError(f"need block_rows >= 1, got {block_rows}")
    tracer = SlickTracer(simplify_px, max_slicks)
    with rasterio.Env(**GDAL_OPTIONS), rasterio.open(mask_path) as src:
        if src.count != 1 or src.dtypes[0] != "uint8":
            raise BadMask(f"{mask_path.name}: {src.count} band(s) of {src.dtypes[0]}; "
                          "expected one uint8 band")
        width, height, nodata = src.width, src.height, src.nodata
        for top in range(0, height, block_rows):
            rows = min(block_rows, height - top)
            band = src.read(1, window=Window(0, top, width, rows))
            oil = band >= OIL_LEVEL
            if nodata is not None:
                oil &= band != nodata
            del band
            tracer.add(oil, top)
    return tracer.finish()


class SlickTracer:
    """The slicks of a mask fed block of rows after block of rows, from the top.

    Each block's oil is polygonised, its pieces joined to those above them that they touch,
    and a slick is finished (unioned, simplified within simplify_px) as soon as none of its
    pieces reaches the last row fed: memory depends on a block and the open slicks.

    max_slicks (None: no limit) bounds the outlines kept to the largest ones by pixel count
    (among slicks of one size, those finished first): every slick is still counted (`count`,
    `largest`), but a slick that cannot be among the max_slicks largest is not outlined.
    When a block may hold more slicks than there is room for, its slicks lying wholly inside
    it are measured by labelling first, and those too small are never polygonised: a mask
    of speckle (a model's noise) costs a labelling per block, not a polygon per speck.
    Blocking (GDAL's polygoniser holds the GIL for the block; GEOS releases it).
    """

    def __init__(self, simplify_px: float = 1.0, max_slicks: int | None = None) -> None:
        if simplify_px < 0:
            raise ValueError(f"need simplify_px >= 0, got {simplify_px}")
        if max_slicks is not None and max_slicks < 0:
            raise ValueError(f"need max_slicks >= 0 or None, got {max_slicks}")
        self._simplify_px = simplify_px
        self._max = max_slicks
        self._joiner = _Joiner()
        # The outlines kept, a min-heap: (pixels, -finishing order, outline).
        self._kept: list[tuple[int, int, Outline]] = []
        self._finished = 0
        self.count = 0  # slicks finished, outlined or not
        self.pieces = 0  # polygons made from GDAL's (pieces of slicks, block by block)
        self.largest = 0  # the largest one's pixel count
        self.bottom = 0  # the first row not fed yet

    def add(self, oil: npt.NDArray[np.bool_], top: int) -> None:
        """Take the next block: oil (bool, the mask's width) for rows top, top + 1, ..."""
        if top != self.bottom:
            raise ValueError(f"blocks must follow each other: row {self.bottom} expected, "
                             f"got {top}")
        bottom = top + oil.shape[0]
        block = _Packed.of(oil, top)
        if block is not None and self._max is not None:
            room = self._max - len(self._kept)
            if room <= 0 or _at_most_pieces(block.oil) > room:
                block.oil = self._without_small(block, bottom, self._max)
        pieces = [_piece(rings) for rings in block.polygons()] if block is not None else []
        self.pieces += len(pieces)
        for group in self._joiner.add(pieces, top, bottom):
            self._keep(group)
        self.bottom = bottom

    def finish(self) -> list[PixelSlick]:
        """The slicks outlined (all, or the max_slicks largest), numbered (see PixelSlick),
        once the last block is in; `count` is then every slick's."""
        for group in self._joiner.groups:  # those reaching the end
            self._keep(group)
        self._joiner.groups, self._joiner.edge = [], []
        done = [(outline, pixels) for pixels, _, outline in self._kept]

        def order(item: tuple[Outline, int]) -> tuple[int, float, float]:
            centroid = item[0].centroid
            return (-item[1], centroid.y, centroid.x)

        done.sort(key=order)
        return [PixelSlick(slick_id=number, polygon=outline, pixels=pixels)
                for number, (outline, pixels) in enumerate(done, start=1)]

    def _keep(self, group: _Group) -> None:
        """Count a finished slick, and outline it unless max_slicks larger ones are kept."""
        self.count += 1
        self.largest = max(self.largest, group.pixels)
        full = self._max is not None and len(self._kept) >= self._max
        if full and (not self._kept or group.pixels <= self._kept[0][0]):
            return
        outline, pixels = _finished(group, self._simplify_px)
        self._finished += 1
        item = (pixels, -self._finished, outline)
        if not full:
            heapq.heappush(self._kept, item)
        else:
            heapq.heapreplace(self._kept, item)

    def _without_small(self, block: _Packed, bottom: int, most: int) -> npt.NDArray[np.bool_]:
        """The block's oil without the slicks lying wholly inside it (touching neither its
        first row nor row bottom - 1) that cannot be among the `most` largest, given those
        kept: they are counted here and never polygonised."""
        from ..masks import label_slicks  # scipy: loaded with the first upload

        oil = block.oil
        labels, found = label_slicks(oil)
        sizes = np.bincount(labels.ravel(), minlength=found + 1)
        inner = np.ones(found + 1, bool)
        inner[0] = False
        if block.top == self.bottom:  # may go on in the block above
            inner[labels[0]] = False
        if block.top + oil.shape[0] == bottom:  # or in the block below
            inner[labels[-1]] = False
        kept = np.array([pixels for pixels, _, _ in self._kept], np.int64)
        pool = np.concatenate([kept, sizes[inner]])
        drop = np.zeros(found + 1, bool)
        if most == 0:
            drop = inner
        elif pool.size > most:
            cut = np.partition(pool, pool.size - most)[pool.size - most]  # most-th largest
            drop = inner & (sizes < cut)
            # Slicks of the cut's size fill the slots left, those kept first (finished
            # earlier), then this block's in the order of their first pixel.
            slots = most - int(np.count_nonzero(pool > cut)) - int(np.count_nonzero(kept == cut))
            drop[np.flatnonzero(inner & (sizes == cut))[max(slots, 0):]] = True
        dropped = int(np.count_nonzero(drop))
        if not dropped:
            return oil
        self.count += dropped
        self.largest = max(self.largest, int(sizes[drop].max()))
        kept_oil: npt.NDArray[np.bool_] = oil & ~drop[labels]
        return kept_oil


@dataclass
class _Packed:
    """A block's oil as GDAL is given it: most of a block is sea, and GDAL scans every pixel,
    so only the runs of columns with oil are kept, side by side with one empty column
    between them (oil apart by an empty column is never 8-connected), and only the rows
    with oil. oil: that array; top: the scene row of its first row; firsts: each run's first
    scene column; starts: each run's first column in `oil`."""

    oil: npt.NDArray[np.bool_]
    top: int
    firsts: npt.NDArray[np.intp]
    starts: npt.NDArray[np.intp]

    @classmethod
    def of(cls, oil: npt.NDArray[np.bool_], top: int) -> _Packed | None:
        """The block of rows top, top + 1, ... packed; None without oil."""
        columns = np.flatnonzero(oil.any(axis=0))
        if columns.size == 0:
            return None
        breaks = np.flatnonzero(np.diff(columns) > RUN_GAP_PX)
        firsts = np.concatenate([columns[:1], columns[breaks + 1]])
        lasts = np.concatenate([columns[breaks], columns[-1:]])
        widths = lasts - firsts + 1
        starts = np.concatenate([[0], np.cumsum(widths + 1)[:-1]])
        rows = np.flatnonzero(oil[:, columns].any(axis=1))
        packed = np.zeros((rows[-1] - rows[0] + 1, int(starts[-1] + widths[-1])), bool)
        for first, start, width in zip(firsts, starts, widths, strict=True):
            packed[:, start:start + width] = oil[rows[0]:rows[-1] + 1, first:first + width]
        return cls(packed, top + int(rows[0]), firsts, starts)

    def polygons(self) -> list[list[Coords]]:
        """GDAL's polygons of the oil (each its rings' vertices, in scene pixels): one per
        8-connected piece."""
        found = []
        for geometry, _ in shapes(self.oil.view(np.uint8), mask=self.oil, connectivity=8):
            rings = [np.asarray(ring, np.float64) for ring in geometry["coordinates"]]
            # Back from the packed columns to the scene's: the run the polygon is in.
            run = int(np.searchsorted(self.starts, rings[0][0, 0], side="right")) - 1
            shift = np.array([self.firsts[run] - self.starts[run], self.top], np.float64)
            found.append([ring + shift for ring in rings])
        return found


def _at_most_pieces(oil: npt.NDArray[np.bool_]) -> int:
    """An upper bound of the 8-connected pieces of oil, cheap beside labelling them: the oil
    pixels with no oil before them (left, up-left, up, up-right). A piece's first pixel in
    row order is one of them."""
    first = oil.copy()
    first[:, 1:] &= ~oil[:, :-1]
    first[1:] &= ~oil[:-1]
    first[1:, 1:] &= ~oil[:-1, :-1]
    first[1:, :-1] &= ~oil[:-1, 1:]
    return int(np.count_nonzero(first))


@dataclass
class _Group:
    """The pieces of one slick found so far, and their pixel count."""

    pieces: list[Outline] = field(default_factory=list)
    pixels: int = 0


class _Joiner:
    """Pieces of slicks from consecutive blocks, grouped where they touch across boundaries.

    A group stays open while one of its pieces reaches the bottom of the last block; only
    those pieces (`edge`) can touch the next block's, so only they are searched.
    """

    def __init__(self) -> None:
        self.groups: list[_Group] = []  # the open groups
        self.edge: list[tuple[Outline, int]] = []  # (piece on the boundary, its open group)

    def add(self, pieces: list[tuple[Outline, int]], top: int, bottom: int) -> list[_Group]:
        """Take the pieces (outline, pixels) of the block of rows [top, bottom); return the
        groups that this block finished."""
        old, nodes = len(self.groups), len(self.groups) + len(pieces)
        heads = [i for i, (piece, _) in enumerate(pieces) if piece.bounds[1] == top]
        pairs = np.zeros((2, 0), np.intp)
        if self.edge and heads:
            tree = shapely.STRtree([piece for piece, _ in self.edge])
            pairs = tree.query([pieces[i][0] for i in heads], predicate="intersects")
        # Graph nodes: 0..old-1 the open groups, old.. this block's pieces.
        ends = (np.array([self.edge[j][1] for j in pairs[1]], np.intp),
                np.array([old + heads[i] for i in pairs[0]], np.intp))
        # scipy is loaded on first use: it costs 0.2 s of start-up
        from scipy.sparse import coo_matrix
        from scipy.sparse.csgraph import connected_components
        graph = coo_matrix((np.ones(len(ends[0]), np.int8), ends), shape=(nodes, nodes))
        count, label = connected_components(graph, directed=False)
        merged = [_Group() for _ in range(count)]
        for node, group in enumerate(self.groups):
            merged[label[node]].pieces += group.pieces
            merged[label[node]].pixels += group.pixels
        for i, (piece, pixels) in enumerate(pieces):
            merged[label[old + i]].pieces.append(piece)
            merged[label[old + i]].pixels += pixels
        tails = [i for i, (piece, _) in enumerate(pieces) if piece.bounds[3] == bottom]
        still_open = sorted({int(label[old + i]) for i in tails})
        renumber = {number: index for index, number in enumerate(still_open)}
        self.groups = [merged[number] for number in still_open]
        self.edge = [(pieces[i][0], renumber[int(label[old + i])]) for i in tails]
        return [group for number, group in enumerate(merged) if number not in renumber]


def _piece(rings: list[npt.NDArray[np.float64]]) -> tuple[Outline, int]:
    """A GDAL polygon (its rings' vertices) as a valid outline and its pixel count."""
    shell, *holes = (shapely.linearrings(ring) for ring in rings)
    polygon = Polygon(shell, holes)
    # Pixel-edge rings: the signed-area sum is the pixel count exactly, even for GDAL's
    # 8-connected rings that touch themselves at a corner (invalid in shapely's eyes).
    pixels = round(polygon.area)
    if polygon.is_valid:
        return polygon, pixels
    # "structure" takes each ring as the boundary of an area (shells unioned, holes cut):
    # what a pixel outline means, and far cheaper than rebuilding from its line work.
    return _polygonal(shapely.make_valid(polygon, method="structure",
                                         keep_collapsed=False)), pixels


def _finished(group: _Group, tolerance: float) -> tuple[Outline, int]:
    """A complete slick's outline, simplified within tolerance (see the module docstring),
    and its pixel count."""
    if tolerance == 0:
        return _polygonal(shapely.union_all(group.pieces)), group.pixels
    # The pieces lose their stair steps first: the union then works on a few vertices where
    # the pixel outlines have thousands (a 45 degree edge has one per pixel).
    pieces = _simplified(np.array(group.pieces, object), PRE_SIMPLIFY * tolerance)
    outline = _polygonal(shapely.union_all(pieces))
    result = _polygonal(list(_simplified(shapely.get_parts(outline), tolerance)))
    # Parts simplified one by one may now overlap where they touched: union them.
    if not result.is_valid:
        result = _polygonal(shapely.make_valid(result, method="structure"))
    return result, group.pixels


def _simplified(polygons: npt.NDArray[np.object_],
                tolerance: float) -> npt.NDArray[np.object_]:
    """Each polygon simplified within tolerance by Douglas-Peucker; where that breaks it (not
    valid, a ring lost, over MAX_AREA_CHANGE of its area gone), with its topology kept; where
    that too loses the area, as it is."""
    plain: npt.NDArray[np.object_] = shapely.simplify(polygons, tolerance,
                                                      preserve_topology=False)
    broken = ~_kept(polygons, plain)
    if broken.any():
        careful = shapely.simplify(polygons[broken], tolerance, preserve_topology=True)
        plain[broken] = np.where(_kept(polygons[broken], careful, rings=False), careful,
                                 polygons[broken])
    return plain


def _kept(before: npt.NDArray[np.object_], after: npt.NDArray[np.object_],
          rings: bool = True) -> npt.NDArray[np.bool_]:
    """Which simplified polygons are valid and keep their area (and rings)."""
    area = shapely.area(before)
    kept = (shapely.is_valid(after) & ~shapely.is_empty(after)
            & (np.abs(shapely.area(after) - area) <= MAX_AREA_CHANGE * area))
    if rings:  # a hole or a part that collapsed: clean water or oil lost
        kept &= (shapely.get_num_geometries(shapely.boundary(after))
                 == shapely.get_num_geometries(shapely.boundary(before)))
    return np.asarray(kept, bool)


def _polygonal(geometry: Any) -> Outline:
    """The polygons of a geometry or of a list of them, as one Polygon or MultiPolygon."""
    parts = [part for part in shapely.get_parts(geometry)
             if isinstance(part, Polygon) and not part.is_empty]
    parts += [inner for part in shapely.get_parts(geometry) if isinstance(part, MultiPolygon)
              for inner in part.geoms]
    return parts[0] if len(parts) == 1 else MultiPolygon(parts)


def located(georef: Georef) -> bool:
    """True when the georeference places pixels on Earth (to_lonlat works)."""
    return bool((georef.gcps and georef.gcps_crs_wkt)
                or (georef.transform is not None and georef.crs_wkt))


def to_lonlat(georef: Georef) -> LonLat:
    """A function from pixel (column, row) arrays, pixel corners, to WGS84 (lon, lat) arrays."""
    if georef.gcps and georef.gcps_crs_wkt:
        crs = CRS.from_user_input(georef.gcps_crs_wkt)
        xs = np.array([x for _, _, x, _, _ in georef.gcps])
        # Longitudes of a scene across the antimeridian jump by 360: fit them continuous.
        if crs.is_geographic and xs.max() - xs.min() > 180:
            xs = np.where(xs < 0, xs + 360, xs)
        gcps = [GroundControlPoint(row=row, col=col, x=x, y=y, z=z)
                for (row, col, _, y, z), x in zip(georef.gcps, xs, strict=True)]

        def from_gcps(cols: Coords, rows: Coords) -> tuple[Coords, Coords]:
            with GCPTransformer(gcps, tps=True) as spline:
                return spline.xy(rows, cols, offset="ul")  # type: ignore[no-any-return]

        return _then_wgs84(from_gcps, crs)
    if georef.transform is not None and georef.crs_wkt:
        affine = AffineTransformer(Affine(*georef.transform))
        return _then_wgs84(lambda cols, rows: affine.xy(rows, cols, offset="ul"),
                           CRS.from_user_input(georef.crs_wkt))
    raise NotLocated("the georeference has no CRS with a transform, nor GCPs with a CRS")


def _then_wgs84(to_crs: LonLat, crs: CRS) -> LonLat:
    """Pixels through to_crs, then from crs to WGS84 lon/lat, lon wrapped into [-180, 180]."""
    to_wgs84 = Transformer.from_crs(crs, "EPSG:4326", always_xy=True)

    def convert(cols: Coords, rows: Coords) -> tuple[Coords, Coords]:
        xs, ys = to_crs(np.asarray(cols, np.float64), np.asarray(rows, np.float64))
        lon, lat = to_wgs84.transform(np.asarray(xs), np.asarray(ys))
        lon = np.asarray(lon, np.float64)
        outside = np.abs(lon) > 180
        lon[outside] = (lon[outside] + 180) % 360 - 180
        return lon, np.asarray(lat, np.float64)

    return convert


def locate(slicks: Sequence[PixelSlick], georef: Georef, *,
           contrast_db: Mapping[int, float] | None = None,
           confidence: Mapping[int, float] | None = None) -> list[Slick]:
    """Slicks as places; pixel-only (located fields None) when the georeference cannot place
    them. contrast_db and confidence map slick_id to the caller's measures."""
    contrast_db, confidence = contrast_db or {}, confidence or {}
    if not slicks or not located(georef):
        return [Slick(slick_id=s.slick_id, polygon_px=s.polygon, pixels=s.pixels,
                      mean_contrast_db=contrast_db.get(s.slick_id),
                      confidence=confidence.get(s.slick_id)) for s in slicks]
    convert = to_lonlat(georef)
    # All vertices of all slicks in one call: one GCP spline fit per scene, not per slick.
    outlines = shapely.transform(np.array([s.polygon for s in slicks], object),
                                 lambda xy: np.column_stack(convert(xy[:, 0], xy[:, 1])))
    left, top, right, bottom = shapely.total_bounds([s.polygon for s in slicks])
    lon0, lat0 = convert(np.array([(left + right) / 2]), np.array([(top + bottom) / 2]))
    laea = Transformer.from_crs("EPSG:4326", CRS.from_proj4(
        f"+proj=laea +lat_0={lat0[0]} +lon_0={lon0[0]} +datum=WGS84 +units=m"), always_xy=True)
    out = []
    for s, lonlat in zip(slicks, outlines, strict=True):
        lonlat = shapely.orient_polygons(lonlat)
        area_m2 = _WGS84.geometry_area_perimeter(lonlat)[0]
        # geometry_area_perimeter's perimeter leaves the holes out; the boundary has them.
        perimeter_m = _WGS84.geometry_length(lonlat.boundary)
        metric = shapely.transform(lonlat, lambda xy: np.column_stack(
            laea.transform(xy[:, 0], xy[:, 1])))
        centroid = metric.centroid
        lon, lat = laea.transform(centroid.x, centroid.y, direction=TransformDirection.INVERSE)
        out.append(Slick(
            slick_id=s.slick_id, polygon_px=s.polygon, pixels=s.pixels, polygon_lonlat=lonlat,
            area_km2=abs(area_m2) / 1e6, perimeter_km=perimeter_m / 1e3,
            length_km=_length_m(metric, laea) / 1e3, centroid_lon=lon, centroid_lat=lat,
            mean_contrast_db=contrast_db.get(s.slick_id), confidence=confidence.get(s.slick_id)))
    # Numbered by decreasing area on the ground: pixels differ in area across a scene in
    # degrees (or far from a projection's centre), so pixel counts can order them otherwise.
    ranked = sorted(out, key=lambda s: (-(s.area_km2 or 0.0), s.slick_id))
    return [replace(s, slick_id=n) for n, s in enumerate(ranked, start=1)]


def _length_m(metric: Outline, laea: Transformer) -> float:
    """Geodesic length between the short sides' midpoints of the minimum rotated rectangle."""
    # An outline has an area (see _finished), so its envelope is a rectangle, not a line.
    corners = shapely.get_coordinates(shapely.oriented_envelope(metric))[:4]
    # Sides 0-1 and 2-3 face each other, as do 1-2 and 3-0: the short pair's midpoints.
    first = np.hypot(*(corners[1] - corners[0])) <= np.hypot(*(corners[2] - corners[1]))
    ends = ((corners[[0, 2]] + corners[[1, 3]]) / 2 if first
            else (corners[[1, 3]] + corners[[2, 0]]) / 2)
    lon, lat = laea.transform(ends[:, 0], ends[:, 1], direction=TransformDirection.INVERSE)
    return float(_WGS84.inv(lon[0], lat[0], lon[1], lat[1])[2])


def places(mask_path: Path, georef: Georef, *, block_rows: int = 1024,
           simplify_px: float = 1.0, max_slicks: int | None = None) -> list[Slick]:
    """The slicks of a mask file as places (pixel-only without a usable georeference)."""
    return locate(slick_polygons(mask_path, block_rows=block_rows, simplify_px=simplify_px,
                                 max_slicks=max_slicks), georef)
