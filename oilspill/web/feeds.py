"""One poller per watched job, shared by all its event-stream readers: each event is read
and serialised once, and every reader writes the same bytes at its own pace. A reader that
joins late gets every task event so far, then the latest progress."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from aiohttp import web

from ..store import NotFound, Store
from ..worker import WorkerPool
from .bodies import job_body, task_body

logger = logging.getLogger(__name__)

POLL_S = 0.25
HEARTBEAT_S = 15.0


def _event(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


class Feed:
    """One job's events, polled once for all its readers."""

    def __init__(self, job_id: str) -> None:
        self.job_id = job_id
        self.tasks: list[bytes] = []  # every `task` event so far, in order
        self.progress = b""  # the latest `progress` event
        self.version = 0  # bumped with every change
        self.last: bytes | None = None  # `end` or `gone`, once there is one
        self.changed = asyncio.Condition()
        self.readers = 0
        self.runner: asyncio.Task[None] | None = None

    async def _publish(self, tasks: list[bytes], progress: bytes | None,
                       last: bytes | None = None) -> None:
        async with self.changed:
            self.tasks.extend(tasks)
            if progress is not None:
                self.progress = progress
            self.last = last
            self.version += 1
            self.changed.notify_all()

    async def run(self, store: Store, pool: WorkerPool, draining: asyncio.Event) -> None:
        since = 0.0
        last_body: dict[str, Any] | None = None
        try:
            while not draining.is_set():
                polled_at = time.time()
                tasks = []
                for task in await store.tasks_finished_since(self.job_id, since):
                    tasks.append(_event("task", task_body(task)))
                    since = max(since, task.finished_at or since)
                job = await store.get_job(self.job_id)
                body = job_body(job, pool.ml_reachable)
                changed = body != last_body
                last_body = body
                if job.finished and since >= (job.finished_at or 0) - 1e-3:
                    await self._publish(tasks, _event("progress", body) if changed else None,
                                        _event("end", body))
                    return
                if tasks or changed:
                    await self._publish(tasks, _event("progress", body) if changed else None)
                await asyncio.sleep(max(0.0, POLL_S - (time.time() - polled_at)))
        except NotFound:  # the job was deleted meanwhile
            await self._publish([], None, _event("gone", {"job_id": self.job_id}))
            return
        except Exception:  # a bug must not leave readers waiting for ever
            logger.exception("job %s: the event feed failed", self.job_id)
            await self._publish([], None, b"")
            return
        await self._publish([], None, b"")  # shutting down: streams close without an end

    def _moved_past(self, version: int) -> bool:
        return self.version != version

    async def follow(self, response: web.StreamResponse) -> None:
        """Write this feed's events to one reader until the last one."""
        sent_tasks, sent_version, sent_progress = 0, -1, b""
        while True:
            async with self.changed:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self.changed.wait_for(
                        functools.partial(self._moved_past, sent_version)), HEARTBEAT_S)
                last = self.last
                if self.version == sent_version:
                    out = b": still working\n\n"
                else:
                    out = b"".join(self.tasks[sent_tasks:])
                    if self.progress != sent_progress:
                        out += self.progress
                    sent_tasks, sent_version = len(self.tasks), self.version
                    sent_progress = self.progress
            await response.write(out)
            if self.version == sent_version and last is not None:
                if last:
                    await response.write(last)
                return


class Feeds:
    """The feeds of the jobs someone is watching: made by the first reader, stopped with
    the last."""

    def __init__(self, store: Store, pool: WorkerPool, draining: asyncio.Event) -> None:
        self._store, self._pool, self._draining = store, pool, draining
        self._feeds: dict[str, Feed] = {}

    @contextlib.asynccontextmanager
    async def watch(self, job_id: str) -> AsyncIterator[Feed]:
        feed = self._feeds.get(job_id)
        if feed is None:
            feed = self._feeds[job_id] = Feed(job_id)
            feed.runner = asyncio.create_task(
                feed.run(self._store, self._pool, self._draining),
                name=f"oilspill-events-{job_id}")
        feed.readers += 1
        try:
            yield feed
        finally:
            feed.readers -= 1
            if feed.readers == 0 and self._feeds.get(job_id) is feed:
                del self._feeds[job_id]
                if feed.runner is not None:
                    feed.runner.cancel()
