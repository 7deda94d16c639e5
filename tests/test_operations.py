"""What operators and scripts use: Prometheus metrics, live events, task listing, JSON logs."""

from __future__ import annotations

import json
import logging
import re

from oilspill.logs import JsonFormatter
from oilspill.web.app import create_app

from .conftest import scene_png, upload, wait_finished, zip_bytes


def metric(text: str, name: str, **labels: str) -> float:
    wanted = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = rf"^{re.escape(name)}{{{re.escape(wanted)}}} (\S+)$" if labels else (
        rf"^{re.escape(name)} (\S+)$")
    match = re.search(pattern, text, re.MULTILINE)
    assert match, f"{name} {labels} not in the metrics"
    return float(match.group(1))


async def test_metrics_count_what_happened(client):
    _, body = await upload(client, zip_bytes({f"{i}.png": scene_png(seed=i)
                                                   for i in range(3)}))
    await wait_finished(client, body["job_id"])
    await client.post("/api/upload/", data=b"x", headers={"Content-Type": "text/plain"})
    resp = await client.get("/metrics")
    assert resp.status == 200 and resp.content_type == "text/plain"
    text = await resp.text()
    assert metric(text, "oilspill_uploads_total", outcome="accepted") == 1
    assert metric(text, "oilspill_uploads_total", outcome="unsupported_media_type") == 1
    assert metric(text, "oilspill_upload_bytes_total") > 0
    assert metric(text, "oilspill_tasks", state="done") == 3
    assert metric(text, "oilspill_queue_depth") == 0
    assert metric(text, "oilspill_ml_call_seconds_count") == 3
    assert metric(text, "oilspill_ml_service_reachable") == 1
    assert metric(text, "oilspill_http_requests_total", route="/api/upload/", method="POST",
                  status="202") == 1
    assert metric(text, "oilspill_http_requests_total", route="/api/job/{job_id}",
                  method="GET", status="200") >= 1
    await client.delete(f"/api/job/{body['job_id']}")
    text = await (await client.get("/metrics")).text()
    assert metric(text, "oilspill_cleanup_deletions_total", what="job") == 1


async def test_ml_errors_and_retries_are_counted(start_stub, aiohttp_client, settings):
    flaky = await start_stub(fail_rate=0.5, seed=4)
    client = await aiohttp_client(create_app(settings.with_changes(
        ml_service_url=flaky, ml_max_attempts=20, ml_retry_base_s=0.01)))
    _, body = await upload(client, zip_bytes({f"{i}.png": scene_png(seed=i)
                                                   for i in range(6)}))
    job = await wait_finished(client, body["job_id"])
    assert job["done"] == 6
    text = await (await client.get("/metrics")).text()
    errors = metric(text, "oilspill_ml_errors_total", kind="unavailable")
    assert errors > 0 and metric(text, "oilspill_retries_total") == errors


async def test_metrics_can_require_the_token(aiohttp_client, settings):
    client = await aiohttp_client(create_app(settings.with_changes(
        api_token="t0ken", metrics_public=False)))
    assert (await client.get("/metrics")).status == 401
    ok = await client.get("/metrics", headers={"Authorization": "Bearer t0ken"})
    assert ok.status == 200


async def test_events_stream_progress_tasks_and_end(client):
    files = {f"{i}.png": scene_png(seed=i) for i in range(4)}
    _, body = await upload(client, zip_bytes(files))
    resp = await client.get(f"/api/job/{body['job_id']}/events")
    assert resp.status == 200 and resp.content_type == "text/event-stream"
    events = []
    async for raw in resp.content:
        line = raw.decode().strip()
        if line.startswith("event: "):
            events.append([line[7:], None])
        elif line.startswith("data: "):
            events[-1][1] = json.loads(line[6:])
    kinds = [kind for kind, _ in events]
    assert kinds[0] == "progress" and kinds[-1] == "end"
    tasks = {data["filename"] for kind, data in events if kind == "task"}
    assert tasks == set(files)
    assert events[-1][1]["done"] == 4 and events[-1][1]["finished_at"]


async def test_task_listing_pages(client):
    files = {f"{i:02d}.png": scene_png(seed=i) for i in range(7)}
    _, body = await upload(client, zip_bytes(files))
    await wait_finished(client, body["job_id"])
    page = await (await client.get(f"/api/job/{body['job_id']}/tasks?offset=2&limit=3")).json()
    assert (page["total"], page["offset"], page["limit"]) == (7, 2, 3)
    assert [t["filename"] for t in page["tasks"]] == ["02.png", "03.png", "04.png"]
    bad = await client.get(f"/api/job/{body['job_id']}/tasks?limit=0")
    assert bad.status == 400


async def test_the_page_and_its_files_are_served(client):
    page = await client.get("/")
    assert page.status == 200 and "<title>oilspill</title>" in await page.text()
    for name in ("app.js", "style.css", "favicon.svg"):
        assert (await client.get(f"/static/{name}")).status == 200
    assert (await client.get("/static/index.html")).status == 404
    assert (await client.get("/static/..%2fapi.py")).status == 404


def test_json_logs_are_one_object_a_line():
    record = logging.LogRecord("oilspill.worker", logging.INFO, __file__, 1,
                               "job %s task %s: done", ("j1", "t1"), None)
    line = JsonFormatter().format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert entry["message"] == "job j1 task t1: done" and entry["level"] == "INFO"


async def test_events_say_gone_when_the_job_is_deleted(start_stub, aiohttp_client, settings):
    slow = await start_stub(latency_ms=60_000)
    client = await aiohttp_client(create_app(settings.with_changes(ml_service_url=slow)))
    _, body = await upload(client, zip_bytes({"a.png": scene_png()}))
    resp = await client.get(f"/api/job/{body['job_id']}/events")
    first = await resp.content.readuntil(b"\n\n")
    assert first.startswith(b"event: progress")
    assert (await client.delete(f"/api/job/{body['job_id']}")).status == 200
    rest = await resp.content.read()
    assert b"event: gone" in rest
