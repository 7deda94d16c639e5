"""Hostile uploads and requests: each gets a clear 4xx, nothing escapes the data directory,
and a rejected upload leaves no row and no file."""

from __future__ import annotations

import asyncio
import io
import os
import resource
import sqlite3
import stat
import uuid
import zipfile
import zlib
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp import web
from PIL import Image
from yarl import URL

from oilspill.web import keys
from oilspill.web.app import create_app

from .conftest import form, scene_png, upload, wait_finished, zip_bytes
from .procs import free_port, poll, server_process, wait_http

# --- helpers ---------------------------------------------------------------------------

def raw_zip(entries: list[tuple[zipfile.ZipInfo | str, bytes]]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
        for info, data in entries:
            zf.writestr(info, data)
    return out.getvalue()


def symlink(name: str, target: str) -> tuple[zipfile.ZipInfo, bytes]:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info, target.encode()


def files_outside(root: Path, data_dir: Path) -> set[Path]:
    return {p for p in root.rglob("*") if data_dir not in p.parents and p != data_dir}


def rows(data_dir: Path) -> tuple[int, int]:
    with sqlite3.connect(data_dir / "oilspill.sqlite3") as db:
        return (db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0],
                db.execute("SELECT COUNT(*) FROM tasks").fetchone()[0])


async def rejected(client, data_dir: Path, tmp_path: Path, body: aiohttp.FormData | bytes,
                   status: int, code: str, **kwargs) -> dict:
    """Post the body; assert the status, the JSON error, and that nothing is left."""
    before = files_outside(tmp_path, data_dir)
    resp = await client.post("/api/upload/", data=body, **kwargs)
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    error = (await resp.json())["error"]
    assert error["code"] == code and error["message"]
    assert "Traceback" not in error["message"] and str(data_dir) not in error["message"]
    assert rows(data_dir) == (0, 0)
    assert list((data_dir / "jobs").iterdir()) == []
    assert files_outside(tmp_path, data_dir) == before
    return error


async def accepted(client, data_dir: Path, tmp_path: Path, data: bytes) -> tuple[dict, dict]:
    before = files_outside(tmp_path, data_dir)
    status, body = await upload(client, data)
    assert status == 202, body
    job = await wait_finished(client, body["job_id"])
    assert files_outside(tmp_path, data_dir) == before
    return body, job


GOOD = ("good.png", scene_png(40, 30))


@pytest.fixture
def evil_name() -> str:
    return f"oilspill-evil-{uuid.uuid4().hex}.png"


# --- zip-slip and non-regular entries ----------------------------------------------------

async def test_zip_slip_with_dotdot_is_never_written(client, data_dir, tmp_path, evil_name):
    data = raw_zip([(f"../../../../{evil_name}", scene_png()), GOOD])
    _, job = await accepted(client, data_dir, tmp_path, data)
    assert job["total"] == 1
    assert {"filename": f"../../../../{evil_name}", "reason": "unsafe path"} in job["skipped"]
    assert not list(tmp_path.rglob(evil_name))


async def test_absolute_path_is_never_written(client, data_dir, tmp_path, evil_name):
    data = raw_zip([(f"/tmp/{evil_name}", scene_png()), GOOD])
    _, job = await accepted(client, data_dir, tmp_path, data)
    assert job["skipped"][0]["reason"] == "unsafe path"
    assert not Path(f"/tmp/{evil_name}").exists()


async def test_drive_letter_and_backslash_paths_are_never_written(client, data_dir, tmp_path,
                                                                  evil_name):
    data = raw_zip([(f"C:/{evil_name}", scene_png()),
                    (f"..\\..\\{evil_name}", scene_png()), GOOD])
    _, job = await accepted(client, data_dir, tmp_path, data)
    assert [s["reason"] for s in job["skipped"]] == ["unsafe path", "unsafe path"]
    assert not list(tmp_path.rglob(f"*{evil_name}*"))


async def test_symlink_entry_is_not_followed(client, data_dir, tmp_path):
    data = raw_zip([symlink("link.png", "/etc/passwd"), GOOD])
    _, job = await accepted(client, data_dir, tmp_path, data)
    assert job["skipped"] == [{"filename": "link.png", "reason": "not a regular file"}]
    assert not [p for p in data_dir.rglob("*") if p.is_symlink()]


