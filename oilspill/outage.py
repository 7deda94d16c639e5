"""The outage gate: pauses the worker pool while the ML service cannot be reached.

After `trip_after` consecutive connection failures the gate closes: workers stop claiming
(no task burns its attempts against a dead service) and one probe calls the service's
`GET /health` with growing, jittered waits. The first healthy answer opens the gate again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


class OutageGate:
    """Open while the ML service is reachable; `wait_open()` blocks while it is not."""

    def __init__(self, probe: Callable[[], Awaitable[bool]], trip_after: int,
                 first_probe_s: float = 0.25, max_probe_s: float = 15.0,
                 rng: random.Random | None = None) -> None:
        self._probe = probe
        self._trip_after = trip_after
        self._first_probe_s = first_probe_s
        self._max_probe_s = max_probe_s
        self._rng = rng or random.Random()
        self._failures = 0
        self._open = asyncio.Event()
        self._open.set()
        self._prober: asyncio.Task[None] | None = None
        self.closed_since: float | None = None  # epoch seconds, while closed

    @property
    def is_open(self) -> bool:
        return self._open.is_set()

    async def wait_open(self) -> None:
        await self._open.wait()

    def record_success(self) -> None:
        self._failures = 0

    def record_unreachable(self) -> None:
        """Count a connection failure; close the gate at the threshold."""
        self._failures += 1
        if self._failures >= self._trip_after and self.is_open:
            self._open.clear()
            self.closed_since = time.time()
            logger.warning("ML service unreachable %d times in a row: pausing the pool and "
                           "probing its health", self._failures)
            self._prober = asyncio.create_task(self._probe_until_healthy(),
                                               name="oilspill-ml-probe")

    async def _probe_until_healthy(self) -> None:
        wait_s = self._first_probe_s
        probes = 0
        while True:
            await asyncio.sleep(self._rng.uniform(wait_s / 2, wait_s))
            probes += 1
            try:
                healthy = await self._probe()
            except Exception:
                # Whatever went wrong, the service did not say it is healthy: keep probing
                # rather than leave the pool paused for good.
                logger.exception("ML health probe failed")
                healthy = False
            if healthy:
                break
            wait_s = min(self._max_probe_s, wait_s * 2)
        paused_s = time.time() - (self.closed_since or time.time())
        logger.info("ML service healthy again after %.1f s (%d probes): resuming", paused_s,
                    probes)
        self._failures = 0
        self.closed_since = None
        self._open.set()

    async def close(self) -> None:
        if self._prober:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
