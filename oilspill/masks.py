"""Reading images and the ML service's answers: sizes, mask statistics, overlays.

Overlays are drawn on first use (the API's overlay link, the result zip) and kept: the
backend's cost per image stays at reading the mask. They are read by GDAL at the overlay's
size (a JPEG from its reduced DCT scales, a PNG or BMP line by line), so drawing one costs
memory for the overlay, whatever the image's size or kind.

An answer of the ML service is held to the limit uploads are: over OILSPILL_MAX_IMAGE_PIXELS
(from its header, before any pixel is decoded) it is refused, and the task fails with why.
Reasons given to users never carry a server path or an object's repr.

Blocking: run in a thread.
"""

from __future__ import annotations

import importlib
import io
import os
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, BinaryIO

import numpy as np
from PIL import Image, UnidentifiedImageError

from .geo import GDAL_OPTIONS
from .jobs import ResultKind
from .names import plain_message

if TYPE_CHECKING:
    from rasterio.io import DatasetReader

# Pillow's format name -> the extension a picture result is stored with.
_PICTURE_EXT = {"JPEG": ".jpg", "PNG": ".png", "TIFF": ".tif", "BMP": ".bmp", "WEBP": ".webp"}
OIL_LEVEL = 128  # mask pixels at or above this are oil (the contract says 255; be lenient)
# Okabe-Ito orange: stands out on grey sea for every common kind of colour blindness.
TINT_RGB = np.array([230, 159, 0], np.float32)
TINT_ALPHA = 0.55
_EIGHT_NEIGHBOURS = np.ones((3, 3), bool)  # a slick touching only at a corner is one slick
# GDAL drivers an image is opened with: the kinds uploads accept (recognised by content),
# and never a format that could point elsewhere (a VRT, a sidecar).
PICTURE_DRIVERS = ("PNG", "JPEG", "BMP", "GTiff")
# Rows of the mask polygonised at once for an overlay's outlines: a few MiB for the widest
# picture the pixel limit lets through.
OUTLINE_BLOCK_ROWS = 256


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
    """Why Pillow could not read a file, without the file's path or an object's repr (users
    see this text)."""
    if isinstance(exc, UnidentifiedImageError):
        return "not a format this server decodes (PNG, JPEG, TIFF, BMP)"
    if isinstance(exc, OSError) and exc.filename is not None:
        return exc.strerror or exc.__class__.__name__
    return plain_message(str(exc)) or exc.__class__.__name__


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


LABELLING = "scipy.ndimage"  # 0.2 s and 17 MiB: loaded when work first comes (load_labelling)


def load_labelling() -> None:
    """Import the labelling every mask answer needs. Blocking: run in a thread, beside the
    first upload, so that neither start-up nor an idle server pays for it."""
    importlib.import_module(LABELLING)


def label_slicks(oil: np.ndarray) -> tuple[np.ndarray, int]:
    """The slicks of a bool oil array: each pixel's slick number (0: sea) and how many,
    8-connected (a slick touching another only at a corner is one slick)."""
    from scipy import ndimage  # see load_labelling

    # Labelled as uint8: the same components, a third faster than as bool.
    labels, count = ndimage.label(oil.view(np.uint8), structure=_EIGHT_NEIGHBOURS)
    return labels, int(count)


def first_pixels(labels: np.ndarray, count: int) -> np.ndarray:
    """Each label's first position in `labels` (flat, row order), for labels 0..count; -1
    for one that does not occur (label 0 when every pixel is oil)."""
    found, index = np.unique(labels.ravel(), return_index=True)
    first = np.full(count + 1, -1, np.intp)
    first[found] = index
    return first


def mask_answer(oil: np.ndarray) -> Answer:
    """A mask's figures from its oil pixels (bool): oil pixels, slicks, the largest."""
    oil_pixels = int(np.count_nonzero(oil))
    if not oil_pixels:
        return Answer(ResultKind.MASK, ".png", 0, 0, 0)
    labels, count = label_slicks(oil)
    # Counted over the oil pixels only (every label there is >= 1): a fraction of the
    # image, and the same sizes.
    largest = int(np.bincount(labels[oil])[1:].max())
    return Answer(ResultKind.MASK, ".png", oil_pixels, count, largest)


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


