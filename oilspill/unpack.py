"""Unpacking an upload's zip safely: every image written under a name we choose.

Blocking work: call it with `asyncio.to_thread`.
"""

from __future__ import annotations

import logging
import lzma
import os
import re
import stat
import zipfile
import zlib
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import IO

from .geo.safe import find_safe
from .paths import calibration_name, stored_image_name
from .zipcheck import NotAZip as NotAZip
from .zipcheck import UnpackError as UnpackError
from .zipcheck import UnpackLimitExceeded as UnpackLimitExceeded
from .zipcheck import check_directory, check_entries, too_many_entries

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
# Compression methods zipfile reads (bzip2 and lzma when Python has their modules).
_READABLE_METHODS = frozenset({zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED, zipfile.ZIP_BZIP2,
                               zipfile.ZIP_LZMA})
# Names of the other methods (APPNOTE 4.4.5), for the reason an entry is skipped.
_METHOD_NAMES = {1: "shrink", 2: "reduce", 3: "reduce", 4: "reduce", 5: "reduce",
                 6: "implode", 9: "Deflate64", 10: "old TERSE", 18: "TERSE", 19: "LZ77",
                 93: "Zstandard", 95: "xz", 96: "JPEG", 97: "WavPack", 98: "PPMd",
                 99: "AES-encrypted"}
# What reading one entry's data can raise when the entry is corrupt: zipfile's own errors
# (bad CRC, bad header, names that differ, a method it lacks: NotImplementedError, or
# RuntimeError without the bz2 or lzma module), the decompressors' errors (bz2 raises
# OSError), and data that ends early. Writes are outside, so a full disk stays a full disk.
_ENTRY_ERRORS = (zipfile.BadZipFile, RuntimeError, EOFError, zlib.error, lzma.LZMAError,
                 OSError)


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


class _BadEntry(Exception):
    """One entry cannot be read; the message is the reason it is skipped."""


class _Budget:
    """Bytes the whole zip may still unpack to: OILSPILL_MAX_UNPACKED_BYTES, and at most
    OILSPILL_MAX_COMPRESSION_RATIO times the zip's own size (once past RATIO_FLOOR_BYTES)."""

    def __init__(self, limits: UnpackLimits, zip_bytes: int) -> None:
        self._max_ratio = limits.max_compression_ratio
        by_ratio = max(int(limits.max_compression_ratio * zip_bytes), RATIO_FLOOR_BYTES)
        if by_ratio < limits.max_unpacked_bytes:
            self.left = by_ratio
            self._limit = (f"more than {limits.max_compression_ratio:g} times its own "
                           f"{zip_bytes} bytes (OILSPILL_MAX_COMPRESSION_RATIO)")
        else:
            self.left = limits.max_unpacked_bytes
            self._limit = (f"more than {limits.max_unpacked_bytes} bytes "
                           "(OILSPILL_MAX_UNPACKED_BYTES)")

    def refuse_declared(self, declared_bytes: int) -> None:
        """Refuse at once when the entries' stated sizes already pass the limit."""
        if declared_bytes > self.left:
            raise UnpackLimitExceeded(f"the zip's entries say they unpack to {self._limit}")

    def spend(self, size_bytes: int) -> None:
        """Count bytes actually decompressed."""
        self.left -= size_bytes
        if self.left < 0:
            raise UnpackLimitExceeded(f"the zip unpacks to {self._limit}")

    def check_entry(self, name: str, written_bytes: int, compressed_bytes: int) -> None:
        """Refuse an entry expanding past the ratio, once it has passed RATIO_FLOOR_BYTES."""
        ratio = written_bytes / max(compressed_bytes, 1)
        if written_bytes > RATIO_FLOOR_BYTES and ratio > self._max_ratio:
            raise UnpackLimitExceeded(f"entry {name!r} expands more than {self._max_ratio:g}:1 "
                                      "(OILSPILL_MAX_COMPRESSION_RATIO)")


def _entry_error(exc: BaseException) -> _BadEntry:
    """The reason an entry whose data zipfile could not read is skipped."""
    text = str(exc)
    if isinstance(exc, zipfile.BadZipFile) and text.startswith("Bad CRC-32"):
        return _BadEntry("corrupt data: bad CRC-32")
    if isinstance(exc, EOFError):
        return _BadEntry("corrupt data: it ends early")
    return _BadEntry(f"corrupt entry: {text or type(exc).__name__}")


def _unreadable(info: zipfile.ZipInfo) -> str | None:
    """Why zipfile cannot read the entry's data at all, None when it can try."""
    if info.compress_type not in _READABLE_METHODS:
        label = _METHOD_NAMES.get(info.compress_type, "unknown")
        return f"unsupported compression method {info.compress_type} ({label})"
    return None


