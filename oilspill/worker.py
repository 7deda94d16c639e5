"""The worker pool: asyncio tasks that claim queued tasks from the store and run them.

Workers take tasks from a small local queue, refilled by one batched claim when it runs
under half full (in the background) or dry; they sleep on a condition until `notify()`
says work arrived or the next retry falls due, never polling SQLite in a loop. A semaphore
bounds the calls in flight to the ML service, the outage gate holds every worker while the
service is unreachable, and task ends go to the recorder, which writes them in group
commits.

Per claim the event loop hands work to a thread once, to read the claimed images (their
header, and their bytes when small); each answer is handed to the recorder, which keeps it
(classifies it, counts its slicks, puts it in place) in its batch's own thread hand-off
while the worker goes on. A scene's units (tiles, its overview, its stitch: see scenes.py)
are claimed, retried and re-queued the same way; their pixel work runs in threads too.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import io
import logging
import os
import random
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .config import SceneSettings
from .geo.errors import BadMask, SceneError
from .jobs import RetryPolicy, Task, TaskDone, TaskFailure, TaskOutcome, TileUnit, UnitKind
from .masks import UnreadableImage, probe_image, read_answer
from .metrics import Metrics
from .ml_client import MLRejected, MLUnavailable, MLUnreachable
from .ml_tier import MLTier
from .oip_client import CountedMask
from .outage import OutageGate
from .paths import JobPaths, result_name
from .recorder import Recorder
from .store import Store

if TYPE_CHECKING:
    from .scenes import SceneContext

Unit = Task | TileUnit

logger = logging.getLogger(__name__)

INLINE_IMAGE_BYTES = 1024 * 1024  # images up to this size are sent from memory


class WorkerPool:
    """`workers` claim loops (default 2 x concurrency) sharing one semaphore of
    `concurrency` ML calls: the ML tier's capacity (every endpoint's limit; for an OIP
    endpoint times the batch, so that calls wait in the tier to be batched)."""

    def __init__(self, *, store: Store, ml: MLTier, jobs_dir: Path, concurrency: int,
                 policy: RetryPolicy, gate: OutageGate, max_image_pixels: int,
                 scene_settings: SceneSettings, metrics: Metrics, workers: int | None = None,
                 rng: random.Random | None = None) -> None:
        self._store = store
        self._ml = ml
        self._jobs_dir = jobs_dir
        self._policy = policy
        self._gate = gate
        self._max_image_pixels = max_image_pixels
        self._scene_settings = scene_settings
        # Each scene's context, made once by the first of its units (by task id).
        self._scenes: dict[str, SceneContext] = {}
        self._scene_locks: dict[str, asyncio.Lock] = {}
        # Scenes that failed or whose job was deleted: their units still claimed or in
        # flight are passed over, never building a new context (task ids).
        self._ended_scenes: set[str] = set()
        self._metrics = metrics
        # Twice as many workers as ML slots: while some read images, keep answers or wait
        # for their group commit, others hold every slot, so the ML service never waits.
        self._workers = workers or 2 * concurrency
        self._rng = rng or random.Random()
        self._calls = asyncio.Semaphore(concurrency)
        self._recorder = Recorder(store, max_handed=self._workers)
        # Claimed tasks waiting for a worker; refilled up to `_workers` by one claim.
        self._ready: asyncio.Queue[Unit] = asyncio.Queue()
        self._claiming = asyncio.Lock()
        self._topping: asyncio.Task[None] | None = None  # a claim ahead of need, running
        # Jobs deleted while a claim was under way (see abandon_job and _claim).
        self._abandoned_while_claiming: set[str] = set()
        # A generation counter under a condition: a worker that found no work waits for the
        # counter to move past what it saw before claiming, so no wake-up is ever lost.
        self._arrivals = asyncio.Condition()
        self._generation = 0
        self._stopping = False
        self._loops: list[asyncio.Task[None]] = []
        self._inflight: dict[str, tuple[Unit, asyncio.Task[None]]] = {}
        # Claimed and not yet ended (by key); and, of those, the ones whose work has started.
        self._claimed: dict[str, Unit] = {}
        self._called: set[str] = set()
        # The images of claimed plain tasks, read in one hand-off per claim (by task id):
        # one per queued unit (at most `_workers`), each at most INLINE_IMAGE_BYTES.
        self._read_ahead: dict[str, ImageRead] = {}

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
        if self._topping is not None:
            await asyncio.gather(self._topping, return_exceptions=True)
        inflight = [child for _, child in self._inflight.values()]
        if inflight:
            logger.info("waiting up to %.1f s for %d calls in flight", grace_s, len(inflight))
            await asyncio.wait(inflight, timeout=grace_s)
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        self._loops.clear()
        self._read_ahead.clear()
        await self._recorder.close()
        for ctx in self._scenes.values():
            ctx.close()
        await self._gate.close()
        # Units claimed ahead whose work never started did not use an attempt.
        released = await self._store.release_units(
            [unit for key, unit in self._claimed.items() if key not in self._called])
        requeued = await self._store.requeue_running()
        logger.info("worker pool stopped; %d unfinished tasks put back to queued",
                    released + requeued)

    def abandon_job(self, job_id: str) -> int:
        """Cancel this job's calls in flight and drop its units claimed ahead (its rows are
        gone: they cost no further ML call); return how many calls were cancelled."""
        if self._claiming.locked():  # a claim under way may bring some of its units
            self._abandoned_while_claiming.add(job_id)
        units = [unit for unit, _ in self._inflight.values()] + list(self._claimed.values())
        waiting = [self._ready.get_nowait() for _ in range(self._ready.qsize())]
        for unit in waiting:
            if unit.job_id == job_id:
                self._claimed.pop(unit.key, None)
                self._read_ahead.pop(unit.key, None)
            else:
                self._ready.put_nowait(unit)
        busy = {u.job_id for u in [*self._claimed.values(),
                                   *(u for u, _ in self._inflight.values())]}
        if job_id not in busy:  # nothing left to pass over: forget its ended scenes
            self._ended_scenes -= {u.task.id for u in units if isinstance(u, TileUnit)}
        for unit in units:
            if isinstance(unit, TileUnit) and unit.job_id == job_id:
                self._end_scene(unit.task)
        children = [child for unit, child in self._inflight.values() if unit.job_id == job_id]
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

    async def _next_unit(self) -> Unit | None:
        """The next claimed unit: from the local queue, or from one batched claim; None once
        the pool is stopping. Taking one that leaves the queue under half full claims more
        in the background, so that workers seldom wait for a claim."""
        while True:
            if self._stopping:
                return None
            if not self._ready.empty():
                unit = self._ready.get_nowait()
                if self._ready.qsize() < self._workers // 2:
                    self._top_up()
                return unit
            await self._gate.wait_open()
            async with self._claiming:
                if not self._ready.empty():
                    continue
                seen = self._generation
                claimed = await self._claim()
            if not claimed:
                await self._wait_for_work(seen)

    async def _claim(self) -> int:
        """One batched claim that fills the local queue up to `_workers` units, the plain
        tasks' images read with it (one hand-off to a thread); hold `_claiming`. Returns how
        many units the store gave (0: no work due)."""
        try:
            claimed = await self._store.claim_units(self._workers - self._ready.qsize())
            plain = [u for u in claimed if isinstance(u, Task)]
            reads = (await asyncio.to_thread(_read_images, self._jobs_dir, plain,
                                             self._max_image_pixels)) if plain else {}
        finally:
            abandoned, self._abandoned_while_claiming = self._abandoned_while_claiming, set()
        # A job deleted while the claim ran: its rows are gone, its units cost no ML call.
        kept = [u for u in claimed if u.job_id not in abandoned]
        self._read_ahead.update((u.key, reads[u.key]) for u in kept if u.key in reads)
        for unit in kept:
            self._claimed[unit.key] = unit
            self._ready.put_nowait(unit)
        return len(claimed)

    def _top_up(self) -> None:
        if (self._topping is None and not self._claiming.locked() and not self._stopping
                and self._gate.is_open):
            self._topping = asyncio.create_task(self._top_up_now(), name="oilspill-claim")

    async def _top_up_now(self) -> None:
        try:
            async with self._claiming:
                if self._ready.qsize() < self._workers // 2 and not self._stopping:
                    await self._claim()
        except Exception:
            logger.exception("claiming queued tasks failed; the workers claim them next")
        finally:
            self._topping = None

    async def _run(self) -> None:
        while not self._stopping:
            unit = await self._next_unit()
            if unit is None:
                return
            work = self._process(unit) if isinstance(unit, Task) else self._process_unit(unit)
            child = asyncio.create_task(work)
            self._inflight[unit.key] = (unit, child)
            task = unit if isinstance(unit, Task) else unit.task
            try:
                await child
            except asyncio.CancelledError:
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise  # the pool is stopping
                logger.info("job %s task %s: abandoned (job deleted)", task.job_id, task.id)
            except Exception as exc:
                # A bug must not kill the worker or leave the job unfinished.
                logger.exception("job %s task %s: internal error on %s", task.job_id, task.id,
                                 unit.key)
                if task.tiled:
                    self._end_scene(task)
                with contextlib.suppress(Exception):
                    # The task's error is shown to users: the detail stays in the log.
                    await self._recorder.failed(
                        task.id, f"internal error ({exc.__class__.__name__}); the server log "
                                 f"has the detail under task {task.id}")
            finally:
                self._inflight.pop(unit.key, None)
                self._read_ahead.pop(unit.key, None)
                if not child.cancelled() or not self._stopping:
                    self._claimed.pop(unit.key, None)
                    self._called.discard(unit.key)
                if task.tiled and task.id in self._ended_scenes:
                    await self._drop_ended_scene(task)

    async def _process(self, task: Task) -> None:
        paths = JobPaths(self._jobs_dir, task.job_id)
        image = paths.image(task.stored_name)
        logger.debug("job %s task %s: started %s (attempt %d)", task.job_id, task.id,
                     task.filename, task.attempts)
        read = self._read_ahead.pop(task.id, None)
        if read is None:
            read = await asyncio.to_thread(_read_or_why, image, self._max_image_pixels)
        if isinstance(read, UnreadableImage):
            await self._fail(task, str(read))
            return
        width, height, body = read
        spill = paths.answer_partial(task.id)
        try:
            await self._gate.wait_open()
            async with self._calls:
                self._called.add(task.id)
                answer_body = await self._ml.segment(body, task.filename, task.content_type,
                                                     spill)
            self._gate.record_success()
        except MLUnavailable as exc:
            if isinstance(exc, MLUnreachable):
                self._gate.record_unreachable()
            await self._retry_or_fail(task, exc, width, height)
            return
        except MLRejected as exc:
            await self._fail(task, str(exc), width, height)
            return
        # Kept in the recorder's thread hand-off with the other ends of its batch; this
        # worker goes on meanwhile.
        await self._recorder.hand_over(task.id, functools.partial(
            _keep_answer, answer_body, spill, width, height, paths, task),
            functools.partial(_log_end, task))

    async def _retry_or_fail(self, unit: Unit, exc: MLUnavailable, width: int | None = None,
                             height: int | None = None) -> None:
        task = unit if isinstance(unit, Task) else unit.task
        if not unit.retryable(self._policy):
            await self._fail(task, f"{exc} (gave up after {unit.attempts} attempts)",
                             width, height)
            return
        delay_s = self._policy.delay_s(unit.attempts, exc.retry_after_s, self._rng)
        logger.warning("job %s task %s: %s attempt %d failed, retrying in %.2f s: %s",
                       task.job_id, task.id, unit.key, unit.attempts, delay_s, exc)
        self._metrics.retries.inc()
        if isinstance(unit, Task):
            await self._recorder.retry(task.id, str(exc), time.time() + delay_s)
        else:
            await self._recorder.tile_retry(task.id, unit.idx, str(exc), time.time() + delay_s)

    async def _fail(self, task: Task, reason: str, width: int | None = None,
                    height: int | None = None) -> None:
        logger.warning("job %s task %s: failed: %s", task.job_id, task.id, reason)
        await self._recorder.failed(task.id, reason, width, height)
        if task.tiled:
            self._end_scene(task)

    # --- scenes -----------------------------------------------------------------------------

    async def _scene(self, task: Task) -> SceneContext:
        """The scene's context, made by the first unit that needs it (others wait)."""
        if (ctx := self._scenes.get(task.id)) is not None:
            return ctx
        async with self._scene_locks.setdefault(task.id, asyncio.Lock()):
            if (ctx := self._scenes.get(task.id)) is None:
                ctx = await asyncio.to_thread(_open_scene, JobPaths(self._jobs_dir, task.job_id),
                                              task, self._scene_settings)
                self._scenes[task.id] = ctx
                logger.info("job %s task %s: scene %dx%d, %d tiles, scale %s", task.job_id,
                            task.id, ctx.info.width, ctx.info.height, task.tiles_total,
                            ctx.stretch.as_dict())
            return ctx

    def _forget_scene(self, task: Task) -> None:
        if (ctx := self._scenes.pop(task.id, None)) is not None:
            ctx.close()
        self._scene_locks.pop(task.id, None)

    def _end_scene(self, task: Task) -> None:
        """The scene failed or its job was deleted: its other units are passed over."""
        self._ended_scenes.add(task.id)
        self._forget_scene(task)

    async def _drop_ended_scene(self, task: Task) -> None:
        """Once no unit of an ended scene is claimed or in flight, its working files (a
        draft the size of the scene) go."""
        if any(isinstance(u, TileUnit) and u.task.id == task.id
               for u in [*self._claimed.values(), *(u for u, _ in self._inflight.values())]):
            return
        self._ended_scenes.discard(task.id)
        await asyncio.to_thread(_drop_work, JobPaths(self._jobs_dir, task.job_id), task.seq)

    async def _process_unit(self, unit: TileUnit) -> None:
        task = unit.task
        if task.id in self._ended_scenes:
            return  # its row went with the scene's failure or its job
        paths = JobPaths(self._jobs_dir, task.job_id)
        try:
            ctx = await self._scene(task)
            if unit.kind is UnitKind.STITCH:
                await self._stitch(unit, ctx, paths)
                return
            from .scenes import keep_unit_mask, read_unit  # loaded by _scene, in a thread
            body = await asyncio.to_thread(read_unit, ctx, unit)
        except (SceneError, BadMask, UnreadableImage) as exc:
            await self._fail(task, f"{unit.kind.value} {unit.idx}: {exc}", task.width,
                             task.height)
            return
        answer: bytes | Path | None = None
        try:
            if body is not None:
                spill = paths.answer_partial(f"{task.id}-{unit.idx}")
                await self._gate.wait_open()
                async with self._calls:
                    self._called.add(unit.key)
                    answer = await self._ml.segment(
                        body, f"{task.filename}.{unit.kind.value}{unit.idx}.png", "image/png",
                        spill)
                self._gate.record_success()
            else:
                self._called.add(unit.key)
            sent = body if unit.kind is UnitKind.OVERVIEW else None
            kept = await asyncio.to_thread(keep_unit_mask, ctx, answer, sent, paths, unit)
            if task.id in self._ended_scenes:
                return  # the scene failed meanwhile
        except MLUnavailable as exc:
            if isinstance(exc, MLUnreachable):
                self._gate.record_unreachable()
            await self._retry_or_fail(unit, exc)
            return
        except (MLRejected, UnreadableImage, BadMask) as exc:
            await self._fail(task, f"{unit.kind.value} {unit.idx} at {unit.window}: {exc}")
            return
        await self._recorder.tile_done(task.id, unit.idx, kept)
        logger.debug("job %s task %s: %s %d done%s", task.job_id, task.id, unit.kind.value,
                     unit.idx, "" if body is not None else " (no valid pixel, not sent)")

    async def _stitch(self, unit: TileUnit, ctx: SceneContext, paths: JobPaths) -> None:
        task = unit.task
        self._called.add(unit.key)
        units = await self._store.units_of(task.id)
        from .scenes import finish_scene  # loaded by _scene, in a thread
        outcome, files = await asyncio.to_thread(finish_scene, ctx, paths, task, units,
                                                 self._scene_settings)
        await self._recorder.done(task.id, outcome, files)
        self._forget_scene(task)
        await asyncio.to_thread(_drop_work, paths, task.seq)
        scene = outcome.scene or {}
        logger.info("job %s task %s: done %s, scene of %d tiles, oil fraction %.4f, %d slicks "
                    "(%d outlined)", task.job_id, task.id, task.filename, scene.get("tiles", 0),
                    outcome.oil_fraction or 0.0, outcome.slick_count or 0,
                    scene.get("slick_polygons", 0))


