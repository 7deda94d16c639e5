"""The quick-look of a large scene: the whole scene in grey, small, with the oil tinted.

Same look as masks.render_overlay (Okabe-Ito orange at alpha 0.55 over grey, as a palette
PNG), but read by strips of rows from a scene and a stitched mask of any size: memory depends
on the quick-look's size, never the scene's. Blocking: run in a thread.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np
import rasterio
from rasterio.enums import Resampling
from rasterio.windows import Window

from ..masks import OIL_LEVEL, OVERLAY_PALETTE
from ..paths import partial_beside
from . import GDAL_OPTIONS

# scene_reader(window, (rows, cols)): the window of the scene as 8-bit grey, resampled to
# (rows, cols). The caller owns the scene's scaling (dB, percentiles).
SceneReader = Callable[[Window, tuple[int, int]], np.ndarray]


def quicklook_shape(width: int, height: int, max_px: int) -> tuple[int, int]:
    """(width, height) of the quick-look of a width x height scene: longest side <= max_px."""
    longest = max(width, height)
    if longest <= max_px:
        return width, height
    return max(1, round(width * max_px / longest)), max(1, round(height * max_px / longest))


def render_quicklook(scene_reader: SceneReader, mask_path: Path, out_path: Path, max_px: int,
                     strip_rows: int = 256) -> None:
    """Write a PNG of the scene in grey with the mask's oil tinted (written whole, renamed)."""
    if max_px < 1 or strip_rows < 1:
        raise ValueError(f"need max_px >= 1 and strip_rows >= 1, got {max_px}, {strip_rows}")
    part = partial_beside(out_path)
    try:
        with rasterio.Env(**GDAL_OPTIONS):
            with rasterio.open(mask_path) as mask:
                width, height = quicklook_shape(mask.width, mask.height, max_px)
                nodata = mask.nodata
                # Palette index = grey // 2 + 128 * oil (see masks.OVERLAY_PALETTE).
                index = np.empty((height, width), np.uint8)
                for top in range(0, height, strip_rows):
                    bottom = min(height, top + strip_rows)
                    row = round(top * mask.height / height)
                    window = Window(0, row, mask.width,
                                    round(bottom * mask.height / height) - row)
                    shape = (bottom - top, width)
                    grey = np.asarray(scene_reader(window, shape))
                    if grey.shape != shape or grey.dtype != np.uint8:
                        raise ValueError(f"scene_reader gave {grey.dtype} {grey.shape} for "
                                         f"uint8 {shape}")
                    # Decimated reads are served from the mask's overviews when it has them.
                    strip = mask.read(1, window=window, out_shape=shape,
                                      resampling=Resampling.nearest)
                    oil = strip >= OIL_LEVEL
                    if nodata is not None:
                        oil &= strip != nodata
                    index[top:bottom] = (grey >> 1) | (oil.astype(np.uint8) << 7)
            with rasterio.open(part, "w", driver="PNG", width=width, height=height, count=1,
                               dtype="uint8", ZLEVEL=1) as dst:
                dst.write(index, 1)
                dst.write_colormap(1, {i: tuple(OVERLAY_PALETTE[3 * i:3 * i + 3])
                                       for i in range(256)})
        os.replace(part, out_path)
    finally:
        part.unlink(missing_ok=True)
