"""The store on its own, on a real SQLite file."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from oilspill.jobs import (
    JobStatus,
    NewTask,
    ResultKind,
    Task,
    TaskDone,
    TaskFailure,
    TaskOutcome,
    TaskRetry,
    TaskStatus,
)
from oilspill.paths import new_id
from oilspill.schema import SchemaTooNew
from oilspill.store import NotFound, Store


@pytest.fixture
async def store(tmp_path):
    store = await Store.open(tmp_path / "db.sqlite3")
    yield store
    await store.close()


async def claim_one(store: Store) -> Task | None:
    """The oldest due queued task, claimed; None if there is none."""
    tasks = await store.claim_tasks(1)
    return tasks[0] if tasks else None


def new_tasks(n: int) -> list[NewTask]:
    return [NewTask(id=new_id(), filename=f"img_{i}.png", stored_name=f"{i:06d}.png",
                    content_type="image/png") for i in range(n)]


async def test_claims_are_atomic_across_connections(tmp_path):
    """Twenty claimers on two connections to one file: every task claimed exactly once."""
    first = await Store.open(tmp_path / "db.sqlite3")
    second = await Store.open(tmp_path / "db.sqlite3")
    tasks = new_tasks(200)
    await first.create_job(new_id(), "a.zip", tasks)

    async def claimer(store: Store) -> list[str]:
        got = []
        while (task := await claim_one(store)) is not None:
            got.append(task.id)
        return got

    try:
        results = await asyncio.gather(*(claimer(s) for s in [first, second] * 10))
    finally:
        await first.close()
        await second.close()
    claimed = [task_id for got in results for task_id in got]
    assert len(claimed) == len(set(claimed)) == 200
    assert set(claimed) == {t.id for t in tasks}
    assert sum(1 for got in results if got) > 1  # both connections really took part


async def test_claim_takes_the_oldest_queued_task_and_counts_the_attempt(store):
    tasks = new_tasks(3)
    await store.create_job(new_id(), "a.zip", tasks)
    claimed = await claim_one(store)
    assert claimed is not None
    assert (claimed.id, claimed.status, claimed.attempts) == (tasks[0].id, TaskStatus.RUNNING, 1)
    assert claimed.started_at is not None


async def test_an_empty_queue_claims_nothing(store):
    assert await claim_one(store) is None


async def test_state_changes_are_recorded_and_the_last_task_finishes_the_job(store):
    job_id = new_id()
    tasks = new_tasks(2)
    await store.create_job(job_id, "a.zip", tasks, skipped=[("notes.txt", "not an image")])
    job = await store.get_job(job_id)
    assert job.progress.status is JobStatus.QUEUED
    assert job.skipped == (("notes.txt", "not an image"),)

    first = await claim_one(store)
    second = await claim_one(store)
    assert first and second
    assert (await store.get_job(job_id)).progress.running == 2

    await store.record(done=[TaskDone(first.id, TaskOutcome(
        width=10, height=5, result_kind=ResultKind.MASK, result_name="000000.png",
        oil_pixels=5, oil_fraction=0.1))], failed=[], retries=[])
    job = await store.get_job(job_id)
    assert (job.progress.done, job.finished, job.progress.status) == (1, False, JobStatus.RUNNING)

    await store.record(done=[], failed=[TaskFailure(second.id, "ML service answered 422: nope")],
                       retries=[])
    job = await store.get_job(job_id)
    assert job.finished and job.progress.status is JobStatus.DONE
    assert (job.progress.done, job.progress.failed) == (1, 1)

    done = await store.get_task(first.id)
    assert (done.status, done.oil_pixels, done.oil_fraction, done.result_name) == (
        TaskStatus.DONE, 5, 0.1, "000000.png")
    failed = await store.get_task(second.id)
    assert (failed.status, failed.error) == (TaskStatus.FAILED, "ML service answered 422: nope")


async def test_a_task_that_is_not_running_cannot_be_finished(store):
    tasks = new_tasks(1)
    await store.create_job(new_id(), "a.zip", tasks)
    await store.record(done=[], failed=[TaskFailure(tasks[0].id, "never claimed")], retries=[])
    assert (await store.get_task(tasks[0].id)).status is TaskStatus.QUEUED


async def test_a_retry_waits_until_it_is_due_and_a_release_refunds_the_attempt(store):
    await store.create_job(new_id(), "a.zip", new_tasks(2))
    first, second = await store.claim_tasks(2)
    await store.record(done=[], failed=[], retries=[TaskRetry(first.id, "503", time.time() + 60)])
    assert await store.next_due_at() == pytest.approx(time.time() + 60, abs=5)
    assert await store.claim_tasks(5) == []  # not due yet
    assert await store.release_units([second]) == 1
    again = await claim_one(store)
    assert again and again.id == second.id and again.attempts == 1
    retried = await store.get_task(first.id)
    assert (retried.status, retried.error, retried.attempts) == (TaskStatus.QUEUED, "503", 1)


async def test_a_job_whose_tasks_all_failed_is_failed(store):
    job_id = new_id()
    await store.create_job(job_id, "a.zip", new_tasks(1))
    task = await claim_one(store)
    assert task
    await store.record(done=[], failed=[TaskFailure(task.id, "bad")], retries=[])
    assert (await store.get_job(job_id)).progress.status is JobStatus.FAILED


async def test_requeue_running_puts_claimed_tasks_back_keeping_attempts(store):
    await store.create_job(new_id(), "a.zip", new_tasks(2))
    claimed = await claim_one(store)
    assert claimed
    assert await store.requeue_running() == 1
    again = await claim_one(store)
    assert again and again.id == claimed.id and again.attempts == 2


async def test_create_job_is_all_or_nothing(store):
    tasks = new_tasks(3)
    duplicate = [*tasks, tasks[0]]  # the 4th insert violates the primary key
    job_id = new_id()
    with pytest.raises(sqlite3.IntegrityError):
        await store.create_job(job_id, "a.zip", duplicate)
    with pytest.raises(NotFound):
        await store.get_job(job_id)
    assert await claim_one(store) is None


async def test_a_database_from_a_newer_oilspill_is_refused(tmp_path):
    path = tmp_path / "db.sqlite3"
    store = await Store.open(path)
    await store.close()
    with sqlite3.connect(path) as db:
        db.execute("INSERT INTO schema_version (version) VALUES (99)")
    with pytest.raises(SchemaTooNew):
        await Store.open(path)


async def test_reopening_keeps_the_data(tmp_path):
    path = tmp_path / "db.sqlite3"
    store = await Store.open(path)
    job_id = new_id()
    await store.create_job(job_id, "a.zip", new_tasks(4))
    await store.close()
    store = await Store.open(path)
    try:
        assert (await store.get_job(job_id)).progress.total == 4
    finally:
        await store.close()
