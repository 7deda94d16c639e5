"""The recorder on its own, group committing into the real store on a real SQLite file."""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
import threading
import time
from collections.abc import Coroutine, Sequence
from pathlib import Path
from typing import Any

import pytest

import oilspill.recorder as recorder_module
from oilspill.jobs import (
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
from oilspill.recorder import Recorder
from oilspill.store import NotFound, Store

TIMEOUT_S = 5


class CountingStore(Store):
    """The real store, counting its `record` transactions; `hold` pauses them when set."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.batches: list[tuple[int, int, int]] = []  # (done, failed, retries) per call
        self.hold: asyncio.Event | None = None
        self.entered = asyncio.Event()

    async def record(self, done: Sequence[TaskDone], failed: Sequence[TaskFailure],
                     retries: Sequence[TaskRetry], **more: Any) -> None:
        self.batches.append((len(done), len(failed), len(retries)))
        self.entered.set()
        if self.hold is not None:
            await self.hold.wait()
        # `more`: the other kinds of ends the store takes (a scene's tiles), passed along.
        await super().record(done=done, failed=failed, retries=retries, **more)


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "db.sqlite3"


@pytest.fixture
async def store(db_path: Path):
    store = await CountingStore.open(db_path)
    yield store
    await store.close()


@pytest.fixture
async def recorder(store: CountingStore):
    recorder = Recorder(store)
    recorder.start()
    yield recorder
    await asyncio.wait_for(recorder.close(), TIMEOUT_S)


async def running_tasks(store: Store, n: int) -> list[Task]:
    """A new job of n tasks, all claimed (running)."""
    job_id = new_id()
    await store.create_job(job_id, "a.zip", [
        NewTask(id=new_id(), filename=f"img_{i}.png", stored_name=f"{i:06d}.png",
                content_type="image/png") for i in range(n)])
    claimed = await store.claim_tasks(n)
    assert [t.job_id for t in claimed] == [job_id] * n
    return claimed


def outcome(name: str = "000000.png") -> TaskOutcome:
    return TaskOutcome(width=64, height=48, result_kind=ResultKind.MASK, result_name=name,
                       oil_pixels=300, oil_fraction=300 / (64 * 48), slick_count=2,
                       largest_slick_px=200)


def result_file(folder: Path, name: str = "000000.png") -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(b"\x89PNG fake mask")
    return path


async def submitted(*ends: Coroutine[object, object, None]) -> list[asyncio.Task[None]]:
    """Workers handing their ends over: after one turn of the loop (not a timed sleep) each
    has, since the recorder takes an end before its first await."""
    workers = [asyncio.create_task(end) for end in ends]
    await asyncio.sleep(0)
    return workers


async def statuses(store: Store, tasks: Sequence[Task]) -> list[TaskStatus]:
    return [(await store.get_task(t.id)).status for t in tasks]


async def test_done_failed_and_retry_are_recorded_with_their_fields(store, recorder, tmp_path):
    done, failed, retried = await running_tasks(store, 3)
    mask = result_file(tmp_path / "masks")
    not_before = time.time() + 3600
    await asyncio.wait_for(asyncio.gather(
        recorder.done(done.id, outcome(), [mask]),
        recorder.failed(failed.id, "ML service answered 422: nope", width=10, height=20),
        recorder.retry(retried.id, "ML service answered 503", not_before),
    ), TIMEOUT_S)

    row = await store.get_task(done.id)
    assert (row.status, row.width, row.height, row.result_kind, row.result_name) == (
        TaskStatus.DONE, 64, 48, ResultKind.MASK, "000000.png")
    assert (row.oil_pixels, row.oil_fraction, row.slick_count, row.largest_slick_px) == (
        300, pytest.approx(300 / (64 * 48)), 2, 200)
    assert row.finished_at is not None and row.error is None

    row = await store.get_task(failed.id)
    assert (row.status, row.error, row.width, row.height, row.result_name) == (
        TaskStatus.FAILED, "ML service answered 422: nope", 10, 20, None)
    assert row.finished_at is not None

    row = await store.get_task(retried.id)
    assert (row.status, row.error, row.not_before, row.started_at, row.finished_at) == (
        TaskStatus.QUEUED, "ML service answered 503", not_before, None, None)
    assert await store.claim_tasks(1) == []  # not due before not_before
    assert await store.next_due_at() == not_before

    job = await store.get_job(done.job_id)
    assert (job.progress.done, job.progress.failed, job.progress.queued) == (1, 1, 1)


async def test_a_lone_end_is_written_at_once_in_its_own_transaction(store, recorder):
    [task] = await running_tasks(store, 1)
    await asyncio.wait_for(recorder.failed(task.id, "broken"), TIMEOUT_S)
    assert store.batches == [(0, 1, 0)]
    assert await statuses(store, [task]) == [TaskStatus.FAILED]


async def test_ends_arriving_during_a_write_share_the_next_transaction(store, recorder, tmp_path):
    tasks = await running_tasks(store, 10)
    store.hold = asyncio.Event()
    first = asyncio.create_task(recorder.failed(tasks[0].id, "first"))
    await asyncio.wait_for(store.entered.wait(), TIMEOUT_S)  # the first write is under way

    def end(i: int, task: Task) -> Coroutine[object, object, None]:
        if i % 3 == 0:
            return recorder.done(task.id, outcome(f"{i:06d}.png"),
                                 [result_file(tmp_path / "masks", f"{i:06d}.png")])
        if i % 3 == 1:
            return recorder.failed(task.id, f"failed {i}")
        return recorder.retry(task.id, f"retry {i}", time.time() + 3600)

    rest = await submitted(*(end(i, t) for i, t in enumerate(tasks[1:], start=1)))
    assert not first.done()
    store.hold.set()
    await asyncio.wait_for(asyncio.gather(first, *rest), TIMEOUT_S)

    assert len(store.batches) == 2 < len(tasks)
    assert store.batches == [(0, 1, 0), (3, 3, 3)]
    assert await statuses(store, tasks) == [TaskStatus.FAILED] + [
        (TaskStatus.DONE, TaskStatus.FAILED, TaskStatus.QUEUED)[i % 3] for i in range(1, 10)]


async def test_result_files_are_made_durable_before_the_row_says_done(
        store, recorder, tmp_path, db_path, monkeypatch):
    [task] = await running_tasks(store, 1)
    mask = result_file(tmp_path / "jobs" / "j" / "masks")
    real_fsync = recorder_module.fsync_path
    fsynced: list[tuple[Path, str]] = []  # path, and the task's status at that moment

    def spying_fsync(path: Path) -> None:
        with sqlite3.connect(db_path) as db:
            (status,) = db.execute("SELECT status FROM tasks WHERE id = ?",
                                   (task.id,)).fetchone()
        db.close()
        fsynced.append((path, status))
        real_fsync(path)

    monkeypatch.setattr(recorder_module, "fsync_path", spying_fsync)
    await asyncio.wait_for(recorder.done(task.id, outcome(), [mask]), TIMEOUT_S)

    assert {path for path, _ in fsynced} == {mask, mask.parent}  # the file and its entry
    assert {status for _, status in fsynced} == {"running"}  # both before the commit
    assert mask.read_bytes() == b"\x89PNG fake mask"
    assert (await store.get_task(task.id)).status is TaskStatus.DONE


async def test_a_missing_result_file_keeps_the_task_from_being_done(store, recorder, tmp_path):
    [task] = await running_tasks(store, 1)
    with pytest.raises(FileNotFoundError):
        await asyncio.wait_for(
            recorder.done(task.id, outcome(), [tmp_path / "masks" / "gone.png"]), TIMEOUT_S)
    assert await statuses(store, [task]) == [TaskStatus.RUNNING]
    assert store.batches == []  # no transaction was even attempted


async def test_a_failing_write_raises_in_every_waiter_and_later_ends_still_go_through(
        store, recorder, db_path):
    tasks = await running_tasks(store, 5)
    # A real SQLite error inside the store's transaction, lifted again afterwards.
    with sqlite3.connect(db_path) as db:
        db.execute("CREATE TRIGGER refuse BEFORE UPDATE ON tasks"
                   " BEGIN SELECT RAISE(ABORT, 'refused by the test'); END")
    db.close()
    # Submitted in one step: the recorder wakes to all five and writes them as one batch.
    waiters = [asyncio.create_task(recorder.failed(t.id, f"failed {i}"))
               for i, t in enumerate(tasks)]
    results = await asyncio.wait_for(asyncio.gather(*waiters, return_exceptions=True),
                                     TIMEOUT_S)
    assert store.batches == [(0, 5, 0)]
    assert all(isinstance(r, sqlite3.Error) and "refused by the test" in str(r)
               for r in results), results
    assert await statuses(store, tasks) == [TaskStatus.RUNNING] * 5  # rolled back, all of it

    with sqlite3.connect(db_path) as db:
        db.execute("DROP TRIGGER refuse")
    db.close()
    await asyncio.wait_for(asyncio.gather(
        *(recorder.failed(t.id, "failed again") for t in tasks)), TIMEOUT_S)
    assert await statuses(store, tasks) == [TaskStatus.FAILED] * 5


async def test_a_store_closed_underneath_fails_every_waiter_without_hanging(store, recorder):
    tasks = await running_tasks(store, 3)
    store.hold = asyncio.Event()
    first = asyncio.create_task(recorder.failed(tasks[0].id, "first"))
    await asyncio.wait_for(store.entered.wait(), TIMEOUT_S)
    rest = await submitted(*(recorder.retry(t.id, "again", time.time()) for t in tasks[1:]))
    await store.close()
    store.hold.set()
    results = await asyncio.wait_for(
        asyncio.gather(first, *rest, return_exceptions=True), TIMEOUT_S)
    assert store.batches == [(0, 1, 0), (0, 0, 2)]
    assert all(isinstance(r, Exception) for r in results), results
    # The recorder still answers, and closes.
    with pytest.raises(Exception, match="no active connection"):
        await asyncio.wait_for(recorder.failed(tasks[0].id, "later"), TIMEOUT_S)
    await asyncio.wait_for(recorder.close(), TIMEOUT_S)


async def test_close_writes_what_is_pending_then_refuses_new_ends(store, recorder):
    tasks = await running_tasks(store, 3)
    store.hold = asyncio.Event()
    waiters = [asyncio.create_task(recorder.failed(tasks[0].id, "first"))]
    await asyncio.wait_for(store.entered.wait(), TIMEOUT_S)
    waiters += await submitted(*(recorder.failed(t.id, "pending") for t in tasks[1:]))
    [late, later] = await running_tasks(store, 2)
    [closing] = await submitted(recorder.close())
    with pytest.raises(RuntimeError, match="closed"):  # refused while closing
        await asyncio.wait_for(recorder.failed(late.id, "too late"), TIMEOUT_S)
    store.hold.set()
    await asyncio.wait_for(closing, TIMEOUT_S)

    assert all(w.done() and w.exception() is None for w in waiters)
    assert store.batches == [(0, 1, 0), (0, 2, 0)]
    assert await statuses(store, tasks) == [TaskStatus.FAILED] * 3
    with pytest.raises(RuntimeError, match="closed"):  # and once closed
        await asyncio.wait_for(recorder.retry(later.id, "too late", time.time()), TIMEOUT_S)
    assert await statuses(store, [late, later]) == [TaskStatus.RUNNING] * 2


async def test_an_end_of_a_deleted_job_is_passed_over(store, recorder, tmp_path):
    [gone] = await running_tasks(store, 1)
    [kept] = await running_tasks(store, 1)
    mask = result_file(tmp_path / "masks")
    await store.delete_job(gone.job_id)
    await asyncio.wait_for(asyncio.gather(
        recorder.done(gone.id, outcome(), [mask]),
        recorder.failed(kept.id, "unrelated"),
    ), TIMEOUT_S)
    with pytest.raises(NotFound):
        await store.get_task(gone.id)
    assert await store.deleted_at(gone.id) is not None
    assert await statuses(store, [kept]) == [TaskStatus.FAILED]


async def test_a_deleted_jobs_removed_files_do_not_fail_other_tasks_ends(
        store, recorder, tmp_path):
    [gone] = await running_tasks(store, 1)
    [kept] = await running_tasks(store, 1)
    folder = tmp_path / "jobs" / gone.job_id
    mask = result_file(folder / "masks")
    [blocker] = await running_tasks(store, 1)
    store.hold = asyncio.Event()
    earlier = asyncio.create_task(recorder.failed(blocker.id, "earlier"))
    await asyncio.wait_for(store.entered.wait(), TIMEOUT_S)  # the recorder is busy writing
    abandoned, other = await submitted(recorder.done(gone.id, outcome(), [mask]),
                                       recorder.failed(kept.id, "unrelated"))
    # The cleanup deletes the job meanwhile: rows, then the worker's call, then its folder.
    await store.delete_job(gone.job_id)
    abandoned.cancel()
    shutil.rmtree(folder)
    store.hold.set()
    await asyncio.wait_for(earlier, TIMEOUT_S)
    await asyncio.wait_for(other, TIMEOUT_S)  # today: FileNotFoundError for the gone folder
    assert await statuses(store, [kept]) == [TaskStatus.FAILED]


# --- answers handed over: kept in the batch's thread, the worker not waiting -------------

class Heard:
    """What a handed-over end's `then` heard, in order."""

    def __init__(self) -> None:
        self.ends: list[TaskDone | TaskFailure] = []
        self.changed = asyncio.Event()

    def __call__(self, end: TaskDone | TaskFailure) -> None:
        self.ends.append(end)
        self.changed.set()

    async def wait_for(self, count: int) -> None:
        while len(self.ends) < count:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), TIMEOUT_S)