def unpack_images(zip_path: Path, images_dir: Path, limits: UnpackLimits,
                  polarisation: str = "vv") -> Unpacked:
    """Write every image of the zip under `images_dir` with a safe, unique name.

    Never extracts by the entry's own name. Non-images, and entries that cannot be read
    (bad CRC, unknown compression, corrupt headers), are skipped and listed. The entry
    count is checked before zipfile parses the central directory; entries that share bytes
    refuse the zip; limits are enforced on bytes actually decompressed. A Sentinel-1 product
    (a `*.SAFE/manifest.safe` inside) gives one image, its measurement of `polarisation`,
    with its calibration table beside it; its other files are skipped. Raises NotAZip,
    UnpackLimitExceeded or geo.safe.SafeError.
    """
    with open(zip_path, "rb") as fh:
        directory = check_directory(fh, limits.max_entries)
        try:
            zf = zipfile.ZipFile(fh)
        except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
            raise NotAZip(f"the upload is not a readable zip: {exc}") from None
        with zf:
            infos = zf.infolist()
            if len(infos) > limits.max_entries:  # check_directory counted them already
                raise too_many_entries(len(infos), limits.max_entries)
            bad = check_entries(fh, infos, directory)
            budget = _Budget(limits, os.fstat(fh.fileno()).st_size)
            budget.refuse_declared(sum(info.file_size for info in infos))
            images_dir.mkdir(parents=True, exist_ok=True)
            return _unpack_all(zf, infos, bad, images_dir, budget, polarisation)


def _unpack_all(zf: zipfile.ZipFile, infos: list[zipfile.ZipInfo],
                bad: dict[zipfile.ZipInfo, str], images_dir: Path, budget: _Budget,
                polarisation: str) -> Unpacked:
    result = Unpacked()
    named = [(info, _safe_name(info.filename)) for info in infos if not info.is_dir()]
    product = find_safe([name for _, name in named if name], polarisation)
    calibration: tuple[zipfile.ZipInfo, str] | None = None
    measurement: str | None = None
    for info, name in named:
        if name is None:
            result.skipped.append((info.filename, "unsafe path"))
            continue
        if _ignored(name):
            continue
        if product is not None and name in product.members:
            if name == product.calibration:
                calibration = info, name
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
            image = _unpack_entry(zf, info, name, images_dir, len(result.images), budget,
                                  bad, result)
        except _BadEntry as exc:
            result.skipped.append((name, str(exc)))
            continue
        if image:
            result.images.append(image)
            if product is not None and name == product.measurement:
                measurement = image.stored_name
    if calibration is not None and measurement is not None:
        info, name = calibration
        try:
            with _open(zf, info, bad) as src:
                _copy(src, images_dir / calibration_name(measurement), b"", name,
                      info.compress_size, budget)
        except _BadEntry as exc:  # the scene is then used uncalibrated, and says so
            result.skipped.append((name, str(exc)))
    return result


def _copy(src: IO[bytes], target: Path, head: bytes, name: str, compressed_bytes: int,
          budget: _Budget) -> None:
    """Write the entry's data (`head`, already read, then the rest of `src`) to `target`,
    counted against the budget and the entry's own ratio; a corrupt entry leaves no file
    and raises _BadEntry."""
    written = 0
    try:
        with open(target, "wb") as out:
            chunk = head
            while True:
                written += len(chunk)
                budget.spend(len(chunk))
                budget.check_entry(name, written, compressed_bytes)
                out.write(chunk)
                try:
                    chunk = src.read(CHUNK_BYTES)
                except _ENTRY_ERRORS as exc:
                    raise _entry_error(exc) from None
                if not chunk:
                    break
    except _BadEntry:
        target.unlink(missing_ok=True)
        raise


def _open(zf: zipfile.ZipFile, info: zipfile.ZipInfo, bad: dict[zipfile.ZipInfo, str]
          ) -> IO[bytes]:
    """The entry's data stream; _BadEntry when it cannot be read."""
    reason = bad.get(info) or _unreadable(info)
    if reason:
        raise _BadEntry(reason)
    try:
        return zf.open(info)
    except _ENTRY_ERRORS as exc:
        raise _entry_error(exc) from None


def _unpack_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, images_dir: Path,
                  seq: int, budget: _Budget, bad: dict[zipfile.ZipInfo, str],
                  result: Unpacked) -> UnpackedImage | None:
    with _open(zf, info, bad) as src:
        try:
            head = src.read(16)
        except _ENTRY_ERRORS as exc:
            raise _entry_error(exc) from None
        if head.startswith(ZIP_MAGIC):
            result.skipped.append((name, "nested zip (not opened)"))
            return None
        kind = sniff_image(head)
        if kind is None:
            result.skipped.append((name, "not an image (PNG, JPEG, TIFF or BMP)"))
            return None
        ext, content_type = kind
        stored = stored_image_name(seq, ext)
        _copy(src, images_dir / stored, head, name, info.compress_size, budget)
    return UnpackedImage(filename=name, stored_name=stored, content_type=content_type)
