"""The worker pool: asyncio tasks that claim queued tasks from the store and run them.

Workers sleep on a condition until `notify()` says work arrived, or until the next retry
falls due; they never poll SQLite in a loop. A semaphore bounds the calls in flight to the
ML service, and the outage gate holds every worker while the service is unreachable.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import time
from pathlib import Path

from .jobs import RetryPolicy, Task, TaskOutcome
from .masks import Answer, UnreadableImage, probe_image, read_answer, render_overlay
from .ml_client import MLClient, MLRejected, MLUnavailable, MLUnreachable
from .outage import OutageGate
from .paths import JobPaths
from .store import NotFound, Store

logger = logging.getLogger(__name__)


class WorkerPool:
    """`workers` claim loops sharing one semaphore of `concurrency` ML calls."""

    def __init__(self, store: Store, ml: MLClient, jobs_dir: Path, concurrency: int,
                 policy: RetryPolicy, gate: OutageGate, max_image_pixels: int,
                 overlay_max_px: int, workers: int | None = None,
                 rng: random.Random | None = None) -> None:
        self._store = store
        self._max_image_pixels = max_image_pixels
        self._overlay_max_px = overlay_max_px
        self._ml = ml
        self._jobs_dir = jobs_dir
        self._policy = policy
        self._gate = gate
        self._workers = workers or concurrency
        self._rng = rng or random.Random()
        self._calls = asyncio.Semaphore(concurrency)
        # A generation counter under a condition: a worker that found no work waits for the
        # counter to move past what it saw before claiming, so no wake-up is ever lost.
        self._arrivals = asyncio.Condition()
        self._generation = 0
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: dict[str, tuple[Task, asyncio.Task[None]]] = {}

    @property
    def ml_reachable(self) -> bool:
        """False while the pool is paused because the ML service cannot be reached."""
        return self._gate.is_open

    def start(self) -> None:
        for n in range(self._workers):
            self._loops.append(asyncio.create_task(self._run(), name=f"oilspill-worker-{n}"))
        logger.info("worker pool started: %d workers", self._workers)

    async def notify(self) -> None:
        """Wake idle workers: new tasks are queued."""
        async with self._arrivals:
            self._generation += 1
            self._arrivals.notify_all()

    async def stop(self, grace_s: float) -> None:
        """Claim nothing more, let calls in flight finish within `grace_s`, then cancel the
        rest; every task still running goes back to queued."""
        self._stopping = True
        await self.notify()
        inflight = [child for _, child in self._inflight.values()]
        if inflight:
            logger.info("waiting up to %.1f s for %d calls in flight", grace_s, len(inflight))
            await asyncio.wait(inflight, timeout=grace_s)
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        await self._gate.close()
        requeued = await self._store.requeue_running()
        logger.info("worker pool stopped; %d unfinished tasks put back to queued", requeued)

    def abandon_job(self, job_id: str) -> int:
        """Cancel this job's calls in flight (its rows are gone); return how many."""
        children = [child for task, child in self._inflight.values() if task.job_id == job_id]
        for child in children:
            child.cancel()
        return len(children)

    async def _wait_for_work(self, seen: int) -> None:
        due = await self._store.next_due_at()
        timeout_s = None if due is None else max(0.0, due - time.time())
        async with self._arrivals:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._arrivals.wait_for(lambda: self._generation != seen), timeout_s)

    async def _run(self) -> None:
        while not self._stopping:
            await self._gate.wait_open()
            seen = self._generation
            task = await self._store.claim_next_task()
            if task is None:
                await self._wait_for_work(seen)
                continue
            child = asyncio.create_task(self._process(task))
            self._inflight[task.id] = (task, child)
            try:
                await child
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the pool is stopping
                logger.info("job %s task %s: abandoned (job deleted)", task.job_id, task.id)
            except Exception as exc:
                # A bug must not kill the worker or leave the job unfinished.
                logger.exception("job %s task %s: internal error", task.job_id, task.id)
                with contextlib.suppress(NotFound):
                    await self._store.mark_task_failed(task.id, f"internal error: {exc}")
            finally:
                self._inflight.pop(task.id, None)

    async def _process(self, task: Task) -> None:
        paths = JobPaths(self._jobs_dir, task.job_id)
        image = paths.image(task.stored_name)
        logger.info("job %s task %s: started %s (attempt %d)", task.job_id, task.id,
                    task.filename, task.attempts)
        try:
            width, height = await asyncio.to_thread(probe_image, image, self._max_image_pixels)
        except UnreadableImage as exc:
            await self._fail(task, str(exc))
            return
        # Written beside its final place, flushed, then renamed: a task is never done
        # without its file, and a retry after a crash overwrites, never duplicates.
        partial = paths.masks / f".{task.id}.part"
        try:
            await self._gate.wait_open()
            async with self._calls:
                await self._ml.segment(image, task.filename, task.content_type, partial)
            self._gate.record_success()
            answer, result_name = await asyncio.to_thread(
                _keep_answer, partial, image, width, height, paths, task,
                self._overlay_max_px)
        except MLUnavailable as exc:
            if isinstance(exc, MLUnreachable):
                self._gate.record_unreachable()
            await self._retry_or_fail(task, exc, width, height)
            return
        except (MLRejected, UnreadableImage) as exc:
            await self._fail(task, str(exc), width, height)
            return
        finally:
            await asyncio.to_thread(_remove_if_present, partial)
        fraction = answer.oil_pixels / (width * height) if answer.oil_pixels is not None else None
        await self._store.mark_task_done(task.id, TaskOutcome(
            width=width, height=height, result_kind=answer.kind, result_name=result_name,
            oil_pixels=answer.oil_pixels, oil_fraction=fraction,
            slick_count=answer.slick_count, largest_slick_px=answer.largest_slick_px))
        logger.info("job %s task %s: done, %s, oil fraction %s", task.job_id, task.id,
                    answer.kind.value, "n/a" if fraction is None else f"{fraction:.4f}")

    async def _retry_or_fail(self, task: Task, exc: MLUnavailable, width: int,
                             height: int) -> None:
        if not task.retryable(self._policy):
            await self._fail(task, f"{exc} (gave up after {task.attempts} attempts)",
                             width, height)
            return
        delay_s = self._policy.delay_s(task.attempts, exc.retry_after_s, self._rng)
        logger.warning("job %s task %s: attempt %d failed, retrying in %.2f s: %s",
                       task.job_id, task.id, task.attempts, delay_s, exc)
        await self._store.retry_task(task.id, str(exc), time.time() + delay_s)

    async def _fail(self, task: Task, reason: str, width: int | None = None,
                    height: int | None = None) -> None:
        logger.warning("job %s task %s: failed: %s", task.job_id, task.id, reason)
        await self._store.mark_task_failed(task.id, reason, width, height)


def _keep_answer(partial: Path, image: Path, width: int, height: int, paths: JobPaths,
                 task: Task, overlay_max_px: int) -> tuple[Answer, str]:
    """Classify the answer, draw the overlay of a mask, and move both into place."""
    answer = read_answer(partial, width, height)
    result_name = f"{task.seq:06d}{answer.extension}"
    if answer.oil is not None:
        paths.overlays.mkdir(exist_ok=True)
        overlay_partial = paths.overlays / f".{task.id}.part"
        try:
            render_overlay(image, answer.oil, overlay_partial, overlay_max_px)
            _move_into_place(overlay_partial, paths.overlay(result_name))
        finally:
            _remove_if_present(overlay_partial)
    _move_into_place(partial, paths.result(answer.kind, result_name))
    return answer, result_name


def _move_into_place(partial: Path, final: Path) -> None:
    final.parent.mkdir(exist_ok=True)
    os.replace(partial, final)
    # The rename is durable only once the folder's entry is on disk.
    fd = os.open(final.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
