"""The database schema: its migrations, applied in order at start-up.

Each migration moves the schema one version up; a version table says where a database is.
A database written by a newer oilspill is refused rather than misread.
"""

from __future__ import annotations

import logging
import sqlite3

import aiosqlite

logger = logging.getLogger(__name__)


class SchemaTooNew(Exception):
    """The database was written by a newer oilspill than this one."""


# Each entry moves the schema one version up; never edit one that has shipped, append.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE jobs (
        id           TEXT PRIMARY KEY,
        upload_name  TEXT NOT NULL,
        created_at   REAL NOT NULL,
        finished_at  REAL,
        archive_name TEXT,
        skipped      TEXT NOT NULL DEFAULT '[]'
    );
    CREATE TABLE tasks (
        id           TEXT PRIMARY KEY,
        job_id       TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        seq          INTEGER NOT NULL,
        filename     TEXT NOT NULL,
        stored_name  TEXT NOT NULL,
        content_type TEXT NOT NULL,
        status       TEXT NOT NULL,
        attempts     INTEGER NOT NULL DEFAULT 0,
        created_at   REAL NOT NULL,
        started_at   REAL,
        finished_at  REAL,
        width        INTEGER,
        height       INTEGER,
        result_kind  TEXT,
        result_name  TEXT,
        oil_pixels   INTEGER,
        oil_fraction REAL,
        error        TEXT
    );
    -- The claim looks up the oldest queued task; the rowid rides along in the index.
    CREATE INDEX tasks_by_status ON tasks(status);
    CREATE INDEX tasks_by_job ON tasks(job_id, status);
    """,
    """
    -- A task waiting out a retry back-off is queued with not_before in the future.
    ALTER TABLE tasks ADD COLUMN not_before REAL;
    -- Ids of deleted jobs and tasks, so their URLs answer 410 Gone rather than 404.
    CREATE TABLE tombstones (
        id         TEXT PRIMARY KEY,
        kind       TEXT NOT NULL,
        deleted_at REAL NOT NULL
    );
    CREATE INDEX tombstones_by_age ON tombstones(deleted_at);
    CREATE INDEX jobs_by_finished ON jobs(finished_at);
    """,
    """
    -- Slicks in a done task's mask: 8-connected components, and the largest one's pixels.
    ALTER TABLE tasks ADD COLUMN slick_count INTEGER;
    ALTER TABLE tasks ADD COLUMN largest_slick_px INTEGER;
    """,
    """
    -- Progress counters kept by triggers in the same transaction as every status change:
    -- reading a job's progress is one row, whatever its size. The last task to finish
    -- sets finished_at.
    ALTER TABLE jobs ADD COLUMN n_queued INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN n_running INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN n_done INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN n_failed INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET
        n_queued = (SELECT COUNT(*) FROM tasks WHERE job_id = jobs.id AND status = 'queued'),
        n_running = (SELECT COUNT(*) FROM tasks WHERE job_id = jobs.id AND status = 'running'),
        n_done = (SELECT COUNT(*) FROM tasks WHERE job_id = jobs.id AND status = 'done'),
        n_failed = (SELECT COUNT(*) FROM tasks WHERE job_id = jobs.id AND status = 'failed');
    CREATE TRIGGER tasks_counted_on_insert AFTER INSERT ON tasks BEGIN
        UPDATE jobs SET n_queued = n_queued + (NEW.status = 'queued'),
                        n_running = n_running + (NEW.status = 'running'),
                        n_done = n_done + (NEW.status = 'done'),
                        n_failed = n_failed + (NEW.status = 'failed')
        WHERE id = NEW.job_id;
    END;
    CREATE TRIGGER tasks_counted_on_status AFTER UPDATE OF status ON tasks
    WHEN OLD.status <> NEW.status BEGIN
        UPDATE jobs SET
            n_queued = n_queued + (NEW.status = 'queued') - (OLD.status = 'queued'),
            n_running = n_running + (NEW.status = 'running') - (OLD.status = 'running'),
            n_done = n_done + (NEW.status = 'done') - (OLD.status = 'done'),
            n_failed = n_failed + (NEW.status = 'failed') - (OLD.status = 'failed'),
            finished_at = CASE
                WHEN finished_at IS NULL
                 AND n_queued + (NEW.status = 'queued') - (OLD.status = 'queued')
                     + n_running + (NEW.status = 'running') - (OLD.status = 'running') = 0
                THEN (julianday('now') - 2440587.5) * 86400.0
                ELSE finished_at END
        WHERE id = NEW.job_id;
    END;
    """,
    """
    -- A job's tasks in upload order (listing), and as they finish (live events).
    CREATE INDEX tasks_by_job_seq ON tasks(job_id, seq);
    CREATE INDEX tasks_by_job_finished ON tasks(job_id, finished_at);
    """,
    """
    -- Scenes: a task whose image is cut into tiles has one row per unit of work in tiles
    -- (each tile, the overview, and the stitch that runs once all others are done); the
    -- rows go when the task finishes. tiles_total/tiles_done count the ML units (a plain
    -- task is one), on the task and, kept by trigger, on its job.
    ALTER TABLE tasks ADD COLUMN tiled INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN tiles_total INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE tasks ADD COLUMN tiles_done INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE tasks ADD COLUMN scene TEXT;
    UPDATE tasks SET tiles_done = 1 WHERE status IN ('done', 'failed');
    ALTER TABLE jobs ADD COLUMN tiles_total INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE jobs ADD COLUMN tiles_done INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET
        tiles_total = (SELECT COUNT(*) FROM tasks WHERE job_id = jobs.id),
        tiles_done = (SELECT COALESCE(SUM(tiles_done), 0) FROM tasks WHERE job_id = jobs.id);
    CREATE TRIGGER tasks_tiles_on_insert AFTER INSERT ON tasks BEGIN
        UPDATE jobs SET tiles_total = tiles_total + NEW.tiles_total,
                        tiles_done = tiles_done + NEW.tiles_done
        WHERE id = NEW.job_id;
    END;
    CREATE TRIGGER tasks_tiles_on_update AFTER UPDATE OF tiles_done ON tasks
    WHEN OLD.tiles_done <> NEW.tiles_done BEGIN
        UPDATE jobs SET tiles_done = tiles_done + NEW.tiles_done - OLD.tiles_done
        WHERE id = NEW.job_id;
    END;
    CREATE TABLE tiles (
        task_id     TEXT NOT NULL REFERENCES tasks(id) ON DELETE CASCADE,
        job_id      TEXT NOT NULL,
        idx         INTEGER NOT NULL,
        kind        TEXT NOT NULL,
        col         INTEGER NOT NULL,
        row         INTEGER NOT NULL,
        width       INTEGER NOT NULL,
        height      INTEGER NOT NULL,
        core_col    INTEGER NOT NULL,
        core_row    INTEGER NOT NULL,
        core_width  INTEGER NOT NULL,
        core_height INTEGER NOT NULL,
        status      TEXT NOT NULL,
        attempts    INTEGER NOT NULL DEFAULT 0,
        not_before  REAL,
        started_at  REAL,
        error       TEXT,
        PRIMARY KEY (task_id, idx)
    );
    CREATE INDEX tiles_by_status ON tiles(status);
    -- The first claimed unit of a scene starts its task (and so its job's counters).
    CREATE TRIGGER tiles_start_their_task AFTER UPDATE OF status ON tiles
    WHEN NEW.status = 'running' BEGIN
        UPDATE tasks SET status = 'running', attempts = MAX(attempts, 1),
                         started_at = COALESCE(started_at,
                                               (julianday('now') - 2440587.5) * 86400.0)
        WHERE id = NEW.task_id AND status = 'queued';
    END;
    CREATE TRIGGER tiles_counted_when_done AFTER UPDATE OF status ON tiles
    WHEN NEW.status = 'done' AND OLD.status <> 'done' AND NEW.kind <> 'stitch' BEGIN
        UPDATE tasks SET tiles_done = tiles_done + 1 WHERE id = NEW.task_id;
    END;
    """,
    """
    -- A job finishes at its last task's own finished_at (not the moment the trigger runs,
    -- which can be a millisecond later): the live events stream ends on that equality.
    DROP TRIGGER tasks_counted_on_status;
    CREATE TRIGGER tasks_counted_on_status AFTER UPDATE OF status ON tasks
    WHEN OLD.status <> NEW.status BEGIN
        UPDATE jobs SET
            n_queued = n_queued + (NEW.status = 'queued') - (OLD.status = 'queued'),
            n_running = n_running + (NEW.status = 'running') - (OLD.status = 'running'),
            n_done = n_done + (NEW.status = 'done') - (OLD.status = 'done'),
            n_failed = n_failed + (NEW.status = 'failed') - (OLD.status = 'failed'),
            finished_at = CASE
                WHEN finished_at IS NULL
                 AND n_queued + (NEW.status = 'queued') - (OLD.status = 'queued')
                     + n_running + (NEW.status = 'running') - (OLD.status = 'running') = 0
                THEN COALESCE(NEW.finished_at, (julianday('now') - 2440587.5) * 86400.0)
                ELSE finished_at END
        WHERE id = NEW.job_id;
    END;
    """,
    """
    -- The original front end's handle on a job: a random secret of its own, unique.
    ALTER TABLE jobs ADD COLUMN user_hash TEXT;
    CREATE UNIQUE INDEX jobs_by_user_hash ON jobs(user_hash);
    """,
    """
    -- What an upload skipped, one row each (read a page at a time); the job row keeps the
    -- first few and the count, so reading a job costs the same however much was skipped.
    CREATE TABLE skipped_entries (
        job_id   TEXT NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
        seq      INTEGER NOT NULL,
        filename TEXT NOT NULL,
        reason   TEXT NOT NULL,
        PRIMARY KEY (job_id, seq)
    );
    INSERT INTO skipped_entries (job_id, seq, filename, reason)
        SELECT jobs.id, CAST(e.key AS INTEGER), json_extract(e.value, '$[0]'),
               json_extract(e.value, '$[1]')
        FROM jobs, json_each(jobs.skipped) AS e;
    ALTER TABLE jobs ADD COLUMN skipped_total INTEGER NOT NULL DEFAULT 0;
    UPDATE jobs SET skipped_total = json_array_length(skipped),
                    skipped = (SELECT json_group_array(json(e.value))
                               FROM (SELECT value FROM json_each(jobs.skipped)
                                     ORDER BY CAST(key AS INTEGER) LIMIT 100) AS e);
    """,
)


async def migrate(db: aiosqlite.Connection) -> None:
    """Bring the schema up to date in one IMMEDIATE transaction; raise SchemaTooNew."""
    await db.execute("BEGIN IMMEDIATE")
    try:
        await db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        async with db.execute("SELECT MAX(version) FROM schema_version") as cur:
            row = await cur.fetchone()
        current = row[0] if row and row[0] is not None else 0
        if current > len(MIGRATIONS):
            raise SchemaTooNew(
                f"database schema version {current} is newer than this oilspill "
                f"(knows up to {len(MIGRATIONS)}); upgrade oilspill")
        for version in range(current + 1, len(MIGRATIONS) + 1):
            for statement in _statements(MIGRATIONS[version - 1]):
                await db.execute(statement)
            await db.execute("INSERT INTO schema_version (version) VALUES (?)", (version,))
            logger.info("database schema migrated to version %d", version)
    except BaseException:
        await db.execute("ROLLBACK")
        raise
    await db.execute("COMMIT")


def _statements(script: str) -> list[str]:
    """Split a migration into statements; a trigger's body holds ';' and stays whole."""
    statements, current = [], ""
    for piece in script.split(";"):
        current += piece + ";"
        if sqlite3.complete_statement(current):
            text = "\n".join(ln for ln in current.splitlines()
                             if not ln.strip().startswith("--")).strip()
            if text.strip(";").strip():
                statements.append(text)
            current = ""
    return statements
