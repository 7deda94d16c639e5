"""Resumable uploads (tus 1.0.0 at /api/uploads/): a real tus client (tuspy) through a link
that breaks every 5 MB, a server killed with SIGKILL mid-upload and restarted, and the
protocol's edge cases against the real app."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import shutil
import struct
import time
import zipfile
import zlib
from collections.abc import AsyncIterator
from email.utils import parsedate_to_datetime
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient
from tusclient.client import TusClient
from tusclient.exceptions import TusCommunicationError, TusUploadFailed
from tusclient.storage.filestorage import FileStorage

from oilspill.config import Settings
from oilspill.paths import JobPaths, UploadPaths, uploads_dir
from oilspill.web import keys
from oilspill.web.app import create_app

from .conftest import form, scene_png, wait_finished
from .procs import Api, Link, poll

MIB = 1024 * 1024
TUS = {"Tus-Resumable": "1.0.0"}
OCTETS = {**TUS, "Content-Type": "application/offset+octet-stream"}


def random_png(width: int, height: int, seed: int, channels: int = 1) -> bytes:
    """A PNG of random pixels (incompressible, so its size is known: about width x height x
    channels bytes), stored without compression: quick to make, and a real image."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(
            ">I", zlib.crc32(kind + data))
    row = width * channels
    rows = bytearray(np.random.default_rng(seed).bytes((row + 1) * height))
    rows[::row + 1] = bytes(height)  # each row's filter byte: none
    colour = {1: 0, 3: 2}[channels]
    return (b"\x89PNG\r\n\x1a\n"
            + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(bytes(rows), 0)) + chunk(b"IEND", b""))


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def metadata(filename: str) -> str:
    return f"filename {base64.b64encode(filename.encode()).decode()}"


def tus_upload(url: str, path: Path, **options: Any) -> tuple[str, str | None]:
    """Upload `path` with tuspy (blocking: run it in a thread); returns the upload's URL and
    the job id of the final answer."""
    uploader = TusClient(url).uploader(file_path=str(path), chunk_size=64 * MIB,
                                       metadata={"filename": path.name}, **options)
    uploader.upload()
    assert uploader.request is not None
    return uploader.url, uploader.request.response_headers.get("oilspill-job-id")


