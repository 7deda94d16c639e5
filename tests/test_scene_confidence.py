"""A scene's per-slick confidence (geo/confidence.py): from each tile's kept confidence, through
the stitched draft, to each traced slick.

The tiles here each answer the true slicks (so the stitched mask is the truth) with one
confidence per tile, given per pixel as an OIP model gives it and kept as oip_client keeps
it. The expected mean of a slick is then the share of its pixels whose core lies in each
tile, times that tile's value: computed from the tile grid, independently of the records.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from scipy import ndimage

from oilspill.geo.confidence import core_records, slick_confidence
from oilspill.geo.draft import Draft
from oilspill.geo.stitch import create_draft
from oilspill.geo.tiles import tile_grid
from oilspill.oip_client import confidence_text, kept_confidence, mask_png

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

WIDTH, HEIGHT, TILE, OVERLAP = 620, 500, 256, 32
EIGHT = np.ones((3, 3), bool)


def truth() -> np.ndarray:
    """A long diagonal band through many tiles' cores, a blob inside one core, and a slick
    with a hole across a core boundary; sizes all different."""
    oil = np.zeros((HEIGHT, WIDTH), bool)
    for row in range(30, 470):
        col = 40 + int(row * 1.1)
        oil[row, col:col + 9] = True
    oil[60:90, 400:441] = True
    oil[300:360, 200:262] = True
    oil[315:345, 215:247] = False
    return oil


def tile_value(index: int) -> float:
    return round(0.05 + 0.9 * ((index * 37) % 11) / 10, 6)


def run_draft(tmp_path: Path, oil: np.ndarray, text_for: dict[int, str | None],
              again: dict[int, str | None] | None = None
              ) -> tuple[list[Any], dict[int, float], np.ndarray]:
    """Write every tile's answer (the truth over its window) with its kept confidence through a
    Draft (the tiles of `again` a second time, with that text); returns the traced slicks,
    their confidence and each pixel's owning tile."""
    tiles = tile_grid(WIDTH, HEIGHT, TILE, OVERLAP)
    tmp_path.mkdir(exist_ok=True)
    draft_path = tmp_path / "draft.tif"
    create_draft(draft_path, WIDTH, HEIGHT, None)
    records = tmp_path / "records"
    records.mkdir()
    draft = Draft(draft_path, WIDTH, HEIGHT, tiles, lambda w: np.ones(
        (int(w.height), int(w.width)), bool), overview=False, large_px=TILE // 2,
        records=lambda idx: records / f"{idx}.conf")
    owner = np.full((HEIGHT, WIDTH), -1)
    for tile in tiles:
        band = oil[tile.row:tile.row + tile.height, tile.col:tile.col + tile.width]
        band = band.astype(np.uint8) * np.uint8(255)
        png = mask_png(band, text_for.get(tile.index))
        draft.write(tile, band, kept_confidence(png))  # as keep_unit_mask reads it back
        owner[tile.core_row:tile.core_row + tile.core_height,
              tile.core_col:tile.core_col + tile.core_width] = tile.index
    for tile in tiles:
        if again is not None and tile.index in again:
            band = oil[tile.row:tile.row + tile.height, tile.col:tile.col + tile.width]
            band = band.astype(np.uint8) * np.uint8(255)
            draft.write(tile, band, kept_confidence(mask_png(band, again[tile.index])))
    _, slicks = draft.finish()
    files = sorted(records.iterdir())
    return slicks, slick_confidence(files, slicks), owner


def per_pixel_text(index: int, value: float) -> str | None:
    tiles = {t.index: t for t in tile_grid(WIDTH, HEIGHT, TILE, OVERLAP)}
    tile = tiles[index]
    band = truth()[tile.row:tile.row + tile.height, tile.col:tile.col + tile.width]
    return confidence_text([value] * band.size, band.astype(np.uint8) * np.uint8(255))


def components(oil: np.ndarray) -> list[np.ndarray]:
    labels, count = ndimage.label(oil, structure=EIGHT)
    return [labels == n for n in range(1, count + 1)]


def test_each_slick_gets_the_pixel_weighted_mean_of_its_tiles(tmp_path: Path) -> None:
    oil = truth()
    tiles = tile_grid(WIDTH, HEIGHT, TILE, OVERLAP)
    texts = {t.index: per_pixel_text(t.index, tile_value(t.index)) for t in tiles}
    slicks, found, owner = run_draft(tmp_path, oil, texts)
    values = np.vectorize(tile_value)(owner)
    by_size = {int(c.sum()): c for c in components(oil)}
    assert len(slicks) == len(by_size) == 3
    band_tiles = set()
    for slick in slicks:
        pixels = by_size[slick.pixels]
        assert found[slick.slick_id] == pytest.approx(values[pixels].mean(), abs=1e-9)
        band_tiles |= set(np.unique(owner[pixels]).tolist())
    assert len(band_tiles) >= 5  # the band crosses many cores of different values
    # Not the plain mean of its tiles' values: weighted by the pixels in each core.
    band = by_size[max(by_size)]
    shares = [tile_value(t) for t in np.unique(owner[band])]
    assert found[slicks[0].slick_id] != pytest.approx(float(np.mean(shares)), abs=1e-3)


