"""HTTP handlers: parse the request, call the service's modules, answer JSON.

Handlers raise ApiError or let a domain error through; `middlewares` renders both.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TypeVar

from aiohttp import BodyPartReader, web
from aiohttp.http import HttpProcessingError

from ..geo.errors import BadMask
from ..jobs import Job, ResultKind, Task, TaskStatus
from ..masks import UnreadableImage
from ..paths import (
    ARCHIVE_PARTS,
    JobPaths,
    archive_name,
    is_id,
    is_user_hash,
    job_id_of_archive,
)
from ..results import task_spills
from ..store import SKIPPED_IN_JOB
from ..uploads import IncomingUpload, UploadTooLarge
from . import keys, openapi, original
from .bodies import job_body, task_body
from .files import ResultFile
from .middlewares import ApiError

logger = logging.getLogger(__name__)
T = TypeVar("T")

CHUNK_BYTES = 256 * 1024
TASKS_PAGE = 500
TASKS_PAGE_MAX = 1000
MAX_OFFSET = 2**63 - 1  # SQLite's largest integer
GEOJSON = "application/geo+json"
# Multipart framing around the file part; a Content-Length beyond limit + this is refused
# before a byte of the body is read.
MULTIPART_SLACK_BYTES = 64 * 1024

def _valid_id(request: web.Request, name: str, what: str) -> str:
    value = request.match_info[name]
    if not is_id(value):
        raise ApiError(404, "not_found", f"no {what} with id {value[:64]!r}")
    return value


async def load_task(request: web.Request) -> Task:
    """The task the path names; store.NotFound (rendered 404 or 410) if there is none."""
    return await request.app[keys.STORE].get_task(_valid_id(request, "task_id", "task"))


async def load_job(request: web.Request) -> Job:
    """The job the path names; store.NotFound (rendered 404 or 410) if there is none."""
    return await request.app[keys.STORE].get_job(_valid_id(request, "job_id", "job"))


async def _within(idle_s: float, step: Awaitable[T]) -> T:
    """One read of the request body; a body that sends nothing for `idle_s` is refused."""
    try:
        return await asyncio.wait_for(step, idle_s)
    except TimeoutError:
        raise ApiError(408, "upload_stalled", f"the upload sent nothing for {idle_s:g} s "
                                              "(OILSPILL_UPLOAD_IDLE_S)") from None


async def _part_chunks(part: BodyPartReader, idle_s: float) -> AsyncIterator[bytes]:
    while chunk := await _within(idle_s, part.read_chunk(CHUNK_BYTES)):
        yield chunk


async def _skip_part(part: BodyPartReader, idle_s: float, budget: int) -> int:
    """Read and drop a form part that is not `file`; its bytes count against `budget` (what
    the whole body may carry besides the file). Returns what is left of the budget."""
    async for chunk in _part_chunks(part, idle_s):
        budget -= len(chunk)
        if budget < 0:
            raise UploadTooLarge(f"the form's other parts carry more than "
                                 f"{MULTIPART_SLACK_BYTES} bytes; send the file alone")
    return budget


def _upload_name(part: BodyPartReader) -> str:
    """The file's name as sent, readable: bytes that are not UTF-8 become U+FFFD."""
    raw = (part.filename or "upload.zip").encode("utf-8", "surrogateescape")
    name = os.path.basename(raw.decode("utf-8", "replace").replace("\\", "/"))
    return name[:255] or "upload.zip"


async def upload(request: web.Request) -> web.Response:
    """POST /api/upload/: a multipart form whose part `file` is a zip of images, or one image
    or scene (recognised by its content)."""
    uploads = request.app[keys.METRICS].uploads
    try:
        response = await _upload(request)
    except ApiError as exc:
        uploads.labels(exc.code).inc()
        raise
    except ConnectionResetError:
        uploads.labels("client_gone").inc()
        raise
    except Exception as exc:
        uploads.labels(type(exc).__name__).inc()
        raise
    uploads.labels("accepted").inc()
    return response


