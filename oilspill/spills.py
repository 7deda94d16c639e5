"""Where the oil is: each done mask's slicks as RFC 7946 GeoJSON, and the job's file.

A scene's file is written when it is stitched, in WGS84 lon/lat from its georeference (a
scene without one keeps pixel coordinates). A plain picture's file is made on first use, in
pixel coordinates, each slick with the confidence the ML service gave it when the mask
keeps one (see mask_confidence). A job's file is the union of its images' features, built
once and kept, like the result zip: the lon/lat features of its georeferenced images, or,
when none is georeferenced, every picture's features in pixels.

Blocking: run in a thread.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from PIL import Image, PngImagePlugin
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.windows import Window

from .geo.confidence import MATCH_PX, slick_entries
from .geo.geojson import PIXEL, feature_collection, merge_collections, write_geojson
from .geo.polygons import PixelSlick, Slick, locate, located, slick_polygons, to_lonlat
from .geo.scale import Stretch
from .geo.stitch import Georef
from .jobs import ResultKind, Task
from .masks import label_slicks, oil_of
from .oip_client import CONFIDENCE_KEY
from .outlines import draw_outlines
from .paths import JobPaths, partial_beside

Reader = Callable[[Window, tuple[int, int]], np.ndarray]
CONTRAST_PX = 1024  # the picture slicks' contrast is measured on, longest side


def scene_spills(mask: Path, georef: Georef, width: int, height: int, image: str,
                 grey: Reader, stretch: Stretch, out: Path, overlay: Path,
                 pixel_slicks: Sequence[PixelSlick] | None = None, *,
                 max_slicks: int, confidence: Mapping[int, float] | None = None
                 ) -> dict[str, Any]:
    """Write a scene's slicks (given, or traced from the mask: the max_slicks largest) as
    GeoJSON at `out` and draw their outlines and ids on its overlay; returns the figures
    for its summary. confidence: the model's, by slick_id (geo/confidence.py)."""
    if pixel_slicks is None:
        pixel_slicks = slick_polygons(mask, max_slicks=max_slicks)
    contrast = _contrast_db(pixel_slicks, grey, stretch, width, height)
    slicks = locate(pixel_slicks, georef, contrast_db=contrast, confidence=confidence)
    if slicks:  # drawn with the ids the GeoJSON gives them
        partial = partial_beside(overlay)
        try:
            draw_outlines(overlay, [PixelSlick(s.slick_id, s.polygon_px, s.pixels)
                                    for s in slicks], width, height, partial)
            os.replace(partial, overlay)
        finally:
            partial.unlink(missing_ok=True)
    placed = located(georef)
    write_geojson(out, feature_collection(slicks, image=image, pixel=not placed))
    figures = _figures(slicks, placed)
    figures["bounds_lonlat"] = _bounds(georef, width, height) if placed else None
    return figures


def ensure_task_spills(paths: JobPaths, task: Task, *, max_slicks: int) -> Path:
    """A done task's GeoJSON: a scene's (written when stitched), or a plain mask's slicks in
    pixel coordinates (the max_slicks largest), made on first use and kept."""
    out = paths.spills(task.seq)
    if out.is_file():
        return out
    if task.result_kind is not ResultKind.MASK or task.result_name is None:
        raise FileNotFoundError(out)
    mask = paths.result(ResultKind.MASK, task.result_name)
    pixel_slicks = slick_polygons(mask, max_slicks=max_slicks)
    slicks = locate(pixel_slicks, Georef(), confidence=mask_confidence(mask, pixel_slicks))
    out.parent.mkdir(exist_ok=True)
    write_geojson(out, feature_collection(slicks, image=task.filename, pixel=True))
    return out


def mask_confidence(mask_path: Path, slicks: Sequence[PixelSlick]) -> dict[int, float]:
    """Each slick's confidence as the mask PNG keeps it, by slick_id (oip_client's
    confidence_text: `{"slicks": [{"row", "col", "confidence"}, ...]}`, each slick named by
    its first oil pixel in row order); empty for a mask without it, with it garbled, or
    with one value per image or detection (`"values"`): those slicks' confidence stays null.

    A slick is told by what survives simplifying its outline: the mask is labelled again
    (8-connected oil), and an entry goes to the slick with its label's pixel count whose
    outline is nearest its first pixel's centre, within MATCH_PX; each slick is taken once.
    Values outside [0, 1] are not kept. The whole mask is read: a plain picture's is small.
    """
    try:
        with Image.open(mask_path) as image:
            text = image.info.get(CONFIDENCE_KEY)
            if text is None and isinstance(image, PngImagePlugin.PngImageFile):
                text = image.text.get(CONFIDENCE_KEY)  # a chunk after the pixels
            entries = slick_entries(text)
            if not entries or not slicks or image.mode not in ("L", "P"):
                return {}
            band: npt.NDArray[np.uint8] = np.asarray(image, np.uint8)
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return {}
    if band.ndim != 2:
        return {}
    labels, _ = label_slicks(oil_of(band))
    sizes = np.bincount(labels.ravel())
    height, width = labels.shape
    points, pixels, values = [], [], []
    for row, col, value in entries:
        label = int(labels[row, col]) if row < height and col < width else 0
        if label:
            points.append(shapely.Point(col + 0.5, row + 0.5))
            pixels.append(int(sizes[label]))
            values.append(value)
    if not points:
        return {}
    outlines = [s.polygon for s in slicks]
    near = shapely.STRtree(outlines).query(points, predicate="dwithin", distance=MATCH_PX)
    pairs = [(int(p), int(o)) for p, o in near.T if pixels[p] == slicks[o].pixels]
    if not pairs:
        return {}
    distances = shapely.distance([points[p] for p, _ in pairs],
                                 [outlines[o] for _, o in pairs])
    found: dict[int, float] = {}
    taken: set[int] = set()
    for n in np.argsort(distances, kind="stable"):  # the nearest pairs first
        p, o = pairs[n]
        if p not in taken and slicks[o].slick_id not in found:
            found[slicks[o].slick_id] = values[p]
            taken.add(p)
    return found


