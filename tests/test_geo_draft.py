"""The stitched mask built while tiles arrive: whatever the order the tiles and the overview
come in, and from however many threads, the draft, its statistics and its slicks are those
of the mask stitched in one go after the last tile."""

from __future__ import annotations

import random
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window

from oilspill.geo import draft as draft_module
from oilspill.geo.draft import Draft
from oilspill.geo.polygons import slick_polygons
from oilspill.geo.stitch import create_draft, mask_stats, stitch_mask
from oilspill.geo.tiles import overview_shape, tile_grid

from .test_geo_polygons import near
from .test_geo_stitch import HEIGHT, UTM, WIDTH, read_band, truth_mask, write_png, write_tiles

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

TILE_PX, OVERLAP_PX, LARGE_PX = 128, 16, 64


def valid(window: Window) -> np.ndarray:
    """A ragged border: the first columns of each row are not sea."""
    rows = np.arange(window.row_off, window.row_off + window.height)
    cols = np.arange(window.col_off, window.col_off + window.width)
    return cols[None, :] >= (rows % 23)[:, None]


def overview_png(folder: Path, truth: np.ndarray) -> Path:
    """The whole mask brought down to one tile (nearest), as the overview unit answers."""
    width, height = overview_shape(WIDTH, HEIGHT, TILE_PX)
    rows = (np.arange(height) + 0.5) * HEIGHT / height
    cols = (np.arange(width) + 0.5) * WIDTH / width
    return write_png(folder / "overview.png",
                     np.ascontiguousarray(truth[rows.astype(int)][:, cols.astype(int)]))


@pytest.fixture
def batch(tmp_path: Path) -> tuple[Path, list, Path]:  # type: ignore[type-arg]
    truth = truth_mask()
    tiles = write_tiles(tmp_path, truth, TILE_PX, OVERLAP_PX)
    overview = overview_png(tmp_path, truth)
    return tmp_path, tiles, overview


def stitched_in_one_go(folder: Path, tiles: list, overview: Path) -> Path:  # type: ignore[type-arg]
    out = folder / "batch.tif"
    stitch_mask(out, WIDTH, HEIGHT, tiles, valid, UTM, overview=overview, large_px=LARGE_PX)
    return out


@pytest.mark.parametrize("overview_at", [0, 5, 1000])  # first, after five tiles, last
@pytest.mark.parametrize("seed", [1, 2])
def test_tiles_in_any_order_give_the_mask_stitched_in_one_go(
        batch: tuple[Path, list, Path], overview_at: int, seed: int,  # type: ignore[type-arg]
        monkeypatch: pytest.MonkeyPatch) -> None:
    folder, tiles, overview = batch
    monkeypatch.setattr(draft_module, "TRACE_ROWS", 37)  # bands traced in several blocks
    expected = stitched_in_one_go(folder, tiles, overview)
    path = folder / "draft.tif"
    create_draft(path, WIDTH, HEIGHT, UTM)
    draft = Draft(path, WIDTH, HEIGHT, [t for t, _ in tiles], valid, overview=True,
                  large_px=LARGE_PX)
    order = list(tiles)
    random.Random(seed).shuffle(order)
    for n, (tile, png) in enumerate(order):
        if n == overview_at:
            draft.add_overview(overview)
        # Half the tiles as decoded bands (an answer in memory), half as files.
        draft.write(tile, read_band(png) if n % 2 else png)
    if draft.awaiting_overview:
        draft.add_overview(overview)
    stats, slicks = draft.finish()
    np.testing.assert_array_equal(read_band(path), read_band(expected))
    assert stats == mask_stats(expected)
    # The same slicks; their outlines, simplified where other blocks cut them, within two
    # pixels of the pixel outlines (as in test_geo_polygons).
    raw = slick_polygons(expected, simplify_px=0)
    assert [s.pixels for s in slicks] == [s.pixels for s in raw]
    for slick, pixels in zip(slicks, raw, strict=True):
        assert slick.polygon.is_valid and near(slick.polygon, pixels.polygon)


def test_rows_are_traced_as_soon_as_their_band_is_final(
        batch: tuple[Path, list, Path]) -> None:  # type: ignore[type-arg]
    folder, tiles, overview = batch
    path = folder / "draft.tif"
    create_draft(path, WIDTH, HEIGHT, UTM)
    draft = Draft(path, WIDTH, HEIGHT, [t for t, _ in tiles], valid, overview=True,
                  large_px=LARGE_PX)
    first_band = [(t, p) for t, p in tiles if t.core_row == 0]
    for tile, png in first_band:
        draft.write(tile, png)
    draft._drain()  # what the draft's own thread was given is traced
    assert draft._traced_to == 0  # not before the overview's large slicks are in
    draft.add_overview(overview)
    draft._drain()
    assert draft._traced_to == first_band[0][0].core_height
    for tile, png in tiles[len(first_band):]:
        draft.write(tile, png)
    draft._drain()
    assert draft._traced_to == HEIGHT  # the last tile made every band final
    stats, _ = draft.finish()
    assert stats == mask_stats(stitched_in_one_go(folder, tiles, overview))


