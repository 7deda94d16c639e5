"""A folder of images sent as a zip made while it streams (no copy on disk or in memory), or,
for a resumable upload, whose size must be known first, written to a file."""

from __future__ import annotations

import io
import os
import zipfile
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from ..paths import PARTIAL_SUFFIX

CHUNK_BYTES = 1024 * 1024


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


def zip_to_file(folder: Path, files: Sequence[Path], dest: Path,
                on_bytes: Callable[[int], None] | None = None) -> None:
    """The same zip as zip_stream, written to `dest` (through a partial name, so a run
    stopped midway leaves no zip that looks whole); on_bytes(n) for each chunk written."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
    with open(partial, "wb") as out:
        for chunk in zip_stream(folder, files):
            out.write(chunk)
            if on_bytes:
                on_bytes(len(chunk))
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, dest)
