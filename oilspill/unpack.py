"""Unpacking an upload's zip safely: every image written under a name we choose.

Blocking work: call it with `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import re
import stat
import zipfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from .geo.safe import find_safe
from .paths import calibration_name, stored_image_name

logger = logging.getLogger(__name__)

CHUNK_BYTES = 1024 * 1024
# The ratio limit only bites once an entry has produced this much: small, very regular files
# (a blank BMP) compress far better than 200:1 and are harmless.
RATIO_FLOOR_BYTES = 1024 * 1024

# Image types by their first bytes: (magic, extension, content type).
_IMAGE_MAGIC: tuple[tuple[bytes, str, str], ...] = (
    (b"\x89PNG\r\n\x1a\n", "png", "image/png"),
    (b"\xff\xd8\xff", "jpg", "image/jpeg"),
    (b"II*\x00", "tif", "image/tiff"),
    (b"MM\x00*", "tif", "image/tiff"),
    (b"II+\x00", "tif", "image/tiff"),  # BigTIFF
    (b"MM\x00+", "tif", "image/tiff"),
    (b"BM", "bmp", "image/bmp"),
)
ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_DRIVE = re.compile(r"^[A-Za-z]:")

class UnpackError(Exception):
    """Base of the errors an uploaded zip can cause."""


class NotAZip(UnpackError):
    """The upload is not a readable zip (or is truncated or corrupt)."""


class UnpackLimitExceeded(UnpackError):
    """The upload passes one of the unpacking limits; the message names it."""


@dataclass(frozen=True)
class UnpackLimits:
    max_entries: int
    max_unpacked_bytes: int
    max_compression_ratio: float


@dataclass(frozen=True)
class UnpackedImage:
    filename: str  # the path inside the zip, normalised to forward slashes
    stored_name: str  # the safe name it was written under, inside the images folder
    content_type: str


@dataclass
class Unpacked:
    images: list[UnpackedImage] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def sniff_image(head: bytes) -> tuple[str, str] | None:
    """(extension, content type) of an image recognised by its first bytes, else None."""
    for magic, ext, content_type in _IMAGE_MAGIC:
        if head.startswith(magic):
            return ext, content_type
    return None


def _safe_name(raw: str) -> str | None:
    """The entry's path with forward slashes, or None when it points outside its folder."""
    name = raw.replace("\\", "/")
    if name.startswith("/") or _DRIVE.match(name) or "\x00" in name:
        return None
    parts = [p for p in PurePosixPath(name).parts if p not in ("", ".")]
    if not parts or ".." in parts:
        return None
    return "/".join(parts)


def _ignored(name: str) -> bool:
    """Entries nobody means as content: macOS resource forks, dot files and dot folders."""
    parts = name.split("/")
    return parts[0] == "__MACOSX" or any(p.startswith(".") for p in parts)


def _not_regular(info: zipfile.ZipInfo) -> bool:
    """A symlink, device or fifo, by the Unix file type in the entry's attributes.

    Many writers (Python's writestr among them) leave the type bits empty: that is a file.
    """
    file_type = stat.S_IFMT(info.external_attr >> 16)
    return info.create_system == 3 and file_type != 0 and file_type != stat.S_IFREG


def unpack_images(zip_path: Path, images_dir: Path, limits: UnpackLimits,
                  polarisation: str = "vv") -> Unpacked:
    """Write every image of the zip under `images_dir` with a safe, unique name.

    Never extracts by the entry's own name. Non-images are skipped and listed; limits are
    enforced on bytes actually decompressed. A Sentinel-1 product (a `*.SAFE/manifest.safe`
    inside) gives one image, its measurement of `polarisation`, with its calibration table
    beside it; its other files are skipped. Raises NotAZip, UnpackLimitExceeded or
    geo.safe.SafeError.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise NotAZip(f"the upload is not a readable zip: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise UnpackLimitExceeded(
                f"the zip has {len(infos)} entries; the limit is {limits.max_entries} "
                "(OILSPILL_MAX_ZIP_ENTRIES)")
        images_dir.mkdir(parents=True, exist_ok=True)
        result = Unpacked()
        budget = [limits.max_unpacked_bytes]
        named = [(info, _safe_name(info.filename)) for info in infos if not info.is_dir()]
        product = find_safe([name for _, name in named if name], polarisation)
        calibration: zipfile.ZipInfo | None = None
        measurement: str | None = None
        for info, name in named:
            if name is None:
                result.skipped.append((info.filename, "unsafe path"))
                continue
            if _ignored(name):
                continue
            if product is not None and name in product.members:
                if name == product.calibration:
                    calibration = info
                else:
                    result.skipped.append((name, "part of a Sentinel-1 product"))
                continue
            if _not_regular(info):
                result.skipped.append((name, "not a regular file"))
                continue
            if info.flag_bits & 0x1:
                result.skipped.append((name, "encrypted"))
                continue
            try:
                image = _unpack_entry(zf, info, name, images_dir, len(result.images), limits,
                                      budget, result)
            except (zipfile.BadZipFile, zipfile.LargeZipFile, EOFError,
                    NotImplementedError) as exc:
                raise NotAZip(f"corrupt zip entry {name!r}: {exc}") from None
            if image:
                result.images.append(image)
                if product is not None and name == product.measurement:
                    measurement = image.stored_name
        if calibration is not None and measurement is not None:
            _unpack_calibration(zf, calibration, images_dir / calibration_name(measurement),
                                limits, budget)
        return result


def _unpack_calibration(zf: zipfile.ZipFile, info: zipfile.ZipInfo, target: Path,
                        limits: UnpackLimits, budget: list[int]) -> None:
    """Write a Sentinel-1 calibration table, counted against the unpacking limit."""
    try:
        with zf.open(info) as src, open(target, "wb") as out:
            while chunk := src.read(CHUNK_BYTES):
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise UnpackLimitExceeded(
                        f"the zip unpacks to more than {limits.max_unpacked_bytes} bytes "
                        "(OILSPILL_MAX_UNPACKED_BYTES)")
                out.write(chunk)
    except (zipfile.BadZipFile, EOFError, NotImplementedError) as exc:
        raise NotAZip(f"corrupt zip entry {info.filename!r}: {exc}") from None


def _unpack_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, images_dir: Path,
                  seq: int, limits: UnpackLimits, budget: list[int],
                  result: Unpacked) -> UnpackedImage | None:
    with zf.open(info) as src:
        head = src.read(16)
        if head.startswith(ZIP_MAGIC):
            result.skipped.append((name, "nested zip (not opened)"))
            return None
        kind = sniff_image(head)
        if kind is None:
            result.skipped.append((name, "not an image (PNG, JPEG, TIFF or BMP)"))
            return None
        ext, content_type = kind
        stored = stored_image_name(seq, ext)
        target = images_dir / stored
        written = 0
        compressed = max(info.compress_size, 1)
        with open(target, "wb") as out:
            chunk = head
            while chunk:
                written += len(chunk)
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise UnpackLimitExceeded(
                        f"the zip unpacks to more than {limits.max_unpacked_bytes} bytes "
                        "(OILSPILL_MAX_UNPACKED_BYTES)")
                ratio = written / compressed
                if written > RATIO_FLOOR_BYTES and ratio > limits.max_compression_ratio:
                    raise UnpackLimitExceeded(
                        f"entry {name!r} expands more than {limits.max_compression_ratio:g}:1 "
                        "(OILSPILL_MAX_COMPRESSION_RATIO)")
                out.write(chunk)
                chunk = src.read(CHUNK_BYTES)
    return UnpackedImage(filename=name, stored_name=stored, content_type=content_type)
