"""A classical dark-spot oil detector for SAR scenes: NumPy and SciPy, no model.

Calm oil damps the sea's capillary waves, so a slick shows darker than the sea around it.

1. Intensity to log scale, where speckle is additive; RGB becomes luminance first.
2. Speckle suppression: a `smooth_px` box mean in the log domain (a multi-look).
3. Local background: mean and deviation of the sea over `window_px`, computed on a
   4x-reduced image and leaving out dark pixels (a second pass), so a large slick does not
   drag its own background down.
4. Dark spots: pixels more than `k` local deviations below the local mean.
5. Clean-up: morphological opening and closing, holes filled, components smaller than
   `min_area_px` removed.
6. Shape test against look-alikes (low-wind areas are diffuse, blob-shaped and weakly
   damped): a component stays when its mean darkness reaches `min_contrast` deviations, and
   either it is elongated (`min_elongation`, from its second moments) or its darkness
   reaches `strong_contrast`.
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from PIL import Image
from scipy import ndimage

REDUCE = 4  # the background is estimated on a 4x smaller grid: 16x less work
HALVE_FROM_PX = 256  # scenes at least this large are analysed at half size
SAMPLE = 20_000  # pixels drawn for the robust medians


def _option(default: float, help: str) -> Any:
    return field(default=default, metadata={"help": help})


@dataclass(frozen=True)
class DetectorOptions:
    """The detector's parameters; each is also an `oilspill-ml-stub` option."""

    smooth_px: int = _option(5, "speckle filter: box size in pixels, in the log domain")
    window_px: int = _option(128, "local background window, in pixels")
    k: float = _option(2.0, "dark threshold, in deviations below the local sea")
    min_area_px: int = _option(30, "smallest slick kept, in pixels")
    min_contrast: float = _option(3.0, "smallest mean darkness of a slick, in deviations")
    strong_contrast: float = _option(
        5.0, "darkness from which a spot is kept whatever its shape, in deviations")
    min_elongation: float = _option(
        2.5, "least slenderness (area over its largest inscribed disc) of a weaker spot")


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


def _reduce(array: np.ndarray, h: int, w: int) -> np.ndarray:
    return np.asarray(array[:h, :w].reshape(h // REDUCE, REDUCE, w // REDUCE, REDUCE).mean((1, 3)))


def _local_mean(log_img: np.ndarray, window_px: int, exclude: np.ndarray | None
                ) -> np.ndarray:
    """Local mean of the pixels not excluded, at full size.

    Box sums of x and of the weights are taken on a REDUCE-times smaller grid (the window
    is large, so little is lost) and brought back by repeating each cell.
    """
    h, w = log_img.shape
    weights = np.ones_like(log_img) if exclude is None else (~exclude).astype(np.float32)
    hh, ww = h // REDUCE * REDUCE, w // REDUCE * REDUCE
    if hh < 2 * REDUCE or ww < 2 * REDUCE:  # a tiny image: one background for all of it
        total = max(float(weights.sum()), 1.0)
        return np.full_like(log_img, float((log_img * weights).sum()) / total)
    size = max(3, window_px // REDUCE)
    w_sum = ndimage.uniform_filter(_reduce(weights, hh, ww), size, mode="reflect")
    x_sum = ndimage.uniform_filter(_reduce(log_img * weights, hh, ww), size, mode="reflect")
    mean = x_sum / np.maximum(w_sum, 1e-3)
    full = np.repeat(np.repeat(mean, REDUCE, axis=0), REDUCE, axis=1)
    return np.pad(full, ((0, h - hh), (0, w - ww)), mode="edge")


def _fill_holes(mask: np.ndarray) -> np.ndarray:
    """Fill enclosed holes: background components that do not touch the border."""
    labels, _ = ndimage.label(~mask)
    border = np.unique(np.concatenate((labels[0], labels[-1], labels[:, 0], labels[:, -1])))
    return mask | ~np.isin(labels, border)


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


def _robust_median(values: np.ndarray, rng: np.random.Generator) -> float:
    """Median of a large array from a fixed-size sample: the same to a fraction of a
    percent, at a fraction of the cost."""
    flat = values.ravel()
    if flat.size > SAMPLE:
        flat = flat[rng.integers(0, flat.size, SAMPLE)]
    return float(np.median(flat))


def _halve(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[0] // 2 * 2, array.shape[1] // 2 * 2
    return np.asarray(array[:h, :w].reshape(h // 2, 2, w // 2, 2).mean((1, 3)))


def detect_array(values: np.ndarray, options: DetectorOptions) -> np.ndarray:
    """The oil mask (bool, same shape) of a one-band image of backscatter values."""
    rng = np.random.default_rng(0)
    height, width = values.shape
    sample = values.ravel()[rng.integers(0, values.size, min(values.size, SAMPLE))]
    positive = sample[sample > 0]
    # An offset of 1% of the typical value keeps zeros finite whatever the data's scale.
    eps = max(float(np.median(positive)) * 0.01, 1e-12) if positive.size else 1.0
    log_img = np.log(np.maximum(values, 0) + eps, dtype=np.float32)
    # Large scenes are analysed at half size (a 2x2 look) and the mask brought back up:
    # 4x less work, edges within a pixel.
    half = min(height, width) >= HALVE_FROM_PX
    smooth_px = options.smooth_px
    if half:
        log_img = _halve(log_img)
        smooth_px = max(1, options.smooth_px // 2)
    log_img = ndimage.uniform_filter(log_img, smooth_px, mode="reflect")
    window_px = options.window_px // 2 if half else options.window_px
    mean = _local_mean(log_img, window_px, None)
    residual = log_img - mean
    # In the log domain speckle is additive with one spread over the whole scene: a
    # robust global estimate (the median absolute deviation) is not swayed by the slicks.
    centre = _robust_median(residual, rng)
    sigma = max(1.4826 * _robust_median(np.abs(residual - centre), rng), 1e-6)
    dark = residual < -options.k * sigma
    for _ in range(2):  # re-estimate the sea without the dark pixels
        mean = _local_mean(log_img, window_px, dark)
        dark = log_img < mean - options.k * sigma
    z = (log_img - mean) / sigma
    dark = ndimage.binary_opening(dark)
    dark = ndimage.binary_closing(dark, iterations=1 if half else 2)
    dark = _fill_holes(dark)
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
