"""Checking a zip's structure before and after `zipfile` parses it.

`zipfile.ZipFile` reads the whole central directory into memory and makes an object per
record before anyone can count them, and it never asks whether two entries share bytes. So
`check_directory` reads the end records and walks the record headers first (constant
memory), and `check_entries` reads every entry's local header and refuses entries whose
bytes overlap (the "better zip bomb": many records pointing into one compressed stream).

The unpacking errors live here so that `unpack` (which re-exports them) can use this module.
Blocking I/O on an open file; no other effect.
"""

from __future__ import annotations

import os
import struct
import zipfile
from dataclasses import dataclass
from typing import BinaryIO


class UnpackError(Exception):
    """Base of the errors an uploaded zip can cause."""


class NotAZip(UnpackError):
    """The upload is not a readable zip (truncated, corrupt or malformed)."""


class UnpackLimitExceeded(UnpackError):
    """The upload passes one of the unpacking limits; the message names it."""


# A central directory may take this much per entry OILSPILL_MAX_ZIP_ENTRIES allows: real
# records are 46 bytes and a name (rarely more than a few hundred bytes), so the limit only
# stops directories stuffed with huge names, extra fields or comments, which zipfile would
# hold in memory whole.
CD_BYTES_PER_ENTRY = 1024

_END = struct.Struct("<4s4H2LH")  # end of central directory record
_END_SIG = b"PK\x05\x06"
_ZIP64_LOCATOR = struct.Struct("<4sLQL")
_ZIP64_LOCATOR_SIG = b"PK\x06\x07"
_ZIP64_END = struct.Struct("<4sQ2H2L4Q")
_ZIP64_END_SIG = b"PK\x06\x06"
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")  # one central directory record, before its name
_CENTRAL_SIG = b"PK\x01\x02"
_LOCAL = struct.Struct("<4s5H3L2H")  # one local file header, before its name
_LOCAL_SIG = b"PK\x03\x04"
_UTF8_NAME = 0x800
_MAX_COMMENT_BYTES = 0xFFFF


@dataclass(frozen=True)
class Directory:
    """The central directory, as the end records place it and its records confirm.

    entries: records in it. start: where it starts in the file (after any data prepended to
    the zip); every entry's bytes must end before. size_bytes: its length.
    """

    entries: int
    start: int
    size_bytes: int


def too_many_entries(count: int | str, max_entries: int) -> UnpackLimitExceeded:
    return UnpackLimitExceeded(f"the zip has {count} entries; the limit is {max_entries} "
                               "(OILSPILL_MAX_ZIP_ENTRIES)")


def _end_record(fh: BinaryIO, file_bytes: int) -> tuple[int, bytes]:
    """The end of central directory record and its offset, found as zipfile finds it: at
    the very end, else the last signature within a comment's reach."""
    if file_bytes < _END.size:
        raise NotAZip("the upload is not a readable zip: too short")
    fh.seek(file_bytes - _END.size)
    record = fh.read(_END.size)
    if record[:4] == _END_SIG and record[-2:] == b"\x00\x00":
        return file_bytes - _END.size, record
    start = max(file_bytes - _MAX_COMMENT_BYTES - _END.size, 0)
    fh.seek(start)
    tail = fh.read()
    at = tail.rfind(_END_SIG)
    if at < 0 or len(tail) - at < _END.size:
        raise NotAZip("the upload is not a readable zip: no end of central directory record "
                      "(truncated?)")
    return start + at, tail[at:at + _END.size]


def _zip64_end(fh: BinaryIO, end_at: int) -> tuple[int, int, int, int] | None:
    """(entries on this disk, entries in all, directory size, directory offset) from the
    ZIP64 end record just before the end record, None without one (as zipfile reads it)."""
    at = end_at - _ZIP64_LOCATOR.size - _ZIP64_END.size
    if at < 0:
        return None
    fh.seek(end_at - _ZIP64_LOCATOR.size)
    if fh.read(4) != _ZIP64_LOCATOR_SIG:
        return None
    fh.seek(at)
    record = fh.read(_ZIP64_END.size)
    if len(record) != _ZIP64_END.size or record[:4] != _ZIP64_END_SIG:
        return None
    fields = _ZIP64_END.unpack(record)
    return fields[6], fields[7], fields[8], fields[9]


