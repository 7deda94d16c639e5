"""Each scene slick's mean contrast (its mean dB on the scene-wide scale, less the sea's),
as the GeoJSON gives it: measured over the pixels the slick touches of the scene brought down
to at most CONTRAST_PX, whatever its size, place or shape."""

from __future__ import annotations

import numpy as np
import pytest
from rasterio.features import rasterize
from rasterio.transform import Affine
from rasterio.windows import Window
from shapely.geometry import Polygon, box

from oilspill.geo.polygons import PixelSlick
from oilspill.geo.scale import DbKind, Stretch
from oilspill.spills import _contrast_db

STRETCH = Stretch(db_kind=DbKind.AMPLITUDE, low_db=20.0, high_db=45.5, sea_db=40.0)


def reference(slick: Polygon, picture: np.ndarray, width: int, height: int) -> float:
    """The slick's contrast from a rasterisation over the whole picture."""
    small_h, small_w = picture.shape
    inside = rasterize([(slick, 1)], out_shape=picture.shape,
                       transform=Affine.scale(width / small_w, height / small_h),
                       all_touched=True, dtype="uint8").astype(bool)
    mean = float(picture[inside].astype(np.float64).mean())
    return round(STRETCH.low_db + mean * (STRETCH.high_db - STRETCH.low_db) / 255.0
                 - STRETCH.sea_db, 2)


@pytest.mark.parametrize(("width", "height"), [(900, 700), (5000, 3100)],
                         ids=["under-contrast-px", "brought-down"])
def test_each_slicks_contrast_is_over_the_pixels_it_touches(width: int, height: int) -> None:
    rng = np.random.default_rng(3)
    small = (min(height, round(height / max(1.0, max(width, height) / 1024))),
             min(width, round(width / max(1.0, max(width, height) / 1024))))
    picture = rng.integers(0, 256, small, dtype=np.uint8)

    def grey(window: Window, shape: tuple[int, int]) -> np.ndarray:
        assert (window.width, window.height) == (width, height) and shape == small
        return picture

    slicks = [
        box(10.2, 11.7, 14.9, 13.1),  # smaller than one picture pixel when brought down
        box(0, 0, 40.5, 25.5),  # at the scene's corner
        box(width - 33.3, height - 8.5, width, height),  # at the opposite corner
        Polygon([(0.3 * width, 0.2 * height), (0.7 * width, 0.25 * height),
                 (0.45 * width, 0.8 * height)]),  # large and slanted
        box(0.5 * width, 0.5 * height, 0.6 * width, 0.55 * height).difference(
            box(0.52 * width, 0.51 * height, 0.58 * width, 0.54 * height)),  # with a hole
    ]
    # A crowd of small slicks side by side, closer than a picture pixel to one another: the
    # picture pixels they touch are shared.
    step = max(width, height) / 1024
    slicks += [box(x, y, x + 0.4 * step, y + 0.3 * step)
               for x in np.arange(0.1 * width, 0.1 * width + 40 * step, 1.3 * step)
               for y in np.arange(0.6 * height, 0.6 * height + 20 * step, 0.9 * step)]
    got = _contrast_db([PixelSlick(n, s, int(s.area)) for n, s in enumerate(slicks, 1)],
                       grey, STRETCH, width, height)
    want = {n: reference(s, picture, width, height) for n, s in enumerate(slicks, 1)}
    assert got.keys() == want.keys()
    # Rounded to 0.01 dB both ways; sums in another order may round the other way.
    assert all(abs(got[n] - want[n]) <= 0.0100001 for n in want), [
        (n, got[n], want[n]) for n in want if abs(got[n] - want[n]) > 0.0100001]
