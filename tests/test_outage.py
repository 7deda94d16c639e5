"""The outage gate on its own: a scripted async probe, short waits, a seeded random source."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections.abc import Iterable

import pytest

from oilspill.outage import OutageGate

FIRST_S = 0.01
MAX_S = 0.05
SLACK_S = 0.1  # scheduling latency allowed on top of a wait, for a loaded test machine
PROBER_NAME = "oilspill-ml-probe"


class ScriptedProbe:
    """Answers from a script (True: healthy), then `default` once the script is used up.

    Records when it was called (monotonic) and how many calls ran at the same time.
    """

    def __init__(self, answers: Iterable[bool] = (), default: bool = False) -> None:
        self.answers = list(answers)
        self.default = default
        self.calls: list[float] = []
        self.called = asyncio.Event()
        self._running = 0
        self.max_running = 0

    async def __call__(self) -> bool:
        self.calls.append(time.monotonic())
        self.called.set()
        self._running += 1
        self.max_running = max(self.max_running, self._running)
        try:
            await asyncio.sleep(0)  # a real probe awaits its HTTP call
            return self.answers.pop(0) if self.answers else self.default
        finally:
            self._running -= 1


def gate_with(probe: ScriptedProbe, trip_after: int = 3) -> OutageGate:
    return OutageGate(probe, trip_after=trip_after, first_probe_s=FIRST_S, max_probe_s=MAX_S,
                      rng=random.Random(1234))


def probers() -> list[asyncio.Task[object]]:
    """The gate's prober tasks that have not finished."""
    return [t for t in asyncio.all_tasks() if t.get_name() == PROBER_NAME and not t.done()]


async def is_blocked(gate: OutageGate, timeout_s: float = 0.05) -> bool:
    """True when wait_open() did not return within the timeout."""
    try:
        await asyncio.wait_for(gate.wait_open(), timeout_s)
    except TimeoutError:
        return True
    return False


@pytest.fixture
async def gates():
    """Gates to close at the end, so no prober outlives its test."""
    made: list[OutageGate] = []
    yield made
    for gate in made:
        await asyncio.wait_for(gate.close(), 2)


async def test_stays_open_below_the_threshold_and_a_success_resets_the_count(gates):
    probe = ScriptedProbe()
    gate = gate_with(probe, trip_after=3)
    gates.append(gate)
    for _ in range(2):
        gate.record_unreachable()
    assert gate.is_open and gate.closed_since is None
    gate.record_success()
    for _ in range(2):
        gate.record_unreachable()
    assert gate.is_open  # 4 failures in all, never 3 in a row
    assert not await is_blocked(gate)
    assert probers() == [] and probe.calls == []


async def test_closes_at_the_threshold_and_blocks_every_waiter_until_healthy(gates):
    probe = ScriptedProbe(default=False)
    gate = gate_with(probe, trip_after=3)
    gates.append(gate)
    gate.record_unreachable()
    gate.record_unreachable()
    assert gate.is_open
    before = time.time()
    gate.record_unreachable()
    after = time.time()
    assert not gate.is_open
    assert gate.closed_since is not None and before <= gate.closed_since <= after

    waiters = [asyncio.create_task(gate.wait_open()) for _ in range(5)]
    await asyncio.wait_for(probe.called.wait(), 1)  # the probe answered unhealthy at least once
    done, _ = await asyncio.wait(waiters, timeout=0.05)
    assert done == set()
    assert not gate.is_open and gate.closed_since is not None

    probe.default = True
    await asyncio.wait_for(asyncio.gather(*waiters), 1)
    assert gate.is_open and gate.closed_since is None
    assert not await is_blocked(gate)
    assert probers() == []