async def _upload(request: web.Request) -> web.Response:
    settings = request.app[keys.SETTINGS]
    draining = request.app[keys.DRAINING]
    if draining.is_set():
        raise _shutting_down()
    if request.content_type != "multipart/form-data":
        raise ApiError(415, "unsupported_media_type",
                       "send a multipart/form-data body with the zip or image in the part 'file'")
    if (request.content_length or 0) > settings.max_upload_bytes + MULTIPART_SLACK_BYTES:
        raise UploadTooLarge(f"upload is larger than {settings.max_upload_bytes} bytes "
                             "(OILSPILL_MAX_UPLOAD_BYTES)")
    try:
        reader = await request.multipart()
    except (ValueError, AssertionError) as exc:
        raise ApiError(400, "bad_multipart", f"cannot read the multipart body: {exc}") from None
    idle_s, budget = settings.upload_idle_s, MULTIPART_SLACK_BYTES
    # The bytes still owed to unfinished resumable uploads are spoken for on the disk too.
    expected = (request.content_length or 0) + request.app[keys.RESUMABLE].outstanding_bytes
    async with IncomingUpload(request.app[keys.STORE], settings,
                              request.app[keys.ACTIVE_UPLOADS], expected) as incoming:
        upload_name = None
        try:
            while (part := await _within(idle_s, reader.next())) is not None:
                if not isinstance(part, BodyPartReader):
                    raise ApiError(400, "bad_multipart", "a nested multipart part is not "
                                                         "a file; send one part named 'file'")
                if part.name != "file":
                    budget = await _skip_part(part, idle_s, budget)
                    continue
                if upload_name is not None:
                    raise ApiError(400, "too_many_files", "send exactly one part named 'file'")
                upload_name = _upload_name(part)
                await incoming.receive(_part_chunks(part, idle_s))
        except (ValueError, HttpProcessingError) as exc:  # malformed multipart framing
            reason = exc.message if isinstance(exc, HttpProcessingError) else str(exc)
            raise ApiError(400, "bad_multipart",
                           f"the multipart body is malformed: {reason[:200]}") from None
        if upload_name is None:
            raise ApiError(400, "missing_file", "the form has no part named 'file'")
        if draining.is_set():
            raise _shutting_down()
        accepted = await incoming.commit(upload_name)
        request.app[keys.METRICS].upload_bytes.inc(incoming.received_bytes)
    await request.app[keys.POOL].notify()
    return web.json_response(
        {"job_id": accepted.job_id, "user_hash": accepted.user_hash,
         "task_ids": accepted.task_ids, "status": "queued",
         "skipped": [{"filename": f, "reason": r}
                     for f, r in accepted.skipped[:SKIPPED_IN_JOB]],
         "skipped_total": len(accepted.skipped),
         "skipped_url": f"/api/job/{accepted.job_id}/skipped"},
        status=202, headers={"Location": f"/api/job/{accepted.job_id}"})


def _shutting_down() -> ApiError:
    return ApiError(503, "shutting_down", "the server is shutting down; upload again shortly")


async def get_task(request: web.Request) -> web.Response:
    """GET /api/task/{task_id}"""
    return web.json_response(task_body(await load_task(request)))


async def get_mask(request: web.Request) -> web.FileResponse:
    """GET /api/task/{task_id}/mask: a done task's mask."""
    return await _task_file(request, ResultKind.MASK)


async def get_picture(request: web.Request) -> web.FileResponse:
    """GET /api/task/{task_id}/picture: a done task's picture (from a YOLO-style service)."""
    return await _task_file(request, ResultKind.PICTURE)


async def get_overlay(request: web.Request) -> web.FileResponse:
    """GET /api/task/{task_id}/overlay: the input in grey with the oil tinted (PNG)."""
    task = await load_task(request)
    try:  # drawn once, however many ask at once
        overlay = await request.app[keys.ARCHIVES].overlay(task)
    except OSError as exc:  # files gone with a deletion meanwhile
        raise ApiError(404, "not_found", f"task {task.id} has no overlay") from exc
    except UnreadableImage as exc:  # the picture cannot be drawn: say why
        raise ApiError(404, "not_found", f"task {task.id} has no overlay: {exc}") from exc
    if overlay is None:
        raise ApiError(404, "not_found", f"task {task.id} has no overlay")
    return ResultFile(overlay)


