"""All SQL: jobs and tasks in one SQLite file, through aiosqlite.

Writes go through one connection behind an asyncio.Lock, each in `BEGIN IMMEDIATE`: a
deferred transaction that later needs to write can fail at once with SQLITE_BUSY whatever
the busy timeout, while IMMEDIATE takes the write lock up front and waits politely. Reads
use a second connection; WAL mode lets them run beside a write.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import aiosqlite

from .jobs import (
    Job,
    NewTask,
    Progress,
    ResultKind,
    Task,
    TaskDone,
    TaskFailure,
    TaskOutcome,
    TaskRetry,
    TaskStatus,
)
from .schema import migrate

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000

# Finishing a task; the job's counters and finished_at follow by trigger.
_FINISH_SQL = (
    "UPDATE tasks SET status = :status, finished_at = :now, width = :width,"
    " height = :height, result_kind = :result_kind, result_name = :result_name,"
    " oil_pixels = :oil_pixels, oil_fraction = :oil_fraction,"
    " slick_count = :slick_count, largest_slick_px = :largest_slick_px,"
    " error = :error WHERE id = :id AND status = 'running'")
_RETRY_SQL = (
    "UPDATE tasks SET status = 'queued', error = :error, not_before = :not_before,"
    " started_at = NULL WHERE id = :id AND status = 'running'")


def _done_values(outcome: TaskOutcome) -> dict[str, Any]:
    return {"width": outcome.width, "height": outcome.height,
            "result_kind": outcome.result_kind.value, "result_name": outcome.result_name,
            "oil_pixels": outcome.oil_pixels, "oil_fraction": outcome.oil_fraction,
            "slick_count": outcome.slick_count, "largest_slick_px": outcome.largest_slick_px,
            "error": None}


def _failed_values(error: str, width: int | None, height: int | None) -> dict[str, Any]:
    return {"width": width, "height": height, "result_kind": None, "result_name": None,
            "oil_pixels": None, "oil_fraction": None, "slick_count": None,
            "largest_slick_px": None, "error": error}


class StoreError(Exception):
    """Base of the store's errors."""


class NotFound(StoreError):
    """No row with that id; `kind` is "job" or "task"."""

    def __init__(self, kind: str, object_id: str) -> None:
        super().__init__(f"no {kind} with id {object_id}")
        self.kind = kind
        self.object_id = object_id


def _now() -> float:
    return time.time()


def _task(row: aiosqlite.Row) -> Task:
    return Task(
        id=row["id"], job_id=row["job_id"], seq=row["seq"], filename=row["filename"],
        stored_name=row["stored_name"], content_type=row["content_type"],
        status=TaskStatus(row["status"]), attempts=row["attempts"],
        created_at=row["created_at"], started_at=row["started_at"],
        finished_at=row["finished_at"], width=row["width"], height=row["height"],
        result_kind=ResultKind(row["result_kind"]) if row["result_kind"] else None,
        result_name=row["result_name"], oil_pixels=row["oil_pixels"],
        oil_fraction=row["oil_fraction"], error=row["error"], not_before=row["not_before"],
        slick_count=row["slick_count"], largest_slick_px=row["largest_slick_px"],
    )


async def _connect(path: Path) -> aiosqlite.Connection:
    # isolation_level=None: we issue BEGIN/COMMIT ourselves, sqlite3 adds nothing implicit.
    db = await aiosqlite.connect(path, isolation_level=None)
    db.row_factory = aiosqlite.Row
    await db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    await db.execute("PRAGMA foreign_keys = ON")
    # FULL: a task marked done survives a power cut, not only a process crash.
    await db.execute("PRAGMA synchronous = FULL")
    return db


