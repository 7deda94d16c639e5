"""Hostile zip structures: overlapping entries, lying end records, huge central directories,
and single bad entries. Every zip here is built by hand with struct and zlib."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from oilspill.unpack import (
    NotAZip,
    UnpackLimits,
    unpack_images,
)
from oilspill.web.app import create_app

from .conftest import form, scene_png
from .georef import safe_product_files
from .test_hostile_input import accepted, rejected

LIMITS = UnpackLimits(max_entries=10_000, max_unpacked_bytes=8 * 2**30,
                      max_compression_ratio=200.0)
STORED, DEFLATED = 0, 8

# --- building zips by hand ---------------------------------------------------------------


def deflate(data: bytes) -> bytes:
    packer = zlib.compressobj(9, zlib.DEFLATED, -15)  # raw deflate, as zips hold it
    return packer.compress(data) + packer.flush()


@dataclass
class Member:
    """One entry; the fields after `data` let a test make it lie."""

    name: str
    data: bytes
    method: int = DEFLATED
    payload: bytes | None = None  # the bytes stored; default: data compressed by method
    crc: int | None = None  # default: the data's CRC-32
    size: int | None = None  # declared uncompressed size; default: len(data)
    local_name: str | None = None  # name in the local header; default: name
    version: int = 20  # version needed to extract

    def stored(self) -> bytes:
        if self.payload is not None:
            return self.payload
        return deflate(self.data) if self.method == DEFLATED else self.data

    def fields(self) -> tuple[int, int, int]:
        """(crc, compressed size, uncompressed size) as the headers say."""
        return (zlib.crc32(self.data) if self.crc is None else self.crc, len(self.stored()),
                len(self.data) if self.size is None else self.size)


def local_header(name: str, method: int, crc: int, csize: int, usize: int,
                 version: int = 20) -> bytes:
    raw = name.encode()
    return struct.pack("<4s5H3L2H", b"PK\x03\x04", version, 0x800, method, 0, 0x21, crc,
                       csize, usize, len(raw), 0) + raw


def central_record(name: str | bytes, offset: int, method: int, crc: int, csize: int,
                   usize: int, version: int = 20) -> bytes:
    raw = name.encode() if isinstance(name, str) else name
    return struct.pack("<4s4B4HL2L5H2L", b"PK\x01\x02", 20, 0, version, 0, 0x800, method, 0,
                       0x21, crc, csize, usize, len(raw), 0, 0, 0, 0, 0, offset) + raw


def end_record(count: int, cd_size: int, cd_offset: int) -> bytes:
    return struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, count, count, cd_size, cd_offset, 0)


def zip64_end(count: int, cd_size: int, cd_offset: int, at: int) -> bytes:
    """A ZIP64 end record written at offset `at`, its locator, and the classic end record
    with every field saying "see ZIP64"."""
    record = struct.pack("<4sQ2H2L4Q", b"PK\x06\x06", 44, 45, 45, 0, 0, count, count, cd_size,
                         cd_offset)
    locator = struct.pack("<4sLQL", b"PK\x06\x07", 0, at, 1)
    return record + locator + struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 0xFFFF, 0xFFFF,
                                          0xFFFFFFFF, 0xFFFFFFFF, 0)


def body_and_directory(members: list[Member]) -> tuple[bytes, bytes]:
    body, directory = b"", b""
    for m in members:
        crc, csize, usize = m.fields()
        directory += central_record(m.name, len(body), m.method, crc, csize, usize, m.version)
        body += local_header(m.local_name or m.name, m.method, crc, csize, usize,
                             m.version) + m.stored()
    return body, directory


def finish(body: bytes, directory: bytes, count: int, *, zip64: bool = False,
           said_count: int | None = None, said_size: int | None = None,
           said_offset: int | None = None) -> bytes:
    """Body, central directory and end record(s); `said_*` make the end record lie."""
    count = count if said_count is None else said_count
    size = len(directory) if said_size is None else said_size
    offset = len(body) if said_offset is None else said_offset
    if zip64:
        return body + directory + zip64_end(count, size, offset, len(body) + len(directory))
    return body + directory + end_record(count, size, offset)


def make_zip(members: list[Member], **end: Any) -> bytes:
    body, directory = body_and_directory(members)
    return finish(body, directory, len(members), **end)


def bmp(size: int, fill: bytes = b"\x00") -> bytes:
    """Bytes that pass for a BMP by their first two (all the unpacker looks at)."""
    return b"BM" + fill * (size - 2)


def full_overlap(names: list[str], data: bytes) -> bytes:
    """Every central record points at one local header and its stream (Fifield's
    "full overlap"): one compressed kernel unpacked once per record."""
    stream = deflate(data)
    crc = zlib.crc32(data)
    body = local_header(names[0], DEFLATED, crc, len(stream), len(data)) + stream
    directory = b"".join(central_record(n, 0, DEFLATED, crc, len(stream), len(data))
                         for n in names)
    return finish(body, directory, len(names))


def quoted_overlap(count: int, data: bytes) -> bytes:
    """Fifield's "quoted overlap": each entry's deflate stream begins with a stored block
    quoting the next entry's local header, then runs on into the next entry's stream, so
    every entry unpacks the kernel and every header after it; the local headers all match
    their central records."""
    names = [f"q{i}.bmp" for i in range(count)]
    stream, unpacked = deflate(data), data
    headers: list[bytes] = [b""] * count
    fields: list[tuple[int, int, int]] = [(0, 0, 0)] * count
    for i in reversed(range(count)):
        fields[i] = (zlib.crc32(unpacked), len(stream), len(unpacked))
        headers[i] = local_header(names[i], DEFLATED, *fields[i])
        quote = b"\x00" + struct.pack("<HH", len(headers[i]), len(headers[i]) ^ 0xFFFF)
        stream, unpacked = quote + headers[i] + stream, headers[i] + unpacked
    offsets = [0]
    for header in headers[:-1]:
        offsets.append(offsets[-1] + len(header) + 5)  # header, then the quote's 5 bytes
    kernel = deflate(data)
    body = headers[0] + stream[5 + len(headers[0]):]  # entry 0's stream, after its header
    assert len(body) == offsets[-1] + len(headers[-1]) + len(kernel)
    directory = b"".join(central_record(n, o, DEFLATED, *f)
                         for n, o, f in zip(names, offsets, fields, strict=True))
    return finish(body, directory, count)


GOOD = Member("good.png", scene_png(40, 30))


def images_of(data_dir: Path, job_id: str) -> list[str]:
    return sorted(p.name for p in (data_dir / "jobs" / job_id / "images").iterdir())


def unpack(tmp_path: Path, data: bytes, limits: UnpackLimits = LIMITS):
    path = tmp_path / "upload.zip"
    path.write_bytes(data)
    return unpack_images(path, tmp_path / "images", limits)


# --- the builders build what zipfile reads -------------------------------------------------

def test_the_hand_built_bombs_are_real(tmp_path):
    """zipfile alone reads every overlapping entry in full: the kernel is unpacked once per
    record."""
    kernel = bmp(100_000)
    full = tmp_path / "full.zip"
    full.write_bytes(full_overlap(["same.bmp"] * 5, kernel))
    with zipfile.ZipFile(full) as zf:
        assert [len(zf.read(info)) for info in zf.infolist()] == [len(kernel)] * 5
    quoted = tmp_path / "quoted.zip"
    quoted.write_bytes(quoted_overlap(4, kernel))
    with zipfile.ZipFile(quoted) as zf:
        sizes = [len(zf.read(info)) for info in zf.infolist()]
    assert min(sizes) == len(kernel) and sum(sizes) > 4 * len(kernel)
    assert os.path.getsize(quoted) < len(kernel) / 50


def test_an_honest_hand_built_zip_unpacks(tmp_path):
    result = unpack(tmp_path, make_zip([GOOD, Member("b.bmp", bmp(5000), STORED)]))
    assert [i.filename for i in result.images] == ["good.png", "b.bmp"]
    assert result.skipped == []


# --- 1. overlapping entries ----------------------------------------------------------------

@pytest.mark.parametrize("names", [
    ["a.bmp", "b.bmp"],
    [f"{i}.bmp" for i in range(200)],
    ["same.bmp"] * 200,
], ids=["two-names-one-stream", "200-names", "200-same-name"])
async def test_full_overlap_bomb_is_refused(client, data_dir, tmp_path, names):
    data = full_overlap(names, bmp(1024 * 1024))
    error = await rejected(client, data_dir, tmp_path, form(data), 400, "not_a_zip")
    assert "overlap" in error["message"]


async def test_quoted_overlap_bomb_is_refused(client, data_dir, tmp_path):
    data = quoted_overlap(50, bmp(1024 * 1024))
    assert len(data) < 10_000
    error = await rejected(client, data_dir, tmp_path, form(data), 400, "not_a_zip")
    assert "'q0.bmp' and 'q1.bmp' overlap" in error["message"]


def test_overlap_is_found_whatever_the_directory_order(tmp_path):
    second = Member("b.bmp", bmp(3000), STORED)
    body, directory = body_and_directory([GOOD, second])
    # A third record, listed first, pointing at b.bmp's local header under another name.
    offset = len(body) - len(local_header("b.bmp", STORED, *second.fields())) - 3000
    data = finish(body, central_record("c.bmp", offset, STORED, *second.fields())
                  + directory, 3)
    with pytest.raises(NotAZip, match="overlap"):
        unpack(tmp_path, data)
    assert not (tmp_path / "images").exists()


# --- the whole zip's ratio ---------------------------------------------------------------

async def test_many_small_entries_past_the_zips_ratio_are_413(client, data_dir, tmp_path):
    """Each entry stays under the 1 MiB floor of the per-entry check; together they unpack
    to far more than 200 times the zip."""
    members = [Member(f"{i}.bmp", bmp(1_000_000)) for i in range(8)]
    data = make_zip(members)
    assert len(data) * 200 < 8_000_000
    error = await rejected(client, data_dir, tmp_path, form(data), 413, "archive_too_large")
    assert "OILSPILL_MAX_COMPRESSION_RATIO" in error["message"]
    assert f"times its own {len(data)} bytes" in error["message"]


async def test_declared_sizes_past_the_limit_are_refused_before_writing(client, data_dir,
                                                                       tmp_path):
    liar = Member("huge.bmp", bmp(100), size=0xFFFF_FFF0)
    error = await rejected(client, data_dir, tmp_path, form(make_zip([GOOD, liar])), 413,
                           "archive_too_large")
    assert "say they unpack to more than" in error["message"]


# --- 2. counts and sizes from the end records ----------------------------------------------

async def test_end_record_claiming_a_million_entries_is_413(client, data_dir, tmp_path):
    body, directory = body_and_directory([GOOD])
    data = finish(body, directory, 1, zip64=True, said_count=1_000_000)
    error = await rejected(client, data_dir, tmp_path, form(data), 413, "archive_too_large")
    assert "1000000 entries" in error["message"]
    assert "OILSPILL_MAX_ZIP_ENTRIES" in error["message"]


async def test_zip64_end_record_claiming_2_to_the_60_entries_is_413(client, data_dir,
                                                                    tmp_path):
    body, directory = body_and_directory([GOOD])
    data = finish(body, directory, 1, zip64=True, said_count=2**60)
    error = await rejected(client, data_dir, tmp_path, form(data), 413, "archive_too_large")
    assert str(2**60) in error["message"]


async def test_a_count_that_lies_low_is_caught_while_counting(client, data_dir, tmp_path):
    """The end record says 1; the directory holds 20,001 records (all one tiny entry)."""
    body, record = body_and_directory([Member("a.png", b"x", STORED)])
    data = finish(body, record * 20_001, 20_001, said_count=1)
    error = await rejected(client, data_dir, tmp_path, form(data), 413, "archive_too_large")
    assert "more than 10000 entries" in error["message"]


@pytest.mark.parametrize("said", [1, 5], ids=["fewer", "more"])
async def test_a_count_that_disagrees_with_the_directory_is_400(client, data_dir, tmp_path,
                                                                said):
    data = make_zip([GOOD, Member("b.bmp", bmp(300)), Member("c.bmp", bmp(300))],
                    said_count=said)
    error = await rejected(client, data_dir, tmp_path, form(data), 400, "not_a_zip")
    assert f"says {said} entries" in error["message"] and "holds 3" in error["message"]


@pytest.mark.parametrize("zip64,size", [(False, 0xFFFF_FF00), (True, 2**60)],
                         ids=["classic", "zip64"])
async def test_a_directory_size_pointing_outside_the_file_is_400(client, data_dir, tmp_path,
                                                                 zip64, size):
    body, directory = body_and_directory([GOOD])
    data = finish(body, directory, 1, zip64=zip64, said_size=size)
    error = await rejected(client, data_dir, tmp_path, form(data), 400, "not_a_zip")
    assert "points outside the file" in error["message"]


async def test_a_directory_offset_past_the_directory_is_400(client, data_dir, tmp_path):
    body, directory = body_and_directory([GOOD])
    data = finish(body, directory, 1, said_offset=len(body) + 7)
    await rejected(client, data_dir, tmp_path, form(data), 400, "not_a_zip")


async def test_a_directory_size_that_does_not_fit_its_records_is_400(client, data_dir, tmp_path):
    body, directory = body_and_directory([GOOD, Member("b.bmp", bmp(300))])
    data = finish(body, directory, 2, said_size=len(directory) - 3)
    await rejected(client, data_dir, tmp_path, form(data), 400, "not_a_zip")


async def test_a_directory_stuffed_with_long_names_is_413(aiohttp_client, settings, data_dir,
                                                          tmp_path):
    """Within the entry limit, but each record carries a 5,000-byte name: zipfile would
    hold them all in memory."""
    client = await aiohttp_client(create_app(settings.with_changes(max_zip_entries=10)))
    members = [Member("d" * 5000 + f"{i}.bmp", bmp(100)) for i in range(3)]
    error = await rejected(client, data_dir, tmp_path, form(make_zip(members)), 413,
                           "archive_too_large")
    assert "central directory is" in error["message"]


@pytest.mark.parametrize("cut", [1, 10, 22, 60])
async def test_a_zip_cut_at_the_end_is_400(client, data_dir, tmp_path, cut):
    data = make_zip([GOOD, Member("b.bmp", bmp(300))])
    await rejected(client, data_dir, tmp_path, form(data[:-cut]), 400, "not_a_zip")


async def test_an_entry_needing_a_newer_zip_version_is_400_not_500(client, data_dir,
                                                                   tmp_path):
    data = make_zip([GOOD, Member("b.bmp", bmp(300), version=64)])
    await rejected(client, data_dir, tmp_path, form(data), 400, "not_a_zip")


async def test_a_zip64_end_record_is_read(client, data_dir, tmp_path):
    body, directory = body_and_directory([GOOD, Member("b.txt", b"notes")])
    _, job = await accepted(client, data_dir, tmp_path, finish(body, directory, 2,
                                                                   zip64=True))
    assert (job["total"], job["done"]) == (1, 1)
    assert job["skipped"] == [{"filename": "b.txt",
                               "reason": "not an image (PNG, JPEG, TIFF or BMP)"}]


def test_a_zip_after_a_prefix_is_read(tmp_path):
    """A self-extracting stub before the zip shifts every offset; it still unpacks."""
    result = unpack(tmp_path, b"#!/bin/sh\nexit 0\n" * 20 + make_zip([GOOD]))
    assert [i.filename for i in result.images] == ["good.png"]


MEMORY_PROBE = """
import resource, sys
from pathlib import Path
from oilspill.unpack import UnpackLimitExceeded, UnpackLimits, unpack_images
limits = UnpackLimits(max_entries=10_000, max_unpacked_bytes=8 * 2**30,
                      max_compression_ratio=200.0)
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
try:
    unpack_images(Path(sys.argv[1]), Path(sys.argv[2]), limits)
    print("accepted")