async def get_task_spills(request: web.Request) -> web.FileResponse:
    """GET /api/task/{task_id}/spills.geojson: a done mask's slicks (RFC 7946 GeoJSON)."""
    task = await load_task(request)
    if task.result_kind is not ResultKind.MASK:
        raise ApiError(404, "not_found", f"task {task.id} has no mask, so no slicks")
    paths = JobPaths(request.app[keys.SETTINGS].jobs_dir, task.job_id)
    try:
        path = await asyncio.to_thread(task_spills, paths, task,
                                       max_slicks=request.app[keys.SETTINGS].max_slicks)
    except (OSError, BadMask) as exc:  # files gone with a deletion meanwhile
        raise ApiError(404, "not_found", f"task {task.id} has no slicks file") from exc
    return ResultFile(path, headers={"Content-Type": GEOJSON})


async def get_job_spills(request: web.Request) -> web.FileResponse:
    """GET /api/job/{job_id}/spills.geojson: a finished job's slicks, built once."""
    job = await load_job(request)
    try:
        path = await request.app[keys.ARCHIVES].ensure_spills(job.id)
    except (OSError, BadMask) as exc:  # files gone with a deletion meanwhile
        raise ApiError(404, "not_found", f"job {job.id} has no slicks file") from exc
    return ResultFile(path, headers={
        "Content-Type": GEOJSON,
        "Content-Disposition": f'attachment; filename="oilspill-spills-{job.id}.geojson"'})


async def _task_file(request: web.Request, kind: ResultKind) -> web.FileResponse:
    task = await load_task(request)
    missing = f"task {task.id} has no {kind.value}"
    if task.result_kind is not kind or task.result_name is None:
        raise ApiError(404, "not_found", missing)
    paths = JobPaths(request.app[keys.SETTINGS].jobs_dir, task.job_id)
    return await _serve_file(paths.result(kind, task.result_name), missing)


async def _serve_file(path: Path, missing: str) -> web.FileResponse:
    if not await asyncio.to_thread(path.is_file):
        raise ApiError(404, "not_found", missing)
    return ResultFile(path)


async def get_job(request: web.Request) -> web.Response:
    """GET /api/job/{job_id}: progress counts."""
    job = await load_job(request)
    return web.json_response(job_body(job, request.app[keys.POOL].ml_reachable))


def _page(request: web.Request) -> tuple[int, int]:
    """The query's offset and limit, checked."""
    try:
        offset = int(request.query.get("offset", "0"))
        limit = int(request.query.get("limit", str(TASKS_PAGE)))
    except ValueError:
        raise ApiError(400, "bad_query", "offset and limit are whole numbers") from None
    if not 0 <= offset <= MAX_OFFSET or not 1 <= limit <= TASKS_PAGE_MAX:
        raise ApiError(400, "bad_query", f"offset must be between 0 and {MAX_OFFSET} and "
                                         f"limit between 1 and {TASKS_PAGE_MAX}")
    return offset, limit


async def list_job_skipped(request: web.Request) -> web.Response:
    """GET /api/job/{job_id}/skipped?offset=&limit=: what the upload skipped, and why."""
    job = await load_job(request)
    offset, limit = _page(request)
    skipped = await request.app[keys.STORE].list_skipped(job.id, offset, limit)
    return web.json_response({"job_id": job.id, "total": job.skipped_total, "offset": offset,
                              "limit": limit, "skipped": [{"filename": f, "reason": r}
                                                          for f, r in skipped]})


