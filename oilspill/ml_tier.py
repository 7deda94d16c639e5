"""The ML tier: every endpoint ML_SERVICE_URL lists, behind the one interface the worker
calls (`segment`, `healthy`), with each endpoint's figures.

Endpoints. Each is one `/segment` service (ml_client.MLClient, as it is) or one model on an
Open Inference Protocol v2 server (oip_client.OipClient), told apart by the URL
(`http://host:port/v2/models/<name>[/versions/<v>]` is OIP), each with its own limit of
requests in flight: OILSPILL_CONCURRENCY, or the URL's `#limit=N`.

Dispatch. Calls wait in one queue, oldest first. Whenever an endpoint has a free slot, the
head call goes to the endpoint in rotation with the fewest requests in flight relative to
its limit (a tie: the one used longest ago). An OIP endpoint whose model takes a batch
(first dimension -1) gets with it up to OILSPILL_ML_BATCH - 1 more calls of the same size
(from their PNG headers) that are already waiting: nothing waits for a batch to fill.
Results, errors and retries stay per call.

Failures. A request that fails for the endpoint's sake (connection refused or dropped,
timeout, 429, 5xx) sends its calls at once to another endpoint in rotation that they have
not tried, without costing the task an attempt; only when none is left does the call fail
to the worker (which retries it with back-off, as it always did). An endpoint is taken out
of rotation, while another one is in it, at once when it cannot be reached and after
OILSPILL_ML_PAUSE_AFTER failures in a row otherwise; its requests still in flight are sent
elsewhere at once, and it is probed (`/health`, or `/v2/health/ready` and its model read
afresh) with growing jittered waits until it is put back. The last endpoint in rotation is
never taken out: when every endpoint is down, calls fail as unreachable and the worker's
outage gate pauses the pool, probing `healthy()` (every endpoint) until one answers. A
rejection (another 4xx; an image that does not decode; an answer that is not a mask) is the
image's, not the endpoint's; a batch refused so is sent again image by image.

The capacity the worker sizes its slots by is what the endpoints can hold at once: each
limit, times OILSPILL_ML_BATCH for an OIP endpoint (so that calls wait here to be batched).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from .config import Settings
from .metrics import Metrics
from .ml_client import MLClient, MLError, MLRejected, MLUnavailable, MLUnreachable
from .oip_client import Image8, OipClient, png_size
from .outage import probe_until_healthy

logger = logging.getLogger(__name__)


class Protocol(StrEnum):
    """How an endpoint is called."""

    SEGMENT = "segment"  # POST {url}/segment, multipart
    OIP = "oip"  # Open Inference Protocol v2, POST {model url}/infer


def is_oip_url(url: str) -> bool:
    """True for an OIP model URL (`.../v2/models/<name>`), False for the /segment contract."""
    return "/v2/models/" in urlsplit(url).path + "/"


def public_url(url: str) -> str:
    """The URL without user name or password: for logs, metric labels and /healthz."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return urlunsplit(parts._replace(netloc=f"{host}:{parts.port}" if parts.port else host))


@dataclass(eq=False)
class _Call:
    """One image waiting for, or in, a request. tried: the endpoints it failed on (it goes
    to none of them again); error: the last failure; solo: sent alone (after its batch was
    refused, to learn whose fault it was)."""

    image: Image8
    spill_to: Path
    size: tuple[int, int] | None
    future: asyncio.Future[bytes | Path]
    tried: set[Endpoint] = field(default_factory=set)
    error: MLError | None = None
    solo: bool = False


@dataclass(eq=False)
class _Request:
    """One HTTP request to an endpoint, for one or more calls. rerouted: cancelled because
    its endpoint left the rotation (its calls go elsewhere); finished: its calls have their
    answers."""

    endpoint: Endpoint
    calls: list[_Call]
    task: asyncio.Task[None] | None = None
    rerouted: bool = False
    finished: bool = False


@dataclass(frozen=True)
class _Meters:
    """An endpoint's own series of the tier's metrics."""

    requests: Any
    seconds: Any
    calls: Any


