"""The original system's later API, which its Next.js front end calls.

`POST /api/upload` (no slash) is the ordinary upload, whose answer carries `user_hash`.
`GET /api/status/{job_id}` speaks Celery states; `GET /api/archive_time_left/{user_hash}`
and `GET /api/download/{user_hash}` find the job by its user hash (a random secret of its
own, see paths.new_user_hash), never by anything guessable.
"""

from __future__ import annotations

import asyncio
import math
import time
from typing import Any

from aiohttp import web

from ..jobs import JobStatus, TaskStatus
from ..paths import JobPaths, is_id, is_user_hash
from ..store import NotFound
from . import keys
from .files import ResultFile
from .middlewares import ApiError

CELERY_STATES = {JobStatus.QUEUED: "PENDING", JobStatus.RUNNING: "STARTED",
                 JobStatus.DONE: "SUCCESS", JobStatus.FAILED: "FAILURE"}


async def job_status(request: web.Request) -> web.Response:
    """GET /api/status/{job_id}: the job as the original answered (a Celery state and, once
    finished, `result`), with oilspill's own counts beside them."""
    job_id = request.match_info["job_id"]
    if not is_id(job_id):
        raise ApiError(404, "not_found", f"no job with id {job_id[:64]!r}")
    job = await request.app[keys.STORE].get_job(job_id)  # NotFound: 404, or 410 if deleted
    p = job.progress
    result: dict[str, Any] | None = None
    if job.finished:
        tasks = await request.app[keys.STORE].list_tasks(job.id)
        result = {
            "archive": f"/api/download/{job.user_hash}" if job.user_hash
            else f"/api/archive/{job.id}",
            "processed_files": [t.filename for t in tasks if t.status is TaskStatus.DONE],
            "errors": [{"file": t.filename, "error": t.error or "failed"}
                       for t in tasks if t.status is TaskStatus.FAILED]}
    return web.json_response({
        "status": CELERY_STATES[p.status], "result": result, "job_id": job.id,
        "total": p.total, "queued": p.queued, "running": p.running, "done": p.done,
        "failed": p.failed, "tiles_total": job.tiles_total, "tiles_done": job.tiles_done})


async def _job_id(request: web.Request, user_hash: str) -> str | None:
    if not is_user_hash(user_hash):
        return None
    return await request.app[keys.STORE].job_id_of_user_hash(user_hash)


async def archive_time_left(request: web.Request) -> web.Response:
    """GET /api/archive_time_left/{user_hash}: seconds until retention removes the job's
    results (the full retention while it runs: the clock starts when it finishes); 0 for
    an unknown, deleted or expired job, as the original answered."""
    seconds = 0
    job_id = await _job_id(request, request.match_info["user_hash"])
    if job_id is not None:
        retention_s = request.app[keys.SETTINGS].retention_s
        try:
            job = await request.app[keys.STORE].get_job(job_id)
        except NotFound:  # deleted since the lookup
            job = None
        if job is not None and job.finished_at is None:
            seconds = math.ceil(retention_s)
        elif job is not None and job.finished_at is not None:
            seconds = max(0, math.ceil(retention_s - (time.time() - job.finished_at)))
    return web.json_response({"seconds_left": seconds})


async def download(request: web.Request, user_hash: str) -> web.FileResponse:
    """GET /api/download/{user_hash}: the job's result zip, built on first request, named
    `result_{user_hash}.zip`. 409 (job_not_finished) before the job is finished."""
    job_id = await _job_id(request, user_hash)
    if job_id is None:
        raise ApiError(404, "not_found", "no job has this user hash")
    await request.app[keys.ARCHIVES].ensure(job_id)
    path = JobPaths(request.app[keys.SETTINGS].jobs_dir, job_id).archive
    if not await asyncio.to_thread(path.is_file):  # deleted meanwhile
        raise ApiError(404, "not_found", "no job has this user hash")
    return ResultFile(path, headers={
        "Content-Type": "application/zip",
        "Content-Disposition": f'attachment; filename="result_{user_hash}.zip"'})