async def test_only_unsafe_entries_is_422(client, data_dir, tmp_path, evil_name):
    data = raw_zip([(f"../{evil_name}", scene_png()), symlink("l.png", "/etc/passwd")])
    error = await rejected(client, data_dir, tmp_path, form(data), 422, "no_images")
    assert "unsafe path" in error["message"]


# --- bombs and limits --------------------------------------------------------------------

async def test_forged_size_bomb_is_refused(client, data_dir, tmp_path):
    """The headers claim 1 KB; the entry inflates to 50 MB. Only the claim is trusted to
    stop reading, and the CRC then shows the lie: the entry is skipped."""
    payload = b"\x00" * (50 * 1024 * 1024)
    data = bytearray(raw_zip([("bomb.bmp", b"BM" + payload)]))
    real = (len(payload) + 2).to_bytes(4, "little")
    forged = (1024).to_bytes(4, "little")
    data = bytes(data).replace(real, forged)  # local header and central directory
    error = await rejected(client, data_dir, tmp_path, form(data), 422, "no_images")
    assert "bomb.bmp (corrupt data: bad CRC-32)" in error["message"]


async def test_ratio_bomb_is_refused(client, data_dir, tmp_path):
    data = raw_zip([("zeros.bmp", b"BM" + b"\x00" * (20 * 1024 * 1024)), GOOD])
    error = await rejected(client, data_dir, tmp_path, form(data), 413, "archive_too_large")
    assert "OILSPILL_MAX_COMPRESSION_RATIO" in error["message"]


async def test_20001_tiny_entries_are_refused(client, data_dir, tmp_path):
    data = raw_zip([(f"n/{i}.txt", b"x") for i in range(20_001)])
    error = await rejected(client, data_dir, tmp_path, form(data), 413, "archive_too_large")
    assert "OILSPILL_MAX_ZIP_ENTRIES" in error["message"]


async def test_total_unpacked_size_limit(aiohttp_client, settings, data_dir, tmp_path):
    client = await aiohttp_client(create_app(settings.with_changes(max_unpacked_bytes=5_000)))
    data = zip_bytes({f"{i}.png": scene_png(64, 64, seed=i) for i in range(4)})
    error = await rejected(client, data_dir, tmp_path, form(data), 413, "archive_too_large")
    assert "OILSPILL_MAX_UNPACKED_BYTES" in error["message"]


# --- what is in the zip ------------------------------------------------------------------

async def test_nested_zip_is_not_opened(client, data_dir, tmp_path):
    inner = zip_bytes({"inner.png": scene_png()})
    _, job = await accepted(client, data_dir, tmp_path, zip_bytes({"in.zip": inner,
                                                                   GOOD[0]: GOOD[1]}))
    assert job["total"] == 1
    assert job["skipped"] == [{"filename": "in.zip", "reason": "nested zip (not opened)"}]


async def test_empty_zip_is_422(client, data_dir, tmp_path):
    error = await rejected(client, data_dir, tmp_path, form(zip_bytes({})), 422, "no_images")
    assert "no usable image" in error["message"]


async def test_zip_of_text_files_only_is_422(client, data_dir, tmp_path):
    data = zip_bytes({"a.txt": b"hello", "b.md": b"# notes"})
    error = await rejected(client, data_dir, tmp_path, form(data), 422, "no_images")
    assert "a.txt" in error["message"] and "not an image" in error["message"]


async def test_macosx_folders_and_dot_files_are_ignored_silently(client, data_dir, tmp_path):
    data = zip_bytes({"__MACOSX/._good.png": b"junk", ".DS_Store": b"junk",
                      ".hidden/x.png": scene_png(), GOOD[0]: GOOD[1]})
    _, job = await accepted(client, data_dir, tmp_path, data)
    assert (job["total"], job["skipped"]) == (1, [])


async def test_other_files_are_skipped_and_listed(client, data_dir, tmp_path):
    data = zip_bytes({"readme.txt": b"hi", "fake.png": b"not a png at all", GOOD[0]: GOOD[1]})
    _, job = await accepted(client, data_dir, tmp_path, data)
    assert sorted(s["filename"] for s in job["skipped"]) == ["fake.png", "readme.txt"]
    assert job["done"] == 1