@pytest.fixture(scope="module")
def sea_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 40 MB zip of 40 images of random pixels, stored (a PNG does not deflate)."""
    path = tmp_path_factory.mktemp("tus") / "sea.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(40):
            zf.writestr(f"sea/{i:02d}.png", random_png(1000, 1000, seed=i))
    return path


async def test_tuspy_uploads_40_mb_through_a_link_cut_every_5_mb(aiohttp_server, start_stub,
                                                                   data_dir, sea_zip):
    ml_url = await start_stub(mode="ready")
    server = await aiohttp_server(create_app(Settings(
        data_dir=data_dir, ml_service_url=ml_url, max_upload_bytes=64 * MIB,
        min_free_bytes=MIB, ml_retry_base_s=0.05)))
    link = Link(server.port)
    base = await link.start()
    link.cut_up_after = 5 * MIB
    try:
        # tuspy retries by asking HEAD for the offset and sending the rest from there; a
        # retry that finds the previous PATCH still settling gets 409 and retries again.
        url, job_id = await asyncio.to_thread(tus_upload, f"{base}/api/uploads/", sea_zip,
                                              retries=100, retry_delay=0.1)
    finally:
        await link.close()
    assert link.cuts >= 7  # 40 MB, 5 MB at a time
    assert job_id is not None
    async with aiohttp.ClientSession() as session:
        api = Api(session, str(server.make_url("")).rstrip("/"))
        job = await api.wait_job(job_id, timeout_s=120)
        assert (job["total"], job["done"], job["failed"]) == (40, 40, 0)
        assert job["upload_name"] == "sea.zip"
        upload_id = url.rsplit("/", 1)[1]
        status, body = await api.get(f"/api/uploads/{upload_id}")
        assert status == 200
        assert (body["job_id"], body["offset"], body["error"]) == (
            job_id, sea_zip.stat().st_size, None)


async def test_a_server_killed_mid_upload_resumes_where_its_disk_says(stack_factory,
                                                                        tmp_path):
    """SIGKILL while a PATCH is streaming; the restarted server reports the bytes that
    reached its disk, tuspy resumes from its stored URL, and the file that becomes the job
    is byte for byte the source."""
    picture = tmp_path / "scene.png"
    picture.write_bytes(random_png(2000, 2000, seed=7, channels=3))  # 12 MB, one tile
    h = await stack_factory(["--mode", "ready"], OILSPILL_TILE_PX="2048",
                            OILSPILL_MIN_FREE_BYTES="1M")
    link = Link(h.port)
    base = await link.start()
    link.hold_up(6 * MIB)
    storage = FileStorage(str(tmp_path / "tus-urls.json"))
    try:
        first = asyncio.ensure_future(asyncio.to_thread(
            tus_upload, f"{base}/api/uploads/", picture, store_url=True, url_storage=storage))

        async def written() -> int | None:
            folder = uploads_dir(h.data_dir)
            sizes = [UploadPaths(folder, entry.name).data.stat().st_size
                     for entry in folder.iterdir() if not entry.name.startswith(".")]
            return sizes[0] if sizes and sizes[0] >= 4 * MIB else None
        on_disk = await poll(written, "4 MiB of the upload on the server's disk")
        await h.kill_server()
        with pytest.raises((TusUploadFailed, TusCommunicationError)):
            await first
        await h.start_server()
        link.release()

        def resume() -> tuple[int, str, str | None]:
            uploader = TusClient(f"{base}/api/uploads/").uploader(
                file_path=str(picture), store_url=True, url_storage=storage)
            resumed_at = uploader.offset  # asked with HEAD as the uploader was made
            uploader.upload()
            assert uploader.request is not None
            return resumed_at, uploader.url, uploader.request.response_headers.get(
                "oilspill-job-id")
        resumed_at, url, job_id = await asyncio.to_thread(resume)
    finally:
        storage.close()
        await link.close()
    # Every byte a write() had accepted survived kill -9; none past what was sent.
    assert on_disk <= resumed_at <= link.up_bytes
    assert job_id is not None
    async with aiohttp.ClientSession() as session:
        api = Api(session, h.base)
        job = await api.wait_job(job_id, timeout_s=60)
        assert (job["total"], job["done"], job["upload_name"]) == (1, 1, "scene.png")
        status, body = await api.get(f"/api/uploads/{url.rsplit('/', 1)[1]}")
        assert (status, body["job_id"]) == (200, job_id)
    stored = JobPaths(h.data_dir / "jobs", job_id).image("000000.png")
    assert sha256(stored.read_bytes()) == sha256(picture.read_bytes())


# The protocol's edge cases, with a plain HTTP client against the real app.

async def create(client: TestClient, length: int, name: str = "sea.png", **headers: str
                 ) -> str:
    resp = await client.post("/api/uploads/", headers={
        **TUS, "Upload-Length": str(length), "Upload-Metadata": metadata(name), **headers})
    assert resp.status == 201, await resp.text()
    location = resp.headers["Location"]
    assert location.startswith("/api/uploads/")
    return location


async def send(client: TestClient, location: str, offset: int, data: Any,
               **headers: str) -> aiohttp.ClientResponse:
    return await client.patch(location, data=data,
                              headers={**OCTETS, "Upload-Offset": str(offset), **headers})


async def offset_of(client: TestClient, location: str) -> int:
    resp = await client.head(location, headers=TUS)
    assert resp.status == 200
    return int(resp.headers["Upload-Offset"])


async def error_of(resp: aiohttp.ClientResponse, status: int) -> dict[str, str]:
    assert resp.status == status, await resp.text()
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    error: dict[str, str] = (await resp.json())["error"]
    return error


def upload_paths(client: TestClient, location: str) -> UploadPaths:
    data_dir = client.server.app[keys.SETTINGS].data_dir
    return UploadPaths(uploads_dir(data_dir), location.rsplit("/", 1)[1])


async def test_options_tells_the_version_extensions_and_largest_size(client, settings):
    resp = await client.options("/api/uploads/")  # no Tus-Resumable: none is needed
    assert resp.status == 204
    assert resp.headers["Tus-Version"] == "1.0.0"
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert resp.headers["Tus-Extension"].split(",") == [
        "creation", "creation-with-upload", "termination", "expiration"]
    assert int(resp.headers["Tus-Max-Size"]) == settings.max_upload_bytes


async def test_an_upload_is_created_resumed_and_becomes_a_job(client):
    picture = scene_png(96, 80, seed=3)
    before = time.time()
    location = await create(client, len(picture), "gulf.png")
    head = await client.head(location, headers=TUS)
    assert head.status == 200
    assert (head.headers["Upload-Offset"], head.headers["Upload-Length"]) == (
        "0", str(len(picture)))
    assert head.headers["Cache-Control"] == "no-store"
    assert head.headers["Upload-Metadata"] == metadata("gulf.png")
    expires = parsedate_to_datetime(head.headers["Upload-Expires"]).timestamp()
    assert expires > before + 3600  # a day by default

    resp = await send(client, location, 0, picture[:1000])
    assert resp.status == 204
    assert resp.headers["Upload-Offset"] == "1000"
    assert "Upload-Expires" in resp.headers and "Oilspill-Job-Id" not in resp.headers
    assert await offset_of(client, location) == 1000
    status = await (await client.get(location)).json()
    assert (status["offset"], status["length"], status["job_id"], status["error"]) == (
        1000, len(picture), None, None)

    resp = await send(client, location, 1000, picture[1000:])
    assert resp.status == 204
    assert resp.headers["Upload-Offset"] == str(len(picture))
    job_id = resp.headers["Oilspill-Job-Id"]
    job = await wait_finished(client, job_id)
    assert (job["total"], job["done"], job["upload_name"]) == (1, 1, "gulf.png")
    # A client that lost that answer: GET tells the job, and the final PATCH, repeated
    # empty, gives it again; the bytes have moved into the job.
    status = await (await client.get(location)).json()
    assert (status["job_id"], status["offset"]) == (job_id, len(picture))
    again = await send(client, location, len(picture), b"")
    assert (again.status, again.headers["Oilspill-Job-Id"]) == (204, job_id)
    head = await client.head(location, headers=TUS)
    assert head.headers["Upload-Offset"] == str(len(picture))
    assert not upload_paths(client, location).data.exists()


async def test_creation_with_upload_takes_the_first_bytes_or_all_of_them(client):
    picture = scene_png(64, 64, seed=5)
    resp = await client.post("/api/uploads/", data=picture[:500], headers={
        **OCTETS, "Upload-Length": str(len(picture))})
    assert resp.status == 201
    assert resp.headers["Upload-Offset"] == "500"
    assert (await send(client, resp.headers["Location"], 500, picture[500:])).status == 204

    whole = await client.post("/api/uploads/", data=picture, headers={
        **OCTETS, "Upload-Length": str(len(picture))})
    assert whole.status == 201
    assert whole.headers["Upload-Offset"] == str(len(picture))
    await wait_finished(client, whole.headers["Oilspill-Job-Id"])


async def test_another_protocol_version_is_412_and_changes_nothing(client):
    location = await create(client, 100)
    for version in ("0.2.2", None):
        headers = {"Tus-Resumable": version} if version else {}
        error = await error_of(await client.post("/api/uploads/", headers={
            **headers, "Upload-Length": "10"}), 412)
        assert error["code"] == "unsupported_tus_version"
        for method in ("HEAD", "PATCH", "DELETE"):
            resp = await client.request(method, location, data=b"x" * 10, headers={
                **headers, "Content-Type": "application/offset+octet-stream",
                "Upload-Offset": "0"})
            assert resp.status == 412
            assert resp.headers["Tus-Version"] == "1.0.0"
    assert await offset_of(client, location) == 0
    assert len(list(upload_paths(client, location).uploads_dir.iterdir())) == 1


async def test_a_patch_at_the_wrong_offset_is_409_and_changes_nothing(client):
    location = await create(client, 100)
    assert (await send(client, location, 0, b"a" * 40)).status == 204
    for wrong in (0, 39, 41):
        error = await error_of(await send(client, location, wrong, b"b" * 10), 409)
        assert error["code"] == "offset_mismatch"
    assert await offset_of(client, location) == 40
    assert upload_paths(client, location).data.read_bytes() == b"a" * 40


async def test_a_patch_that_is_not_an_offset_stream_is_415(client):
    location = await create(client, 100)
    resp = await client.patch(location, data=b"x" * 10, headers={
        **TUS, "Upload-Offset": "0", "Content-Type": "application/octet-stream"})
    assert (await error_of(resp, 415))["code"] == "unsupported_media_type"
    assert await offset_of(client, location) == 0


async def test_too_long_is_413_at_creation_and_past_the_length(client, settings):
    resp = await client.post("/api/uploads/", headers={
        **TUS, "Upload-Length": str(settings.max_upload_bytes + 1)})
    assert (await error_of(resp, 413))["code"] == "upload_too_large"
    assert not any(uploads_dir(settings.data_dir).iterdir())
    location = await create(client, 100)
    assert (await error_of(await send(client, location, 0, b"x" * 101), 413))["code"] == (
        "upload_too_large")
    assert await offset_of(client, location) == 0


async def test_one_writer_at_a_time_and_a_dropped_patch_keeps_its_bytes(client):
    """A second PATCH while one streams gets 409; when the first one's connection drops,
    what reached the server is durable, HEAD says so, and the upload resumes from there into
    a file identical to the source."""
    picture = random_png(1000, 1000, seed=11, channels=3)  # 3 MB
    location = await create(client, len(picture))
    data = upload_paths(client, location).data
    held = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        yield picture[:3 * MIB // 2]
        await held.wait()  # never set: this request ends by its connection dropping

    first = asyncio.ensure_future(send(client, location, 0, stalling()))

    async def streaming() -> bool | None:
        return True if data.stat().st_size >= MIB else None
    await poll(streaming, "the first PATCH to be writing")
    error = await error_of(await send(client, location, 0, picture), 409)
    assert error["code"] == "upload_busy"
    assert (await client.delete(location, headers=TUS)).status == 409

    first.cancel()  # the client goes away mid-body: its connection closes
    with contextlib.suppress(asyncio.CancelledError):
        await first

    async def settled() -> int | None:
        offset = await offset_of(client, location)
        return offset if offset > 0 else None
    offset = await poll(settled, "the dropped PATCH's bytes to be counted")
    assert MIB <= offset <= 3 * MIB // 2
    assert data.read_bytes() == picture[:offset]
    resp = await send(client, location, offset, picture[offset:])
    assert resp.status == 204, await resp.text()
    job_id = resp.headers["Oilspill-Job-Id"]
    await wait_finished(client, job_id)
    jobs_dir = client.server.app[keys.SETTINGS].jobs_dir
    stored = JobPaths(jobs_dir, job_id).image("000000.png").read_bytes()
    assert sha256(stored) == sha256(picture)


async def test_delete_terminates_an_upload_and_its_files(client):
    location = await create(client, 100)
    assert (await send(client, location, 0, b"x" * 10)).status == 204
    paths = upload_paths(client, location)
    assert paths.root.is_dir()
    resp = await client.delete(location, headers=TUS)
    assert resp.status == 204
    assert resp.headers["Tus-Resumable"] == "1.0.0"
    assert not paths.root.exists()
    assert (await client.head(location, headers=TUS)).status == 404
    assert (await error_of(await send(client, location, 10, b"x"), 404))["code"] == "not_found"
    assert (await client.delete(location, headers=TUS)).status == 404
    assert (await client.get(location)).status == 404


async def test_unfinished_uploads_expire_in_the_cleanup(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings.with_changes(upload_expiry_s=0.5)))
    cleanup = client.server.app[keys.CLEANUP]
    location = await create(client, 100)
    resp = await send(client, location, 0, b"x" * 10)
    assert resp.status == 204
    assert parsedate_to_datetime(resp.headers["Upload-Expires"]).timestamp() < time.time() + 60
    paths = upload_paths(client, location)

    async def expired() -> bool | None:
        report = await cleanup.run_once()
        return True if report.uploads_expired else None
    await poll(expired, "the upload to expire")
    assert not paths.root.exists()
    assert (await client.head(location, headers=TUS)).status == 404
    assert (await client.get(location)).status == 404


async def test_a_live_upload_survives_the_cleanup(client):
    location = await create(client, 100)
    report = await client.server.app[keys.CLEANUP].run_once()
    assert report.uploads_expired == 0
    assert await offset_of(client, location) == 0


async def test_bytes_still_to_come_count_against_the_free_space(aiohttp_client, settings):
    """Each creation needs room for itself and for what unfinished uploads will still send
    (margins of 200 MB: other work on this machine changes the free space meanwhile)."""
    free = shutil.disk_usage(settings.data_dir.parent).free
    client = await aiohttp_client(create_app(settings.with_changes(
        min_free_bytes=free - 600 * MIB, max_upload_bytes=1024 * MIB)))
    first = await create(client, 400 * MIB)
    resp = await client.post("/api/uploads/", headers={**TUS, "Upload-Length": str(400 * MIB)})
    assert (await error_of(resp, 507))["code"] == "insufficient_storage"
    assert len(list(upload_paths(client, first).uploads_dir.iterdir())) == 1
    assert (await client.delete(first, headers=TUS)).status == 204
    await create(client, 400 * MIB)  # its promised bytes are free again


async def test_a_refused_final_patch_answers_as_post_upload_and_removes_the_upload(client):
    junk = b"neither a zip nor an image " * 100
    post = await client.post("/api/upload/", data=form(junk, "notes.txt"))
    refusal = await error_of_post(post)
    location = await create(client, len(junk), "notes.txt")
    resp = await send(client, location, 0, junk)
    assert resp.status == post.status == 400
    assert (await resp.json())["error"] == refusal
    assert refusal["code"] == "not_a_zip"
    assert "Oilspill-Job-Id" not in resp.headers
    assert not upload_paths(client, location).data.exists()
    jobs_dir = client.server.app[keys.SETTINGS].jobs_dir
    assert not jobs_dir.exists() or not any(jobs_dir.iterdir())
    assert (await client.head(location, headers=TUS)).status == 410
    error = await error_of(await send(client, location, len(junk), b""), 410)
    assert error["code"] == "upload_refused"
    status = await (await client.get(location)).json()
    assert (status["job_id"], status["error"]) == (None, refusal)


async def error_of_post(resp: aiohttp.ClientResponse) -> dict[str, str]:
    assert resp.status == 400
    error: dict[str, str] = (await resp.json())["error"]
    return error


async def test_a_token_is_needed_except_for_options(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings.with_changes(api_token="s3cret")))
    resp = await client.post("/api/uploads/", headers={**TUS, "Upload-Length": "10"})
    assert (await error_of(resp, 401))["code"] == "unauthorized"
    assert (await client.options("/api/uploads/")).status == 204
    location = await create(client, 10, Authorization="Bearer s3cret")
    assert (await client.head(location, headers=TUS)).status == 401
    assert (await client.head(location, headers={**TUS, "Authorization": "Bearer s3cret"})
            ).status == 200


async def test_a_post_with_x_http_method_override_is_that_method(client):
    location = await create(client, 100)
    resp = await client.post(location, data=b"x" * 30, headers={
        **OCTETS, "Upload-Offset": "0", "X-HTTP-Method-Override": "PATCH"})
    assert (resp.status, resp.headers["Upload-Offset"]) == (204, "30")
    resp = await client.post(location, headers={**TUS, "X-HTTP-Method-Override": "HEAD"})
    assert (resp.status, resp.headers["Upload-Offset"]) == (200, "30")
    assert (await client.post(location, headers=TUS)).status == 405


async def test_cors_lets_a_page_on_another_origin_speak_tus(aiohttp_client, settings):
    origin = "https://ops.example.org"
    client = await aiohttp_client(create_app(settings.with_changes(cors_origins=origin)))
    location = await create(client, 100, Origin=origin)
    preflight = await client.options(location, headers={
        "Origin": origin, "Access-Control-Request-Method": "PATCH",
        "Access-Control-Request-Headers": "tus-resumable,upload-offset,content-type"})
    assert preflight.status == 204
    assert "PATCH" in preflight.headers["Access-Control-Allow-Methods"]
    allowed = preflight.headers["Access-Control-Allow-Headers"].lower()
    assert {"tus-resumable", "upload-offset", "upload-length", "upload-metadata"} <= {
        h.strip() for h in allowed.split(",")}
    resp = await send(client, location, 0, b"x" * 10, Origin=origin)
    exposed = {h.strip() for h in resp.headers["Access-Control-Expose-Headers"].split(",")}
    assert {"Location", "Upload-Offset", "Upload-Length", "Upload-Expires", "Tus-Resumable",
            "Tus-Version", "Oilspill-Job-Id"} <= exposed


async def test_a_restarted_app_finds_its_uploads_on_disk(aiohttp_client, settings):
    first = await aiohttp_client(create_app(settings))
    location = await create(first, 100)
    assert (await send(first, location, 0, b"y" * 64)).status == 204
    await first.close()
    again = await aiohttp_client(create_app(settings))
    assert await offset_of(again, location) == 64
    assert (await send(again, location, 64, b"z" * 36)).status == 400  # not an image: refused


@pytest.mark.parametrize("header", ["Upload-Metadata", "Upload-Length"])
async def test_malformed_headers_are_400(client, header):
    bad = {"Upload-Metadata": "filename not*base64", "Upload-Length": "-5"}
    resp = await client.post("/api/uploads/", headers={
        **TUS, "Upload-Length": "10", header: bad[header]})
    assert (await error_of(resp, 400))["code"] in ("bad_metadata", "bad_header")

