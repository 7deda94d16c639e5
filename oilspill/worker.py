"""The worker pool: asyncio tasks that claim queued tasks from the store and run them.

Workers take tasks from a small local queue, refilled by one batched claim when it runs
dry; they sleep on a condition until `notify()` says work arrived or the next retry falls
due, never polling SQLite in a loop. A semaphore bounds the calls in flight to the ML
service, the outage gate holds every worker while the service is unreachable, and task ends
go to the recorder, which writes them in group commits.

Per image the event loop hands work to a thread twice: once to read the image (its header,
and its bytes when small), once to keep the answer (classify it, count its slicks, move it
into place).
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import logging
import os
import random
import time
from pathlib import Path

from .jobs import RetryPolicy, Task, TaskOutcome
from .masks import Answer, UnreadableImage, probe_image, read_answer
from .metrics import Metrics
from .ml_client import MLClient, MLRejected, MLUnavailable, MLUnreachable
from .outage import OutageGate
from .paths import JobPaths, result_name
from .recorder import Recorder
from .store import Store

logger = logging.getLogger(__name__)

INLINE_IMAGE_BYTES = 1024 * 1024  # images up to this size are sent from memory


class WorkerPool:
    """`workers` claim loops (default 2 x concurrency) sharing one semaphore of
    `concurrency` ML calls."""

    def __init__(self, *, store: Store, ml: MLClient, jobs_dir: Path, concurrency: int,
                 policy: RetryPolicy, gate: OutageGate, max_image_pixels: int,
                 metrics: Metrics, workers: int | None = None,
                 rng: random.Random | None = None) -> None:
        self._store = store
        self._ml = ml
        self._jobs_dir = jobs_dir
        self._policy = policy
        self._gate = gate
        self._max_image_pixels = max_image_pixels
        self._metrics = metrics
        # Twice as many workers as ML slots: while some read images, keep answers or wait
        # for their group commit, others hold every slot, so the ML service never waits.
        self._workers = workers or 2 * concurrency
        self._rng = rng or random.Random()
        self._calls = asyncio.Semaphore(concurrency)
        self._recorder = Recorder(store)
        # Claimed tasks waiting for a worker; refilled by one claim of up to `_workers`.
        self._ready: asyncio.Queue[Task] = asyncio.Queue()
        self._claiming = asyncio.Lock()
        # A generation counter under a condition: a worker that found no work waits for the
        # counter to move past what it saw before claiming, so no wake-up is ever lost.
        self._arrivals = asyncio.Condition()
        self._generation = 0
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: dict[str, tuple[Task, asyncio.Task[None]]] = {}
        # Claimed and not yet ended; and, of those, the ones whose ML call has started.
        self._claimed: set[str] = set()
        self._called: set[str] = set()

    @property
    def ml_reachable(self) -> bool:
        """False while the pool is paused because the ML service cannot be reached."""
        return self._gate.is_open

    def start(self) -> None:
        self._recorder.start()
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
        await self._recorder.close()
        await self._gate.close()
        # Tasks claimed ahead whose call never started did not use an attempt.
        released = await self._store.release_tasks(sorted(self._claimed - self._called))
        requeued = await self._store.requeue_running()
        logger.info("worker pool stopped; %d unfinished tasks put back to queued",
                    released + requeued)

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

    async def _next_task(self) -> Task | None:
        """The next claimed task: from the local queue, or from one batched claim; None once
        the pool is stopping."""
        while True:
            if self._stopping:
                return None
            if not self._ready.empty():
                return self._ready.get_nowait()
            await self._gate.wait_open()
            async with self._claiming:
                if not self._ready.empty():
                    continue
                seen = self._generation
                claimed = await self._store.claim_tasks(self._workers)
                for task in claimed:
                    self._claimed.add(task.id)
                    self._ready.put_nowait(task)
            if not claimed:
                await self._wait_for_work(seen)

    async def _run(self) -> None:
        while not self._stopping:
            task = await self._next_task()
            if task is None:
                return
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
                with contextlib.suppress(Exception):
                    # The task's error is shown to users: the detail stays in the log.
                    await self._recorder.failed(
                        task.id, f"internal error ({exc.__class__.__name__}); the server log "
                                 f"has the detail under task {task.id}")
            finally:
                self._inflight.pop(task.id, None)
                if not child.cancelled() or not self._stopping:
                    self._claimed.discard(task.id)
                    self._called.discard(task.id)

    async def _process(self, task: Task) -> None:
        paths = JobPaths(self._jobs_dir, task.job_id)
        image = paths.image(task.stored_name)
        logger.debug("job %s task %s: started %s (attempt %d)", task.job_id, task.id,
                     task.filename, task.attempts)
        try:
            width, height, body = await asyncio.to_thread(
                _read_image, image, self._max_image_pixels)
        except UnreadableImage as exc:
            await self._fail(task, str(exc))
            return
        spill = paths.answer_partial(task.id)
        try:
            await self._gate.wait_open()
            async with self._calls:
                self._called.add(task.id)
                answer_body = await self._ml.segment(body, task.filename, task.content_type,
                                                     spill)
            self._gate.record_success()
            answer, result_name, files = await asyncio.to_thread(
                _keep_answer, answer_body, spill, width, height, paths, task)
        except MLUnavailable as exc:
            if isinstance(exc, MLUnreachable):
                self._gate.record_unreachable()
            await self._retry_or_fail(task, exc, width, height)
            return
        except (MLRejected, UnreadableImage) as exc:
            await self._fail(task, str(exc), width, height)
            return
        fraction = answer.oil_pixels / (width * height) if answer.oil_pixels is not None else None
        await self._recorder.done(task.id, TaskOutcome(
            width=width, height=height, result_kind=answer.kind, result_name=result_name,
            oil_pixels=answer.oil_pixels, oil_fraction=fraction,
            slick_count=answer.slick_count, largest_slick_px=answer.largest_slick_px), files)
        logger.info("job %s task %s: done %s, %s, oil fraction %s", task.job_id, task.id,
                    task.filename, answer.kind.value,
                    "n/a" if fraction is None else f"{fraction:.4f}")

    async def _retry_or_fail(self, task: Task, exc: MLUnavailable, width: int,
                             height: int) -> None:
        if not task.retryable(self._policy):
            await self._fail(task, f"{exc} (gave up after {task.attempts} attempts)",
                             width, height)
            return
        delay_s = self._policy.delay_s(task.attempts, exc.retry_after_s, self._rng)
        logger.warning("job %s task %s: attempt %d failed, retrying in %.2f s: %s",
                       task.job_id, task.id, task.attempts, delay_s, exc)
        self._metrics.retries.inc()
        await self._recorder.retry(task.id, str(exc), time.time() + delay_s)

    async def _fail(self, task: Task, reason: str, width: int | None = None,
                    height: int | None = None) -> None:
        logger.warning("job %s task %s: failed: %s", task.job_id, task.id, reason)
        await self._recorder.failed(task.id, reason, width, height)


def _read_image(path: Path, max_pixels: int) -> tuple[int, int, bytes | Path]:
    """The image's size from its header, and its bytes when small (else the path, to
    stream from disk)."""
    with open(path, "rb") as fh:
        small = os.fstat(fh.fileno()).st_size <= INLINE_IMAGE_BYTES
        data = fh.read() if small else None
    width, height = probe_image(io.BytesIO(data) if data is not None else path, max_pixels)
    return width, height, data if data is not None else path


def _keep_answer(body: bytes | Path, spill: Path, width: int, height: int, paths: JobPaths,
                 task: Task) -> tuple[Answer, str, list[Path]]:
    """Classify the answer and move it into place (the recorder makes it durable before the
    task is marked done). Returns the answer, the result's file name and the file written."""
    try:
        answer = read_answer(body, width, height)
        if isinstance(body, bytes):
            spill.write_bytes(body)
        name = result_name(task.seq, answer.extension)
        final = paths.result(answer.kind, name)
        os.replace(spill, final)  # masks/ and results/ were made with the job
        return answer, name, [final]
    finally:
        _remove_if_present(spill)


def _remove_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
