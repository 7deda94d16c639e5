"""The outage gate: pauses the worker pool while the ML service cannot be reached.

After `trip_after` consecutive connection failures the gate closes: workers stop claiming
(no task burns its attempts against a dead service) and one probe calls the service's
health with growing, jittered waits. The first healthy answer opens the gate again; so does
`reopen()`, when something else learnt first that the service is back (the ML tier, when
one of its endpoints answers its own probe again).

With several endpoints (ml_tier.py) the gate sees only what the tier lets through: a call
is re-sent to another endpoint while one is in rotation, so the gate closes only when every
endpoint is down. `probe_until_healthy` is the growing wait both use.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable

logger = logging.getLogger(__name__)


async def probe_until_healthy(probe: Callable[[], Awaitable[bool]], first_s: float,
                              max_s: float, rng: random.Random, what: str) -> int:
    """Call `probe` after jittered waits doubling from `first_s` up to `max_s` until it
    answers True; returns how many probes it took. A probe that raises counts as unhealthy
    (logged with `what`): a bug in it must not stop the probing for good."""
    wait_s = first_s
    probes = 0
    while True:
        await asyncio.sleep(rng.uniform(wait_s / 2, wait_s))
        probes += 1
        try:
            healthy = await probe()
        except Exception:
            logger.exception("%s: health probe failed", what)
            healthy = False
        if healthy:
            return probes
        wait_s = min(max_s, wait_s * 2)


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
        probes = await probe_until_healthy(self._probe, self._first_probe_s,
                                           self._max_probe_s, self._rng, "ML service")
        if not self.is_open:  # the probe itself may have reopened it (ML tier's hook)
            self._set_open(f"{probes} probes")

    def reopen(self, why: str) -> None:
        """The service is known to be back (`why`, for the log): open now, stop probing."""
        if self.is_open:
            return
        if self._prober is not None and self._prober is not asyncio.current_task():
            self._prober.cancel()
        self._set_open(why)

    def _set_open(self, why: str) -> None:
        paused_s = time.time() - (self.closed_since or time.time())
        logger.info("ML service healthy again after %.1f s (%s): resuming", paused_s, why)
        self._failures = 0
        self.closed_since = None
        self._open.set()

    async def close(self) -> None:
        if self._prober:
            self._prober.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._prober
