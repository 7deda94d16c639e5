"""Cutting a scene into the overlapping tiles sent to the ML service.

Each tile has a read window (what the service sees, tile_px x tile_px at most) and a core
window (the pixels whose answer is taken from this tile). Along each axis the boundary
between two cores sits midway between the two tile centres, so every pixel is owned by the
tile whose centre is nearest, i.e. the one that saw it with the most context around it, and
the cores partition the scene exactly. With an overlap of overlap_px, every core pixel is at
least about overlap_px / 2 from the edge of its read window (except at the scene's edges).

Pure functions: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from itertools import pairwise

from rasterio.windows import Window


@dataclass(frozen=True)
class Tile:
    """One tile of a scene; all values in scene pixels, origin at the top-left corner.

    index: position in row-major order, from 0. col, row, width, height: the read window,
    the pixels sent to the ML service (its mask has this size). core_col, core_row,
    core_width, core_height: the core window, inside the read window, the pixels this tile
    owns in the stitched mask.
    """

    index: int
    col: int
    row: int
    width: int
    height: int
    core_col: int
    core_row: int
    core_width: int
    core_height: int

    @property
    def read_window(self) -> Window:
        """The read window as a rasterio Window over the scene."""
        return Window(self.col, self.row, self.width, self.height)

    @property
    def core_window(self) -> Window:
        """The core window as a rasterio Window over the scene."""
        return Window(self.core_col, self.core_row, self.core_width, self.core_height)

    @property
    def core_in_tile(self) -> Window:
        """The core window as a rasterio Window over the tile's own mask."""
        return Window(self.core_col - self.col, self.core_row - self.row,
                      self.core_width, self.core_height)


def _axis(length: int, tile_px: int, overlap_px: int) -> list[tuple[int, int, int, int]]:
    """(start, size, core_start, core_size) of the tiles along one axis."""
    if length <= tile_px:
        return [(0, length, 0, length)]
    stride = tile_px - overlap_px
    count = -(-(length - tile_px) // stride) + 1  # ceil
    # The last tile is moved back to end at the edge: it is never cut short, and its
    # overlap with the one before only grows.
    starts = [i * stride for i in range(count - 1)] + [length - tile_px]
    # Midway between consecutive centres (start + tile_px / 2); floor keeps it an integer,
    # and it stays inside both read windows because consecutive starts differ by < tile_px.
    bounds = [0] + [(a + b + tile_px) // 2 for a, b in pairwise(starts)]
    bounds.append(length)
    return [(start, tile_px, bounds[i], bounds[i + 1] - bounds[i])
            for i, start in enumerate(starts)]


def tile_grid(width: int, height: int, tile_px: int, overlap_px: int) -> list[Tile]:
    """The tiles of a width x height scene, in row-major order; one tile if it fits whole."""
    if width < 1 or height < 1:
        raise ValueError(f"scene of {width}x{height} pixels has no pixels")
    if tile_px < 1 or not 0 <= overlap_px < tile_px:
        raise ValueError(f"need tile_px >= 1 and 0 <= overlap_px < tile_px, "
                         f"got tile_px={tile_px}, overlap_px={overlap_px}")
    columns = _axis(width, tile_px, overlap_px)
    rows = _axis(height, tile_px, overlap_px)
    return [
        Tile(index=r * len(columns) + c, col=col, row=row, width=w, height=h,
             core_col=core_col, core_row=core_row, core_width=core_w, core_height=core_h)
        for r, (row, h, core_row, core_h) in enumerate(rows)
        for c, (col, w, core_col, core_w) in enumerate(columns)
    ]


def overview_shape(width: int, height: int, tile_px: int) -> tuple[int, int]:
    """(width, height) of the whole scene scaled so its longest side is tile_px (never up)."""
    if width < 1 or height < 1 or tile_px < 1:
        raise ValueError(f"need a scene and tile_px >= 1, got {width}x{height}, {tile_px}")
    longest = max(width, height)
    if longest <= tile_px:
        return width, height
    return (max(1, round(width * tile_px / longest)), max(1, round(height * tile_px / longest)))
