"""Retention, orphans and DELETE: finished jobs go, running jobs stay, URLs answer 410."""

from __future__ import annotations

import os
import time
import uuid

from oilspill.web import keys
from oilspill.web.app import create_app

from .conftest import scene_png, upload, wait_finished, zip_bytes
from .procs import poll


async def wait_status(client, path: str, status: int, timeout_s: float = 15) -> dict:
    async def answers() -> dict | None:
        resp = await client.get(path)
        return await resp.json() if resp.status == status else None
    return await poll(answers, f"{path} to answer {status}", timeout_s)


async def test_retention_deletes_finished_jobs_and_keeps_running_ones(
        start_stub, aiohttp_client, settings, data_dir):
    slow = await start_stub(latency_ms=60_000)  # its job stays running throughout
    fast = await start_stub()
    fast_settings = settings.with_changes(ml_service_url=fast, retention_s=0.5,
                                          cleanup_interval_s=0.2)
    client = await aiohttp_client(create_app(fast_settings))
    status, done_job = await upload(client, zip_bytes({"a.png": scene_png()}))
    await wait_finished(client, done_job["job_id"])
    url = (await (await client.get(f"/api/archive/{done_job['job_id']}")).json())["archive_url"]

    slow_client = await aiohttp_client(create_app(settings.with_changes(
        ml_service_url=slow, retention_s=0.5, cleanup_interval_s=0.2,
        data_dir=data_dir.parent / "slow")))
    status, running_job = await upload(slow_client, zip_bytes({"b.png": scene_png()}))
    assert status == 202

    job_id, task_id = done_job["job_id"], done_job["task_ids"][0]
    gone = await wait_status(client, f"/api/job/{job_id}", 410)
    assert gone["error"]["code"] == "gone"
    for path in (f"/api/task/{task_id}", f"/api/archive/{job_id}", url,
                 f"/api/task/{task_id}/mask"):
        resp = await client.get(path)
        assert resp.status == 410, path
    assert not (data_dir / "jobs" / job_id).exists()

    # Past the retention time, runs of its own cleanup leave the running job alone.
    for _ in range(2):
        report = await slow_client.app[keys.CLEANUP].run_once()
        assert report.jobs_deleted == 0
    resp = await slow_client.get(f"/api/job/{running_job['job_id']}")
    assert resp.status == 200 and (await resp.json())["finished_at"] is None
    assert (data_dir.parent / "slow" / "jobs" / running_job["job_id"]).is_dir()


async def test_orphan_folders_are_swept_once_old(client, data_dir):
    old, fresh = data_dir / "jobs" / str(uuid.uuid4()), data_dir / "jobs" / str(uuid.uuid4())
    for folder in (old, fresh):
        folder.mkdir()
        (folder / "upload.part").write_bytes(b"partial")
    hours_ago = time.time() - 2 * 3600
    for path in (old / "upload.part", old):
        os.utime(path, (hours_ago, hours_ago))
    report = await client.app[keys.CLEANUP].run_once()
    assert report.orphans_removed == 1
    assert not old.exists() and fresh.is_dir()


async def test_orphans_and_partial_files_are_removed_at_start_up(aiohttp_client, settings,
                                                                 data_dir):
    client = await aiohttp_client(create_app(settings))
    _, body = await upload(client, zip_bytes({"a.png": scene_png()}))
    await wait_finished(client, body["job_id"])
    await client.close()
    job_dir = data_dir / "jobs" / body["job_id"]
    (job_dir / "masks" / ".abc.part").write_bytes(b"half a mask")
    (job_dir / "oilspill-results-x.zip.part").write_bytes(b"half a zip")
    orphan = data_dir / "jobs" / str(uuid.uuid4())
    orphan.mkdir()
    client = await aiohttp_client(create_app(settings))
    assert not orphan.exists()
    assert not list(job_dir.rglob("*.part"))
    assert (await client.get(f"/api/job/{body['job_id']}")).status == 200


async def test_delete_cancels_a_running_job_and_removes_its_files(
        start_stub, aiohttp_client, settings, data_dir):
    slow = await start_stub(latency_ms=60_000)
    client = await aiohttp_client(create_app(settings.with_changes(ml_service_url=slow)))
    _, body = await upload(client, zip_bytes({f"{i}.png": scene_png(seed=i)
                                                   for i in range(6)}))
    job_id = body["job_id"]
    resp = await client.delete(f"/api/job/{job_id}")
    assert resp.status == 200
    assert await resp.json() == {"job_id": job_id, "status": "deleted", "tasks": 6}
    assert not (data_dir / "jobs" / job_id).exists()
    for path in (f"/api/job/{job_id}", f"/api/task/{body['task_ids'][0]}"):
        resp = await client.get(path)
        assert resp.status == 410 and (await resp.json())["error"]["code"] == "gone"
    assert (await client.delete(f"/api/job/{job_id}")).status == 410
    assert (await client.delete(f"/api/job/{uuid.uuid4()}")).status == 404


async def test_the_pool_keeps_working_after_a_delete(aiohttp_client, client):
    _, first = await upload(client, zip_bytes({"a.png": scene_png()}))
    assert (await client.delete(f"/api/job/{first['job_id']}")).status == 200
    _, second = await upload(client, zip_bytes({"b.png": scene_png(seed=3)}))
    job = await wait_finished(client, second["job_id"])
    assert job["status"] == "done"
