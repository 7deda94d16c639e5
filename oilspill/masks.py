"""Reading images and the ML service's answers: sizes, mask statistics, overlays.

Overlays are drawn on first use (the API's overlay link, the result zip) and kept: the
backend's cost per image stays at reading the mask.

Blocking: run in a thread.
"""

from __future__ import annotations

import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError
from scipy import ndimage

from .jobs import ResultKind

# Pillow's format name -> the extension a picture result is stored with.
_PICTURE_EXT = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}
OIL_LEVEL = 128  # mask pixels at or above this are oil (the contract says 255; be lenient)
# Okabe-Ito orange: stands out on grey sea for every common kind of colour blindness.
TINT_RGB = np.array([230, 159, 0], np.float32)
TINT_ALPHA = 0.55
_EIGHT_NEIGHBOURS = np.ones((3, 3), bool)  # a slick touching only at a corner is one slick


class UnreadableImage(Exception):
    """The file is not an image Pillow can decode, or is over the pixel limit."""


@dataclass(frozen=True)
class Answer:
    """What the ML service's answer turned out to be.

    For a mask: oil_pixels, slick_count (8-connected components) and largest_slick_px;
    all None for a picture.
    """

    kind: ResultKind
    extension: str  # ".png" for masks
    oil_pixels: int | None = None
    slick_count: int | None = None
    largest_slick_px: int | None = None


def _reason(exc: Exception) -> str:
    """Why Pillow could not read a file, without the file's path (users see this text)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a format this server decodes (PNG, JPEG, TIFF, BMP)"
    if isinstance(exc, OSError) and exc.filename is not None:
        return exc.strerror or exc.__class__.__name__
    return str(exc)


def probe_image(path: Path | BinaryIO, max_pixels: int) -> tuple[int, int]:
    """(width, height) of an image, reading only its header; refuses one over max_pixels."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except Image.DecompressionBombError:
        raise UnreadableImage(
            f"image is far larger than {max_pixels} pixels (OILSPILL_MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnreadableImage(f"cannot read image: {_reason(exc)}") from None
    if width * height > max_pixels:
        raise UnreadableImage(f"image is {width}x{height} = {width * height} pixels, over the "
                              f"limit of {max_pixels} (OILSPILL_MAX_IMAGE_PIXELS)")
    if width == 0 or height == 0:
        raise UnreadableImage("image has no pixels")
    return width, height


def oil_of(mask: np.ndarray) -> np.ndarray:
    """The oil pixels (bool) of a mask image's array."""
    return np.asarray(mask >= OIL_LEVEL)


def is_mask(data: bytes | Path, width: int, height: int) -> bool:
    """True when the answer is the contract's mask for a width x height input: an 8-bit
    one-channel PNG of that size (from its header: nothing is decoded). Raises
    UnreadableImage if it is not an image at all."""
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            return bool(image.format == "PNG" and image.mode == "L"
                        and image.size == (width, height))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"the ML service's answer is not an image: {_reason(exc)}"
                              ) from None


def read_answer(data: bytes | Path, width: int, height: int) -> Answer:
    """Classify the ML service's answer for a width x height input.

    A one-channel PNG of the input's size is a mask (statistics counted here); any other
    decodable image is a picture result (the original YOLO service answers with an annotated
    JPEG). Raises UnreadableImage if it is not an image at all.
    """
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            if image.format == "PNG" and image.mode in ("L", "1") and image.size == (width, height):
                oil = oil_of(np.asarray(image if image.mode == "L" else image.convert("L")))
                oil_pixels = int(np.count_nonzero(oil))
                if not oil_pixels:
                    return Answer(ResultKind.MASK, ".png", 0, 0, 0)
                # Labelled as uint8: the same components, a third faster than as bool.
                labels, count = ndimage.label(oil.view(np.uint8), structure=_EIGHT_NEIGHBOURS)
                largest = int(np.bincount(labels.ravel())[1:].max())
                return Answer(ResultKind.MASK, ".png", oil_pixels, int(count), largest)
            image.load()  # make sure it decodes, not only its header
            return Answer(ResultKind.PICTURE, _PICTURE_EXT.get(image.format or "", ".img"))
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise UnreadableImage(f"the ML service's answer is not an image: {_reason(exc)}"
                              ) from None


def _grey(image: Image.Image) -> np.ndarray:
    """8-bit grey for display. 8-bit images are shown as they are (quick-looks are scaled
    for viewing already); deeper ones have their 1st to 99th percentile stretched."""
    if image.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
        return np.asarray(image if image.mode == "L" else image.convert("L"))
    values = np.asarray(image.convert("F"), np.float32)
    step = max(1, int(np.sqrt(values.size / 4096)))
    low, high = np.percentile(values[::step, ::step], (1, 99))
    scale = 255.0 / (high - low) if high > low else 0.0
    return np.asarray(np.clip((values - low) * scale, 0, 255), np.uint8)


def _overlay_palette() -> list[int]:
    """128 greys, then the same 128 greys tinted: index = grey // 2 + 128 * oil."""
    palette: list[int] = []
    for tinted in (False, True):
        for level in range(128):
            grey = np.full(3, level * 255 / 127, np.float32)
            rgb = grey * (1 - TINT_ALPHA) + TINT_RGB * TINT_ALPHA if tinted else grey
            palette.extend(round(float(c)) for c in rgb)
    return palette


OVERLAY_PALETTE = _overlay_palette()


def ensure_overlay(image_path: Path, mask_path: Path, out_path: Path, partial: Path,
                   max_px: int) -> Path:
    """The overlay of a mask, drawn on first use and kept (written whole at `partial`, then
    renamed)."""
    if not out_path.exists():
        out_path.parent.mkdir(exist_ok=True)
        try:
            with Image.open(mask_path) as mask:
                oil = oil_of(np.asarray(mask.convert("L")))
            render_overlay(image_path, oil, partial, max_px)
            if oil.any():
                # Imported here: geo/ reads this module's OIL_LEVEL.
                from .geo.polygons import slick_polygons
                from .outlines import draw_outlines

                draw_outlines(partial, slick_polygons(mask_path), oil.shape[1], oil.shape[0],
                              partial)
            os.replace(partial, out_path)
        finally:
            partial.unlink(missing_ok=True)
    return out_path


def render_overlay(image_path: Path, oil: np.ndarray, out_path: Path, max_px: int) -> None:
    """Write a PNG of the input in grey with the oil tinted, longest side at most max_px.

    A palette image (128 greys and their tinted twins) compressed with Huffman coding only:
    a third of the bytes of RGB to compress, and noisy sea scenes gain little from more.
    """
    with Image.open(image_path) as source:
        source.draft("L", (max_px, max_px))  # JPEG: decode at a reduced size
        factor = max(1, -(-max(source.size) // max_px))  # ceil
        image: Image.Image = source
        if factor > 1 and source.mode not in ("I;16", "I;16B", "I;16L"):
            image = source.reduce(factor)
        grey = _grey(image)
    if max(grey.shape) > max_px:
        thumb = Image.fromarray(grey)
        thumb.thumbnail((max_px, max_px))
        grey = np.asarray(thumb)
    height, width = grey.shape
    if oil.shape != grey.shape:
        oil = np.asarray(Image.fromarray(oil).resize((width, height), Image.Resampling.NEAREST))
    index = (grey >> 1) | (oil.astype(np.uint8) << 7)
    overlay = Image.frombytes("P", (width, height), index.astype(np.uint8).tobytes())
    overlay.putpalette(OVERLAY_PALETTE)
    overlay.save(out_path, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)
