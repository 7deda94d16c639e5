"""Reading images and the ML service's answers: sizes, mask statistics.

Blocking: run in a thread.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from .jobs import ResultKind

# Pillow's format name -> the extension a picture result is stored with.
_PICTURE_EXT = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}
OIL_LEVEL = 128  # mask pixels at or above this are oil (the contract says 255; be lenient)


class UnreadableImage(Exception):
    """The file is not an image Pillow can decode."""


@dataclass(frozen=True)
class Answer:
    """What the ML service's answer turned out to be."""

    kind: ResultKind
    extension: str  # ".png" for masks
    oil_pixels: int | None


def probe_image(path: Path, max_pixels: int) -> tuple[int, int]:
    """(width, height) of an image, reading only its header; refuses one over max_pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise UnreadableImage(
            f"image is far larger than {max_pixels} pixels (OILSPILL_MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnreadableImage(f"cannot read image: {exc}") from None
    if width * height > max_pixels:
        raise UnreadableImage(f"image is {width}x{height} = {width * height} pixels, over the "
                              f"limit of {max_pixels} (OILSPILL_MAX_IMAGE_PIXELS)")
    if width == 0 or height == 0:
        raise UnreadableImage("image has no pixels")
    return width, height


def read_answer(path: Path, width: int, height: int) -> Answer:
    """Classify the ML service's answer for a width x height input.

    A one-channel PNG of the input's size is a mask (statistics counted here); any other
    decodable image is a picture result (the original YOLO service answers with an annotated
    JPEG). Raises UnreadableImage if it is not an image at all.
    """
    try:
        with Image.open(path) as image:
            if image.format == "PNG" and image.mode in ("L", "1") and image.size == (width, height):
                histogram = image.convert("L").histogram()
                return Answer(ResultKind.MASK, ".png", sum(histogram[OIL_LEVEL:]))
            image.load()  # make sure it decodes, not only its header
            return Answer(ResultKind.PICTURE, _PICTURE_EXT.get(image.format or "", ".img"), None)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"the ML service's answer is not an image: {exc}") from None