ImageRead = tuple[int, int, bytes | Path] | UnreadableImage


def _read_or_why(path: Path, max_pixels: int) -> ImageRead:
    try:
        return _read_image(path, max_pixels)
    except UnreadableImage as exc:
        return exc


def _read_images(jobs_dir: Path, tasks: list[Task], max_pixels: int) -> dict[str, ImageRead]:
    """Each task's image read (or why it cannot be), in one hand-off for a whole claim; one
    that the file system refuses (its job deleted meanwhile) is left to its worker."""
    reads = {}
    for task in tasks:
        with contextlib.suppress(OSError):
            reads[task.id] = _read_or_why(
                JobPaths(jobs_dir, task.job_id).image(task.stored_name), max_pixels)
    return reads


def _read_image(path: Path, max_pixels: int) -> tuple[int, int, bytes | Path]:
    """The image's size from its header, and its bytes when small (else the path, to
    stream from disk)."""
    with open(path, "rb") as fh:
        small = os.fstat(fh.fileno()).st_size <= INLINE_IMAGE_BYTES
        data = fh.read() if small else None
    width, height = probe_image(io.BytesIO(data) if data is not None else path, max_pixels)
    return width, height, data if data is not None else path


def _log_end(task: Task, end: TaskDone | TaskFailure) -> None:
    if isinstance(end, TaskFailure):
        logger.warning("job %s task %s: failed: %s", task.job_id, task.id, end.reason)
        return
    fraction = end.outcome.oil_fraction
    kind = end.outcome.result_kind
    logger.info("job %s task %s: done %s, %s, oil fraction %s", task.job_id, task.id,
                task.filename, kind.value if kind else "?",
                "n/a" if fraction is None else f"{fraction:.4f}")


