"""All zip handling: unpacking an upload safely, and building a job's result zip.

Both are blocking work: call them with `asyncio.to_thread`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import re
import stat
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any

from .jobs import ResultKind, Task
from .masks import ensure_overlay
from .paths import JobPaths

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
    (b"BM", "bmp", "image/bmp"),
)
_ZIP_MAGIC = (b"PK\x03\x04", b"PK\x05\x06")
_DRIVE = re.compile(r"^[A-Za-z]:")

SUMMARY_FIELDS = ("filename", "status", "width", "height", "oil_fraction", "oil_pixels",
                  "slick_count", "largest_slick_px", "result", "overlay", "error")


class ArchiveError(Exception):
    """Base of the errors an upload's zip can cause."""


class NotAZip(ArchiveError):
    """The upload is not a readable zip archive (or is truncated or corrupt)."""


class ArchiveTooLarge(ArchiveError):
    """The zip passes one of the unpacking limits; the message names it."""


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


def unpack_images(zip_path: Path, images_dir: Path, limits: UnpackLimits) -> Unpacked:
    """Write every image of the zip under `images_dir` with a safe, unique name.

    Never extracts by the entry's own name. Non-images are skipped and listed; limits are
    enforced on bytes actually decompressed. Raises NotAZip or ArchiveTooLarge.
    """
    try:
        zf = zipfile.ZipFile(zip_path)
    except (zipfile.BadZipFile, OSError, ValueError) as exc:
        raise NotAZip(f"not a readable zip archive: {exc}") from None
    with zf:
        infos = zf.infolist()
        if len(infos) > limits.max_entries:
            raise ArchiveTooLarge(
                f"the zip has {len(infos)} entries; the limit is {limits.max_entries} "
                "(OILSPILL_MAX_ZIP_ENTRIES)")
        images_dir.mkdir(parents=True, exist_ok=True)
        result = Unpacked()
        budget = [limits.max_unpacked_bytes]
        for info in infos:
            if info.is_dir():
                continue
            name = _safe_name(info.filename)
            if name is None:
                result.skipped.append((info.filename, "unsafe path"))
                continue
            if _ignored(name):
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
        return result


def _unpack_entry(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str, images_dir: Path,
                  seq: int, limits: UnpackLimits, budget: list[int],
                  result: Unpacked) -> UnpackedImage | None:
    with zf.open(info) as src:
        head = src.read(16)
        if head.startswith(_ZIP_MAGIC):
            result.skipped.append((name, "nested zip (not opened)"))
            return None
        kind = sniff_image(head)
        if kind is None:
            result.skipped.append((name, "not an image (PNG, JPEG, TIFF or BMP)"))
            return None
        ext, content_type = kind
        stored = f"{seq:06d}.{ext}"
        target = images_dir / stored
        written = 0
        compressed = max(info.compress_size, 1)
        with open(target, "wb") as out:
            chunk = head
            while chunk:
                written += len(chunk)
                budget[0] -= len(chunk)
                if budget[0] < 0:
                    raise ArchiveTooLarge(
                        f"the zip unpacks to more than {limits.max_unpacked_bytes} bytes "
                        "(OILSPILL_MAX_UNPACKED_BYTES)")
                ratio = written / compressed
                if written > RATIO_FLOOR_BYTES and ratio > limits.max_compression_ratio:
                    raise ArchiveTooLarge(
                        f"entry {name!r} expands more than {limits.max_compression_ratio:g}:1 "
                        "(OILSPILL_MAX_COMPRESSION_RATIO)")
                out.write(chunk)
                chunk = src.read(CHUNK_BYTES)
    return UnpackedImage(filename=name, stored_name=stored, content_type=content_type)


README_TXT = """\
oilspill results
================

masks/<image>.png     one per image the ML service segmented: one channel, the image's
                      width and height, 0 = sea, 255 = oil. <image> is the image's path in
                      your upload, its extension replaced (a clash gets ~2, ~3 ...).
overlays/<image>.png  the same image in grey with the oil tinted orange, for looking at;
                      its longest side is at most OILSPILL_OVERLAY_MAX_PX.
results/<image>.<ext> pictures an ML service sent instead of masks (an annotated JPEG from
                      a YOLO-style service); no statistics are computed for them.
summary.csv           one row per image of the upload:
summary.json            filename           the image's path in the upload
                        status             done or failed
                        width, height      in pixels
                        oil_fraction       oil pixels / all pixels, 0..1
                        oil_pixels         pixels marked oil in the mask
                        slick_count        separate slicks (8-connected areas of oil)
                        largest_slick_px   pixels of the largest slick
                        result, overlay    its files in this zip
                        error              why it failed, for a failed image
"""


