"""A finished job's result zip: built once, off the event loop, then served by name."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from .archive import build_result_zip
from .paths import JobPaths, archive_name
from .store import Store

logger = logging.getLogger(__name__)


class JobNotFinished(Exception):
    """The job still has queued or running tasks."""


class ResultArchives:
    """Builds each finished job's result zip at most once, even under concurrent requests."""

    def __init__(self, store: Store, jobs_dir: Path, overlay_max_px: int) -> None:
        self._store = store
        self._jobs_dir = jobs_dir
        self._overlay_max_px = overlay_max_px
        self._locks: dict[str, asyncio.Lock] = {}

    async def ensure(self, job_id: str) -> str:
        """The result zip's file name, building it first if needed. Raises JobNotFinished."""
        job = await self._store.get_job(job_id)
        if not job.finished:
            raise JobNotFinished(job_id)
        if job.archive_name:
            return job.archive_name
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        try:
            async with lock:
                job = await self._store.get_job(job_id)
                if job.archive_name:
                    return job.archive_name
                tasks = await self._store.list_tasks(job_id)
                logger.info("job %s: building result zip", job_id)
                started = time.monotonic()
                await asyncio.to_thread(build_result_zip, JobPaths(self._jobs_dir, job_id), tasks,
                                        self._overlay_max_px)
                name = archive_name(job_id)
                await self._store.set_job_archive(job_id, name)
                logger.info("job %s: result zip built in %.2f s (%d tasks)", job_id,
                            time.monotonic() - started, len(tasks))
                return name
        finally:
            if not lock.locked():
                self._locks.pop(job_id, None)