async def test_a_handed_over_answer_is_kept_in_a_thread_and_recorded_done(
        store, recorder, tmp_path):
    [task] = await running_tasks(store, 1)
    mask = tmp_path / "masks" / "000000.png"
    kept_in: list[str] = []

    def keep() -> tuple[TaskOutcome, list[Path]]:
        kept_in.append(threading.current_thread().name)
        result_file(mask.parent)
        return outcome(), [mask]

    heard = Heard()
    await asyncio.wait_for(recorder.hand_over(task.id, keep, heard), TIMEOUT_S)
    await heard.wait_for(1)
    assert heard.ends == [TaskDone(task.id, outcome())]
    assert kept_in and kept_in[0] != "MainThread"  # not on the event loop
    row = await store.get_task(task.id)
    assert (row.status, row.result_name, row.oil_pixels) == (TaskStatus.DONE, "000000.png", 300)


async def test_hand_over_returns_before_the_commit(store, recorder, tmp_path):
    [task] = await running_tasks(store, 1)
    store.hold = asyncio.Event()
    mask = result_file(tmp_path / "masks")
    heard = Heard()
    await asyncio.wait_for(recorder.hand_over(task.id, lambda: (outcome(), [mask]), heard),
                           TIMEOUT_S)
    await asyncio.wait_for(store.entered.wait(), TIMEOUT_S)
    assert heard.ends == [] and await statuses(store, [task]) == [TaskStatus.RUNNING]
    store.hold.set()
    await heard.wait_for(1)
    assert await statuses(store, [task]) == [TaskStatus.DONE]


