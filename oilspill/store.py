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
    TileDone,
    TileRetry,
    TileUnit,
    UnitKind,
)
from .schema import migrate

logger = logging.getLogger(__name__)

BUSY_TIMEOUT_MS = 10_000
# How many skipped entries a job's row (and so every job body) carries; the rest are read
# a page at a time (list_skipped).
SKIPPED_IN_JOB = 100

# Finishing a task; the job's counters and finished_at follow by trigger.
_FINISH_SQL = (
    "UPDATE tasks SET status = :status, finished_at = :now, width = :width,"
    " height = :height, result_kind = :result_kind, result_name = :result_name,"
    " oil_pixels = :oil_pixels, oil_fraction = :oil_fraction,"
    " slick_count = :slick_count, largest_slick_px = :largest_slick_px,"
    " error = :error, scene = :scene, tiles_done = tiles_total"
    " WHERE id = :id AND status = 'running'")
# A finished scene's units of work are of no more use (a late answer finds no row).
_DROP_TILES_SQL = "DELETE FROM tiles WHERE task_id = :id"
_TILE_DONE_SQL = (
    "UPDATE tiles SET status = 'done', error = NULL"
    " WHERE task_id = :task_id AND idx = :idx AND status = 'running'")
_TILE_RETRY_SQL = (
    "UPDATE tiles SET status = 'queued', error = :error, not_before = :not_before,"
    " started_at = NULL WHERE task_id = :task_id AND idx = :idx AND status = 'running'")
_RETRY_SQL = (
    "UPDATE tasks SET status = 'queued', error = :error, not_before = :not_before,"
    " started_at = NULL WHERE id = :id AND status = 'running'")


def _done_values(outcome: TaskOutcome) -> dict[str, Any]:
    return {"width": outcome.width, "height": outcome.height,
            "result_kind": outcome.result_kind.value, "result_name": outcome.result_name,
            "oil_pixels": outcome.oil_pixels, "oil_fraction": outcome.oil_fraction,
            "slick_count": outcome.slick_count, "largest_slick_px": outcome.largest_slick_px,
            "error": None, "scene": json.dumps(outcome.scene) if outcome.scene else None}


def _failed_values(error: str, width: int | None, height: int | None) -> dict[str, Any]:
    return {"width": width, "height": height, "result_kind": None, "result_name": None,
            "oil_pixels": None, "oil_fraction": None, "slick_count": None,
            "largest_slick_px": None, "error": error, "scene": None}


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


def _ml_units(task: NewTask) -> int:
    """The ML calls a new task needs: its tiles and overview, or its one image."""
    return sum(u.kind is not UnitKind.STITCH for u in task.tiles) or 1


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
        tiled=bool(row["tiled"]), tiles_total=row["tiles_total"], tiles_done=row["tiles_done"],
        scene=json.loads(row["scene"]) if row["scene"] else None,
    )