def _keep_answer(body: bytes | Path, spill: Path, width: int, height: int, paths: JobPaths,
                 task: Task) -> tuple[TaskOutcome, list[Path]] | TaskFailure:
    """Classify the answer and put it in place (the recorder makes it durable before the
    task is marked done). Returns the task's outcome and the file written, or its failure
    when the answer is not a usable image.

    An answer in memory is written under its final name at once: until the task's row says
    done, a crash leaves it running, and its next run writes the file again."""
    try:
        # A mask the OIP client made comes with its figures, counted from its array.
        try:
            answer = (body.answer if isinstance(body, CountedMask)
                      and body.size == (width, height) else read_answer(body, width, height))
        except UnreadableImage as exc:
            return TaskFailure(task.id, str(exc), width, height)
        name = result_name(task.seq, answer.extension)
        final = paths.result(answer.kind, name)  # masks/ and results/ were made with the job
        if isinstance(body, bytes):
            final.write_bytes(body)
        else:
            os.replace(spill, final)
    finally:
        if not isinstance(body, bytes):
            _remove_if_present(spill)
    fraction = answer.oil_pixels / (width * height) if answer.oil_pixels is not None else None
    return TaskOutcome(width=width, height=height, result_kind=answer.kind, result_name=name,
                       oil_pixels=answer.oil_pixels, oil_fraction=fraction,
                       slick_count=answer.slick_count,
                       largest_slick_px=answer.largest_slick_px), [final]


def _remove_if_present(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


# The scene code (GDAL, shapely, pyproj, scipy: about 60 MiB and half a second) is imported by
# the first scene's first unit, in a worker thread: a server that only ever sees pictures
# never loads it, and the event loop never waits for it.

def _open_scene(paths: JobPaths, task: Task, settings: SceneSettings) -> SceneContext:
    from .scenes import open_scene
    return open_scene(paths, task, settings)


def _drop_work(paths: JobPaths, seq: int) -> None:
    from .scenes import drop_work
    drop_work(paths, seq)