async def test_an_answer_that_is_no_image_or_a_bug_in_keeping_fails_only_its_task(
        store, recorder, tmp_path):
    bad, buggy, good = await running_tasks(store, 3)
    mask = result_file(tmp_path / "masks")

    def broken() -> tuple[TaskOutcome, list[Path]]:
        raise ValueError("a bug")

    heard = Heard()
    store.hold = asyncio.Event()  # all three in one batch
    for task, keep in [(bad, lambda: TaskFailure(bad.id, "not an image", 64, 48)),
                       (buggy, broken), (good, lambda: (outcome(), [mask]))]:
        await recorder.hand_over(task.id, keep, heard)
    store.hold.set()
    await heard.wait_for(3)
    assert await statuses(store, [bad, buggy, good]) == [
        TaskStatus.FAILED, TaskStatus.FAILED, TaskStatus.DONE]
    assert (await store.get_task(bad.id)).error == "not an image"
    error = (await store.get_task(buggy.id)).error or ""
    assert error.startswith("internal error (ValueError)") and buggy.id in error


async def test_at_most_max_handed_ends_wait_then_the_next_waits_for_room(store, tmp_path):
    recorder = Recorder(store, max_handed=2)
    recorder.start()
    try:
        tasks = await running_tasks(store, 3)
        store.hold = asyncio.Event()
        mask = result_file(tmp_path / "masks")
        heard = Heard()
        for task in tasks[:2]:
            await asyncio.wait_for(
                recorder.hand_over(task.id, lambda: (outcome(), [mask]), heard), TIMEOUT_S)
        third = asyncio.create_task(
            recorder.hand_over(tasks[2].id, lambda: (outcome(), [mask]), heard))
        await asyncio.wait_for(store.entered.wait(), TIMEOUT_S)
        await asyncio.sleep(0.05)
        assert not third.done()  # two wait already: no room
        store.hold.set()
        await asyncio.wait_for(third, TIMEOUT_S)
        await heard.wait_for(3)
        assert await statuses(store, tasks) == [TaskStatus.DONE] * 3
    finally:
        await asyncio.wait_for(recorder.close(), TIMEOUT_S)


async def test_close_keeps_and_records_the_answers_still_handed_over(store, tmp_path):
    recorder = Recorder(store)
    recorder.start()
    tasks = await running_tasks(store, 4)
    mask = result_file(tmp_path / "masks")
    heard = Heard()
    for task in tasks:
        await recorder.hand_over(task.id, lambda: (outcome(), [mask]), heard)
    await asyncio.wait_for(recorder.close(), TIMEOUT_S)
    assert await statuses(store, tasks) == [TaskStatus.DONE] * 4
    assert len(heard.ends) == 4