class Endpoint:
    """One endpoint: its client, its limit, its place in the rotation and its figures.

    in_flight: requests now; calls: images answered; requests: HTTP requests made;
    errors: requests that failed (refusals included); latency_s: the total time of the
    answered requests; reachable: False from a failed request until an answer or a good
    probe; in_rotation: calls are sent to it (see the module's docstring).
    """

    def __init__(self, url: str, limit: int, segment: MLClient | None = None,
                 oip: OipClient | None = None) -> None:
        if (segment is None) == (oip is None):
            raise ValueError("an endpoint has one client: /segment or OIP")
        self.url = public_url(url)
        self.limit = limit
        self.protocol = Protocol.OIP if oip is not None else Protocol.SEGMENT
        self._segment = segment
        self._oip = oip
        self.in_rotation = True
        self.reachable = True
        self.in_flight = 0
        self.calls = 0
        self.requests = 0
        self.errors = 0
        self.latency_s = 0.0
        self.answered = 0
        self.failures_in_a_row = 0
        self.last_used = 0
        self.out_since: float | None = None
        self.prober: asyncio.Task[None] | None = None
        self.requests_in_flight: set[_Request] = set()

    @property
    def batch(self) -> int:
        """Calls one request may carry now."""
        return self._oip.max_batch if self._oip is not None else 1

    async def send(self, calls: Sequence[_Call]) -> list[bytes | Path | MLError]:
        """Each call's answer (or its own error); raises MLError for the request."""
        if self._oip is not None:
            return list(await self._oip.infer([c.image for c in calls]))
        assert self._segment is not None and len(calls) == 1
        (call,) = calls
        image = call.image
        return [await self._segment.segment(image.body, image.filename, image.content_type,
                                            call.spill_to)]

    async def check(self) -> bool:
        """Its health: /segment's `GET /health`; an OIP server ready and its model read."""
        if self._oip is not None:
            return await self._oip.healthy()
        assert self._segment is not None
        return await self._segment.healthy()

    async def introduce(self) -> None:
        """Read an OIP endpoint's model now (at start), so the first calls are batched;
        MLError when it cannot be read."""
        if self._oip is not None:
            await self._oip.load()

    def stats(self) -> dict[str, Any]:
        """What /healthz shows of it."""
        spec = self._oip.spec if self._oip is not None else None
        return {
            "url": self.url, "protocol": self.protocol.value, "reachable": self.reachable,
            "in_rotation": self.in_rotation, "in_flight": self.in_flight, "limit": self.limit,
            "calls": self.calls, "requests": self.requests, "errors": self.errors,
            "mean_latency_ms": (round(self.latency_s / self.answered * 1000, 2)
                                if self.answered else None),
            "model": self._oip.model if self._oip is not None else None,
            "binary": spec.binary if spec is not None else None,
            "batch": self.batch,
        }


