"""Tiling a scene: read windows, nearest-centre cores that partition it, the overview size."""

from __future__ import annotations

from itertools import pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from oilspill.geo.tiles import Tile, overview_shape, tile_grid


@st.composite
def grids(draw: st.DrawFn) -> tuple[int, int, int, int]:
    """(width, height, tile_px, overlap_px), with at most a few hundred tiles."""
    tile_px = draw(st.integers(8, 256))
    overlap_px = draw(st.integers(0, tile_px // 2))
    width = draw(st.integers(1, 700))
    height = draw(st.integers(1, 700))
    return width, height, tile_px, overlap_px


def _starts(tiles: list[Tile], axis: str) -> list[tuple[int, int, int, int]]:
    """(start, size, core_start, core_size) of the distinct tiles along one axis."""
    if axis == "col":
        return sorted({(t.col, t.width, t.core_col, t.core_width) for t in tiles})
    return sorted({(t.row, t.height, t.core_row, t.core_height) for t in tiles})


def test_a_scene_that_fits_is_one_tile() -> None:
    for width, height in ((1, 1), (100, 64), (128, 128), (37, 128)):
        assert tile_grid(width, height, 128, 16) == [
            Tile(0, 0, 0, width, height, 0, 0, width, height)]


def test_a_long_strip_is_tiled_along_its_length_only() -> None:
    tiles = tile_grid(1000, 50, 128, 16)
    assert len(tiles) > 1
    assert all((t.row, t.height, t.core_row, t.core_height) == (0, 50, 0, 50) for t in tiles)
    assert all(t.width == 128 for t in tiles)


def test_the_last_tile_is_moved_back_to_end_at_the_edge() -> None:
    tiles = tile_grid(517, 300, 128, 16)
    cols = _starts(tiles, "col")
    assert [c[0] for c in cols] == [0, 112, 224, 336, 517 - 128]
    assert [c[0] for c in _starts(tiles, "row")] == [0, 112, 300 - 128]
    assert [t.index for t in tiles] == list(range(15))
    assert (tiles[6].col, tiles[6].row) == (112, 112)  # row-major: row 1, column 1


@settings(max_examples=80, deadline=None)
@given(grids())
def test_cores_partition_the_scene(grid: tuple[int, int, int, int]) -> None:
    width, height, tile_px, overlap_px = grid
    tiles = tile_grid(width, height, tile_px, overlap_px)
    cover = np.zeros((height, width), np.int32)
    for tile in tiles:
        assert tile.col <= tile.core_col and tile.row <= tile.core_row
        assert tile.core_col + tile.core_width <= tile.col + tile.width <= width
        assert tile.core_row + tile.core_height <= tile.row + tile.height <= height
        assert tile.core_width >= 1 and tile.core_height >= 1
        cover[tile.core_row:tile.core_row + tile.core_height,
              tile.core_col:tile.core_col + tile.core_width] += 1
    assert (cover == 1).all()
    assert [t.index for t in tiles] == list(range(len(tiles)))
    assert tiles == sorted(tiles, key=lambda t: (t.row, t.col))


@settings(max_examples=150, deadline=None)
@given(grids())
def test_tiles_are_full_size_overlap_and_own_what_is_nearest(
        grid: tuple[int, int, int, int]) -> None:
    width, height, tile_px, overlap_px = grid
    tiles = tile_grid(width, height, tile_px, overlap_px)
    for axis, length in (("col", width), ("row", height)):
        spans = _starts(tiles, axis)
        assert all(size == min(tile_px, length) for _, size, _, _ in spans)
        assert spans[0][0] == 0 and spans[-1][0] + spans[-1][1] == length
        for (a, size, core_a, core_size), (b, _, core_b, _) in pairwise(spans):
            assert a + size - b >= overlap_px  # overlap
            boundary = core_a + core_size
            assert boundary == core_b
            centre_a, centre_b = a + size / 2, b + size / 2
            # The last pixel of a core is no nearer the next centre, the first of the next
            # core no nearer the previous one (pixel centres at + 0.5).
            last, first = boundary - 0.5, boundary + 0.5
            assert abs(last - centre_a) <= abs(last - centre_b)
            assert abs(first - centre_b) <= abs(first - centre_a)


def test_bad_arguments_are_refused() -> None:
    for args in ((0, 10, 8, 0), (10, 10, 0, 0), (10, 10, 8, 8), (10, 10, 8, -1)):
        with pytest.raises(ValueError):
            tile_grid(*args)


def test_overview_shape() -> None:
    assert overview_shape(26569, 16673, 1024) == (1024, 643)
    assert overview_shape(300, 517, 64) == (37, 64)
    assert overview_shape(100, 50, 128) == (100, 50)  # never scaled up
    assert overview_shape(100000, 1, 64) == (64, 1)