async def test_truncated_zip_is_400(client, data_dir, tmp_path):
    data = zip_bytes({f"{i}.png": scene_png(seed=i) for i in range(3)})
    await rejected(client, data_dir, tmp_path, form(data[: len(data) // 2]), 400, "not_a_zip")


async def test_non_zip_body_is_400_whatever_its_name(client, data_dir, tmp_path):
    fd = aiohttp.FormData()
    fd.add_field("file", b"%PDF-1.4 not a zip", filename="images.zip",
                 content_type="application/zip")
    await rejected(client, data_dir, tmp_path, fd, 400, "not_a_zip")


async def test_duplicate_names_in_different_folders_both_survive(client, data_dir, tmp_path):
    data = zip_bytes({"north/a.png": scene_png(30, 20, 1), "south/a.png": scene_png(50, 40, 2)})
    body, job = await accepted(client, data_dir, tmp_path, data)
    assert job["done"] == 2
    tasks = [await (await client.get(f"/api/task/{t}")).json() for t in body["task_ids"]]
    assert {(t["filename"], t["result"]["width"]) for t in tasks} == {("north/a.png", 30),
                                                                      ("south/a.png", 50)}
    url = (await (await client.get(f"/api/archive/{body['job_id']}")).json())["archive_url"]
    with zipfile.ZipFile(io.BytesIO(await (await client.get(url)).read())) as zf:
        assert {"masks/north/a.png", "masks/south/a.png"} <= set(zf.namelist())


async def test_unicode_names_are_kept(client, data_dir, tmp_path):
    name = "Каспий/разлив_№1 🛢.png"
    body, _ = await accepted(client, data_dir, tmp_path, zip_bytes({name: scene_png()}))
    task = await (await client.get(f"/api/task/{body['task_ids'][0]}")).json()
    assert task["filename"] == name and task["status"] == "done"


# --- images by content -------------------------------------------------------------------

def tiff_bytes(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format="TIFF")
    return out.getvalue()


async def test_16_bit_tiff_is_segmented(client, data_dir, tmp_path):
    sea = np.full((40, 60), 30_000, np.uint16)
    sea[10:20, 10:40] = 3_000  # a dark slick
    body, _ = await accepted(client, data_dir, tmp_path, zip_bytes({"s.tif": tiff_bytes(sea)}))
    task = await (await client.get(f"/api/task/{body['task_ids'][0]}")).json()
    assert task["status"] == "done", task
    assert (task["result"]["width"], task["result"]["height"]) == (60, 40)
    assert task["result"]["oil_pixels"] > 0


async def test_float_tiff_is_segmented(client, data_dir, tmp_path):
    sea = np.full((32, 32), 0.2, np.float32)
    sea[5:15, 5:25] = 0.01
    body, _ = await accepted(client, data_dir, tmp_path, zip_bytes({"f.tiff": tiff_bytes(sea)}))
    task = await (await client.get(f"/api/task/{body['task_ids'][0]}")).json()
    assert task["status"] == "done" and task["result"]["oil_pixels"] > 0


async def test_image_over_the_pixel_limit_fails_its_task_only(aiohttp_client, settings,
                                                              data_dir, tmp_path):
    client = await aiohttp_client(create_app(settings.with_changes(max_image_pixels=2000)))
    data = zip_bytes({"big.png": scene_png(64, 48), "small.png": scene_png(40, 40)})
    body, job = await accepted(client, data_dir, tmp_path, data)
    assert (job["done"], job["failed"]) == (1, 1)
    tasks = {t["filename"]: t for t in
             [await (await client.get(f"/api/task/{i}")).json() for i in body["task_ids"]]}
    assert "OILSPILL_MAX_IMAGE_PIXELS" in tasks["big.png"]["error"]
    assert "3072 pixels" in tasks["big.png"]["error"]


async def test_corrupt_png_fails_its_task_with_a_reason(client, data_dir, tmp_path):
    broken = b"\x89PNG\r\n\x1a\n" + b"\xde\xad\xbe\xef" * 20
    body, job = await accepted(client, data_dir, tmp_path, zip_bytes({"bad.png": broken,
                                                                      GOOD[0]: GOOD[1]}))
    assert (job["done"], job["failed"]) == (1, 1)
    tasks = [await (await client.get(f"/api/task/{i}")).json() for i in body["task_ids"]]
    bad = next(t for t in tasks if t["filename"] == "bad.png")
    assert bad["error"].startswith("cannot read image")


# --- the request itself ------------------------------------------------------------------

async def test_missing_file_field_is_400(client, data_dir, tmp_path):
    fd = aiohttp.FormData()
    fd.add_field("upload", zip_bytes(dict([GOOD])), filename="a.zip")
    await rejected(client, data_dir, tmp_path, fd, 400, "missing_file")


async def test_two_file_parts_is_400(client, data_dir, tmp_path):
    fd = aiohttp.FormData()
    for name in ("a.zip", "b.zip"):
        fd.add_field("file", zip_bytes(dict([GOOD])), filename=name)
    await rejected(client, data_dir, tmp_path, fd, 400, "too_many_files")


async def test_not_multipart_is_415(client, data_dir, tmp_path):
    await rejected(client, data_dir, tmp_path, zip_bytes(dict([GOOD])), 415,
                   "unsupported_media_type", headers={"Content-Type": "application/zip"})


async def test_oversize_with_content_length_is_413(client, settings, data_dir, tmp_path):
    big = b"BM" + b"\x01" * (settings.max_upload_bytes + 10)
    await rejected(client, data_dir, tmp_path, form(big), 413, "upload_too_large")


async def test_oversize_without_content_length_is_413(client, settings, data_dir, tmp_path):
    big = zip_bytes({"big.bmp": b"BM" + bytes(range(256)) * (settings.max_upload_bytes // 200)})

    async def chunks():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    fd = aiohttp.FormData()
    fd.add_field("file", chunks(), filename="big.zip", content_type="application/zip")
    await rejected(client, data_dir, tmp_path, fd, 413, "upload_too_large")


async def test_a_lying_content_length_is_not_trusted(client, data_dir, tmp_path):
    """It claims less than is sent: only the claimed bytes are read, and they are not a
    whole multipart body."""
    boundary = "xyz"
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"a.zip\"\r\n\r\n").encode() + zip_bytes(dict([GOOD])) + (
        f"\r\n--{boundary}--\r\n").encode()
    resp = await client.post("/api/upload/", data=body[:200], headers={
        "Content-Type": f"multipart/form-data; boundary={boundary}"})
    assert resp.status == 400
    assert rows(data_dir) == (0, 0) and list((data_dir / "jobs").iterdir()) == []


async def test_a_client_that_disconnects_mid_upload_leaves_nothing(settings, data_dir):
    """Against a server run as `oilspill serve` runs it (no handler cancellation)."""
    runner = web.AppRunner(create_app(settings))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", port)
        head = (b"POST /api/upload/ HTTP/1.1\r\nHost: x\r\nContent-Length: 5000000\r\n"
                b"Content-Type: multipart/form-data; boundary=b\r\n\r\n"
                b"--b\r\nContent-Disposition: form-data; name=\"file\"; filename=\"a.zip\"\r\n"
                b"\r\n")
        writer.write(head + zip_bytes({f"{i}.png": scene_png(seed=i) for i in range(20)}))
        await writer.drain()
        async def started() -> bool | None:
            return any((data_dir / "jobs").glob("*/upload.part")) or None
        await poll(started, "the upload to start", 10, 0.01)
        writer.transport.abort()  # the client goes away mid-body

        async def cleaned() -> bool | None:
            return not list((data_dir / "jobs").iterdir()) or None
        await poll(cleaned, "the partial upload to be removed", 10, 0.02)
        assert rows(data_dir) == (0, 0)
        assert runner.app[keys.ACTIVE_UPLOADS] == set()
    finally:
        await runner.cleanup()


async def test_too_little_free_disk_is_507_before_writing(aiohttp_client, settings, data_dir,
                                                         tmp_path):
    client = await aiohttp_client(create_app(settings.with_changes(min_free_bytes=2**62)))
    error = await rejected(client, data_dir, tmp_path, form(zip_bytes(dict([GOOD]))), 507,
                           "insufficient_storage")
    assert "OILSPILL_MIN_FREE_BYTES" in error["message"]


async def test_disk_full_during_the_write_is_507_and_the_partial_file_goes(tmp_path):
    """A real server whose file-size limit (RLIMIT_FSIZE) stands in for a full disk: its
    write fails with EFBIG, as it would with ENOSPC."""
    data_dir = tmp_path / "data"
    port = free_port()
    limit = 2 * 1024 * 1024
    server = server_process(port, data_dir, "http://127.0.0.1:9", tmp_path,
                            OILSPILL_MIN_FREE_BYTES="0")
    server.preexec = lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    await server.start()
    try:
        await wait_http(f"http://127.0.0.1:{port}/healthz", server)
        big = raw_zip([(f"{i}.bmp", b"BM" + os.urandom(1024 * 1024)) for i in range(3)])
        assert len(big) > limit
        async with aiohttp.ClientSession() as session:
            async with session.post(f"http://127.0.0.1:{port}/api/upload/",
                                    data=form(big)) as resp:
                assert resp.status == 507
                assert (await resp.json())["error"]["code"] == "insufficient_storage"
            async with session.get(f"http://127.0.0.1:{port}/healthz") as resp:
                assert resp.status == 200  # the server lives on
        assert list((data_dir / "jobs").iterdir()) == []
        assert rows(data_dir) == (0, 0)
    finally:
        await server.kill()


# --- paths, ids, token, CORS ------------------------------------------------------------

@pytest.mark.parametrize("spelling", [
    "..%2f..%2foilspill.sqlite3",
    "%2e%2e%2f%2e%2e%2foilspill.sqlite3",
    "..%252f..%252foilspill.sqlite3",
    "..%5c..%5coilspill.sqlite3",
    "oilspill-results-00000000-0000-4000-8000-000000000000.zip%00.png",
    "x" * 5000,
], ids=["slash", "dots", "double", "backslash", "nul", "overlong"])
async def test_download_traversal_is_404(client, spelling):
    resp = await client.get(URL(f"/api/download/{spelling}", encoded=True))
    assert resp.status == 404
    assert (await resp.json())["error"]["code"] == "not_found"


@pytest.mark.parametrize("bad", ["1", "not-a-uuid", "00000000-0000-0000-0000-00000000000g",
                                 "C16BDD5A-FF93-4E70-A22C-FE76C963A10D", "%2e%2e", "a" * 3000])
async def test_bad_uuid_is_404(client, bad):
    for path in (f"/api/job/{bad}", f"/api/task/{bad}", f"/api/archive/{bad}"):
        resp = await client.get(URL(path, encoded=True))
        assert resp.status == 404, path
        assert (await resp.json())["error"]["code"] == "not_found"


async def test_token_is_required_when_set(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings.with_changes(api_token="s3cret-token")))
    job = f"/api/job/{uuid.uuid4()}"
    missing = await client.get(job)
    assert missing.status == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert (await missing.json())["error"]["code"] == "unauthorized"
    wrong = await client.get(job, headers={"Authorization": "Bearer s3cret-tokem"})
    assert wrong.status == 401
    upload_resp = await client.post("/api/upload/", data=form(zip_bytes(dict([GOOD]))))
    assert upload_resp.status == 401
    right = await client.get(job, headers={"Authorization": "Bearer s3cret-token"})
    assert right.status == 404  # authenticated: now the id is looked up
    assert (await client.get("/healthz")).status == 200


async def test_cors_answers_only_allowed_origins(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings.with_changes(
        cors_origins="https://ops.example.org")))
    ok = await client.get("/healthz", headers={"Origin": "https://ops.example.org"})
    assert ok.headers["Access-Control-Allow-Origin"] == "https://ops.example.org"
    other = await client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers
    preflight = await client.options("/api/upload/", headers={
        "Origin": "https://ops.example.org", "Access-Control-Request-Method": "POST"})
    assert preflight.status == 204
    assert "POST" in preflight.headers["Access-Control-Allow-Methods"]


async def test_no_cors_headers_by_default(client):
    resp = await client.get("/healthz", headers={"Origin": "https://ops.example.org"})
    assert "Access-Control-Allow-Origin" not in resp.headers


async def test_an_unexpected_error_is_a_500_with_a_request_id_and_no_traceback(
        aiohttp_client, settings, caplog):
    app = create_app(settings)

    async def broken(request: web.Request) -> web.Response:
        raise RuntimeError(f"secret detail {settings.data_dir}")

    app.router.add_get("/api/broken", broken)
    client = await aiohttp_client(app)
    resp = await client.get("/api/broken")
    assert resp.status == 500
    message = (await resp.json())["error"]["message"]
    assert "secret" not in message and "Traceback" not in message
    request_id = message.split("request id ")[1].split()[0]
    assert any(request_id in r.getMessage() for r in caplog.records)


def test_zlib_is_what_the_bomb_tests_assume():
    """The ratio bomb above really is a bomb: 20 MB of zeros deflate below 100 KB."""
    assert len(zlib.compress(b"\x00" * (20 * 1024 * 1024))) < 100 * 1024
