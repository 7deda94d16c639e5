"""Group commit of task ends: the files of many tasks made durable, then one transaction.

Workers hand their task's end (done, failed, or back to the queue for a retry) to the
recorder and wait for it. Whatever arrived while the previous batch was being written goes
into the next one, so under load one fsync pass and one SQLite transaction serve many
tasks, and when idle a single task is written at once.

A plain image's answer is handed over unread, with the work that keeps it (classify, count,
put in place), and its worker goes on at once: that work runs in the batch's own thread
hand-off, before the files are made durable, so a busy server hands work to a thread once
per batch rather than once per task, and a slow fsync (the first after a large unpack
flushes it all) holds no ML call back. At most `max_handed` ends wait so; the next worker
to hand one over waits for room. What the work makes of an answer (done, or failed with
why) is recorded as any end, and `then` hears it once it is committed.

Order, for crash safety: a result file is put in place first, made durable here before its
row says `done`; a crash before the commit leaves the task `running`, so it runs again
after restart and writes the file again under the same name.
"""

from __future__ import annotations

import asyncio
import logging
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from .jobs import TaskDone, TaskFailure, TaskOutcome, TaskRetry, TileDone, TileRetry
from .store import Store

logger = logging.getLogger(__name__)


# What keeping an answer makes of it: the outcome and the files to make durable, or why the
# task failed.
Kept = tuple[TaskOutcome, Sequence[Path]] | TaskFailure
Keep = Callable[[], Kept]
Then = Callable[[TaskDone | TaskFailure], None]


@dataclass
class _End:
    """One task's end, and the future its worker waits on until it is committed (None: it
    was handed over, and `then` hears how it ended).

    With `keep`, `end` is made in the batch's thread from what `keep` returns."""

    end: TaskDone | TaskFailure | TaskRetry | TileDone | TileRetry | None
    future: asyncio.Future[None] | None
    files: Sequence[Path] = field(default_factory=tuple)
    keep: Keep | None = None
    task_id: str = ""
    then: Then | None = None


