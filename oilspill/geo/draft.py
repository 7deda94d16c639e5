"""A scene's stitched mask while its tiles arrive, counted and traced as its rows become final.

The draft (stitch.create_draft) takes each tile's core as soon as the tile is done. The mask's
rows come in bands, one per row of tiles (their cores' rows); a band is final once every tile
of it is written and, for a scene with an overview, the overview's large slicks are in (they
are ORed into the cores written before the overview came, and into every core after it). A
final band is counted (valid and oil pixels) and its slicks traced (polygons.SlickTracer) at
once, in order from the top, in the draft's own thread: the worker's thread that made it
final goes back to the ML calls at once (tracing a band of a wide scene takes a few tenths
of a second, GDAL's polygoniser holding Python's lock), and when the last tile comes, only
its band is left: the stitch is little more than the COG's copy.

Thread-safe: tiles are written from the worker's threads at once. Memory depends on one
tile, one block of TRACE_ROWS rows and the slicks still open, never on the scene.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.windows import Window

from ..masks import OIL_LEVEL
from . import GDAL_OPTIONS
from .confidence import RECORD, core_records, write_records
from .polygons import PixelSlick, SlickTracer
from .stitch import (
    NODATA,
    OIL,
    MaskStats,
    add_large,
    large_components,
    read_mask,
    tile_core,
    upsample,
)
from .tiles import Tile

logger = logging.getLogger(__name__)

TRACE_ROWS = 256  # rows read and polygonised at once: GDAL's polygoniser holds the GIL
# for a block, so a block stays short enough not to stall the event loop.


class Draft:
    """The stitched mask of one scene being built; see the module docstring.

    path: the draft file, already created. tiles: the scene's tile grid, whose cores
    partition it. valid(window): the scene's valid area. overview: whether the scene has an
    overview unit, whose large slicks (large_px and over, see stitch.py) must be in before
    any row is final. max_slicks: the most slicks outlined (SlickTracer; all are counted).
    records(tile index): where a tile's confidence records go (geo/confidence.py).
    """

    def __init__(self, path: Path, width: int, height: int, tiles: Sequence[Tile],
                 valid: Callable[[Window], np.ndarray], *, overview: bool,
                 large_px: int, max_slicks: int | None = None,
                 records: Callable[[int], Path] | None = None) -> None:
        self.path, self.width, self.height = path, width, height
        self._valid = valid
        self._large_px = large_px
        self._large: npt.NDArray[np.bool_] | None = None
        self._awaiting_overview = overview
        self._lock = threading.Lock()  # the file and the fields below
        self._tiles = {tile.index: tile for tile in tiles}
        self.written: set[int] = set()  # tiles whose cores are in
        # Bands by their first row: (rows, tiles not yet written).
        self._bands: dict[int, tuple[int, set[int]]] = {}
        for tile in tiles:
            rows, waiting = self._bands.setdefault(tile.core_row, (tile.core_height, set()))
            if rows != tile.core_height:
                raise ValueError(f"tile {tile.index}: its core is not in a band of rows")
            waiting.add(tile.index)
        self._max_slicks = max_slicks
        self._records = records
        self._tracer = SlickTracer(max_slicks=max_slicks)
        self._traced_to = 0  # rows above this are counted and traced
        self._stale = False  # a traced row was written again: trace afresh at the end
        self._valid_pixels = self._oil_pixels = 0
        self._dataset: Any = None  # the draft, open for update while tiles come
        self._background: ThreadPoolExecutor | None = None  # traces final bands
        self._traces: list[Future[None]] = []
        self._stopped = False  # the scene ended early: nothing more is written or traced

    def _open(self) -> Any:
        """The draft open for update (the caller holds _lock): one handle for every read and
        write, so that reads see the blocks still in GDAL's cache."""
        if self._dataset is None:
            with rasterio.Env(**GDAL_OPTIONS):
                self._dataset = rasterio.open(self.path, "r+")
        return self._dataset

    def close(self) -> None:
        """Flush and close the draft (reopened if written again)."""
        with self._lock:
            if self._dataset is not None:
                with rasterio.Env(**GDAL_OPTIONS):
                    self._dataset.close()
                self._dataset = None

    def write(self, tile: Tile, mask: Path | np.ndarray, confidence: str | None = None) -> None:
        """Put a done tile's core (from its mask file or decoded band) into the draft, keep
        its confidence records (`confidence`: the text its mask keeps), then count and trace
        whatever rows that made final. Raises what tracing a band in the background raised
        (the scene fails at once, not after its last tile)."""
        self._raise_failed()
        if self._stopped:
            return  # the scene ended: a process taking it up again rebuilds the draft
        if self._records is not None:
            self._keep_records(tile, mask, confidence)
        # A tile of another grid (a restart with other tile settings) is written all the
        # same, but bands are then traced afresh at the end.
        foreign = self._tiles.get(tile.index) != tile
        large = self._large
        core = tile_core(tile, mask, self.width, self.height, self._valid, large)
        with self._lock:
            if self._large is not None and large is None:  # the overview came meanwhile
                core[upsample(self._large, tile.core_window, self.width, self.height)
                     & (core != NODATA)] = OIL
            with rasterio.Env(**GDAL_OPTIONS):
                self._open().write(core, 1, window=tile.core_window)
            self.written.add(tile.index)
            band = self._bands.get(tile.core_row)
            if foreign or band is None:  # band None: traced or being traced, written again
                self._stale = True
            else:
                band[1].discard(tile.index)
        self._trace_later()

    def _keep_records(self, tile: Tile, mask: Path | np.ndarray, text: str | None) -> None:
        assert self._records is not None
        records = np.zeros(0, RECORD)
        if text is not None:
            band = mask if isinstance(mask, np.ndarray) else read_mask(
                mask, (tile.height, tile.width))
            inner = tile.core_in_tile
            records = core_records(
                band, text, (int(inner.row_off), int(inner.col_off), int(inner.height),
                             int(inner.width)), (tile.core_row, tile.core_col),
                np.asarray(self._valid(tile.core_window), bool), self._max_slicks)
        write_records(self._records(tile.index), records)

    def add_overview(self, mask_png: Path) -> None:
        """Take the overview's mask: its large slicks go into the cores already written and
        every core written after; then count and trace what became final."""
        large = large_components(mask_png, self.width, self.height, self._large_px)
        with self._lock:
            if self._large is None:
                with rasterio.Env(**GDAL_OPTIONS):
                    add_large(self._open(), large,
                              [self._tiles[i].core_window for i in self.written])
                self._large = large
                self._awaiting_overview = False
        self._trace_later()

    @property
    def awaiting_overview(self) -> bool:
        """True while the scene's overview is expected and not added."""
        return self._awaiting_overview

    def _trace_later(self) -> None:
        """Have the draft's own thread trace the bands now final (see the module docstring)."""
        if self._next_final(peek=True) is None:
            return
        with self._lock:
            if self._stopped:
                return
            if self._background is None:
                self._background = ThreadPoolExecutor(1, thread_name_prefix="oilspill-trace")
            # Done ones are dropped; a failed one is kept for finish() to raise.
            self._traces = [f for f in self._traces if not f.done() or f.exception()]
            self._traces.append(self._background.submit(self.trace_final))

    def _take_thread(self) -> tuple[ThreadPoolExecutor | None, list[Future[None]]]:
        """The draft's thread and what it was given, taken from the draft (a later band
        starts a new thread, unless the draft is stopped)."""
        with self._lock:
            taken = self._background, self._traces
            self._background, self._traces = None, []
        return taken

    def _drain(self) -> None:
        """Wait for the bands handed to the draft's thread; raise what tracing one raised."""
        background, traces = self._take_thread()
        if background is not None:
            background.shutdown(wait=True)
        for trace in traces:
            trace.result()

    def _raise_failed(self) -> None:
        with self._lock:
            failed = next((f for f in self._traces if f.done() and not f.cancelled()
                           and f.exception() is not None), None)
        if failed is not None:
            failed.result()

    def stop(self) -> None:
        """The scene ended early (it failed, or the worker stops): stop tracing (the block
        being traced is the last), write nothing more, and close the draft once its thread
        is done. Returns at once."""
        with self._lock:
            self._stopped = True
        background, traces = self._take_thread()
        if background is not None:
            background.shutdown(wait=False, cancel_futures=True)
        running = [trace for trace in traces if not trace.done()]
        if not running:
            self.close()
            return
        for trace in running:  # one at most: the draft's thread runs one at a time
            trace.add_done_callback(self._after_stop)

    def _after_stop(self, trace: Future[None]) -> None:
        if not trace.cancelled() and (exc := trace.exception()) is not None:
            logger.warning("tracing a band of an ended scene's draft %s failed: %s",
                           self.path.name, exc)
        self.close()

    def trace_final(self) -> None:
        """Count and trace the final bands not yet traced, in order. Only the draft's own
        thread runs it (one job at a time), and finish() waits for that thread first: no
        two threads ever trace at once."""
        while not self._stopped and (band := self._next_final()) is not None:
            self._trace(*band)

    def finish(self) -> tuple[MaskStats, list[PixelSlick]]:
        """The mask's statistics and slicks, once the caller has written every tile and
        added the overview if there is one: only the rows not traced yet are read. The draft
        is then closed, whole on disk. RuntimeError for a draft stopped (see stop)."""
        if self._stopped:
            raise RuntimeError("the draft was stopped: its scene ended before its stitch")
        self._drain()
        with self._lock:
            self._awaiting_overview = False  # none came: the scene has none
            if self._stale:
                self._tracer = SlickTracer(max_slicks=self._max_slicks)
                self._traced_to = 0
                self._valid_pixels = self._oil_pixels = 0
                self._stale = False
        self._trace(self._traced_to, self.height - self._traced_to)
        self.close()
        slicks = self._tracer.finish()
        valid, oil = self._valid_pixels, self._oil_pixels
        return MaskStats(width=self.width, height=self.height, valid_pixels=valid,
                         oil_pixels=oil, oil_fraction=oil / valid if valid else 0.0,
                         slick_count=self._tracer.count,
                         largest_slick_px=self._tracer.largest), slicks

    def _next_final(self, peek: bool = False) -> tuple[int, int] | None:
        """(first row, rows) of the next band to trace if it is final."""
        with self._lock:
            band = self._bands.get(self._traced_to)
            if band is None or band[1] or self._awaiting_overview:
                return None
            if not peek:
                self._bands.pop(self._traced_to)
            return self._traced_to, band[0]

    def _trace(self, top: int, rows: int) -> None:
        """Count and trace rows top .. top + rows - 1 (the draft's thread, or finish())."""
        for start in range(top, top + rows, TRACE_ROWS):
            if self._stopped:
                return
            window = Window(0, start, self.width, min(TRACE_ROWS, top + rows - start))
            with self._lock, rasterio.Env(**GDAL_OPTIONS):
                band = self._open().read(1, window=window)
            inside = band != NODATA
            oil = band >= OIL_LEVEL
            oil &= inside
            self._valid_pixels += int(np.count_nonzero(inside))
            self._oil_pixels += int(np.count_nonzero(oil))
            del band, inside
            self._tracer.add(oil, start)
        with self._lock:
            self._traced_to = top + rows