def _zip_stems(tasks: Sequence[Task]) -> dict[str, str]:
    """A unique name in the result zip for each done task, from its path in the upload."""
    used: set[str] = set()
    stems: dict[str, str] = {}
    for task in tasks:
        if task.result_kind is None or task.result_name is None:
            continue
        base = str(PurePosixPath(task.filename).with_suffix(""))
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}~{n}"
        used.add(stem)
        stems[task.id] = stem
    return stems


def _entries(task: Task, stem: str | None) -> tuple[str | None, str | None]:
    """(result, overlay) paths in the zip of a task."""
    if stem is None or task.result_name is None:
        return None, None
    if task.result_kind is ResultKind.MASK:
        return f"masks/{stem}.png", f"overlays/{stem}.png" if task.has_overlay else None
    return f"results/{stem}{PurePosixPath(task.result_name).suffix}", None


def summary_rows(tasks: Sequence[Task], stems: dict[str, str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for t in tasks:
        result, overlay = _entries(t, stems.get(t.id))
        rows.append({
            "filename": t.filename, "status": t.status.value, "width": t.width,
            "height": t.height, "oil_fraction": t.oil_fraction, "oil_pixels": t.oil_pixels,
            "slick_count": t.slick_count, "largest_slick_px": t.largest_slick_px,
            "result": result, "overlay": overlay, "error": t.error,
        })
    return rows


def build_result_zip(paths: JobPaths, tasks: Sequence[Task], overlay_max_px: int) -> Path:
    """Write the job's result zip (masks/, overlays/, results/, summary.csv, summary.json,
    README.txt) atomically."""
    stems = _zip_stems(tasks)
    rows = summary_rows(tasks, stems)
    target = paths.archive
    partial = target.with_name(target.name + ".part")
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", README_TXT)
        for task in tasks:
            result, overlay = _entries(task, stems.get(task.id))
            if result is None or task.result_kind is None or task.result_name is None:
                continue
            # PNG and JPEG are compressed already: store them as they are.
            zf.write(paths.result(task.result_kind, task.result_name), result,
                     compress_type=zipfile.ZIP_STORED)
            if overlay:
                drawn = ensure_overlay(paths.image(task.stored_name),
                                       paths.result(task.result_kind, task.result_name),
                                       paths.overlay(task.result_name), overlay_max_px)
                zf.write(drawn, overlay, compress_type=zipfile.ZIP_STORED)
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        zf.writestr("summary.csv", text.getvalue())
        zf.writestr("summary.json", json.dumps(rows, indent=1))
    with open(partial, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, target)
    return target


class _Chunks(io.RawIOBase):
    """A write-only sink that keeps what zipfile writes, for a zip made as it is sent."""

    def __init__(self) -> None:
        self.parts: list[bytes] = []

    def writable(self) -> bool:
        return True

    def write(self, data: Any) -> int:
        self.parts.append(bytes(data))
        return len(data)

    def take(self) -> bytes:
        data = b"".join(self.parts)
        self.parts.clear()
        return data


def folder_files(folder: Path) -> list[Path]:
    """The files under a folder that belong in its zip (no dot files or folders), sorted."""
    return sorted(p for p in folder.rglob("*") if p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(folder).parts))


def zip_stream(folder: Path, files: Sequence[Path]) -> Iterator[bytes]:
    """A zip of the files (stored: images are compressed already), made chunk by chunk as it
    is read, so a folder of any size is sent without a copy on disk or in memory."""
    sink = _Chunks()
    with zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED) as zf:
        for path in files:
            info = zipfile.ZipInfo.from_file(path, path.relative_to(folder).as_posix())
            with open(path, "rb") as src, zf.open(info, "w", force_zip64=True) as entry:
                while chunk := src.read(CHUNK_BYTES):
                    entry.write(chunk)
                    yield sink.take()
    yield sink.take()