def fsync_path(path: Path) -> None:
    """fsync a file or a folder by its path."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable(files: Sequence[Path]) -> None:
    """fsync each file, then each folder holding one (so their renames are durable)."""
    for path in files:
        fsync_path(path)
    for folder in {path.parent for path in files}:
        fsync_path(folder)


def _kept(batch: list[_End]) -> list[_End]:
    """Run each end's `keep`. One that finds its job's folder gone (deleted meanwhile) is
    dropped; any other error fails its task, the detail logged. Runs in a thread."""
    kept = []
    for end in batch:
        if end.keep is not None:
            try:
                made = end.keep()
            except FileNotFoundError:
                logger.info("task %s: answer not kept, its job's files are gone", end.task_id)
                continue
            except Exception as exc:
                logger.exception("task %s: keeping the answer failed", end.task_id)
                made = TaskFailure(end.task_id, f"internal error ({exc.__class__.__name__}); "
                                   f"the server log has the detail under task {end.task_id}")
            if isinstance(made, TaskFailure):
                end.end = made
            else:
                outcome, end.files = made
                end.end = TaskDone(end.task_id, outcome)
        kept.append(end)
    return kept


def _durable(batch: list[_End]) -> list[_End]:
    """Keep the answers that came unread, then make the batch's files durable; the ends
    whose files are gone (their job was deleted meanwhile) fail alone, and the rest of the
    batch goes on. Runs in a thread."""
    batch = _kept(batch)
    try:
        make_durable([path for end in batch for path in end.files])
        return batch
    except FileNotFoundError:
        pass
    kept = []
    for end in batch:
        try:
            make_durable(end.files)
            kept.append(end)
        except FileNotFoundError as exc:
            if end.future is None:
                logger.info("task %s: result not recorded, its job's files are gone",
                            end.task_id)
            else:
                end.future.get_loop().call_soon_threadsafe(_fail_future, end.future, exc)
    return kept


def _fail_future(future: asyncio.Future[None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Recorder:
    """Collects task ends and writes them in batches; start(), then close() at the end."""

    def __init__(self, store: Store, max_handed: int = 64) -> None:
        self._store = store
        self._max_handed = max_handed
        self._handed = 0  # ends handed over and not yet written
        self._room = asyncio.Event()
        self._pending: list[_End] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="oilspill-recorder")

    async def done(self, task_id: str, outcome: TaskOutcome, files: Sequence[Path]) -> None:
        """Record a task as done once its files are durable."""
        await self._submit(_End(TaskDone(task_id, outcome), self._future(), files))

    async def hand_over(self, task_id: str, keep: Keep, then: Then) -> None:
        """Record the task's end that `keep` (run in a batch's thread) makes of its answer,
        once the files it names are durable; `then` hears the end once committed. Returns
        at once, unless `max_handed` ends already wait (then once there is room)."""
        while self._handed >= self._max_handed:
            self._room.clear()
            await self._room.wait()
        if self._closing:
            raise RuntimeError("the recorder is closed")
        self._handed += 1
        self._pending.append(_End(None, None, keep=keep, task_id=task_id, then=then))
        self._wake.set()

    async def failed(self, task_id: str, reason: str, width: int | None = None,
                     height: int | None = None) -> None:
        await self._submit(_End(TaskFailure(task_id, reason, width, height), self._future()))

    async def retry(self, task_id: str, reason: str, not_before: float) -> None:
        """Put a task back in the queue, due at `not_before` (epoch seconds)."""
        await self._submit(_End(TaskRetry(task_id, reason, not_before), self._future()))

    async def tile_done(self, task_id: str, idx: int, files: Sequence[Path]) -> None:
        """Record a scene's unit as done once its mask file is durable."""
        await self._submit(_End(TileDone(task_id, idx), self._future(), files))

    async def tile_retry(self, task_id: str, idx: int, reason: str, not_before: float) -> None:
        """Put a scene's unit back in the queue, due at `not_before` (epoch seconds)."""
        await self._submit(_End(TileRetry(task_id, idx, reason, not_before), self._future()))

    @staticmethod
    def _future() -> asyncio.Future[None]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, end: _End) -> None:
        if self._closing:
            raise RuntimeError("the recorder is closed")
        self._pending.append(end)
        self._wake.set()
        assert end.future is not None
        await end.future

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending = self._pending, []
            if batch:
                await self._write(batch)
            if self._closing and not self._pending:
                return

    async def _write(self, batch: list[_End]) -> None:
        handed = sum(1 for end in batch if end.future is None)
        try:
            await self._commit(await asyncio.to_thread(_durable, batch))
        finally:
            self._handed -= handed
            self._room.set()

    async def _commit(self, batch: list[_End]) -> None:
        if not batch:
            return
        try:
            ends = [e.end for e in batch if e.end is not None]
            await self._store.record(
                done=[e for e in ends if isinstance(e, TaskDone)],
                failed=[e for e in ends if isinstance(e, TaskFailure)],
                retries=[e for e in ends if isinstance(e, TaskRetry)],
                tiles_done=[e for e in ends if isinstance(e, TileDone)],
                tile_retries=[e for e in ends if isinstance(e, TileRetry)])
        except Exception as exc:
            # Their rows stay as they were (running): they run again after a restart.
            logger.exception("recording %d task ends failed", len(batch))
            for end in batch:
                if end.future is not None and not end.future.done():
                    end.future.set_exception(exc)
            return
        for end in batch:
            if end.future is not None and not end.future.done():
                end.future.set_result(None)  # (a worker cancelled meanwhile no longer waits)
            if end.then is not None and isinstance(end.end, TaskDone | TaskFailure):
                end.then(end.end)

    async def close(self) -> None:
        """Write what is pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._task:
            await self._task
