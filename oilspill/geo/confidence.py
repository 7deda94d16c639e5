"""Each slick's confidence in a scene: from its tiles' kept confidence to the stitched slicks.

A tile's mask keeps the model's confidence per slick of that tile (oip_client's
confidence_text: each of the tile's slicks named by its first pixel, with its mean). Every
oil pixel of the tile's core takes the mean of the tile slick it is in. The core's own
8-connected pieces of oil (the tile's answer inside the valid area) each lie inside one
slick of the stitched mask, so each piece is kept as one record: its first pixel in scene
coordinates, the sum of its pixels' values and their count. Once the scene's slicks are
traced, each record goes to the slick whose outline holds its pixel's centre (or is nearest,
within MATCH_PX: simplification moves outlines by up to 2 px), and a slick's confidence is
its records' sum over their count: the pixel-weighted mean of what the model said of each
of its parts. Oil that only the overview found has no value and does not count.

Records are written per tile, as a small file beside the tile's mask (written again when the
tile is), and read back in chunks: memory does not grow with the scene's slicks.
Blocking: run in a thread.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import numpy.typing as npt
import shapely

from ..masks import OIL_LEVEL, first_pixels, label_slicks
from .polygons import PixelSlick

MATCH_PX = 3.0  # a record's pixel centre is at most this far from its slick's outline
RECORD = np.dtype([("row", "<i8"), ("col", "<i8"), ("sum", "<f8"), ("count", "<i8")])
_CHUNK = 65536  # records read at once


def slick_entries(text: object) -> list[tuple[int, int, float]]:
    """The (row, col, confidence) of a kept confidence's `"slicks"`, values outside [0, 1]
    left out; nothing when the text is not that, or an entry is malformed."""
    if not isinstance(text, str):
        return []
    try:
        doc = json.loads(text)
    except (ValueError, RecursionError):
        return []
    slicks = doc.get("slicks") if isinstance(doc, dict) else None
    if not isinstance(slicks, list):
        return []
    entries = []
    for entry in slicks:
        if not isinstance(entry, dict):
            return []
        row, col = _index(entry.get("row")), _index(entry.get("col"))
        value = entry.get("confidence")
        if (row is None or col is None or not isinstance(value, (int, float))
                or isinstance(value, bool)):
            return []
        if math.isfinite(value) and 0 <= value <= 1:
            entries.append((row, col, float(value)))
    return entries


def _index(value: object) -> int | None:
    """A row or column: a non-negative JSON integer, else None."""
    if isinstance(value, int) and not isinstance(value, bool) and value >= 0:
        return value
    return None


def core_records(mask: npt.NDArray[np.uint8], text: str | None, core: tuple[int, int, int, int],
                 origin: tuple[int, int], inside: npt.NDArray[np.bool_] | None,
                 most: int | None = None) -> npt.NDArray[np.void]:
    """The records of one tile's core (see the module docstring).

    mask: the tile's whole mask as the ML service answered it; text: its kept confidence;
    core: (row, col, height, width) of the core within the tile; origin: the scene (row,
    col) of the core's first pixel; inside: the valid area over the core (None: all);
    most: keep only that many records, of the largest pieces (a mask of speckle has a piece
    per speck, and no more slicks than OILSPILL_MAX_SLICKS are outlined).
    """
    entries = slick_entries(text)
    if not entries:
        return np.zeros(0, RECORD)
    labels, count = label_slicks(mask >= OIL_LEVEL)
    height, width = labels.shape
    means = np.full(count + 1, np.nan)
    for row, col, value in entries:
        if row < height and col < width and labels[row, col]:
            means[labels[row, col]] = value
    top, left, rows, cols = core
    values = means[labels[top:top + rows, left:left + cols]]  # NaN on sea and unnamed oil
    oil = mask[top:top + rows, left:left + cols] >= OIL_LEVEL
    if inside is not None:
        oil &= inside
    pieces, found = label_slicks(oil)
    if not found:
        return np.zeros(0, RECORD)
    flat = pieces.ravel()
    known = ~np.isnan(values.ravel()) & (flat > 0)
    sums = np.bincount(flat[known], weights=values.ravel()[known], minlength=found + 1)
    counts = np.bincount(flat[known], minlength=found + 1)
    first = first_pixels(flat, found)
    keep = np.flatnonzero(counts[1:]) + 1
    if most is not None and keep.size > most:
        keep = np.sort(keep[np.argsort(-counts[keep], kind="stable")[:most]])
    records = np.zeros(keep.size, RECORD)
    records["row"] = first[keep] // cols + origin[0]
    records["col"] = first[keep] % cols + origin[1]
    records["sum"] = sums[keep]
    records["count"] = counts[keep]
    return records


def write_records(path: Path, records: npt.NDArray[np.void]) -> None:
    """Keep a tile's records at `path` (replacing what an earlier write of the tile kept);
    none: no file."""
    if not records.size:
        path.unlink(missing_ok=True)
        return
    # A name of its own: the same tile may be written twice at once (a retry).
    handle, name = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    partial = Path(name)
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(records.tobytes())
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)


def _read(paths: Sequence[Path]) -> Iterator[npt.NDArray[np.void]]:
    for path in paths:
        with open(path, "rb") as fh:
            while chunk := fh.read(_CHUNK * RECORD.itemsize):
                yield np.frombuffer(chunk[:len(chunk) // RECORD.itemsize * RECORD.itemsize],
                                    RECORD)


def slick_confidence(record_files: Sequence[Path], slicks: Sequence[PixelSlick]
                     ) -> dict[int, float]:
    """Each slick's confidence by slick_id, from the tiles' record files; a slick no record
    reaches is left out (its confidence stays null). A record goes to the outline holding
    its pixel's centre, else to the nearest within MATCH_PX, and never to a slick smaller
    than its piece (which a piece of another, not outlined, slick may be)."""
    if not slicks or not record_files:
        return {}
    outlines = [s.polygon for s in slicks]
    tree = shapely.STRtree(outlines)
    sums, counts = np.zeros(len(slicks)), np.zeros(len(slicks), np.int64)
    pixels = np.array([s.pixels for s in slicks], np.int64)
    for records in _read(record_files):
        points = shapely.points(records["col"] + 0.5, records["row"] + 0.5)
        # The outline holding the point, else the nearest within MATCH_PX (one each).
        hit, slick = tree.query_nearest(points, max_distance=MATCH_PX, all_matches=False)
        fits = records["count"][hit] <= pixels[slick]
        hit, slick = hit[fits], slick[fits]
        np.add.at(sums, slick, records["sum"][hit])
        np.add.at(counts, slick, records["count"][hit])
    return {s.slick_id: float(sums[n] / counts[n]) for n, s in enumerate(slicks) if counts[n]}
