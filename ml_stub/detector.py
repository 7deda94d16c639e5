"""A classical dark-spot oil detector for SAR scenes: NumPy and SciPy, no model.

Calm oil damps the sea's capillary waves, so a slick shows darker than the sea around it.

1. A scale on which speckle adds rather than multiplies: the log of linear amplitude or
   intensity, whose speckle is skewed bright; data already in dB, such as the backend's
   scene-wide grey, as they are (their speckle is skewed dark). RGB becomes luminance first.
2. Speckle suppression: a `smooth_px` box mean on that scale (a multi-look).
3. The sea's level under every pixel, which a slick must not drag down even when it fills
   most of the image, worked out on a 4x-reduced grid of cells:
   a. a first level per block of two windows from the block's 90th percentile, which a
      slick cannot lower unless it fills nine tenths of the block; a block far below the
      others (more than wind can explain) is all slick and takes its nearest sea block's;
   b. then, twice, the mean of the sea over `window_px`, leaving out the cells more than
      `strong_contrast` deviations below the level (oil whatever its shape; weaker
      darkening such as low wind stays in, so the level follows it), sliding smoothly,
      where the window holds too little sea, to the mean over 4x the window and then to
      the median of the image's sea.
   The deviation is the sea pixels' robust spread around that level.
4. Dark spots: pixels more than `k` deviations below the sea's level.
5. Clean-up: morphological opening and closing, holes smaller than `max_hole_px` filled
   (speckle; clean water ringed by oil stays sea), components smaller than `min_area_px`
   removed.
6. Shape test against look-alikes (low-wind areas are diffuse, blob-shaped and weakly
   damped): a component stays when its mean darkness reaches `min_contrast` deviations, and
   either it is slender (`min_elongation`: its area over that of its largest inscribed
   disc) or its darkness reaches `strong_contrast`.

Each pixel's answer depends on the sea around it, not on the image's extent, so a tile cut
from a scene (on the scene's grey scale) gets the mask the whole scene gets there.
"""

from __future__ import annotations

import io
import itertools
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

REDUCE = 4  # the background is estimated on a 4x smaller grid: 16x less work
HALVE_FROM_PX = 256  # scenes at least this large are analysed at half size
SAMPLE = 20_000  # pixels drawn for the robust medians
COARSE = 4  # the fallback window is this many local windows wide
MIN_SEA_SHARE = 0.25  # a window at least this much sea is trusted; less, blended to coarser
BLOCK_WINDOWS = 2  # the first level's blocks are this many windows wide
PASSES = 2  # re-estimates of the sea, each leaving out the cells far below the last
# A block whose first level lies more than SLICK_BLOCK_DEVIATIONS below another block's,
# less WIND_BLOCK_DEVIATIONS per block between them, is taken for all slick: a slick damps
# the sea by seven deviations or more (5 dB), while the wind changes it gradually.
SLICK_BLOCK_DEVIATIONS = 6.0
WIND_BLOCK_DEVIATIONS = 1.0


