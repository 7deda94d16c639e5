"""Live progress of a job as server-sent events: `GET /api/job/{job_id}/events`.

Events: `progress` (the job's body, whenever its counts change), `task` (a task's body as
it finishes), `end` (the job is finished; the stream closes), `gone` (the job was
deleted). A comment line every `HEARTBEAT_S` keeps proxies from closing a quiet stream.
Reading a job's progress is one row (its counters), so a stream costs little however many
tasks the job has.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from typing import Any

from aiohttp import web

from ..jobs import Job
from ..store import NotFound
from . import keys
from .api import job_body, load_job, task_body

POLL_S = 0.25
HEARTBEAT_S = 15.0


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


async def job_events(request: web.Request) -> web.StreamResponse:
    """GET /api/job/{job_id}/events"""
    job = await load_job(request)
    response = web.StreamResponse(headers={
        "Content-Type": "text/event-stream", "Cache-Control": "no-cache",
        "X-Accel-Buffering": "no"})
    await response.prepare(request)
    try:
        await _stream(response, request, job)
    except ConnectionResetError:
        pass  # the client went away: nothing to tell it
    except NotFound:  # the job was deleted meanwhile
        with contextlib.suppress(ConnectionResetError):
            await response.write(_event("gone", {"job_id": job.id}))
    with contextlib.suppress(ConnectionResetError):
        await response.write_eof()
    return response


async def _stream(response: web.StreamResponse, request: web.Request, job: Job) -> None:
    store, pool = request.app[keys.STORE], request.app[keys.POOL]
    since = 0.0
    last: dict[str, Any] | None = None
    quiet_since = time.monotonic()
    draining = request.app[keys.DRAINING]
    while not draining.is_set():
        polled_at = time.time()
        for task in await store.tasks_finished_since(job.id, since):
            await response.write(_event("task", task_body(task)))
            since = max(since, task.finished_at or since)
        job = await store.get_job(job.id)
        body = job_body(job, pool.ml_reachable)
        if body != last:
            await response.write(_event("progress", body))
            last, quiet_since = body, time.monotonic()
        if job.finished and since >= (job.finished_at or 0) - 1e-3:
            await response.write(_event("end", body))
            break
        if time.monotonic() - quiet_since > HEARTBEAT_S:
            await response.write(b": still working\n\n")
            quiet_since = time.monotonic()
        await asyncio.sleep(max(0.0, POLL_S - (time.time() - polled_at)))