except UnpackLimitExceeded as exc:
    print(exc)
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before)
"""


@pytest.mark.parametrize("zip64", [True, False], ids=["honest-count", "count-says-1"])
def test_a_million_central_records_cost_little_memory(tmp_path, zip64):
    """A 52 MB zip of a million records (each pointing at one tiny entry) is refused for
    its entry count without the unpacker's memory growing; zipfile alone would hold every
    record (about 450 MiB)."""
    body, record = body_and_directory([Member("a.png", b"x", STORED)])
    count = 1_000_000
    zip_path = tmp_path / "million.zip"
    with open(zip_path, "wb") as out:
        out.write(body)
        for _ in range(count // 1000):
            out.write(record * 1000)
        size = len(record) * count
        out.write(zip64_end(count, size, len(body), len(body) + size) if zip64
                  else end_record(1, size, len(body)))
    assert zip_path.stat().st_size > 50_000_000
    out = subprocess.run([sys.executable, "-c", MEMORY_PROBE, str(zip_path),
                          str(tmp_path / "images")], capture_output=True, text=True,
                         check=True, env={**os.environ, "PYTHONDONTWRITEBYTECODE": "1"})
    message, growth_kib = out.stdout.strip().splitlines()
    assert "OILSPILL_MAX_ZIP_ENTRIES" in message
    assert int(growth_kib) < 16 * 1024, f"RSS grew {int(growth_kib) // 1024} MiB"


# --- 3. one bad entry does not sink the upload -----------------------------------------------

async def test_an_entry_with_a_bad_crc_is_skipped_and_leaves_no_file(client, data_dir,
                                                                     tmp_path):
    """3 MiB are written before the CRC shows the lie; the partial file goes."""
    bad = Member("bad.bmp", b"BM" + os.urandom(3 * 1024 * 1024), STORED, crc=1234)
    body, job = await accepted(client, data_dir, tmp_path, make_zip([bad, GOOD]))
    assert job["skipped"] == [{"filename": "bad.bmp", "reason": "corrupt data: bad CRC-32"}]
    assert (job["total"], job["done"]) == (1, 1)
    assert images_of(data_dir, body["job_id"]) == ["000000.png"]


@pytest.mark.parametrize("method,label", [(9, "Deflate64"), (98, "PPMd"), (77, "unknown")])
async def test_an_entry_in_an_unreadable_method_is_skipped(client, data_dir, tmp_path, method,
                                                           label):
    odd = Member("odd.bmp", bmp(2000), method, payload=b"\x01\x02\x03" * 50)
    body, job = await accepted(client, data_dir, tmp_path, make_zip([GOOD, odd]))
    assert job["skipped"] == [{"filename": "odd.bmp",
                               "reason": f"unsupported compression method {method} ({label})"}]
    assert images_of(data_dir, body["job_id"]) == ["000000.png"]


NOISE = b"BM" + os.urandom(2 * 1024 * 1024)  # an image-like entry that does not compress


@pytest.mark.parametrize("payload", [
    b"\xff" * 20_000,  # not a deflate stream at all
    deflate(NOISE)[:-1000],  # a stream that stops early
], ids=["garbage", "ends-early"])
async def test_an_entry_whose_data_cannot_be_inflated_is_skipped(client, data_dir, tmp_path,
                                                                 payload):
    broken = Member("broken.bmp", NOISE, payload=payload)
    body, job = await accepted(client, data_dir, tmp_path, make_zip([broken, GOOD]))
    [skipped] = job["skipped"]
    assert skipped["filename"] == "broken.bmp"
    assert skipped["reason"].startswith(("corrupt data", "corrupt entry")), skipped
    assert images_of(data_dir, body["job_id"]) == ["000000.png"]
    assert job["done"] == 1


async def test_an_entry_whose_local_name_differs_is_skipped(client, data_dir, tmp_path):
    two_faced = Member("innocent.png", scene_png(20, 20), local_name="../../evil.png")
    body, job = await accepted(client, data_dir, tmp_path, make_zip([two_faced, GOOD]))
    assert job["skipped"] == [{"filename": "innocent.png",
                               "reason": "local header name differs from the central "
                                         "directory's"}]
    assert images_of(data_dir, body["job_id"]) == ["000000.png"]
    assert not list(tmp_path.rglob("evil.png"))


async def test_a_record_pointing_at_no_local_header_is_skipped(client, data_dir, tmp_path):
    body, directory = body_and_directory([GOOD])
    crc, _, usize = GOOD.fields()
    stray = central_record("stray.png", 100, DEFLATED, crc, 10, usize)  # inside good.png
    _, job = await accepted(client, data_dir, tmp_path, finish(body, directory + stray, 2))
    assert job["skipped"] == [{"filename": "stray.png", "reason": "corrupt entry: no local "
                               "header where the central directory points"}]
    assert job["done"] == 1


def test_an_entry_whose_data_runs_into_the_directory_is_skipped(tmp_path):
    body, directory = body_and_directory([GOOD, Member("b.bmp", bmp(500), STORED)])
    crc, csize, usize = Member("b.bmp", bmp(500), STORED).fields()
    offset = len(body) - csize - len(local_header("b.bmp", STORED, crc, csize, usize))
    long = central_record("b.bmp", offset, STORED, crc, csize + 100, usize)
    first = directory[:directory.index(b"PK\x01\x02", 4)]
    result = unpack(tmp_path, finish(body, first + long, 2))
    assert [i.filename for i in result.images] == ["good.png"]
    assert result.skipped == [("b.bmp", "corrupt entry: its data runs into the central "
                                        "directory")]


async def test_a_zip_of_only_bad_entries_is_422_with_the_reasons(client, data_dir, tmp_path):
    members = [Member("crc.bmp", bmp(5000), crc=1), Member("d64.bmp", bmp(500), 9),
               Member("named.png", scene_png(), local_name="other.png")]
    error = await rejected(client, data_dir, tmp_path, form(make_zip(members)), 422,
                           "no_images")
    for part in ("crc.bmp (corrupt data: bad CRC-32)",
                 "d64.bmp (unsupported compression method 9 (Deflate64))",
                 "named.png (local header name differs"):
        assert part in error["message"]


def sentinel1_zip(calibration_crc: int | None = None) -> tuple[bytes, bytes]:
    """A Sentinel-1 product (its measurement a TIFF by its first bytes); the calibration
    entry's CRC can lie. Returns the zip and the calibration XML."""
    files = safe_product_files({"vv": b"II*\x00" + bytes(5000)}, 100, 80, {})
    [(calibration_path, calibration)] = [(n, d) for n, d in files.items()
                                         if "/calibration/calibration-" in n]
    members = [Member(n, d, crc=calibration_crc if n == calibration_path else None)
               for n, d in files.items()]
    return make_zip(members), calibration


def test_a_sentinel1_calibration_is_copied_whole(tmp_path):
    data, calibration = sentinel1_zip()
    result = unpack(tmp_path, data)
    [image] = result.images
    assert (tmp_path / "images" / f"{image.stored_name}.calibration.xml").read_bytes() == \
        calibration


def test_a_corrupt_sentinel1_calibration_is_skipped_and_leaves_no_file(tmp_path):
    """The measurement is still the scene (used uncalibrated, as without a table)."""
    data, _ = sentinel1_zip(calibration_crc=7)
    result = unpack(tmp_path, data)
    assert len(result.images) == 1
    assert [r for _, r in result.skipped if r != "part of a Sentinel-1 product"] == [
        "corrupt data: bad CRC-32"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == [
        result.images[0].stored_name]