def _option(default: float, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DetectorOptions:
    """The detector's parameters; each is also an `oilspill-ml-stub` option."""

    smooth_px: int = _option(5, "speckle filter: box size in pixels, in the log (dB) domain")
    window_px: int = _option(128, "local background window, in pixels")
    k: float = _option(2.0, "dark threshold, in deviations below the local sea")
    min_area_px: int = _option(30, "smallest slick kept, in pixels")
    min_contrast: float = _option(3.0, "smallest mean darkness of a slick, in deviations")
    strong_contrast: float = _option(
        5.0, "darkness from which a spot is oil whatever its shape (kept, and left out of "
             "the sea's level), in deviations")
    min_elongation: float = _option(
        2.5, "least slenderness (area over its largest inscribed disc) of a weaker spot")
    max_hole_px: int = _option(
        64, "holes in a slick smaller than this are filled (speckle), in pixels; larger "
            "ones (clean water ringed by oil) stay sea")


class NotAnImage(ValueError):
    """The bytes are not an image Pillow can decode."""


def decode(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise NotAnImage(f"cannot decode image: {exc}") from None
    return image


def to_array(image: Image.Image) -> np.ndarray:
    """One band as float32: RGB to luminance, 16-bit and float kept at full depth."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image.convert("F"), dtype=np.float32)
    if image.mode not in ("L", "F"):
        image = image.convert("L")
    return np.asarray(image, dtype=np.float32)


def _cell_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over factor x factor cells of the top-left part that holds whole cells.

    Summed slice by slice rather than through a 4-D reshape's mean, which NumPy does about
    ten times slower.
    """
    h, w = array.shape[0] // factor, array.shape[1] // factor
    rows = array[:h * factor, :w * factor].reshape(h * factor, w, factor)
    across = sum((rows[:, :, i] for i in range(1, factor)), rows[:, :, 0])
    cells = across.reshape(h, factor, w)
    total = sum((cells[:, i] for i in range(1, factor)), cells[:, 0])
    return np.asarray(total, dtype=np.float32) * np.float32(1.0 / factor**2)


def _expand(cells: np.ndarray, factor: int, height: int, width: int) -> np.ndarray:
    """A grid of cells back at full size, each cell repeated, the edges extended."""
    full = np.repeat(np.repeat(cells, factor, axis=0), factor, axis=1)
    return np.pad(full, ((0, height - full.shape[0]), (0, width - full.shape[1])), mode="edge")


def _cells_of(index: np.ndarray, width: int, cells: np.ndarray, factor: int) -> np.ndarray:
    """The values of the cells holding the pixels of a flat index."""
    rows = np.minimum(index // width // factor, cells.shape[0] - 1)
    cols = np.minimum(index % width // factor, cells.shape[1] - 1)
    return np.asarray(cells[rows, cols])


def _interpolation(size: int, centres: np.ndarray) -> np.ndarray:
    """The (size, len(centres)) matrix that interpolates values at centres linearly onto
    cells 0..size-1, held constant beyond the first and last centre."""
    positions = np.arange(size) + 0.5
    return np.stack([np.interp(positions, centres, unit) for unit in np.eye(len(centres))],
                    axis=1)


def _mad_deviation(residual: np.ndarray) -> float:
    """1.4826 median absolute deviations: a normal sample's standard deviation."""
    centre = float(np.median(residual))
    return max(1.4826 * float(np.median(np.abs(residual - centre))), 1e-6)


def _slick_blocks(level: np.ndarray, sigma: float) -> np.ndarray:
    """The blocks taken for all slick: those whose level lies more than
    SLICK_BLOCK_DEVIATIONS below another block's, less WIND_BLOCK_DEVIATIONS per block
    between them (about the most the wind changes the sea over that distance)."""
    reach = level
    for _ in range(max(level.shape)):  # spread each level outwards, one block per step
        step = np.maximum(reach, ndimage.maximum_filter(reach, 3, mode="nearest")
                          - WIND_BLOCK_DEVIATIONS * sigma)
        if np.array_equal(step, reach):
            break
        reach = step
    return np.asarray(level < reach - SLICK_BLOCK_DEVIATIONS * sigma)


def _first_sea_level(signal: np.ndarray, cells: np.ndarray, factor: int, size: int,
                     rng: np.random.Generator) -> tuple[np.ndarray, float]:
    """A first sea level per cell, and a first deviation, that no slick drags down.

    size: the window, in cells. The deviation is the spread around the local mean where
    that mean is highest (the brightest tenth of windows is sea unless nearly all the image
    is slick). The level is each block's 90th percentile of cells, less the sea's own gap
    from there to its median: a slick only darkens, so that is sea wherever a tenth of the
    block is. A block far below the others (_slick_blocks) is all slick and takes the level
    of the nearest block that is not; block levels are then interpolated between the
    blocks' centres.
    """
    local = ndimage.uniform_filter(cells, size, mode="reflect")
    index = rng.integers(0, signal.size, SAMPLE)
    width = signal.shape[1]
    bright = _cells_of(index, width, local >= np.quantile(local, 0.9), factor)
    residual = signal.ravel()[index] - _cells_of(index, width, local, factor)
    sigma = _mad_deviation(residual[bright] if bright.any() else residual)
    rows, cols = (np.linspace(0, n, max(1, round(n / (BLOCK_WINDOWS * size))) + 1).astype(int)
                  for n in cells.shape)
    top, middle = np.array([[np.quantile(cells[r0:r1, c0:c1], (0.9, 0.5))
                             for c0, c1 in itertools.pairwise(cols)]
                            for r0, r1 in itertools.pairwise(rows)]).transpose(2, 0, 1)
    # The sea's own gap between its 90th percentile and its median is about the smallest
    # any block shows: a slick across part of a block only widens it.
    level = top - float((top - middle).min())
    slick = _slick_blocks(level, sigma)
    if slick.any():  # never all: the highest block is sea
        nearest = ndimage.distance_transform_edt(slick, return_distances=False,
                                                 return_indices=True)
        level = level[tuple(nearest)]
    down = _interpolation(cells.shape[0], (rows[:-1] + rows[1:]) / 2)
    across = _interpolation(cells.shape[1], (cols[:-1] + cols[1:]) / 2)
    return np.asarray(down @ level @ across.T, dtype=np.float32), sigma


def _blend(x_sum: np.ndarray, sea_sum: np.ndarray, fallback: np.ndarray | float
           ) -> np.ndarray:
    """The window's sea mean where it holds enough sea, sliding to fallback where not."""
    trust = np.clip(sea_sum / MIN_SEA_SHARE, 0.0, 1.0)
    return np.asarray(trust * (x_sum / np.maximum(sea_sum, 1e-6)) + (1 - trust) * fallback)


def _sea_background(cells: np.ndarray, sea: np.ndarray, size: int) -> np.ndarray:
    """The sea's level per cell: the mean of the cells marked sea over `size` cells.

    Where that window holds too little sea, the mean over COARSE times the window; where
    that too holds little, the median of the image's sea.
    """
    whole = float(np.median(cells[sea] if sea.any() else cells))
    x = np.where(sea, cells, np.float32(0))
    share = sea.astype(np.float32)
    coarse = _blend(ndimage.uniform_filter(x, COARSE * size, mode="reflect"),
                    ndimage.uniform_filter(share, COARSE * size, mode="reflect"), whole)
    return _blend(ndimage.uniform_filter(x, size, mode="reflect"),
                  ndimage.uniform_filter(share, size, mode="reflect"), coarse)


def _sea_deviation(signal: np.ndarray, level: np.ndarray, sea: np.ndarray, factor: int,
                   rng: np.random.Generator) -> float:
    """The spread of the sea's pixels around its level, from a sample; level and sea are
    per cell. Only sea counts, so a tile that is mostly slick gets the scene's spread."""
    index = rng.integers(0, signal.size, SAMPLE)
    width = signal.shape[1]
    residual = signal.ravel()[index] - _cells_of(index, width, level, factor)
    in_sea = _cells_of(index, width, sea, factor)
    # Next to no sea: the whole image rather than a handful of pixels.
    return _mad_deviation(residual[in_sea] if in_sea.sum() >= 100 else residual)


def _skewed_dark(values: np.ndarray, rng: np.random.Generator) -> bool:
    """Whether the image's speckle is skewed towards dark, as that of data already in dB is
    (linear amplitude and intensity are skewed towards bright): the Kelly skewness of the
    pixels' departures from their cell's mean, from a sample."""
    h, w = values.shape
    if min(h, w) < 2 * REDUCE:
        return False
    index = rng.integers(0, values.size, SAMPLE)
    residual = values.ravel()[index] - _cells_of(index, w, _cell_mean(values, REDUCE), REDUCE)
    q10, q50, q90 = np.quantile(residual, (0.1, 0.5, 0.9))
    return bool(q90 + q10 - 2 * q50 < 0)


def _additive(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The image on a scale where speckle adds instead of multiplying, as float32: the log of
    linear data (amplitude, intensity); data already in dB (the backend's grey) as it is."""
    if _skewed_dark(values, rng):
        return values
    positive = values[values > 0]
    # An offset of 1% of the typical value keeps zeros finite whatever the data's scale.
    eps = max(float(np.median(positive)) * 0.01, 1e-12) if positive.size else 1.0
    return np.asarray(np.log(np.maximum(values, 0) + eps, dtype=np.float32))


def _fill_holes(mask: np.ndarray, max_hole_px: float) -> np.ndarray:
    """Fill enclosed holes smaller than max_hole_px: background components that do not
    touch the border."""
    labels, count = ndimage.label(~mask)
    small = np.bincount(labels.ravel(), minlength=count + 1) < max_hole_px
    small[0] = False
    small[np.concatenate((labels[0], labels[-1], labels[:, 0], labels[:, -1]))] = False
    return np.asarray(mask | small[labels])


def _component_stats(labels: np.ndarray, count: int, z: np.ndarray
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Per component: area in pixels, and mean z."""
    index = np.arange(1, count + 1)
    area = np.bincount(labels.ravel(), minlength=count + 1)[1:].astype(np.float64)
    return area, np.asarray(ndimage.mean(z, labels, index))


def _slenderness(labels: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Per chosen component: its area over that of the largest disc it holds.

    A disc gives 1; an ellipse, its aspect ratio; a band of length L and width W about
    L/W, however it bends or branches. Look-alikes are blobs; slicks are bands.
    """
    boxes = ndimage.find_objects(labels)
    out = np.zeros(len(which))
    for i, label in enumerate(which):
        box = boxes[label - 1]
        if box is None:
            continue
        inside = np.pad(labels[box] == label, 1)
        radius = float(ndimage.distance_transform_edt(inside).max())
        out[i] = inside.sum() / (np.pi * max(radius, 0.5) ** 2)
    return out


def detect_array(values: np.ndarray, options: DetectorOptions) -> np.ndarray:
    """The oil mask (bool, same shape) of a one-band image of backscatter values."""
    rng = np.random.default_rng(0)
    height, width = values.shape
    signal = _additive(np.asarray(values, dtype=np.float32), rng)
    # Large scenes are analysed at half size (a 2x2 look) and the mask brought back up:
    # 4x less work, edges within a pixel.
    half = min(height, width) >= HALVE_FROM_PX
    smooth_px = options.smooth_px
    if half:
        signal = _cell_mean(signal, 2)
        # Odd: an even box is not centred, and would shift every slick half a pixel.
        smooth_px = max(1, options.smooth_px // 2) | 1
    signal = ndimage.uniform_filter(signal, smooth_px, mode="reflect")
    window_px = options.window_px // 2 if half else options.window_px
    # The sea's level is worked out per cell of a grid REDUCE times coarser (the windows
    # are large, so little is lost): 16x less work. A tiny image is its own grid.
    factor = REDUCE if min(signal.shape) >= 2 * REDUCE else 1
    cells = _cell_mean(signal, factor)
    size = max(3, window_px // factor)
    level, sigma = _first_sea_level(signal, cells, factor, size, rng)
    for _ in range(PASSES):
        sea = cells >= level - options.strong_contrast * sigma
        level = _sea_background(cells, sea, size)
        sigma = _sea_deviation(signal, level, sea, factor, rng)
    mean = _expand(level, factor, *signal.shape)
    dark = signal < mean - options.k * sigma
    z = (signal - mean) / sigma
    dark = ndimage.binary_opening(dark)
    dark = ndimage.binary_closing(dark, iterations=1 if half else 2)
    dark = _fill_holes(dark, options.max_hole_px / (4 if half else 1))
    labels, count = ndimage.label(dark)
    if count == 0:
        return np.zeros((height, width), bool)
    area, mean_z = _component_stats(labels, count, z)
    contrast = -mean_z
    keep = ((area * (4 if half else 1) >= options.min_area_px)
            & (contrast >= options.min_contrast))
    weak = np.flatnonzero(keep & (contrast < options.strong_contrast)) + 1
    keep[weak - 1] = _slenderness(labels, weak) >= options.min_elongation
    mask = np.concatenate(([False], keep))[labels]
    if half:
        mask = np.repeat(np.repeat(mask, 2, axis=0), 2, axis=1)
        mask = np.pad(mask, ((0, height - mask.shape[0]), (0, width - mask.shape[1])),
                      mode="edge")
    return np.asarray(mask)


class MixedSizes(ValueError):
    """The pictures of one batch are not all of one size."""


def detect_batch(tiles: np.ndarray | list[bytes], options: DetectorOptions) -> np.ndarray:
    """The masks [N, H, W] (0 sea, 255 oil) of a batch: pixels [N, H, W], or encoded
    pictures of one size; one detector run each. Raises NotAnImage or MixedSizes."""
    if isinstance(tiles, np.ndarray):
        values = [tile.astype(np.float32) for tile in tiles]
    else:
        values = [to_array(decode(data)) for data in tiles]
        sizes = sorted({(v.shape[1], v.shape[0]) for v in values})
        if len(sizes) > 1:
            raise MixedSizes(f"the pictures of one request share one size, not {sizes} "
                             "(width, height): send the others in their own requests")
    return np.stack([detect_array(v, options).astype(np.uint8) * np.uint8(255)
                     for v in values])


def detect(image: Image.Image, options: DetectorOptions) -> Image.Image:
    """The contract's mask of an image: mode L, 0 = sea, 255 = oil, same size."""
    mask = detect_array(to_array(image), options)
    return Image.fromarray((mask * 255).astype(np.uint8), mode="L")


def encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG", compress_level=1)
    return out.getvalue()


def annotate(image: Image.Image, mask: Image.Image) -> bytes:
    """A JPEG of the input with the oil tinted, as the original YOLO service answered."""
    values = to_array(image)
    low, high = np.percentile(values, (1, 99))
    grey = np.clip((values - low) / max(high - low, 1e-6) * 255, 0, 255).astype(np.uint8)
    base = Image.fromarray(grey).convert("RGB")
    tint = Image.new("RGB", base.size, (230, 159, 0))  # orange: readable with colour blindness
    blended = Image.composite(Image.blend(base, tint, 0.5), base, mask)
    out = io.BytesIO()
    blended.save(out, format="JPEG", quality=85)
    return out.getvalue()