async def list_job_tasks(request: web.Request) -> web.Response:
    """GET /api/job/{job_id}/tasks?offset=&limit=: the job's tasks in upload order."""
    job = await load_job(request)
    offset, limit = _page(request)
    tasks = await request.app[keys.STORE].list_tasks(job.id, offset, limit)
    return web.json_response({"job_id": job.id, "total": job.progress.total, "offset": offset,
                              "limit": limit, "tasks": [task_body(t) for t in tasks]})


async def metrics(request: web.Request) -> web.Response:
    """GET /metrics: Prometheus text format."""
    app = request.app
    registry = app[keys.METRICS]
    counts = await app[keys.STORE].count_tasks()
    for status, count in counts.items():
        registry.tasks.labels(status.value).set(count)
    registry.queue_depth.set(counts[TaskStatus.QUEUED])
    registry.ml_reachable.set(1 if app[keys.POOL].ml_reachable else 0)
    app[keys.ML_CLIENT].export(registry)
    registry.loop_lag_max.set(app[keys.LOOP_LAG].max_lag_s)
    body, content_type = registry.render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def delete_job(request: web.Request) -> web.Response:
    """DELETE /api/job/{job_id}: cancel the job and remove its files now."""
    job = await load_job(request)
    tasks = await request.app[keys.CLEANUP].delete_job(job.id)
    return web.json_response({"job_id": job.id, "status": "deleted", "tasks": tasks})


def _parts(request: web.Request) -> frozenset[str]:
    """`?parts=summary,spills,...`: what the zip should hold (default: everything)."""
    text = request.query.get("parts")
    if text is None:
        return frozenset(ARCHIVE_PARTS)
    parts = frozenset(p.strip() for p in text.split(",") if p.strip())
    if not parts or not parts <= set(ARCHIVE_PARTS):
        raise ApiError(400, "bad_query", f"parts is a comma-separated list of "
                                         f"{', '.join(ARCHIVE_PARTS)}")
    return parts


async def get_archive(request: web.Request) -> web.Response:
    """GET /api/archive/{job_id}?parts=: build (once) the finished job's result zip, or one
    of only some parts; link to it."""
    job_id = _valid_id(request, "job_id", "job")
    name = await request.app[keys.ARCHIVES].ensure(job_id, _parts(request))
    return web.json_response({"archive_url": f"/api/download/{name}"})


async def download(request: web.Request) -> web.FileResponse:
    """GET /api/download/{filename}: a result zip, by a name the server made; or, for the
    original front end, GET /api/download/{user_hash} (32 hex digits, never a file name:
    those end in .zip)."""
    name = request.match_info["filename"]
    if is_user_hash(name):
        return await original.download(request, name)
    job_id = job_id_of_archive(name)
    missing = ApiError(404, "not_found", "no such result archive")
    if job_id is None:
        raise missing
    job = await request.app[keys.STORE].get_job(job_id)  # NotFound: 404, or 410 if deleted
    whole = name == archive_name(job_id)
    if whole and job.archive_name != name:
        raise missing
    path = JobPaths(request.app[keys.SETTINGS].jobs_dir, job_id).root / name
    if not await asyncio.to_thread(path.is_file):
        raise missing
    return ResultFile(path, headers={
        "Content-Disposition": f'attachment; filename="{name}"'})


async def openapi_document(request: web.Request) -> web.Response:
    """GET /api/openapi.json"""
    return web.json_response(openapi.document())


async def healthz(request: web.Request) -> web.Response:
    """GET /healthz: 200 when the database answers; the ML service's state and each of
    its endpoints' figures."""
    try:
        await request.app[keys.STORE].ping()
    except Exception as exc:
        logger.error("health check: database unreachable: %s", exc)
        raise ApiError(503, "database_unavailable", "the database does not answer") from None
    reachable = request.app[keys.POOL].ml_reachable
    return web.json_response({
        "status": "ok", "database": "ok",
        "ml_service": "reachable" if reachable else "unreachable",
        "ml_service_url": request.app[keys.ML_CLIENT].base_url,
        "ml_endpoints": request.app[keys.ML_CLIENT].stats(),
        "loop_lag_max_ms": round(request.app[keys.LOOP_LAG].max_lag_s * 1000, 2)})
