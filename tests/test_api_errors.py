"""Each client mistake gets its status and the one JSON error shape; nothing is left behind."""

from __future__ import annotations

import sqlite3
import uuid

import aiohttp
import pytest

from oilspill.web.app import create_app

from .conftest import form, scene_png, upload, wait_finished, zip_bytes


def job_rows(data_dir) -> int:
    with sqlite3.connect(data_dir / "oilspill.sqlite3") as db:
        return db.execute("SELECT COUNT(*) FROM jobs").fetchone()[0]


def job_folders(data_dir) -> list:
    return list((data_dir / "jobs").iterdir())


async def assert_error(resp, status: int, code: str | None = None) -> dict:
    assert resp.status == status, await resp.text()
    assert resp.content_type == "application/json"
    body = await resp.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message"}
    assert body["error"]["message"]
    if code:
        assert body["error"]["code"] == code
    return body


async def assert_nothing_left(client, data_dir) -> None:
    assert job_rows(data_dir) == 0
    assert job_folders(data_dir) == []


async def test_missing_file_field_is_400(client, data_dir):
    fd = aiohttp.FormData()
    fd.add_field("other", b"hello", filename="x.zip")
    resp = await client.post("/api/upload/", data=fd)
    await assert_error(resp, 400, "missing_file")
    await assert_nothing_left(client, data_dir)


async def test_neither_a_zip_nor_an_image_is_400(client, data_dir):
    resp = await client.post("/api/upload/", data=form(b"%PDF-1.4 not a zip", "fake.zip"))
    error = await assert_error(resp, 400, "not_a_zip")
    assert "neither a zip nor an image" in error["error"]["message"]
    await assert_nothing_left(client, data_dir)


async def test_a_bare_image_is_a_one_image_job_whatever_its_name(client):
    """Recognised by content: a PNG sent as fake.zip is one image, named as sent."""
    resp = await client.post("/api/upload/", data=form(scene_png(), filename="fake.zip"))
    assert resp.status == 202
    body = await resp.json()
    assert len(body["task_ids"]) == 1
    job = await wait_finished(client, body["job_id"])
    assert (job["done"], job["tiles_total"], job["tiles_done"]) == (1, 1, 1)
    task = await (await client.get(f"/api/task/{body['task_ids'][0]}")).json()
    assert task["filename"] == "fake.zip" and task["result"]["mask_url"]


async def test_truncated_zip_is_400(client, data_dir):
    data = zip_bytes({f"{i}.png": scene_png(seed=i) for i in range(3)})
    resp = await client.post("/api/upload/", data=form(data[: len(data) // 2]))
    await assert_error(resp, 400, "not_a_zip")
    await assert_nothing_left(client, data_dir)


async def test_not_multipart_is_415(client, data_dir):
    resp = await client.post("/api/upload/", data=b"PK\x03\x04",
                             headers={"Content-Type": "application/zip"})
    await assert_error(resp, 415)
    await assert_nothing_left(client, data_dir)


async def test_two_file_parts_is_400(client, data_dir):
    fd = aiohttp.FormData()
    for name in ("a.zip", "b.zip"):
        fd.add_field("file", zip_bytes({"a.png": scene_png()}), filename=name)
    resp = await client.post("/api/upload/", data=fd)
    await assert_error(resp, 400, "too_many_files")
    await assert_nothing_left(client, data_dir)


async def test_zip_without_images_is_422_naming_what_was_skipped(client, data_dir):
    data = zip_bytes({"notes.txt": b"hello", "data.csv": b"a,b\n1,2\n"})
    resp = await client.post("/api/upload/", data=form(data))
    body = await assert_error(resp, 422, "no_images")
    assert "notes.txt" in body["error"]["message"]
    await assert_nothing_left(client, data_dir)


async def test_oversize_upload_is_413(client, settings, data_dir):
    big = zip_bytes({"big.bmp": b"BM" + b"\x00" * (settings.max_upload_bytes + 10)})
    resp = await client.post("/api/upload/", data=form(big))
    await assert_error(resp, 413, "upload_too_large")
    await assert_nothing_left(client, data_dir)


async def test_oversize_upload_without_content_length_is_413(client, settings, data_dir):
    """Chunked: the limit is counted on the bytes as they stream in."""
    big = zip_bytes({"big.bmp": b"BM" + b"\x00" * (settings.max_upload_bytes + 10)})

    async def body():
        for i in range(0, len(big), 65536):
            yield big[i:i + 65536]

    fd = aiohttp.FormData()
    fd.add_field("file", body(), filename="big.zip", content_type="application/zip")
    resp = await client.post("/api/upload/", data=fd)
    await assert_error(resp, 413, "upload_too_large")
    await assert_nothing_left(client, data_dir)


@pytest.mark.parametrize("path", ["/api/task/{id}", "/api/job/{id}", "/api/archive/{id}",
                                  "/api/task/{id}/mask"])
async def test_unknown_id_is_404(client, path):
    resp = await client.get(path.format(id=uuid.uuid4()))
    await assert_error(resp, 404, "not_found")


@pytest.mark.parametrize("bad", ["nope", "123", "../../etc/passwd", "%2e%2e"])
async def test_malformed_id_is_404(client, bad):
    resp = await client.get(f"/api/job/{bad}")
    await assert_error(resp, 404)


@pytest.mark.parametrize("name", ["x.zip", "oilspill-results-nope.zip", "..%2foilspill.sqlite3",
                                  "oilspill-results-6eb8e5f7-a8fe-4d43-a1c0-22bbecc28eca.zip"])
async def test_download_of_a_name_the_server_did_not_make_is_404(client, name):
    resp = await client.get(f"/api/download/{name}")
    await assert_error(resp, 404, "not_found")


async def test_archive_before_the_job_finishes_is_409(start_stub, aiohttp_client, settings):
    slow = await start_stub(latency_ms=2000)
    client = await aiohttp_client(create_app(settings.with_changes(ml_service_url=slow)))
    status, body = await upload(client, zip_bytes({"a.png": scene_png()}))
    assert status == 202
    resp = await client.get(f"/api/archive/{body['job_id']}")
    await assert_error(resp, 409, "job_not_finished")


async def test_unknown_route_and_method_answer_json(client):
    await assert_error(await client.get("/api/nothing-here"), 404)
    await assert_error(await client.delete("/api/upload/"), 405)


async def test_healthz(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert (await resp.json())["database"] == "ok"
