"""Deleting jobs, on request and by retention, and sweeping files no job owns.

Rows go first (leaving tombstones), files after: a crash in between leaves a folder with no
row, which the orphan sweep removes; never a row that points to a deleted file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from .metrics import Metrics
from .paths import PARTIAL_GLOBS, JobPaths
from .resumable import ResumableUploads
from .store import Store
from .worker import WorkerPool

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class CleanupReport:
    jobs_deleted: int = 0
    orphans_removed: int = 0
    tombstones_purged: int = 0
    uploads_expired: int = 0


def _newest_mtime(folder: Path) -> float:
    newest = folder.stat().st_mtime
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            with contextlib.suppress(FileNotFoundError):
                newest = max(newest, os.stat(os.path.join(root, name)).st_mtime)
    return newest


def _orphan_folders(jobs_dir: Path, known: set[str], min_age_s: float) -> list[Path]:
    """Job folders with no job row, untouched for `min_age_s`."""
    if not jobs_dir.is_dir():
        return []
    cutoff = time.time() - min_age_s
    found = []
    for entry in jobs_dir.iterdir():
        if entry.name in known or not entry.is_dir():
            continue
        with contextlib.suppress(FileNotFoundError):
            if min_age_s <= 0 or _newest_mtime(entry) < cutoff:
                found.append(entry)
    return found


def _remove_partials(jobs_dir: Path) -> int:
    """Remove `.part` files that a crashed process left in job folders."""
    removed = 0
    for pattern in PARTIAL_GLOBS:
        for path in jobs_dir.glob(pattern):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                removed += 1
    return removed


async def recover_files(store: Store, jobs_dir: Path) -> None:
    """At start-up, before any worker or upload runs: remove every folder no job row owns
    (an upload cut short) and every partial file a crashed process left."""
    known = await store.job_ids()
    orphans = await asyncio.to_thread(_orphan_folders, jobs_dir, known, 0)
    for folder in orphans:
        await asyncio.to_thread(shutil.rmtree, folder, True)
    partials = await asyncio.to_thread(_remove_partials, jobs_dir)
    if orphans or partials:
        logger.warning("start-up: removed %d orphan folders and %d partial files",
                       len(orphans), partials)


class Cleanup:
    """Deletes jobs (on request: DELETE; and past the retention time) and sweeps orphan
    folders and old tombstones; one periodic run at a time."""

    def __init__(self, *, store: Store, pool: WorkerPool, jobs_dir: Path, retention_s: float,
                 orphan_age_s: float, tombstone_s: float, active_uploads: set[str],
                 metrics: Metrics, resumable: ResumableUploads | None = None) -> None:
        self._metrics = metrics
        self._resumable = resumable
        self._store = store
        self._pool = pool
        self._jobs_dir = jobs_dir
        self._retention_s = retention_s
        self._orphan_age_s = orphan_age_s
        self._tombstone_s = tombstone_s
        self._active_uploads = active_uploads
        self.running = asyncio.Lock()

    async def delete_job(self, job_id: str) -> int:
        """Delete a job now, whatever its state: rows, calls in flight, files.

        Returns how many tasks it had; raises store.NotFound.
        """
        tasks = await self._store.delete_job(job_id)
        self._metrics.cleanup_deletions.labels("job").inc()
        abandoned = self._pool.abandon_job(job_id)
        await asyncio.to_thread(shutil.rmtree, JobPaths(self._jobs_dir, job_id).root, True)
        logger.info("job %s: deleted (%d tasks, %d calls abandoned)", job_id, tasks, abandoned)
        return tasks

    async def sweep_orphans(self, min_age_s: float) -> int:
        """Remove job folders that no job row owns (and no upload is filling)."""
        known = await self._store.job_ids() | set(self._active_uploads)
        orphans = await asyncio.to_thread(_orphan_folders, self._jobs_dir, known, min_age_s)
        removed = 0
        for folder in orphans:
            if folder.name in self._active_uploads:  # an upload started meanwhile
                continue
            await asyncio.to_thread(shutil.rmtree, folder, True)
            logger.info("removed orphan folder %s", folder.name)
            self._metrics.cleanup_deletions.labels("orphan_folder").inc()
            removed += 1
        return removed

    async def expire_uploads(self, now: float) -> int:
        """Remove resumable uploads past their expiry (unfinished ones, and finished ones'
        records)."""
        if self._resumable is None:
            return 0
        expired = await self._resumable.expire(now)
        if expired:
            self._metrics.cleanup_deletions.labels("upload").inc(expired)
        return expired

    async def run_once(self) -> CleanupReport:
        """Delete jobs finished longer ago than the retention; sweep orphans; purge tombstones;
        remove expired resumable uploads."""
        async with self.running:
            now = time.time()
            deleted = 0
            for job_id in await self._store.jobs_finished_before(now - self._retention_s):
                try:
                    await self.delete_job(job_id)
                    deleted += 1
                except Exception:
                    logger.exception("job %s: retention could not delete it", job_id)
            orphans = await self.sweep_orphans(self._orphan_age_s)
            purged = await self._store.purge_tombstones(now - self._tombstone_s)
            expired = await self.expire_uploads(now)
            report = CleanupReport(deleted, orphans, purged, expired)
            if deleted or orphans or purged or expired:
                logger.info("cleanup: %d jobs deleted, %d orphan folders removed, "
                            "%d tombstones purged, %d uploads expired", deleted, orphans,
                            purged, expired)
            return report