def test_a_slick_only_partly_answered_with_confidence_averages_what_it_has(tmp_path: Path
                                                                            ) -> None:
    """Tiles without a usable confidence (none kept, per-image values, garbled text) add no
    pixels; a slick none of whose tiles has one stays without (null in the GeoJSON)."""
    oil = truth()
    tiles = tile_grid(WIDTH, HEIGHT, TILE, OVERLAP)
    texts: dict[int, str | None] = {}
    for tile in tiles:
        if tile.index % 3 == 0:
            texts[tile.index] = per_pixel_text(tile.index, tile_value(tile.index))
        elif tile.index % 3 == 1:
            texts[tile.index] = '{"values": [0.5]}'
        else:
            texts[tile.index] = '{"slicks": [{"row": "x"}]}'
    slicks, found, owner = run_draft(tmp_path, oil, texts)
    with_text = np.isin(owner, [t.index for t in tiles if t.index % 3 == 0])
    values = np.vectorize(tile_value)(owner)
    by_size = {int(c.sum()): c for c in components(oil)}
    for slick in slicks:
        pixels = by_size[slick.pixels] & with_text
        if pixels.any():
            assert found[slick.slick_id] == pytest.approx(values[pixels].mean(), abs=1e-9)
        else:
            assert slick.slick_id not in found
    nothing, none_found, _ = run_draft(tmp_path / "none", oil, {})
    assert nothing and none_found == {}


def test_core_records_name_pieces_inside_the_valid_area_in_scene_pixels() -> None:
    """One tile: two of its slicks reach into its core, one is cut in two by the invalid
    area; records hold each piece's first scene pixel, its sum and count."""
    mask = np.zeros((40, 50), np.uint8)
    mask[5:15, 5:45] = 255  # slick A, mean 0.8
    mask[25:35, 10:20] = 255  # slick B, mean 0.3
    values = np.zeros(mask.shape)
    values[5:15, 5:45] = 0.8
    values[25:35, 10:20] = 0.3
    text = confidence_text(values.ravel().tolist(), mask)
    inside = np.ones((30, 40), bool)
    inside[:, 20:22] = False  # cuts slick A's core part in two
    records = core_records(mask, text, (5, 5, 30, 40), (1000, 2000), inside)
    got = sorted((int(r["row"]), int(r["col"]), round(float(r["sum"]), 6), int(r["count"]))
                 for r in records)
    # Core rows 5..34, cols 5..44 of the tile = scene rows 1000.., cols 2000..
    # A: tile cols 5..24 and 27..44 (core cols 20 and 21 invalid), 10 rows each.
    assert got == [(1000, 2000, round(0.8 * 10 * 20, 6), 200),
                   (1000, 2022, round(0.8 * 10 * 18, 6), 180),
                   (1020, 2005, round(0.3 * 100, 6), 100)]
    assert core_records(mask, None, (5, 5, 30, 40), (0, 0), None).size == 0


def test_a_tile_written_again_counts_with_its_last_answer_only(tmp_path: Path) -> None:
    oil = truth()
    tiles = tile_grid(WIDTH, HEIGHT, TILE, OVERLAP)
    first = {t.index: per_pixel_text(t.index, 0.9) for t in tiles}
    last = {t.index: per_pixel_text(t.index, 0.2) for t in tiles if t.index % 2 == 0}
    last.update({t.index: None for t in tiles if t.index % 2 == 1})  # its records go
    slicks, found, owner = run_draft(tmp_path, oil, first, again=last)
    by_size = {int(c.sum()): c for c in components(oil)}
    for slick in slicks:
        pixels = by_size[slick.pixels] & (owner % 2 == 0)
        if pixels.any():
            assert found[slick.slick_id] == pytest.approx(0.2)
        else:
            assert slick.slick_id not in found
    with rasterio.open(tmp_path / "draft.tif") as src:
        assert ((src.read(1) == 255) == oil).all()


def test_a_tile_or_core_wholly_oil_keeps_its_confidence() -> None:
    """A dark patch covering a whole tile (low wind: a common false positive) is one slick
    with no sea pixel: its confidence is kept, and its core's record made."""
    mask = np.full((20, 30), 255, np.uint8)
    text = confidence_text([0.25] * mask.size, mask)
    assert text == '{"slicks":[{"row":0,"col":0,"confidence":0.25}]}'
    mask[0, 0] = 0  # sea only outside the core
    text = confidence_text([0.5] * mask.size, mask)
    records = core_records(mask, text, (2, 3, 10, 12), (100, 200), None)
    assert [(int(r["row"]), int(r["col"]), float(r["sum"]), int(r["count"]))
            for r in records] == [(100, 200, 60.0, 120)]


def test_a_cores_records_are_at_most_the_largest_pieces() -> None:
    """Speckle with a confidence makes a piece per speck: a core keeps the records of its
    `most` largest pieces."""
    rng = np.random.default_rng(5)
    mask = np.where(rng.random((64, 64)) < 0.05, 255, 0).astype(np.uint8)
    mask[10:20, 10:30] = 255
    text = confidence_text([0.7] * mask.size, mask)
    every = core_records(mask, text, (0, 0, 64, 64), (0, 0), None)
    kept = core_records(mask, text, (0, 0, 64, 64), (0, 0), None, most=5)
    assert every.size > 50 and kept.size == 5
    assert sorted(kept["count"].tolist()) == sorted(every["count"].tolist())[-5:]
    assert int(kept["count"].max()) >= 200  # the block of 10 x 20
