"""Group commit of task ends: the files of many tasks made durable, then one transaction.

Workers hand their task's end (done, failed, or back to the queue for a retry) to the
recorder and wait for it. Whatever arrived while the previous batch was being written goes
into the next one, so under load one fsync pass and one SQLite transaction serve many
tasks, and when idle a single task is written at once.

A done task's answer can come unread, with the work that keeps it (classify, count, move
into place): that work then runs in the batch's own thread hand-off, before the files are
made durable, so a busy server hands work to a thread once per batch rather than once per
task. What it raises goes to that task's worker alone; nothing of it is recorded.

Order, for crash safety: a result file is renamed into place first, made durable here
before its row says `done`; a crash before the commit leaves the task `running`, so it runs
again after restart and overwrites the file under the same name.
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


Keep = Callable[[], tuple[TaskOutcome, Sequence[Path]]]


@dataclass
class _End:
    """One task's end, and the future its worker waits on until it is committed.

    With `keep`, `end` is made in the batch's thread from what `keep` returns (the outcome
    and the files to make durable), and the future gets the outcome."""

    end: TaskDone | TaskFailure | TaskRetry | TileDone | TileRetry | None
    future: asyncio.Future[TaskOutcome | None]
    files: Sequence[Path] = field(default_factory=tuple)
    keep: Keep | None = None
    task_id: str = ""


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_durable(files: Sequence[Path]) -> None:
    """fsync each file, then each folder holding one (so their renames are durable)."""
    for path in files:
        _fsync(path)
    for folder in {path.parent for path in files}:
        _fsync(folder)


def _kept(batch: list[_End]) -> list[_End]:
    """Run each end's `keep`; an end whose keep raises fails alone. Runs in a thread."""
    kept = []
    for end in batch:
        if end.keep is not None:
            try:
                outcome, end.files = end.keep()
            except Exception as exc:
                end.future.get_loop().call_soon_threadsafe(_fail_future, end.future, exc)
                continue
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
            loop = end.future.get_loop()
            loop.call_soon_threadsafe(_fail_future, end.future, exc)
    return kept


def _fail_future(future: asyncio.Future[TaskOutcome | None], exc: BaseException) -> None:
    if not future.done():
        future.set_exception(exc)


class Recorder:
    """Collects task ends and writes them in batches; start(), then close() at the end."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: list[_End] = []
        self._wake = asyncio.Event()
        self._closing = False
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="oilspill-recorder")

    async def done(self, task_id: str, outcome: TaskOutcome, files: Sequence[Path]) -> None:
        """Record a task as done once its files are durable."""
        await self._submit(_End(TaskDone(task_id, outcome), self._future(), files))

    async def keep_done(self, task_id: str, keep: Keep) -> TaskOutcome:
        """Record a task as done with what `keep` (run in the batch's thread) makes of its
        answer, once the files it names are durable; returns the outcome, or raises what
        `keep` raised (and nothing is recorded)."""
        end = _End(None, self._future(), keep=keep, task_id=task_id)
        await self._submit(end)
        outcome = end.future.result()
        assert outcome is not None
        return outcome

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
    def _future() -> asyncio.Future[TaskOutcome | None]:
        return asyncio.get_running_loop().create_future()

    async def _submit(self, end: _End) -> None:
        if self._closing:
            raise RuntimeError("the recorder is closed")
        self._pending.append(end)
        self._wake.set()
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
        batch = await asyncio.to_thread(_durable, batch)
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
            logger.exception("recording %d task ends failed", len(batch))
            for end in batch:
                if not end.future.done():
                    end.future.set_exception(exc)
            return
        for end in batch:
            if not end.future.done():  # a worker cancelled meanwhile no longer waits
                end.future.set_result(end.end.outcome if isinstance(end.end, TaskDone)
                                      and end.keep is not None else None)

    async def close(self) -> None:
        """Write what is pending, then stop."""
        self._closing = True
        self._wake.set()
        if self._task:
            await self._task