def build_job_spills(paths: JobPaths, tasks: Sequence[Task], *, max_slicks: int) -> Path:
    """The job's GeoJSON, from its done tasks' files (see the module docstring)."""
    collections = []
    for task in tasks:
        if task.result_kind is ResultKind.MASK and task.result_name is not None:
            with open(ensure_task_spills(paths, task, max_slicks=max_slicks),
                      encoding="utf-8") as fh:
                collections.append(json.load(fh))
    placed = [c for c in collections if c.get("properties") != PIXEL]
    merged = merge_collections(placed or collections or [
        {"type": "FeatureCollection", "features": []}])
    out = paths.job_spills
    write_geojson(out, merged)
    return out


def _figures(slicks: Sequence[Slick], placed: bool) -> dict[str, Any]:
    """The summary's figures of a scene's slicks (areas None without a georeference)."""
    areas = [s.area_km2 for s in slicks if s.area_km2 is not None]
    largest = max((s for s in slicks if s.area_km2 is not None),
                  key=lambda s: s.area_km2 or 0.0, default=None)
    return {
        "slick_polygons": len(slicks),
        "total_area_km2": round(sum(areas), 6) if placed else None,
        "largest_slick_km2": round(largest.area_km2, 6) if largest and largest.area_km2
        else None,
        "largest_slick_centroid": (
            [round(largest.centroid_lat, 7), round(largest.centroid_lon, 7)]
            if largest and largest.centroid_lat is not None and largest.centroid_lon is not None
            else None),
    }


def _bounds(georef: Georef, width: int, height: int) -> list[float]:
    """The scene's footprint bounds in lon/lat [west, south, east, north], from its edges."""
    edge = np.linspace(0, 1, 33)
    cols = np.concatenate([edge * width, np.full(33, width), edge[::-1] * width,
                           np.zeros(33)])
    rows = np.concatenate([np.zeros(33), edge * height, np.full(33, height),
                           edge[::-1] * height])
    lon, lat = to_lonlat(georef)(cols, rows)
    if lon.max() - lon.min() > 180:  # across the antimeridian: west is the larger longitude
        west, east = float(lon[lon > 0].min()), float(lon[lon < 0].max())
    else:
        west, east = float(lon.min()), float(lon.max())
    return [round(west, 7), round(float(lat.min()), 7), round(east, 7),
            round(float(lat.max()), 7)]


def _contrast_db(slicks: Sequence[PixelSlick], grey: Reader, stretch: Stretch, width: int,
                 height: int) -> dict[int, float]:
    """How much darker than the scene's sea each slick is, in dB on the scene-wide scale,
    measured on the scene brought down to at most CONTRAST_PX."""
    if not slicks:
        return {}
    factor = max(1.0, max(width, height) / CONTRAST_PX)
    shape = (max(1, round(height / factor)), max(1, round(width / factor)))
    picture = grey(Window(0, 0, width, height), shape).astype(np.float32)
    db_per_grey = (stretch.high_db - stretch.low_db) / 255.0
    scale_x, scale_y = width / shape[1], height / shape[0]
    # One rasterisation (GDAL's, a millisecond whatever the slick) per batch of slicks whose
    # boxes in the picture (their bounds and a pixel more each side, for all_touched) do not
    # overlap: each picture pixel is then touched by one slick of a batch at most, and the
    # batch gives every slick of it the same pixels as a rasterisation of its own would.
    # A scene's many slicks are far apart: one or two batches for hundreds of slicks.
    batches: list[tuple[npt.NDArray[np.bool_], list[tuple[Any, int]]]] = []
    for slick in slicks:
        left, top, right, bottom = slick.polygon.bounds
        rows = slice(max(0, math.floor(top / scale_y) - 1),
                     min(shape[0], math.ceil(bottom / scale_y) + 1))
        cols = slice(max(0, math.floor(left / scale_x) - 1),
                     min(shape[1], math.ceil(right / scale_x) + 1))
        free = next((b for b in batches if not b[0][rows, cols].any()), None)
        if free is None:
            free = (np.zeros(shape, bool), [])
            batches.append(free)
        free[0][rows, cols] = True
        free[1].append((slick.polygon, slick.slick_id))
    to_small = Affine.scale(scale_x, scale_y)
    values = picture.ravel()
    out = {}
    for _, batch in batches:
        ids = rasterize(batch, out_shape=shape, transform=to_small, all_touched=True, fill=0,
                        dtype="int32").ravel()
        size = max(slick_id for _, slick_id in batch) + 1
        counts = np.bincount(ids, minlength=size)
        sums = np.bincount(ids, weights=values, minlength=size)
        for _, slick_id in batch:
            if counts[slick_id]:
                mean_db = stretch.low_db + float(sums[slick_id] / counts[slick_id]) * db_per_grey
                out[slick_id] = round(mean_db - stretch.sea_db, 2)
    return out
