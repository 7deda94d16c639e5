"""Live progress of a job as server-sent events: `GET /api/job/{job_id}/events`.

Events: `progress` (the job's body, whenever its counts change), `task` (a task's body as
it finishes), `end` (the job is finished; the stream closes), `gone` (the job was
deleted). A comment line every `feeds.HEARTBEAT_S` keeps proxies from closing a quiet
stream. However many readers watch a job, one feed (feeds.py) polls it.
"""

from __future__ import annotations

import logging

from aiohttp import web

from . import keys
from .api import load_job

logger = logging.getLogger(__name__)


async def job_events(request: web.Request) -> web.StreamResponse:
    """GET /api/job/{job_id}/events"""
    job = await load_job(request)
    headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
               "X-Accel-Buffering": "no"}
    if request.method == "HEAD":  # the headers a GET would answer, and no stream
        return web.Response(headers=headers)
    response = web.StreamResponse(headers=headers)
    await response.prepare(request)
    try:
        async with request.app[keys.FEEDS].watch(job.id) as feed:
            await feed.follow(response)
        await response.write_eof()
    except ConnectionError:  # reset, broken pipe: the client went away
        logger.info("job %s: an event stream's reader went away", job.id)
    return response