def test_threads_writing_at_once_and_a_tile_written_twice(
        batch: tuple[Path, list, Path]) -> None:  # type: ignore[type-arg]
    folder, tiles, overview = batch
    expected = stitched_in_one_go(folder, tiles, overview)
    path = folder / "draft.tif"
    create_draft(path, WIDTH, HEIGHT, UTM)
    draft = Draft(path, WIDTH, HEIGHT, [t for t, _ in tiles], valid, overview=True,
                  large_px=LARGE_PX)
    draft.add_overview(overview)
    errors: list[BaseException] = []

    def write(part: list) -> None:  # type: ignore[type-arg]
        try:
            for tile, png in part:
                draft.write(tile, png)
        except BaseException as exc:  # reported by the test
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(tiles[i::4],)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    # A retried tile rewrites rows already traced: they are traced afresh at the end.
    draft.write(*tiles[0])
    stats, slicks = draft.finish()
    np.testing.assert_array_equal(read_band(path), read_band(expected))
    assert stats == mask_stats(expected)
    assert [s.pixels for s in slicks] == [s.pixels for s in slick_polygons(expected)]


def test_a_tile_of_another_grid_is_stitched_all_the_same(tmp_path: Path) -> None:
    # A restart with another OILSPILL_TILE_PX: the units keep their windows, not the grid.
    truth = truth_mask()
    tiles = write_tiles(tmp_path, truth, TILE_PX, OVERLAP_PX, noise=False)
    path = tmp_path / "draft.tif"
    create_draft(path, WIDTH, HEIGHT, UTM)
    other_grid = tile_grid(WIDTH, HEIGHT, 2 * TILE_PX, OVERLAP_PX)
    draft = Draft(path, WIDTH, HEIGHT, other_grid, valid, overview=False, large_px=LARGE_PX)
    for tile, png in tiles:
        draft.write(tile, png)
    stats, _ = draft.finish()
    expected = tmp_path / "batch.tif"
    stitch_mask(expected, WIDTH, HEIGHT, tiles, valid, UTM)
    assert stats == mask_stats(expected)
    with rasterio.open(path) as src:
        assert src.crs == rasterio.crs.CRS.from_epsg(32633)


def tracing_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name.startswith("oilspill-trace")]


def test_a_stopped_draft_stops_tracing_writes_nothing_and_closes(
        batch: tuple[Path, list, Path], monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    """A scene that ends early (failed, or the worker stops) stops its draft: the band
    being traced stops at its block, no band is started, a tile written later is not
    written (and starts no thread), the draft's file is closed; finishing it is refused."""
    folder, tiles, overview = batch
    path = folder / "draft.tif"
    create_draft(path, WIDTH, HEIGHT, UTM)
    draft = Draft(path, WIDTH, HEIGHT, [t for t, _ in tiles], valid, overview=True,
                  large_px=LARGE_PX)
    blocks: list[int] = []
    started, proceed = threading.Event(), threading.Event()
    add = draft._tracer.add

    def slow_add(oil: np.ndarray, top: int) -> None:  # the first block waits for the test
        blocks.append(top)
        started.set()
        proceed.wait(10)
        add(oil, top)

    monkeypatch.setattr(draft._tracer, "add", slow_add)
    others = set(tracing_threads())  # other tests' drafts, never finished
    draft.add_overview(overview)
    last = tiles[-1]
    for tile, png in tiles[:-1]:  # every band but the last becomes final
        draft.write(tile, png)
    assert started.wait(10)
    draft.stop()
    proceed.set()
    deadline = time.monotonic() + 10
    while set(tracing_threads()) - others or draft._dataset is not None:
        assert time.monotonic() < deadline, "the draft's thread or file is still there"
        time.sleep(0.01)
    assert blocks == [0]  # the block being traced was the last
    before = read_band(path)
    draft.write(*last)
    assert not set(tracing_threads()) - others and draft._dataset is None
    np.testing.assert_array_equal(read_band(path), before)
    with pytest.raises(RuntimeError, match="stopped"):
        draft.finish()


def test_a_band_that_fails_to_trace_fails_the_next_write_and_the_finish(
        batch: tuple[Path, list, Path], monkeypatch: pytest.MonkeyPatch) -> None:  # type: ignore[type-arg]
    folder, tiles, overview = batch
    path = folder / "draft.tif"
    create_draft(path, WIDTH, HEIGHT, UTM)
    draft = Draft(path, WIDTH, HEIGHT, [t for t, _ in tiles], valid, overview=True,
                  large_px=LARGE_PX)

    def broken(oil: np.ndarray, top: int) -> None:
        raise OSError("the disk went away")

    monkeypatch.setattr(draft._tracer, "add", broken)
    draft.add_overview(overview)
    first = [(t, p) for t, p in tiles if t.core_row == 0]
    for tile, png in first:
        draft.write(tile, png)
    deadline = time.monotonic() + 10
    with pytest.raises(OSError, match="went away"):  # a later write raises it at once
        for tile, png in tiles[len(first):]:
            draft.write(tile, png)
            assert time.monotonic() < deadline
            time.sleep(0.05)
    with pytest.raises(OSError, match="went away"):
        draft.finish()