async def test_probes_with_growing_capped_waits(gates):
    unhealthy = 8
    probe = ScriptedProbe([False] * unhealthy + [True])
    gate = gate_with(probe, trip_after=1)
    gates.append(gate)
    tripped = time.monotonic()
    gate.record_unreachable()
    await asyncio.wait_for(gate.wait_open(), 2)

    assert len(probe.calls) == unhealthy + 1  # stopped at the first healthy answer
    gaps = [b - a for a, b in zip([tripped, *probe.calls], probe.calls, strict=False)]
    # Each wait is jittered within [w/2, w], w doubling from FIRST_S up to MAX_S.
    nominal = [min(MAX_S, FIRST_S * 2 ** i) for i in range(len(gaps))]
    for i, (gap, wait_s) in enumerate(zip(gaps, nominal, strict=True)):
        assert gap >= wait_s / 2 - 0.002, f"probe {i} came after {gap:.4f} s, before {wait_s / 2}"
        assert gap <= MAX_S + SLACK_S, f"probe {i} came after {gap:.4f} s, past the cap"
    # Overall the waits grow: the late ones are longer than the first could ever be.
    assert min(gaps[-3:]) > FIRST_S


async def test_only_one_prober_however_many_failures_while_closed(gates):
    probe = ScriptedProbe([False, False, True])
    gate = gate_with(probe, trip_after=2)
    gates.append(gate)
    gate.record_unreachable()
    gate.record_unreachable()
    for _ in range(20):
        gate.record_unreachable()
        assert len(probers()) == 1
    await asyncio.wait_for(gate.wait_open(), 2)
    assert len(probe.calls) == 3  # a second prober would have probed again
    assert probe.max_running == 1
    assert probers() == []


async def test_the_count_starts_afresh_after_the_gate_opens(gates):
    probe = ScriptedProbe([True])
    gate = gate_with(probe, trip_after=3)
    gates.append(gate)
    for _ in range(3 + 5):  # five more failures recorded while closed
        gate.record_unreachable()
    await asyncio.wait_for(gate.wait_open(), 2)
    gate.record_unreachable()
    gate.record_unreachable()
    assert gate.is_open  # those failures while closed did not carry over
    gate.record_unreachable()
    assert not gate.is_open
    probe.default = True
    await asyncio.wait_for(gate.wait_open(), 2)


async def test_close_stops_a_running_prober():
    probe = ScriptedProbe(default=False)
    gate = gate_with(probe, trip_after=1)
    gate.record_unreachable()
    [prober] = probers()
    await asyncio.wait_for(probe.called.wait(), 1)
    started = time.monotonic()
    # Timed rather than wait_for-bounded: close() swallows a CancelledError, its caller's too.
    await asyncio.wait_for(gate.close(), 2)
    assert time.monotonic() - started < 1
    assert prober.cancelled()
    assert probers() == []
    calls = len(probe.calls)
    assert not gate.is_open  # closing stops the probing, it does not claim the service is back
    await asyncio.wait_for(gate.close(), 1)  # closing twice is harmless
    assert len(probe.calls) == calls


async def test_close_without_an_outage_or_after_one_returns_at_once():
    gate = gate_with(ScriptedProbe())
    await asyncio.wait_for(gate.close(), 1)
    probe = ScriptedProbe([True])
    gate = gate_with(probe, trip_after=1)
    gate.record_unreachable()
    await asyncio.wait_for(gate.wait_open(), 2)
    await asyncio.wait_for(gate.close(), 1)
    assert gate.is_open


class RaisingProbe(ScriptedProbe):
    """Raises on its first call (an error the real probe does not catch), then healthy."""

    async def __call__(self) -> bool:
        answer = await super().__call__()
        if len(self.calls) == 1:
            raise RuntimeError("Session is closed")
        return answer


async def test_a_probe_that_raises_does_not_pause_the_pool_for_good():
    probe = RaisingProbe(default=True)
    gate = gate_with(probe, trip_after=1)
    gate.record_unreachable()
    try:
        await asyncio.wait_for(gate.wait_open(), 0.3)
    finally:
        with contextlib.suppress(RuntimeError):
            await gate.close()