def _tile(row: aiosqlite.Row, task: Task) -> TileUnit:
    return TileUnit(task=task, idx=row["idx"], kind=UnitKind(row["kind"]),
                    window=(row["col"], row["row"], row["width"], row["height"]),
                    core=(row["core_col"], row["core_row"], row["core_width"],
                          row["core_height"]),
                    attempts=row["attempts"])


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
                         skipped: Iterable[tuple[str, str]] = (),
                         user_hash: str | None = None) -> None:
        """Record a job and all its tasks (queued) atomically: all of them or nothing."""
        now = _now()
        skipped = list(skipped)
        async with self._transaction() as db:
            await db.execute(
                "INSERT INTO jobs (id, upload_name, created_at, skipped, skipped_total,"
                " user_hash) VALUES (:id, :name, :now, :skipped, :skipped_total, :user_hash)",
                {"id": job_id, "name": upload_name, "now": now, "user_hash": user_hash,
                 "skipped": json.dumps([list(s) for s in skipped[:SKIPPED_IN_JOB]]),
                 "skipped_total": len(skipped)},
            )
            await db.executemany(
                "INSERT INTO skipped_entries (job_id, seq, filename, reason)"
                " VALUES (?, ?, ?, ?)",
                [(job_id, seq, name, reason) for seq, (name, reason) in enumerate(skipped)])
            await db.executemany(
                "INSERT INTO tasks (id, job_id, seq, filename, stored_name, content_type,"
                " status, created_at, finished_at, error, tiled, tiles_total, tiles_done)"
                " VALUES (:id, :job_id, :seq, :filename, :stored_name, :content_type,"
                " :status, :now, :finished_at, :error, :tiled, :tiles_total, :tiles_done)",
                [{"id": t.id, "job_id": job_id, "seq": seq, "filename": t.filename,
                  "stored_name": t.stored_name, "content_type": t.content_type, "now": now,
                  "status": "failed" if t.error else "queued", "error": t.error,
                  "finished_at": now if t.error else None, "tiled": bool(t.tiles),
                  "tiles_total": _ml_units(t), "tiles_done": _ml_units(t) if t.error else 0}
                 for seq, t in enumerate(tasks)],
            )
            await db.executemany(
                "INSERT INTO tiles (task_id, job_id, idx, kind, col, row, width, height,"
                " core_col, core_row, core_width, core_height, status) VALUES (:task_id,"
                " :job_id, :idx, :kind, :col, :row, :width, :height, :core_col, :core_row,"
                " :core_width, :core_height, 'queued')",
                [{"task_id": t.id, "job_id": job_id, "idx": u.idx, "kind": u.kind.value,
                  "col": u.window[0], "row": u.window[1], "width": u.window[2],
                  "height": u.window[3], "core_col": u.core[0], "core_row": u.core[1],
                  "core_width": u.core[2], "core_height": u.core[3]}
                 for t in tasks if not t.error for u in t.tiles],
            )
            # Tasks refused at once finish here, not by the status trigger.
            await db.execute(
                "UPDATE jobs SET finished_at = :now WHERE id = :id"
                " AND n_queued + n_running = 0", {"id": job_id, "now": now})

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
            progress=progress, tiles_total=row["tiles_total"], tiles_done=row["tiles_done"],
            user_hash=row["user_hash"], skipped_total=row["skipped_total"],
        )

    async def list_skipped(self, job_id: str, offset: int, limit: int
                           ) -> list[tuple[str, str]]:
        """A page of what the job's upload skipped, in upload order: (filename, reason)."""
        async with self._reader.execute(
            "SELECT filename, reason FROM skipped_entries WHERE job_id = ? ORDER BY seq"
            " LIMIT ? OFFSET ?", (job_id, limit, offset)) as cur:
            return [(row["filename"], row["reason"]) for row in await cur.fetchall()]

    async def job_id_of_user_hash(self, user_hash: str) -> str | None:
        """The id of the job this user hash belongs to; None if no job (still) has it."""
        async with self._reader.execute("SELECT id FROM jobs WHERE user_hash = ?",
                                        (user_hash,)) as cur:
            row = await cur.fetchone()
        return None if row is None else str(row["id"])

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

    async def claim_units(self, limit: int) -> list[Task | TileUnit]:
        """Atomically move up to `limit` due units of work to running: plain tasks first,
        then scenes' tiles (a scene's stitch only once all its other units are done).

        Small images do not wait behind a scene of hundreds of tiles. Each claim is one
        status-guarded UPDATE … RETURNING inside one BEGIN IMMEDIATE.
        """
        async with self._transaction() as db:
            now = _now()
            tasks = await self._claim_plain(db, now, limit)
            units: list[Task | TileUnit] = list(tasks)
            if len(units) < limit:
                units += await self._claim_tiles(db, now, limit - len(units))
        return units

    @staticmethod
    async def _claim_plain(db: aiosqlite.Connection, now: float, limit: int) -> list[Task]:
        async with db.execute(
            "UPDATE tasks SET status = 'running', attempts = attempts + 1,"
            " started_at = :now, not_before = NULL"
            " WHERE rowid IN (SELECT rowid FROM tasks WHERE status = 'queued' AND tiled = 0"
            "                 AND (not_before IS NULL OR not_before <= :now)"
            "                 ORDER BY rowid LIMIT :limit)"
            " AND status = 'queued' RETURNING *",
            {"now": now, "limit": limit},
        ) as cur:
            rows = await cur.fetchall()
        return sorted((_task(row) for row in rows), key=lambda t: (t.created_at, t.seq))

    @staticmethod
    async def _claim_tiles(db: aiosqlite.Connection, now: float, limit: int
                           ) -> list[TileUnit]:
        async with db.execute(
            "UPDATE tiles SET status = 'running', attempts = attempts + 1,"
            " started_at = :now, not_before = NULL"
            " WHERE rowid IN (SELECT rowid FROM tiles AS t WHERE status = 'queued'"
            "                 AND (not_before IS NULL OR not_before <= :now)"
            "                 AND (kind <> 'stitch' OR NOT EXISTS (SELECT 1 FROM tiles AS o"
            "                      WHERE o.task_id = t.task_id AND o.kind <> 'stitch'"
            "                      AND o.status <> 'done'))"
            # A scene's overview first: it reads the whole scene, so it must not be last.
            "                 ORDER BY kind <> 'overview', rowid LIMIT :limit)"
            " AND status = 'queued' RETURNING *",
            {"now": now, "limit": limit},
        ) as cur:
            rows = await cur.fetchall()
        if not rows:
            return []
        ids = sorted({row["task_id"] for row in rows})
        async with db.execute(
            f"SELECT * FROM tasks WHERE id IN ({', '.join('?' * len(ids))})", ids
        ) as cur:
            tasks = {row["id"]: _task(row) for row in await cur.fetchall()}
        return sorted((_tile(row, tasks[row["task_id"]]) for row in rows),
                      key=lambda u: (u.task.created_at, u.task.seq, u.idx))

    async def units_of(self, task_id: str) -> list[TileUnit]:
        """A scene task's units of work, in order."""
        task = await self.get_task(task_id)
        async with self._reader.execute(
            "SELECT * FROM tiles WHERE task_id = ? ORDER BY idx", (task_id,)
        ) as cur:
            return [_tile(row, task) for row in await cur.fetchall()]

    async def record(self, done: Sequence[TaskDone], failed: Sequence[TaskFailure],
                     retries: Sequence[TaskRetry], tiles_done: Sequence[TileDone] = (),
                     tile_retries: Sequence[TileRetry] = ()) -> None:
        """Record many units' ends in one transaction (a group commit).

        A unit no longer running (its job was deleted, its scene failed) is passed over. A
        finished task's tile rows are dropped with it.
        """
        now = _now()
        rows = [{**_done_values(d.outcome), "id": d.task_id, "status": "done", "now": now}
                for d in done]
        rows += [{**_failed_values(f.reason, f.width, f.height), "id": f.task_id,
                  "status": "failed", "now": now} for f in failed]
        async with self._transaction() as db:
            if tiles_done:
                await db.executemany(_TILE_DONE_SQL, [
                    {"task_id": t.task_id, "idx": t.idx} for t in tiles_done])
            if tile_retries:
                await db.executemany(_TILE_RETRY_SQL, [
                    {"task_id": r.task_id, "idx": r.idx, "error": r.reason,
                     "not_before": r.not_before} for r in tile_retries])
            if rows:
                await db.executemany(_FINISH_SQL, rows)
                await db.executemany(_DROP_TILES_SQL, [{"id": row["id"]} for row in rows])
            if retries:
                await db.executemany(_RETRY_SQL, [
                    {"id": r.task_id, "error": r.reason, "not_before": r.not_before}
                    for r in retries])

    async def next_due_at(self) -> float | None:
        """When the earliest queued task waiting out a back-off becomes due; None if none."""
        async with self._reader.execute(
            "SELECT MIN(t) FROM (SELECT MIN(not_before) AS t FROM tasks WHERE status = 'queued'"
            " UNION ALL SELECT MIN(not_before) FROM tiles WHERE status = 'queued')"
        ) as cur:
            row = await cur.fetchone()
        return float(row[0]) if row and row[0] is not None else None

    async def release_units(self, units: Sequence[Task | TileUnit]) -> int:
        """Give back claimed units whose work never started: queued again, the claim's
        attempt not counted. Returns how many were still running."""
        tasks = [(u.id,) for u in units if isinstance(u, Task)]
        tiles = [(u.task.id, u.idx) for u in units if isinstance(u, TileUnit)]
        if not tasks and not tiles:
            return 0
        released = 0
        async with self._transaction() as db:
            if tasks:
                cur = await db.executemany(
                    "UPDATE tasks SET status = 'queued', started_at = NULL,"
                    " attempts = MAX(attempts - 1, 0) WHERE id = ? AND status = 'running'",
                    tasks)
                released += cur.rowcount
            if tiles:
                cur = await db.executemany(
                    "UPDATE tiles SET status = 'queued', started_at = NULL,"
                    " attempts = MAX(attempts - 1, 0)"
                    " WHERE task_id = ? AND idx = ? AND status = 'running'", tiles)
                released += cur.rowcount
        return released

    async def requeue_running(self) -> int:
        """Put every `running` task and tile back to `queued` (their claimer is gone);
        return how many units."""
        async with self._transaction() as db:
            cur = await db.execute(
                "UPDATE tiles SET status = 'queued', started_at = NULL WHERE status = 'running'")
            tiles = cur.rowcount
            # A scene's task counts as started again when one of its units is claimed.
            cur = await db.execute(
                "UPDATE tasks SET status = 'queued', started_at = NULL WHERE status = 'running'"
                " AND tiled = 0")
            plain = cur.rowcount
            await db.execute(
                "UPDATE tasks SET status = 'queued' WHERE status = 'running' AND tiled = 1")
            return plain + tiles

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