def read_answer(data: bytes | Path, width: int, height: int,
                max_pixels: int | None = None) -> Answer:
    """Classify the ML service's answer for a width x height input.

    A one-channel PNG of the input's size is a mask (statistics counted here); any other
    decodable image is a picture result (the original YOLO service answers with an annotated
    JPEG). Raises UnreadableImage if it is not an image at all, or if it is larger than
    `max_pixels` (default: Pillow's guard, which the app sets to OILSPILL_MAX_IMAGE_PIXELS),
    checked from its header before anything is decoded.
    """
    limit = max_pixels if max_pixels is not None else Image.MAX_IMAGE_PIXELS
    try:
        with Image.open(io.BytesIO(data) if isinstance(data, bytes) else data) as image:
            if image.format == "PNG" and image.mode in ("L", "1") and image.size == (width, height):
                return mask_answer(
                    oil_of(np.asarray(image if image.mode == "L" else image.convert("L"))))
            pixels = image.size[0] * image.size[1]
            if limit is not None and pixels > limit:
                raise UnreadableImage(
                    f"the ML service's answer is {image.size[0]}x{image.size[1]} = {pixels} "
                    f"pixels, over the limit of {limit} (OILSPILL_MAX_IMAGE_PIXELS)")
            # Make sure it decodes, not only its header; a JPEG at its smallest DCT scale.
            image.draft(None, (max(1, image.size[0] // 8), max(1, image.size[1] // 8)))
            image.load()
            return Answer(ResultKind.PICTURE, _PICTURE_EXT.get(image.format or "", ".img"))
    except Image.DecompressionBombError:
        raise UnreadableImage(f"the ML service's answer is far larger than {limit} pixels "
                              "(OILSPILL_MAX_IMAGE_PIXELS)") from None
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UnreadableImage(f"the ML service's answer is not an image: {_reason(exc)}"
                              ) from None


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


def _overlay_shape(width: int, height: int, max_px: int) -> tuple[int, int]:
    """(rows, cols) of the overlay of a width x height image: longest side <= max_px."""
    longest = max(width, height)
    if longest <= max_px:
        return height, width
    return max(1, round(height * max_px / longest)), max(1, round(width * max_px / longest))


def _nbits(src: DatasetReader) -> int:
    """Bits per value of band 1: 1, 2 or 4 for a low-depth PNG or BMP, else its type's."""
    try:
        return int(src.tags(1, "IMAGE_STRUCTURE").get("NBITS", 8))
    except ValueError:
        return 8


def _palette_greys(src: DatasetReader) -> np.ndarray:
    """The grey of each palette index (ITU-R 601 luma, as Pillow's convert("L"))."""
    greys = np.zeros(256, np.uint8)
    for index, (red, green, blue, *_) in src.colormap(1).items():
        if 0 <= index < 256:
            greys[index] = round(0.299 * red + 0.587 * green + 0.114 * blue)
    return greys


def _stretched(values: np.ndarray) -> np.ndarray:
    """Deeper than 8 bits: the 1st to 99th percentile of the finite values to 0..255 (in
    float32, in place: a few bytes a pixel of the overlay)."""
    grey = values.astype(np.float32)
    finite = np.isfinite(grey)
    step = max(1, int(np.sqrt(grey.size / 4096)))
    sample = grey[::step, ::step][finite[::step, ::step]]
    if not sample.size:
        return np.zeros(grey.shape, np.uint8)
    low, high = np.percentile(sample, (1, 99))
    grey -= np.float32(low)
    grey *= np.float32(255.0 / (high - low) if high > low else 0.0)
    np.clip(grey, 0, 255, out=grey)
    grey[~finite] = 0
    return grey.astype(np.uint8)


def read_grey(src: DatasetReader, shape: tuple[int, int]) -> np.ndarray:
    """The picture as 8-bit grey of `shape` (rows, cols), decimated by GDAL as it reads (a
    JPEG from its reduced DCT scales, a PNG or BMP line by line): memory depends on `shape`,
    never on the picture's size. Every kind: palette, 1/2/4-bit, grey (+ alpha), RGB(A),
    CMYK JPEG (GDAL gives RGB), 16-bit, 32-bit and float. 8-bit grey is shown as it is;
    deeper values are stretched between their 1st and 99th percentiles."""
    from rasterio.enums import ColorInterp, Resampling  # GDAL: loaded by the first overlay

    interp = src.colorinterp
    if interp[0] is ColorInterp.palette:
        index = src.read(1, out_shape=shape, resampling=Resampling.nearest)
        return np.asarray(_palette_greys(src)[index])
    rgb = src.count >= 3 and tuple(interp[:3]) == (ColorInterp.red, ColorInterp.green,
                                                   ColorInterp.blue)
    bands = [1, 2, 3] if rgb else [1]
    nbits = _nbits(src) if src.dtypes[0] == "uint8" else 8
    resampling = Resampling.nearest if nbits < 8 else Resampling.average
    values = src.read(bands, out_shape=(len(bands), *shape), resampling=resampling)
    if src.dtypes[0] == "uint8":
        if nbits < 8:
            values = values * np.uint8(255 // ((1 << nbits) - 1))
        if not rgb:
            return np.asarray(values[0])
        luma = values[0] * np.float32(0.299)
        luma += values[1] * np.float32(0.587)
        luma += values[2] * np.float32(0.114)
        return np.asarray(np.clip(np.rint(luma), 0, 255), np.uint8)
    if not rgb:
        return _stretched(values[0])
    luma = values[0] * np.float32(0.299)
    luma += values[1] * np.float32(0.587)
    luma += values[2] * np.float32(0.114)
    return _stretched(luma)


def read_oil(src: DatasetReader, shape: tuple[int, int]) -> np.ndarray:
    """The oil (bool) of a mask of `shape` (rows, cols), decimated to the nearest pixel."""
    from rasterio.enums import Resampling

    values = src.read(1, out_shape=shape, resampling=Resampling.nearest)
    nbits = _nbits(src)
    if src.dtypes[0] == "uint8" and nbits < 8:  # a 1-bit mask: 1 is oil
        values = values * np.uint8(255 // ((1 << nbits) - 1))
    oil = oil_of(values)
    if src.nodata is not None:
        oil &= values != src.nodata
    return oil


class _Unreadable(Exception):
    """Which input could not be read: its reason, for UnreadableImage."""


def _open_picture(path: Path) -> DatasetReader:
    """The image, opened by the first of PICTURE_DRIVERS that reads its header."""
    import rasterio
    from rasterio.errors import RasterioError

    for driver in PICTURE_DRIVERS:
        try:
            return rasterio.open(path, driver=driver)
        except RasterioError:
            continue
    raise _Unreadable("the image is not a PNG, JPEG, BMP or TIFF that can be drawn")


def _read_inputs(image_path: Path, mask_path: Path, max_px: int
                 ) -> tuple[np.ndarray, np.ndarray, tuple[int, int]]:
    """(grey, oil, the mask's (width, height)) at the overlay's size."""
    import rasterio  # GDAL, and rasterio's own start: loaded by the first overlay drawn
    from rasterio.errors import RasterioError

    with rasterio.Env(**GDAL_OPTIONS):
        try:
            with _open_picture(image_path) as src:
                shape = _overlay_shape(src.width, src.height, max_px)
                grey = read_grey(src, shape)
        except (RasterioError, ValueError, IndexError, MemoryError) as exc:
            raise _Unreadable("the image's pixel data cannot be read (truncated, corrupt or "
                              "not a kind this server draws)") from exc
        try:
            with rasterio.open(mask_path, driver="PNG") as mask:
                oil = read_oil(mask, shape)
                size = (mask.width, mask.height)
        except (RasterioError, ValueError, IndexError, MemoryError) as exc:
            raise _Unreadable("the mask cannot be read") from exc
    return grey, oil, size


def ensure_overlay(image_path: Path, mask_path: Path, out_path: Path, partial: Path,
                   max_px: int, *, max_slicks: int) -> Path:
    """The overlay of a mask, drawn on first use and kept (written whole at `partial`, then
    renamed), the max_slicks largest slicks outlined. Memory depends on max_px and
    max_slicks, not on the image. Raises UnreadableImage (the reason
    in user's terms) when the image or the mask cannot be read, FileNotFoundError when they
    are gone."""
    if out_path.exists():
        return out_path
    for path in (image_path, mask_path):
        if not path.is_file():
            raise FileNotFoundError(f"{path.name} is gone")
    out_path.parent.mkdir(exist_ok=True)
    # Imported here: geo/ reads this module's OIL_LEVEL, and GDAL loads with the first
    # overlay drawn.
    from rasterio.errors import RasterioError

    from .geo.errors import BadMask
    from .geo.polygons import slick_polygons
    from .outlines import draw_outlines

    try:
        grey, oil, (width, height) = _read_inputs(image_path, mask_path, max_px)
        try:
            slicks = slick_polygons(mask_path, block_rows=OUTLINE_BLOCK_ROWS,
                                    max_slicks=max_slicks)
        except (BadMask, RasterioError) as exc:
            raise _Unreadable("the mask cannot be read") from exc
        render_overlay(grey, oil, partial)
        if slicks:
            draw_outlines(partial, slicks, width, height, partial)
        os.replace(partial, out_path)
    except _Unreadable as exc:
        raise UnreadableImage(f"cannot draw the overlay: {exc}") from exc
    finally:
        partial.unlink(missing_ok=True)
    return out_path


def render_overlay(grey: np.ndarray, oil: np.ndarray, out_path: Path) -> None:
    """Write a PNG of `grey` with `oil` (bool, the same shape) tinted.

    A palette image (128 greys and their tinted twins) compressed with Huffman coding only:
    a third of the bytes of RGB to compress, and noisy sea scenes gain little from more.
    """
    height, width = grey.shape
    index = (grey >> 1) | (oil.astype(np.uint8) << 7)
    overlay = Image.frombytes("P", (width, height), index.astype(np.uint8).tobytes())
    overlay.putpalette(OVERLAY_PALETTE)
    overlay.save(out_path, format="PNG", compress_level=1, compress_type=zlib.Z_HUFFMAN_ONLY)
