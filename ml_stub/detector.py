"""Dark-spot detection: oil damps the sea's capillary waves and shows darker than the sea.

A plain baseline for now: normalise to 8 bits, smooth the speckle with a median filter and
mark pixels darker than the scene's mean by `k` standard deviations.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from typing import cast

from PIL import Image, ImageFilter, ImageStat


@dataclass(frozen=True)
class DetectorOptions:
    k: float = 1.5  # how many standard deviations below the mean counts as dark
    median_px: int = 5  # speckle filter size (odd)


class NotAnImage(ValueError):
    """The bytes are not an image Pillow can decode."""


def to_intensity(image: Image.Image) -> Image.Image:
    """One 8-bit band: RGB to luminance, 16-bit and float stretched to 0..255."""
    if image.mode in ("I;16", "I;16B", "I;16L", "I", "F"):
        image = image.convert("F")
        low, high = cast(tuple[float, float], image.getextrema())
        scale = 255.0 / (high - low) if high > low else 0.0
        return image.point(lambda v: (v - low) * scale).convert("L")
    return image.convert("L")


def detect(image: Image.Image, options: DetectorOptions) -> Image.Image:
    """The oil mask of an image: mode L, 0 = sea, 255 = oil, same size."""
    grey = to_intensity(image).filter(ImageFilter.MedianFilter(options.median_px))
    stat = ImageStat.Stat(grey)
    threshold = stat.mean[0] - options.k * stat.stddev[0]
    return grey.point(lambda v: 255 if v < threshold else 0)


def decode(data: bytes) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise NotAnImage(f"cannot decode image: {exc}") from None
    return image


def encode_png(image: Image.Image) -> bytes:
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def annotate(image: Image.Image, mask: Image.Image) -> bytes:
    """A JPEG of the input with the oil tinted, as the original YOLO service answered."""
    base = to_intensity(image).convert("RGB")
    tint = Image.new("RGB", base.size, (230, 159, 0))  # orange: readable with colour blindness
    blended = Image.composite(Image.blend(base, tint, 0.5), base, mask)
    out = io.BytesIO()
    blended.save(out, format="JPEG", quality=85)
    return out.getvalue()
