"""The stub's detector on the backend's tiles: a tile's mask is the scene's mask there, a
slick wider than the background window is found whole, and holes are kept or filled by size.

Tiles are cut as the backend cuts them (1024 px, overlapping by 128) from a scene put on one
scene-wide 8-bit dB scale, and stitched back by nearest tile centre. Scenes come from
ml_stub.scenes (slicks, look-alikes, ships) and, for slicks of a chosen shape, from
ml_stub.geoscenes.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.windows import Window
from shapely.geometry import box

from ml_stub.detector import DetectorOptions, detect_array
from ml_stub.geoscenes import SlickSpec, write_scene
from ml_stub.scenes import make_scene

# Plain pixel scenes are not georeferenced on purpose.
pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

TILE_PX = 1024
OVERLAP_PX = 128


def to_grey(intensity: np.ndarray) -> np.ndarray:
    """The backend's scene-wide scale: dB stretched from the 1st to the 99th percentile."""
    db = 10 * np.log10(np.maximum(intensity, 1e-12))
    low, high = np.percentile(db, (1, 99))
    return np.clip((db - low) / (high - low) * 255, 0, 255).round().astype(np.uint8)


def tile_starts(size: int) -> list[int]:
    """Where tiles start along one axis: a regular step, the last tile flush with the end."""
    if size <= TILE_PX:
        return [0]
    return [*range(0, size - TILE_PX, TILE_PX - OVERLAP_PX), size - TILE_PX]


def seams(starts: list[int], size: int) -> list[int]:
    """Boundaries between the pixels nearest each tile's centre."""
    centres = [start + TILE_PX // 2 for start in starts]
    return [0, *((a + b) // 2 for a, b in itertools.pairwise(centres)), size]


def detect_tiled(grey: np.ndarray, options: DetectorOptions) -> np.ndarray:
    """The scene's mask made of its tiles' masks, each pixel from its nearest tile."""
    height, width = grey.shape
    rows, cols = tile_starts(height), tile_starts(width)
    row_seams, col_seams = seams(rows, height), seams(cols, width)
    out = np.zeros(grey.shape, bool)
    for i, top in enumerate(rows):
        for j, left in enumerate(cols):
            tile = grey[top:top + TILE_PX, left:left + TILE_PX].astype(np.float32)
            mask = detect_array(tile, options)
            y0, y1, x0, x1 = row_seams[i], row_seams[i + 1], col_seams[j], col_seams[j + 1]
            out[y0:y1, x0:x1] = mask[y0 - top:y1 - top, x0 - left:x1 - left]
    return out


def iou(mask: np.ndarray, truth: np.ndarray) -> float:
    union = (mask | truth).sum()
    return float((mask & truth).sum() / union) if union else 1.0


def scene_with(tmp_path: Path, size: int, slicks: list[SlickSpec], seed: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """A speckled sea of size x size with our own slicks, on the backend's grey scale, and
    its truth."""
    path = tmp_path / "scene.tif"
    truth = write_scene(path, size, size, dtype="float32", slicks=slicks, seed=seed)
    with rasterio.open(path) as src:
        grey = to_grey(src.read(1))
    return grey, truth.truth_window(Window(0, 0, size, size))


def disc(shape: tuple[int, int], centre: tuple[float, float], radius: float) -> np.ndarray:
    """Pixels within radius of centre (row, col)."""
    yy, xx = np.mgrid[0:shape[0], 0:shape[1]]
    return np.asarray(np.hypot(yy - centre[0], xx - centre[1]) <= radius)


@pytest.fixture(scope="module")
def scene():
    """A 2048 x 1536 scene (3 x 2 tiles) with three slicks, a look-alike and ships."""
    return make_scene(2048, 1536, seed=2, slicks=3, lookalikes=1, ships=4)


def test_tiles_give_the_whole_scenes_mask(scene):
    grey = to_grey(scene.intensity)
    options = DetectorOptions()
    whole = detect_array(grey.astype(np.float32), options)
    assert iou(whole, scene.truth) >= 0.9
    assert iou(detect_tiled(grey, options), whole) >= 0.95


def test_a_slick_filling_most_of_a_tile_is_found_on_that_tile(tmp_path):
    """700 px wide, diagonal across the middle tile: three quarters of it, and the 128 px
    background window holds no sea at all along the slick's axis."""
    band = SlickSpec.band((1024, 1024), 2600, 700, angle_deg=45, damping_db=7.0)
    grey, truth = scene_with(tmp_path, 2048, [band], seed=11)
    inner = (slice(512, 1536), slice(512, 1536))
    assert truth[inner].mean() >= 0.7
    mask = detect_array(grey[inner].astype(np.float32), DetectorOptions())
    assert iou(mask, truth[inner]) >= 0.9
    assert iou(detect_tiled(grey, DetectorOptions()), truth) >= 0.9


def test_a_ring_of_oil_keeps_its_clean_water_and_the_option_can_fill_it(tmp_path):
    ring = SlickSpec.ring((512, 512), 200, 100, damping_db=7.0)
    grey, truth = scene_with(tmp_path, 1024, [ring], seed=12)
    mask = detect_array(grey.astype(np.float32), DetectorOptions())
    assert iou(mask, truth) >= 0.9
    middle = disc(truth.shape, (512, 512), 90)
    assert mask[middle].mean() < 0.01
    filled = detect_array(grey.astype(np.float32), DetectorOptions(max_hole_px=200_000))
    assert filled[middle].all()


def test_a_speckle_hole_is_filled_and_a_pond_is_not(tmp_path):
    """Clean water of 5 x 5 px inside a slick is speckle-sized and filled; 40 x 40 px stays."""
    band = SlickSpec.band((512, 512), 800, 240, angle_deg=10).polygon
    holed = band.difference(box(400, 500, 405, 505)).difference(box(600, 492, 640, 532))
    grey, truth = scene_with(tmp_path, 1024, [SlickSpec(holed, damping_db=7.0)], seed=13)
    mask = detect_array(grey.astype(np.float32), DetectorOptions())
    assert not truth[500:505, 400:405].any() and mask[500:505, 400:405].all()
    assert not mask[502:522, 610:630].any()
    assert iou(mask, truth) >= 0.9
