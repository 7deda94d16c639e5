"""The backend's side of the ML contract: masks, pictures, rejections and outages."""

from __future__ import annotations

import io
import json
import time
import zipfile

from aiohttp import web
from PIL import Image

from ml_stub.app import create_app as create_stub
from oilspill.web.app import create_app

from .conftest import scene_png, upload, wait_finished, zip_bytes


async def run_job(client, files: dict[str, bytes]) -> tuple[dict, list[dict]]:
    status, body = await upload(client, zip_bytes(files))
    assert status == 202, body
    job = await wait_finished(client, body["job_id"])
    tasks = [await (await client.get(f"/api/task/{t}")).json() for t in body["task_ids"]]
    return job, tasks


async def result_zip(client, job_id: str) -> zipfile.ZipFile:
    url = (await (await client.get(f"/api/archive/{job_id}")).json())["archive_url"]
    return zipfile.ZipFile(io.BytesIO(await (await client.get(url)).read()))


async def test_picture_answers_of_the_original_yolo_service_are_kept(
        start_stub, aiohttp_client, settings):
    yolo_like = await start_stub(mode="annotated")
    client = await aiohttp_client(create_app(settings.with_changes(ml_service_url=yolo_like)))
    job, tasks = await run_job(client, {"sea/a.png": scene_png(60, 40)})
    assert job["status"] == "done"
    result = tasks[0]["result"]
    assert result["oil_fraction"] is None and result["oil_pixels"] is None
    assert result["mask_url"] is None and (result["width"], result["height"]) == (60, 40)
    picture = await client.get(result["picture_url"])
    assert picture.status == 200
    assert Image.open(io.BytesIO(await picture.read())).format == "JPEG"
    with await result_zip(client, job["job_id"]) as zf:
        assert "results/sea/a.jpg" in zf.namelist()
        assert not [n for n in zf.namelist() if n.startswith("masks/")]
        row = json.loads(zf.read("summary.json"))[0]
        assert (row["status"], row["oil_fraction"], row["result"]) == ("done", None,
                                                                        "results/sea/a.jpg")


async def test_an_image_the_service_rejects_fails_with_its_message(client):
    good = scene_png(32, 32)
    truncated = good[: len(good) // 2]  # the header reads, the pixels do not decode
    job, tasks = await run_job(client, {"good.png": good, "broken.png": truncated})
    assert (job["status"], job["done"], job["failed"]) == ("done", 1, 1)
    broken = next(t for t in tasks if t["filename"] == "broken.png")
    assert broken["status"] == "failed" and broken["result"] is None
    assert "422" in broken["error"] and "cannot decode image" in broken["error"]
    with await result_zip(client, job["job_id"]) as zf:
        rows = {r["filename"]: r for r in json.loads(zf.read("summary.json"))}
    assert rows["broken.png"]["error"] == broken["error"]
    assert rows["good.png"]["status"] == "done"


async def test_an_image_that_does_not_decode_fails_before_any_ml_call(client):
    job, tasks = await run_job(client, {"noise.png": b"\x89PNG\r\n\x1a\n" + b"\x00" * 64})
    assert job["status"] == "failed"
    assert tasks[0]["status"] == "failed" and "cannot read image" in tasks[0]["error"]


class ScriptedService:
    """A real HTTP server that answers /segment with a scripted list of statuses, then masks
    from the real stub's detector; it records when each call came."""

    def __init__(self, script: list[tuple[int, dict[str, str]]]) -> None:
        self.script = list(script)
        self.calls: list[float] = []

    def app(self) -> web.Application:
        @web.middleware
        async def scripted(request: web.Request, handler):  # type: ignore[no-untyped-def]
            self.calls.append(time.monotonic())
            if not self.script:
                return await handler(request)
            await request.read()
            status, headers = self.script.pop(0)
            return web.json_response({"detail": "GPU out of memory"}, status=status,
                                     headers=headers)

        app = create_stub()
        app.middlewares.append(scripted)
        return app


async def scripted_client(aiohttp_server, aiohttp_client, settings, script, **changes):
    service = ScriptedService(script)
    server = await aiohttp_server(service.app())
    url = str(server.make_url("")).rstrip("/")
    client = await aiohttp_client(create_app(settings.with_changes(ml_service_url=url,
                                                                   **changes)))
    return service, client


async def test_service_errors_are_retried_then_fail_with_the_last_reason(
        aiohttp_server, aiohttp_client, settings):
    service, client = await scripted_client(
        aiohttp_server, aiohttp_client, settings, [(503, {})] * 10, ml_max_attempts=3,
        ml_retry_base_s=0.01)
    job, tasks = await run_job(client, {"a.png": scene_png()})
    assert job["status"] == "failed"
    assert len(service.calls) == 3 and tasks[0]["attempts"] == 3
    assert tasks[0]["error"] == ("ML service answered 503: GPU out of memory "
                                 "(gave up after 3 attempts)")


async def test_a_transient_error_is_retried_until_done(aiohttp_server, aiohttp_client,
                                                       settings):
    service, client = await scripted_client(
        aiohttp_server, aiohttp_client, settings, [(500, {}), (502, {})], ml_retry_base_s=0.01)
    job, tasks = await run_job(client, {"a.png": scene_png()})
    assert job["status"] == "done" and tasks[0]["attempts"] == 3
    assert len(service.calls) == 3 and tasks[0]["error"] is None


async def test_retry_after_is_honoured(aiohttp_server, aiohttp_client, settings):
    service, client = await scripted_client(
        aiohttp_server, aiohttp_client, settings, [(429, {"Retry-After": "1"})],
        ml_retry_base_s=0.01)
    job, _ = await run_job(client, {"a.png": scene_png()})
    assert job["status"] == "done" and len(service.calls) == 2
    assert service.calls[1] - service.calls[0] >= 0.95


async def test_a_rejection_is_not_retried(aiohttp_server, aiohttp_client, settings):
    service, client = await scripted_client(
        aiohttp_server, aiohttp_client, settings, [(400, {})], ml_retry_base_s=0.01)
    job, tasks = await run_job(client, {"a.png": scene_png()})
    assert job["status"] == "failed" and len(service.calls) == 1
    assert tasks[0]["attempts"] == 1
    assert tasks[0]["error"] == "ML service answered 400: GPU out of memory"