class Store:
    """The job database. Open with `await Store.open(path)`, close with `await close()`."""

    def __init__(self, writer: aiosqlite.Connection, reader: aiosqlite.Connection) -> None:
        self._writer = writer
        self._reader = reader
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, path: Path) -> Store:
        """Open (creating if needed) the database and bring its schema up to date."""
        writer = await _connect(path)
        try:
            await writer.execute("PRAGMA journal_mode = WAL")
            await migrate(writer)
            reader = await _connect(path)
        except BaseException:
            await writer.close()
            raise
        return cls(writer, reader)

    async def close(self) -> None:
        await self._reader.close()
        await self._writer.close()

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        """One write transaction; rolled back on any exception, cancellation included."""
        async with self._write_lock:
            try:
                await self._writer.execute("BEGIN IMMEDIATE")
                yield self._writer
            except BaseException:
                # aiosqlite runs statements in order on its own thread: even when we were
                # cancelled while BEGIN was queued, it will have run before this ROLLBACK.
                await asyncio.shield(self._rollback())
                raise
            await self._writer.execute("COMMIT")

    async def _rollback(self) -> None:
        try:
            await self._writer.execute("ROLLBACK")
        except sqlite3.OperationalError:
            pass  # BEGIN itself failed: there is nothing to roll back

    async def ping(self) -> None:
        """Raise if the database cannot answer a query."""
        async with self._reader.execute("SELECT 1") as cur:
            await cur.fetchone()

    # --- jobs -----------------------------------------------------------------------------

    async def create_job(self, job_id: str, upload_name: str, tasks: Sequence[NewTask],
                         skipped: Iterable[tuple[str, str]] = ()) -> None:
        """Record a job and all its tasks (queued) atomically: all of them or nothing."""
        now = _now()
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO jobs (id, upload_name, created_at, skipped)"
                " VALUES (:id, :name, :now, :skipped)",
                {"id": job_id, "name": upload_name, "now": now,
                 "skipped": json.dumps([list(s) for s in skipped])},
            )
            await db.executemany(
                "INSERT INTO tasks (id, job_id, seq, filename, stored_name, content_type,"
                " status, created_at) VALUES (:id, :job_id, :seq, :filename, :stored_name,"
                " :content_type, 'queued', :now)",
                [{"id": t.id, "job_id": job_id, "seq": seq, "filename": t.filename,
                  "stored_name": t.stored_name, "content_type": t.content_type, "now": now}
                 for seq, t in enumerate(tasks)],
            )

    async def get_job(self, job_id: str) -> Job:
        """The job with its progress counts; NotFound if there is none."""
        async with self._reader.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound("job", job_id)
        queued, running, done, failed = (row["n_queued"], row["n_running"], row["n_done"],
                                         row["n_failed"])
        progress = Progress(total=queued + running + done + failed, queued=queued,
                            running=running, done=done, failed=failed)
        return Job(
            id=row["id"], upload_name=row["upload_name"], created_at=row["created_at"],
            finished_at=row["finished_at"], archive_name=row["archive_name"],
            skipped=tuple((s[0], s[1]) for s in json.loads(row["skipped"])),
            progress=progress,
        )

    async def list_tasks(self, job_id: str, offset: int = 0, limit: int = -1) -> list[Task]:
        """The job's tasks in upload order (a page of them with offset and limit)."""
        async with self._reader.execute(
            "SELECT * FROM tasks WHERE job_id = ? ORDER BY seq LIMIT ? OFFSET ?",
            (job_id, limit, offset),
        ) as cur:
            return [_task(row) for row in await cur.fetchall()]

    async def tasks_finished_since(self, job_id: str, since: float) -> list[Task]:
        """The job's tasks that finished after `since` (epoch seconds), oldest first."""
        async with self._reader.execute(
            "SELECT * FROM tasks WHERE job_id = ? AND finished_at > ? ORDER BY finished_at",
            (job_id, since),
        ) as cur:
            return [_task(row) for row in await cur.fetchall()]

    async def set_job_archive(self, job_id: str, archive_name: str) -> None:
        """Record the built result zip's name."""
        async with self._transaction() as db:
            await db.execute("UPDATE jobs SET archive_name = ? WHERE id = ?",
                             (archive_name, job_id))

    # --- tasks ----------------------------------------------------------------------------

    async def get_task(self, task_id: str) -> Task:
        """The task; NotFound if there is none."""
        async with self._reader.execute("SELECT * FROM tasks WHERE id = ?", (task_id,)) as cur:
            row = await cur.fetchone()
        if row is None:
            raise NotFound("task", task_id)
        return _task(row)

    async def claim_tasks(self, limit: int) -> list[Task]:
        """Atomically move up to `limit` of the oldest due queued tasks to running.

        One status-guarded UPDATE … RETURNING inside BEGIN IMMEDIATE: two claimers, even on
        two connections, never get the same task. Returned in upload order.
        """
        async with self._transaction() as db:
            async with db.execute(
                "UPDATE tasks SET status = 'running', attempts = attempts + 1,"
                " started_at = :now, not_before = NULL"
                " WHERE rowid IN (SELECT rowid FROM tasks WHERE status = 'queued'"
                "                 AND (not_before IS NULL OR not_before <= :now)"
                "                 ORDER BY rowid LIMIT :limit)"
                " AND status = 'queued' RETURNING *",
                {"now": _now(), "limit": limit},
            ) as cur:
                rows = await cur.fetchall()
        return sorted((_task(row) for row in rows), key=lambda t: (t.created_at, t.seq))

    async def record(self, done: Sequence[TaskDone], failed: Sequence[TaskFailure],
                     retries: Sequence[TaskRetry]) -> None:
        """Record many running tasks' ends in one transaction (a group commit).

        A task no longer running (its job was deleted) is passed over.
        """
        now = _now()
        rows = [{**_done_values(d.outcome), "id": d.task_id, "status": "done", "now": now}
                for d in done]
        rows += [{**_failed_values(f.reason, f.width, f.height), "id": f.task_id,
                  "status": "failed", "now": now} for f in failed]
        async with self._transaction() as db:
            if rows:
                await db.executemany(_FINISH_SQL, rows)
            if retries:
                await db.executemany(_RETRY_SQL, [
                    {"id": r.task_id, "error": r.reason, "not_before": r.not_before}
                    for r in retries])

    async def next_due_at(self) -> float | None:
        """When the earliest queued task waiting out a back-off becomes due; None if none."""
        async with self._reader.execute(
            "SELECT MIN(not_before) FROM tasks WHERE status = 'queued'"
        ) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    async def release_tasks(self, task_ids: Sequence[str]) -> int:
        """Give back claimed tasks whose call never started: queued again, the claim's
        attempt not counted. Returns how many were still running."""
        if not task_ids:
            return 0
        async with self._transaction() as db:
            cur = await db.executemany(
                "UPDATE tasks SET status = 'queued', started_at = NULL,"
                " attempts = MAX(attempts - 1, 0) WHERE id = ? AND status = 'running'",
                [(task_id,) for task_id in task_ids])
            return cur.rowcount

    async def requeue_running(self) -> int:
        """Put every `running` task back to `queued` (their claimer is gone); return how many."""
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE tasks SET status = 'queued', started_at = NULL WHERE status = 'running'")
            return cur.rowcount

    # --- deletion -------------------------------------------------------------------------

    async def delete_job(self, job_id: str) -> int:
        """Delete a job and its tasks, leaving tombstones; return how many tasks it had.

        Queued and running tasks go with it: the caller abandons their calls. Raises NotFound.
        """
        now = _now()
        async with self._transaction() as db:
            cur = await db.execute(
                "INSERT INTO tombstones (id, kind, deleted_at)"
                " SELECT id, 'task', :now FROM tasks WHERE job_id = :job_id",
                {"job_id": job_id, "now": now})
            tasks = cur.rowcount
            cur = await db.execute("DELETE FROM jobs WHERE id = :job_id", {"job_id": job_id})
            if cur.rowcount != 1:
                raise NotFound("job", job_id)  # rolls back the task tombstones too
            await db.execute(
                "INSERT INTO tombstones (id, kind, deleted_at) VALUES (:job_id, 'job', :now)",
                {"job_id": job_id, "now": now})
            # ON DELETE CASCADE removed the task rows with the job row.
        return tasks

    async def deleted_at(self, object_id: str) -> float | None:
        """When a job or task with this id was deleted; None if it never was."""
        async with self._reader.execute(
            "SELECT deleted_at FROM tombstones WHERE id = ?", (object_id,)
        ) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row else None

    async def jobs_finished_before(self, cutoff: float) -> list[str]:
        """Ids of jobs whose last task finished before `cutoff` (epoch seconds)."""
        async with self._reader.execute(
            "SELECT id FROM jobs WHERE finished_at IS NOT NULL AND finished_at < ?", (cutoff,)
        ) as cur:
            return [row[0] for row in await cur.fetchall()]

    async def job_ids(self) -> set[str]:
        async with self._reader.execute("SELECT id FROM jobs") as cur:
            return {row[0] for row in await cur.fetchall()}

    async def purge_tombstones(self, cutoff: float) -> int:
        """Forget deletions older than `cutoff`; their ids then answer 404."""
        async with self._transaction() as db:
            cur = await db.execute("DELETE FROM tombstones WHERE deleted_at < ?", (cutoff,))
            return cur.rowcount

    async def count_tasks(self) -> dict[TaskStatus, int]:
        """Tasks of every job by status (for metrics)."""
        counts = dict.fromkeys(TaskStatus, 0)
        async with self._reader.execute(
            "SELECT status, COUNT(*) FROM tasks GROUP BY status"
        ) as cur:
            async for status, count in cur:
                counts[TaskStatus(status)] = count
        return counts