class MLTier:
    """The endpoints as one ML service: `segment()` and `healthy()` as MLClient's."""

    def __init__(self, endpoints: Sequence[Endpoint], metrics: Metrics, *, trip_after: int,
                 batch: int, first_probe_s: float = 0.25, max_probe_s: float = 15.0,
                 rng: random.Random | None = None) -> None:
        if not endpoints:
            raise ValueError("the ML tier needs at least one endpoint")
        self._endpoints = list(endpoints)
        self._metrics = metrics
        self._trip_after = trip_after
        self._batch = batch
        self._first_probe_s = first_probe_s
        self._max_probe_s = max_probe_s
        self._rng = rng or random.Random()
        self._waiting: list[_Call] = []
        self._sequence = 0
        self._closing = False
        self._background: set[asyncio.Task[None]] = set()
        self._back_hooks: list[Callable[[str], None]] = []
        # Batching needs each call's size before it is decoded: read from PNG headers, and
        # only when an endpoint may batch.
        self._sizes = batch > 1 and any(e.protocol is Protocol.OIP for e in self._endpoints)
        # Each endpoint's series, looked up once (listed from the start, at 0).
        self._meters = {e: _Meters(metrics.ml_endpoint_requests.labels(e.url),
                                   metrics.ml_endpoint_seconds.labels(e.url),
                                   metrics.ml_endpoint_calls.labels(e.url))
                        for e in self._endpoints}
        for endpoint in self._endpoints:
            metrics.ml_endpoint_limit.labels(endpoint.url).set(endpoint.limit)

    @classmethod
    def from_settings(cls, session: aiohttp.ClientSession, settings: Settings,
                      metrics: Metrics, rng: random.Random | None = None) -> MLTier:
        """The endpoints ML_SERVICE_URL lists, each with its client on `session`."""
        endpoints = []
        for spec in settings.ml_endpoint_list:
            limit = spec.limit or settings.concurrency
            if is_oip_url(spec.url):
                client = OipClient(session, spec.url, settings.ml_timeout_s,
                                   settings.ml_connect_timeout_s,
                                   settings.max_ml_response_bytes, settings.ml_batch,
                                   metrics, label=public_url(spec.url))
                endpoints.append(Endpoint(spec.url, limit, oip=client))
            else:
                segment = MLClient(session, spec.url, timeout_s=settings.ml_timeout_s,
                                   connect_timeout_s=settings.ml_connect_timeout_s,
                                   max_response_bytes=settings.max_ml_response_bytes,
                                   metrics=metrics)
                endpoints.append(Endpoint(spec.url, limit, segment=segment))
        return cls(endpoints, metrics, trip_after=settings.ml_pause_after,
                   batch=settings.ml_batch, rng=rng)

    @staticmethod
    def connections_for(settings: Settings) -> int:
        """Connections the shared session may open: twice the requests in flight, and one
        per endpoint for its probes."""
        endpoints = settings.ml_endpoint_list
        return sum(2 * (e.limit or settings.concurrency) + 1 for e in endpoints)

    @property
    def endpoints(self) -> list[Endpoint]:
        return list(self._endpoints)

    @property
    def base_url(self) -> str:
        """Every endpoint, comma-separated, without credentials."""
        return ",".join(e.url for e in self._endpoints)

    @property
    def capacity(self) -> int:
        """Calls the tier can hold at once: each limit, times the batch for OIP."""
        return sum(e.limit * (self._batch if e.protocol is Protocol.OIP else 1)
                   for e in self._endpoints)

    def on_endpoint_back(self, hook: Callable[[str], None]) -> None:
        """Call `hook(why)` whenever an endpoint is put back in rotation."""
        self._back_hooks.append(hook)

    def start(self) -> None:
        """Read every OIP endpoint's model, in the background (start-up does not wait)."""
        for endpoint in self._endpoints:
            if endpoint.protocol is Protocol.OIP:
                self._spawn(self._introduce(endpoint), f"oilspill-ml-introduce-{endpoint.url}")

    async def _introduce(self, endpoint: Endpoint) -> None:
        try:
            await endpoint.introduce()
        except MLError as exc:
            logger.warning("ML endpoint %s: its model cannot be read at start: %s",
                           endpoint.url, exc)
            endpoint.reachable = False
            self._take_out(endpoint, str(exc))

    def _spawn(self, work: Any, name: str) -> asyncio.Task[None]:
        task: asyncio.Task[None] = asyncio.create_task(work, name=name)
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return task

    async def segment(self, image: bytes | Path, filename: str, content_type: str,
                      spill_to: Path) -> bytes | Path:
        """Send one image to an endpoint and return its mask (as MLClient.segment does:
        bytes, or `spill_to` for a large /segment answer). Raises MLRejected, or
        MLUnavailable (MLUnreachable) once no endpoint is left to try."""
        call = _Call(Image8(image, filename, content_type), spill_to,
                     png_size(image) if self._sizes else None,
                     asyncio.get_running_loop().create_future())
        self._waiting.append(call)
        self._dispatch()
        try:
            return await call.future
        finally:
            if not call.future.done() or call.future.cancelled():
                with contextlib.suppress(ValueError):
                    self._waiting.remove(call)

    async def healthy(self) -> bool:
        """True when at least one endpoint answers its health check; each that does is put
        back in rotation (the outage gate's probe)."""
        answers = await asyncio.gather(*(self._check(e) for e in self._endpoints))
        return any(answers)

    async def _check(self, endpoint: Endpoint) -> bool:
        try:
            healthy = await endpoint.check()
        except Exception:
            logger.exception("ML endpoint %s: health check failed", endpoint.url)
            healthy = False
        if healthy:
            self._bring_back(endpoint, "its health check answered")
        else:
            endpoint.reachable = False
        return healthy

    def stats(self) -> list[dict[str, Any]]:
        """Each endpoint's figures, in ML_SERVICE_URL's order."""
        return [e.stats() for e in self._endpoints]

    def export(self, metrics: Metrics) -> None:
        """Set the endpoint gauges (when /metrics is scraped)."""
        for e in self._endpoints:
            metrics.ml_endpoint_up.labels(e.url).set(1 if e.in_rotation and e.reachable else 0)
            metrics.ml_endpoint_in_flight.labels(e.url).set(e.in_flight)
            metrics.ml_endpoint_limit.labels(e.url).set(e.limit)

    async def close(self) -> None:
        """Stop probing and abandon what is still in flight or waiting."""
        self._closing = True
        tasks = [*self._background]
        for endpoint in self._endpoints:
            if endpoint.prober is not None:
                tasks.append(endpoint.prober)
            tasks.extend(r.task for r in endpoint.requests_in_flight if r.task is not None)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for call in self._waiting:
            call.future.cancel()
        self._waiting.clear()

    # --- dispatch ------------------------------------------------------------------------

    def _eligible(self) -> list[Endpoint]:
        """Where calls may go: the endpoints in rotation (never empty: the last one is never
        taken out)."""
        return [e for e in self._endpoints if e.in_rotation] or self._endpoints

    def _dispatch(self) -> None:
        """Send waiting calls while an endpoint has a free slot."""
        if self._closing:
            return
        self._fail_stranded()
        while self._waiting:
            free = [e for e in self._eligible() if e.in_flight < e.limit]
            free.sort(key=lambda e: (e.in_flight / e.limit, e.last_used))
            for endpoint in free:
                calls = self._take(endpoint)
                if calls:
                    self._start(endpoint, calls)
                    break
            else:
                return

    def _take(self, endpoint: Endpoint) -> list[_Call]:
        """The oldest waiting call that has not failed on `endpoint`, and the calls of its
        size waiting behind it, up to the endpoint's batch; taken out of the queue."""
        head = next((c for c in self._waiting if endpoint not in c.tried), None)
        if head is None:
            return []
        batch = [head]
        limit = endpoint.batch if head.size is not None and not head.solo else 1
        if limit > 1:
            for call in self._waiting:
                if len(batch) >= limit:
                    break
                if (call is not head and call.size == head.size and not call.solo
                        and endpoint not in call.tried):
                    batch.append(call)
        taken = set(map(id, batch))
        self._waiting = [c for c in self._waiting if id(c) not in taken]
        return batch

    def _fail_stranded(self) -> None:
        """Fail the waiting calls that have tried every endpoint they may still go to."""
        eligible = self._eligible()
        for call in [c for c in self._waiting if c.tried]:
            if all(e in call.tried for e in eligible):
                self._waiting.remove(call)
                if not call.future.done():
                    call.future.set_exception(call.error or MLUnavailable("no ML endpoint"))

    def _start(self, endpoint: Endpoint, calls: list[_Call]) -> None:
        self._sequence += 1
        endpoint.last_used = self._sequence
        endpoint.in_flight += 1
        endpoint.requests += 1
        self._meters[endpoint].requests.inc()
        request = _Request(endpoint, calls)
        request.task = asyncio.create_task(self._run(request),
                                           name=f"oilspill-ml-request-{endpoint.url}")
        # Its end is kept by a callback, not the coroutine: a task cancelled before its first
        # step never runs a line of it, and the slot and the calls must not be lost then.
        request.task.add_done_callback(functools.partial(self._ended, request))
        endpoint.requests_in_flight.add(request)
        for call in calls:
            call.future.add_done_callback(functools.partial(self._abandon_if_unwanted, request))

    def _abandon_if_unwanted(self, request: _Request, _: object) -> None:
        """Every caller of the request went away (its job was deleted): cancel it."""
        if (not request.finished and request.task is not None
                and all(c.future.cancelled() for c in request.calls)):
            request.task.cancel()

    async def _run(self, request: _Request) -> None:
        endpoint = request.endpoint
        started = time.monotonic()
        try:
            results = await endpoint.send(request.calls)
        except MLUnavailable as exc:
            self._failed(request, exc)
        except MLRejected as exc:
            self._answered(endpoint, started, "rejected")
            self._rejected(request, exc)
        except Exception as exc:
            # A bug: each caller gets it (the worker logs it and fails the task).
            logger.exception("ML endpoint %s: request failed", endpoint.url)
            self._settle(request, exc)
        else:
            self._answered(endpoint, started, None)
            self._delivered(request, results)

    def _ended(self, request: _Request, task: asyncio.Task[None]) -> None:
        """The request is over, however: its slot is free; if it was cancelled because its
        endpoint left the rotation, its calls go elsewhere."""
        request.finished = True
        endpoint = request.endpoint
        endpoint.in_flight -= 1
        endpoint.requests_in_flight.discard(request)
        if task.cancelled():
            if request.rerouted and not self._closing:
                self._reroute(request, MLUnavailable(
                    f"ML endpoint {endpoint.url} was taken out of rotation"))
            else:  # its callers went away, or the tier is closing
                for call in request.calls:
                    call.future.cancel()
        self._dispatch()

    def _answered(self, endpoint: Endpoint, started: float, error_kind: str | None) -> None:
        elapsed_s = time.monotonic() - started
        endpoint.latency_s += elapsed_s
        endpoint.answered += 1
        endpoint.reachable = True
        endpoint.failures_in_a_row = 0
        self._meters[endpoint].seconds.observe(elapsed_s)
        if error_kind is not None:
            endpoint.errors += 1
            self._metrics.ml_endpoint_errors.labels(endpoint.url, error_kind).inc()

    def _delivered(self, request: _Request, results: list[bytes | Path | MLError]) -> None:
        endpoint = request.endpoint
        done = 0
        pairs = list(zip(request.calls, results, strict=True))
        for call, result in reversed(pairs):  # reversed: put back in their order
            if call.future.done():
                continue
            if isinstance(result, MLRejected):
                call.future.set_exception(result)
            elif isinstance(result, MLError):  # that image alone could not go: alone again
                call.solo = True
                self._waiting.insert(0, call)
            else:
                call.future.set_result(result)
                done += 1
        endpoint.calls += done
        self._meters[endpoint].calls.inc(done)

    def _rejected(self, request: _Request, exc: MLRejected) -> None:
        pending = [c for c in request.calls if not c.future.done()]
        if len(pending) <= 1:
            self._settle(request, exc)
            return
        logger.info("ML endpoint %s refused a batch of %d (%s): each image is sent alone",
                    request.endpoint.url, len(request.calls), exc)
        for call in pending:
            call.solo = True
        self._waiting[:0] = pending

    def _settle(self, request: _Request, exc: BaseException) -> None:
        for call in request.calls:
            if not call.future.done():
                call.future.set_exception(exc)

    def _failed(self, request: _Request, exc: MLUnavailable) -> None:
        """The endpoint's own trouble: count it, maybe take it out, send its calls on."""
        endpoint = request.endpoint
        endpoint.errors += 1
        endpoint.reachable = False
        endpoint.failures_in_a_row += 1
        kind = ("unreachable" if isinstance(exc, MLUnreachable)
                else "unavailable" if type(exc) is MLUnavailable else "timeout")
        self._metrics.ml_endpoint_errors.labels(endpoint.url, kind).inc()
        if isinstance(exc, MLUnreachable) or endpoint.failures_in_a_row >= self._trip_after:
            self._take_out(endpoint, str(exc))
        self._reroute(request, exc)

    def _reroute(self, request: _Request, exc: MLUnavailable) -> None:
        """Each call goes, at the head of the queue, to an endpoint it has not tried; a call
        with none left fails with `exc` (the worker retries it later)."""
        endpoint = request.endpoint
        again = []
        for call in request.calls:
            if call.future.done():
                continue
            call.tried.add(endpoint)
            call.error = exc
            if any(e not in call.tried for e in self._eligible()):
                again.append(call)
            else:
                call.future.set_exception(exc)
        if again:
            self._metrics.ml_rerouted.inc(len(again))
            logger.info("ML endpoint %s failed (%s): %d call(s) sent to another endpoint "
                        "(%s)", endpoint.url, exc, len(again),
                        ", ".join(c.image.filename for c in again[:3])
                        + (", ..." if len(again) > 3 else ""))
            self._waiting[:0] = again

    # --- rotation ------------------------------------------------------------------------

    def _take_out(self, endpoint: Endpoint, reason: str) -> None:
        """Out of rotation, while another endpoint is in it; probed until it answers."""
        others = [e for e in self._endpoints if e.in_rotation and e is not endpoint]
        if not endpoint.in_rotation or not others:
            return
        endpoint.in_rotation = False
        endpoint.out_since = time.monotonic()
        logger.warning("ML endpoint %s out of rotation (%s); its calls go to the %d other(s) "
                       "in rotation; probing it with growing waits", endpoint.url, reason,
                       len(others))
        endpoint.prober = self._spawn(self._probe(endpoint), f"oilspill-ml-probe-{endpoint.url}")
        current = asyncio.current_task()
        for request in list(endpoint.requests_in_flight):
            if request.task is not None and request.task is not current and not request.finished:
                request.rerouted = True
                request.task.cancel()

    async def _probe(self, endpoint: Endpoint) -> None:
        probes = await probe_until_healthy(endpoint.check, self._first_probe_s,
                                           self._max_probe_s, self._rng,
                                           f"ML endpoint {endpoint.url}")
        self._bring_back(endpoint, f"{probes} probes")

    def _bring_back(self, endpoint: Endpoint, why: str) -> None:
        endpoint.reachable = True
        if endpoint.in_rotation:
            return
        endpoint.in_rotation = True
        endpoint.failures_in_a_row = 0
        away_s = time.monotonic() - (endpoint.out_since or time.monotonic())
        endpoint.out_since = None
        prober, endpoint.prober = endpoint.prober, None
        if prober is not None and prober is not asyncio.current_task():
            prober.cancel()
        logger.info("ML endpoint %s back in rotation after %.1f s (%s)", endpoint.url, away_s,
                    why)
        for hook in self._back_hooks:
            hook(f"ML endpoint {endpoint.url} is back")
        self._dispatch()
