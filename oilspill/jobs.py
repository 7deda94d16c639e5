"""Jobs and tasks: the records the store keeps, their statuses, and what they answer."""

from __future__ import annotations

import random
from dataclasses import dataclass
from enum import StrEnum
from typing import Any


class TaskStatus(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class JobStatus(StrEnum):
    """A job's status, derived from its tasks' counts.

    queued: no task has started; running: some task is not finished; done: every task is
    finished and at least one is done; failed: every task failed.
    """

    QUEUED = "queued"
    RUNNING = "running"
    DONE = "done"
    FAILED = "failed"


class UnitKind(StrEnum):
    """What one unit of a scene's work is."""

    TILE = "tile"  # a window of the scene, sent to the ML service
    OVERVIEW = "overview"  # the whole scene brought down to one tile, for context
    STITCH = "stitch"  # the tile masks made one mask, once every other unit is done


class ResultKind(StrEnum):
    """What the ML service answered for a done task."""

    MASK = "mask"  # a one-channel 0/255 mask of the input's size: statistics are computed
    PICTURE = "picture"  # any other image (the original YOLO service's annotated JPEG)


@dataclass(frozen=True)
class Task:
    """One image of a job.

    filename: the image's path inside the uploaded zip, as the user named it.
    stored_name: the file's safe name under the job's `images/` folder.
    attempts: how many times a worker has claimed it (0 while never run).
    result_name: the file under the job's `masks/` or `results/` folder, once done.
    oil_pixels / oil_fraction / slick_count / largest_slick_px: None unless result_kind is
    MASK; a mask's overlay (the input with the oil tinted) is drawn on first use. For a scene
    they count its valid area only.
    tiles_total / tiles_done: ML units (tiles and the overview; 1 for a plain image).
    scene: for a scene, its georeference and the scale its tiles were sent on.
    """

    id: str
    job_id: str
    seq: int
    filename: str
    stored_name: str
    content_type: str
    status: TaskStatus
    attempts: int
    created_at: float
    started_at: float | None
    finished_at: float | None
    width: int | None
    height: int | None
    result_kind: ResultKind | None
    result_name: str | None
    oil_pixels: int | None
    oil_fraction: float | None
    error: str | None
    not_before: float | None = None
    slick_count: int | None = None
    largest_slick_px: int | None = None
    tiled: bool = False  # a scene cut into tiles: its units of work are TileUnits
    tiles_total: int = 1
    tiles_done: int = 0
    scene: dict[str, Any] | None = None

    @property
    def key(self) -> str:
        """This unit of work's key among the claimed ones."""
        return self.id

    @property
    def has_overlay(self) -> bool:
        """Done with a mask: it has an overlay (drawn on first use)."""
        return self.result_kind is ResultKind.MASK and self.result_name is not None

    def retryable(self, policy: RetryPolicy) -> bool:
        """True while the task has attempts left under the policy."""
        return self.attempts < policy.max_attempts


@dataclass(frozen=True)
class RetryPolicy:
    """How tasks are retried after the ML service's own trouble (429, 5xx, timeouts).

    max_attempts: calls per task at most, the first included.
    base_delay_s / max_delay_s: exponential back-off with full jitter: before attempt n+1
    the task waits a random time in [0, min(max_delay_s, base_delay_s * 2**(n-1))], and at
    least as long as the service's Retry-After asked.
    """

    max_attempts: int = 5
    base_delay_s: float = 0.5
    max_delay_s: float = 60.0

    def delay_s(self, attempts: int, retry_after_s: float | None, rng: random.Random) -> float:
        ceiling = min(self.max_delay_s, self.base_delay_s * 2 ** max(0, attempts - 1))
        delay = rng.uniform(0, ceiling)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_delay_s))
        return delay


@dataclass(frozen=True)
class Progress:
    """How far a job's tasks have come."""

    total: int
    queued: int
    running: int
    done: int
    failed: int

    @property
    def finished(self) -> bool:
        return self.done + self.failed == self.total

    @property
    def status(self) -> JobStatus:
        if self.finished:
            return JobStatus.DONE if self.done else JobStatus.FAILED
        if self.queued == self.total:
            return JobStatus.QUEUED
        return JobStatus.RUNNING


@dataclass(frozen=True)
class Job:
    """An upload (a zip of images, or one image or scene) and its tasks.

    upload_name: the file name as the client sent it.
    finished_at: set in the same transaction that finishes its last task; None before.
    archive_name: the result zip's file name once built (served by /api/download/).
    skipped: the first entries of the zip that were not images, as (filename, reason)
        pairs (at most store.SKIPPED_IN_JOB); skipped_total: how many there were in all.
    tiles_total / tiles_done: ML units of all its tasks (see Task).
    user_hash: the job's handle for the original front end's routes (paths.new_user_hash).
    """

    id: str
    upload_name: str
    created_at: float
    finished_at: float | None
    archive_name: str | None
    skipped: tuple[tuple[str, str], ...]
    progress: Progress
    tiles_total: int = 0
    tiles_done: int = 0
    user_hash: str | None = None
    skipped_total: int = 0

    @property
    def finished(self) -> bool:
        return self.finished_at is not None


@dataclass(frozen=True)
class NewTile:
    """A unit of a scene's work, created with its task: the window sent (col, row, width,
    height) and the core it owns in the stitched mask, in scene pixels."""

    idx: int
    kind: UnitKind
    window: tuple[int, int, int, int]
    core: tuple[int, int, int, int]


@dataclass(frozen=True)
class TileUnit:
    """A claimed unit of a scene's work, with its task."""

    task: Task
    idx: int
    kind: UnitKind
    window: tuple[int, int, int, int]
    core: tuple[int, int, int, int]
    attempts: int

    @property
    def key(self) -> str:
        return f"{self.task.id}#{self.idx}"

    @property
    def job_id(self) -> str:
        return self.task.job_id

    def retryable(self, policy: RetryPolicy) -> bool:
        return self.attempts < policy.max_attempts


@dataclass(frozen=True)
class NewTask:
    """A task to create with its job: see Task for the fields.

    tiles: a scene's units of work (empty for a plain image). error: the image cannot be
    used (it is recorded failed at once, with this reason).
    """

    id: str
    filename: str
    stored_name: str
    content_type: str
    tiles: tuple[NewTile, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class TaskOutcome:
    """What a worker records when a task is done."""

    width: int
    height: int
    result_kind: ResultKind
    result_name: str
    oil_pixels: int | None = None
    oil_fraction: float | None = None
    slick_count: int | None = None
    largest_slick_px: int | None = None
    scene: dict[str, Any] | None = None


@dataclass(frozen=True)
class TaskDone:
    """A running task that finished with a result."""

    task_id: str
    outcome: TaskOutcome


@dataclass(frozen=True)
class TaskFailure:
    """A running task that failed; width and height when its image could be read."""

    task_id: str
    reason: str
    width: int | None = None
    height: int | None = None


@dataclass(frozen=True)
class TileDone:
    """A scene's tile or overview whose mask is kept."""

    task_id: str
    idx: int


@dataclass(frozen=True)
class TileRetry:
    """A scene's unit put back in the queue, due again at `not_before` (epoch seconds)."""

    task_id: str
    idx: int
    reason: str
    not_before: float


@dataclass(frozen=True)
class TaskRetry:
    """A running task put back in the queue, due again at `not_before` (epoch seconds)."""

    task_id: str
    reason: str
    not_before: float
