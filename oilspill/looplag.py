"""Watches the event loop: how late a short sleep wakes up is how long the loop was stuck."""

from __future__ import annotations

import asyncio
import contextlib
import logging

logger = logging.getLogger(__name__)

WARN_S = 0.25  # a stall this long is logged: something blocked the loop


class LoopLagMonitor:
    """Sleeps `interval_s` again and again; the excess of each wake-up is the loop's lag."""

    def __init__(self, interval_s: float = 0.05) -> None:
        self._interval_s = interval_s
        self._task: asyncio.Task[None] | None = None
        self.max_lag_s = 0.0  # the largest stall since start

    def start(self) -> None:
        self._task = asyncio.create_task(self._watch(), name="oilspill-loop-lag")

    async def _watch(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(self._interval_s)
            lag = loop.time() - before - self._interval_s
            if lag > self.max_lag_s:
                self.max_lag_s = lag
            if lag > WARN_S:
                logger.warning("event loop stalled for %.0f ms", lag * 1000)

    async def stop(self) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
