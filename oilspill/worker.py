"""The worker pool: asyncio tasks that claim queued tasks from the store and run them.

Workers sleep on a condition until `notify()` says work arrived; they never poll SQLite in a
loop. A semaphore bounds the calls in flight to the ML service.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from pathlib import Path

from .jobs import Task, TaskOutcome
from .masks import UnreadableImage, probe_image, read_answer
from .ml_client import MLClient, MLError
from .paths import JobPaths
from .store import Store

logger = logging.getLogger(__name__)


class WorkerPool:
    """`workers` claim loops sharing one semaphore of `concurrency` ML calls."""

    def __init__(self, store: Store, ml: MLClient, jobs_dir: Path, concurrency: int,
                 workers: int | None = None) -> None:
        self._store = store
        self._ml = ml
        self._jobs_dir = jobs_dir
        self._workers = workers or concurrency
        self._calls = asyncio.Semaphore(concurrency)
        # A generation counter under a condition: a worker that found no work waits for the
        # counter to move past what it saw before claiming, so no wake-up is ever lost.
        self._arrivals = asyncio.Condition()
        self._generation = 0
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for n in range(self._workers):
            self._tasks.append(asyncio.create_task(self._run(), name=f"oilspill-worker-{n}"))
        logger.info("worker pool started: %d workers", self._workers)

    async def stop(self) -> None:
        """Cancel the workers; tasks they held go back to queued."""
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        requeued = await self._store.requeue_running()
        logger.info("worker pool stopped; %d running tasks put back to queued", requeued)

    async def notify(self) -> None:
        """Wake idle workers: new tasks are queued."""
        async with self._arrivals:
            self._generation += 1
            self._arrivals.notify_all()

    async def _wait_for_arrivals(self, seen: int) -> None:
        async with self._arrivals:
            await self._arrivals.wait_for(lambda: self._generation != seen)

    async def _run(self) -> None:
        while True:
            seen = self._generation
            task = await self._store.claim_next_task()
            if task is None:
                await self._wait_for_arrivals(seen)
                continue
            try:
                await self._process(task)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A bug must not kill the worker or leave the job unfinished.
                logger.exception("job %s task %s: internal error", task.job_id, task.id)
                with contextlib.suppress(Exception):
                    await self._store.mark_task_failed(task.id, f"internal error: {exc}")

    async def _process(self, task: Task) -> None:
        paths = JobPaths(self._jobs_dir, task.job_id)
        image = paths.image(task.stored_name)
        logger.info("job %s task %s: started %s (attempt %d)", task.job_id, task.id,
                    task.filename, task.attempts)
        try:
            width, height = await asyncio.to_thread(probe_image, image)
        except UnreadableImage as exc:
            await self._fail(task, str(exc))
            return
        partial = paths.masks / f".{task.id}.part"
        try:
            async with self._calls:
                await self._ml.segment(image, task.filename, task.content_type, partial)
            answer = await asyncio.to_thread(read_answer, partial, width, height)
            result_name = f"{task.seq:06d}{answer.extension}"
            final = paths.result(answer.kind, result_name)
            await asyncio.to_thread(_move_into_place, partial, final)
        except (MLError, UnreadableImage) as exc:
            await self._fail(task, str(exc), width, height)
            return
        finally:
            await asyncio.to_thread(_remove_if_present, partial)
        fraction = answer.oil_pixels / (width * height) if answer.oil_pixels is not None else None
        await self._store.mark_task_done(task.id, TaskOutcome(
            width=width, height=height, result_kind=answer.kind, result_name=result_name,
            oil_pixels=answer.oil_pixels, oil_fraction=fraction))
        logger.info("job %s task %s: done, %s, oil fraction %s", task.job_id, task.id,
                    answer.kind.value, "n/a" if fraction is None else f"{fraction:.4f}")

    async def _fail(self, task: Task, reason: str, width: int | None = None,
                    height: int | None = None) -> None:
        logger.warning("job %s task %s: failed: %s", task.job_id, task.id, reason)
        await self._store.mark_task_failed(task.id, reason, width, height)


def _move_into_place(partial: Path, final: Path) -> None:
    final.parent.mkdir(exist_ok=True)
    os.replace(partial, final)


def _remove_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