def check_directory(fh: BinaryIO, max_entries: int) -> Directory:
    """Check the entry count, the central directory's place and size, and every record's
    signature, without holding more than one record. Raises UnpackLimitExceeded past
    max_entries (or its directory allowance), NotAZip when the records disagree."""
    file_bytes = os.fstat(fh.fileno()).st_size
    end_at, record = _end_record(fh, file_bytes)
    _, _, _, this_disk, total, size, offset, _ = _END.unpack(record)
    directory_end = end_at
    zip64 = _zip64_end(fh, end_at)
    if zip64 is not None:
        this_disk, total, size, offset = zip64
        directory_end = end_at - _ZIP64_LOCATOR.size - _ZIP64_END.size
    if max(this_disk, total) > max_entries:
        raise too_many_entries(max(this_disk, total), max_entries)
    start = directory_end - size
    if start < 0:
        raise NotAZip(f"the zip is malformed: its central directory size ({size} bytes) "
                      "points outside the file")
    if offset > start:
        raise NotAZip(f"the zip is malformed: its central directory offset ({offset}) is "
                      "past where the directory is")
    allowance = max_entries * CD_BYTES_PER_ENTRY
    if size > allowance:
        raise UnpackLimitExceeded(
            f"the zip's central directory is {size} bytes; the limit is {allowance} "
            f"({CD_BYTES_PER_ENTRY} bytes per entry OILSPILL_MAX_ZIP_ENTRIES allows)")
    records = _count_records(fh, start, size, max_entries)
    if records != total or records != this_disk:
        raise NotAZip(f"the zip is malformed: its end record says {total} entries, its "
                      f"central directory holds {records}")
    return Directory(entries=records, start=start, size_bytes=size)


def _count_records(fh: BinaryIO, start: int, size: int, max_entries: int) -> int:
    """Walk the record headers (skipping names, extras and comments) and count them."""
    fh.seek(start)
    done = records = 0
    while done < size:
        head = fh.read(_CENTRAL.size)
        if len(head) != _CENTRAL.size or head[:4] != _CENTRAL_SIG:
            raise NotAZip(f"the zip is malformed: central directory record {records + 1} "
                          "is corrupt")
        records += 1
        if records > max_entries:
            raise too_many_entries(f"more than {max_entries}", max_entries)
        fields = _CENTRAL.unpack(head)
        skip = fields[12] + fields[13] + fields[14]  # name, extra field, comment
        fh.seek(skip, os.SEEK_CUR)
        done += _CENTRAL.size + skip
    if done != size:
        raise NotAZip("the zip is malformed: its last central directory record runs past "
                      "the directory's stated size")
    return records


def check_entries(fh: BinaryIO, infos: list[zipfile.ZipInfo], directory: Directory
                  ) -> dict[zipfile.ZipInfo, str]:
    """Each entry whose local header cannot be used, with the reason to skip it. Raises
    NotAZip when two entries' bytes (local header to end of compressed data) overlap."""
    bad: dict[zipfile.ZipInfo, str] = {}
    spans: list[tuple[int, int, zipfile.ZipInfo]] = []
    for info in infos:
        fh.seek(info.header_offset)
        head = fh.read(_LOCAL.size)
        if len(head) != _LOCAL.size or head[:4] != _LOCAL_SIG:
            bad[info] = "corrupt entry: no local header where the central directory points"
            continue
        fields = _LOCAL.unpack(head)
        flags, name_bytes, extra_bytes = fields[2], fields[9], fields[10]
        end = info.header_offset + _LOCAL.size + name_bytes + extra_bytes + info.compress_size
        if end > directory.start:
            bad[info] = "corrupt entry: its data runs into the central directory"
            continue
        # Every entry with a local header counts for overlaps, whatever its name: in the
        # classic bomb all records point at one local header under other names.
        spans.append((info.header_offset, end, info))
        try:
            name = fh.read(name_bytes).decode("utf-8" if flags & _UTF8_NAME else "cp437")
        except UnicodeDecodeError:
            name = None
        if name != info.orig_filename:
            bad[info] = "local header name differs from the central directory's"
    spans.sort(key=lambda span: span[0])
    reach: tuple[int, zipfile.ZipInfo] | None = None  # the furthest end so far, and whose
    for start, end, info in spans:
        if reach is not None and start < reach[0]:
            raise NotAZip(f"the zip is malformed: entries {reach[1].filename!r} and "
                          f"{info.filename!r} overlap (share compressed bytes, as zip bombs "
                          "do)")
        if reach is None or end > reach[0]:
            reach = (end, info)
    return bad
