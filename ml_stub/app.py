"""The stub's aiohttp application: `POST /segment` and `GET /health`, per oilspill's contract,
and the Open Inference Protocol's `/v2` routes (oip.py)."""

from __future__ import annotations

import asyncio
import functools
import io
import logging
import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import numpy as np
from aiohttp import BodyPartReader, web
from PIL import Image

from .detector import DetectorOptions, NotAnImage, annotate, decode, detect, encode_png

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class StubOptions:
    """How the stub behaves.

    latency_ms: extra wait per call. mode: 'mask' (the contract), 'annotated' (a JPEG, as
    the original YOLO service answers) or 'ready' (a fixed mask of the input's size, no
    computing: for benchmarks). max_image_bytes: larger uploads get 413. confidence: the OIP
    model has a second output, `confidence` (see oip.py).
    Fault injection, each a probability per call, all 0 by default: fail_rate answers 503,
    hang_rate never answers, drop_rate closes the connection without an answer. seed makes
    the faults repeatable.
    """

    latency_ms: float = 0.0
    mode: str = "mask"
    max_image_bytes: int = 256 * 1024 * 1024
    fail_rate: float = 0.0
    hang_rate: float = 0.0
    drop_rate: float = 0.0
    seed: int | None = None
    confidence: bool = False
    detector: DetectorOptions = field(default_factory=DetectorOptions)


OPTIONS = web.AppKey("options", StubOptions)
RNG = web.AppKey("rng", random.Random)


def _error(status: int, code: str, message: str) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status)


async def _read_file_part(request: web.Request, limit: int) -> bytes | web.Response:
    # The raw header, not request.content_type: aiohttp parses that with the email package,
    # which costs more than the rest of a benchmark call.
    if not request.headers.get("Content-Type", "").lower().startswith("multipart/form-data"):
        return _error(415, "unsupported_media_type", "send multipart/form-data with part 'file'")
    reader = await request.multipart()
    while (part := await reader.next()) is not None:
        if isinstance(part, BodyPartReader) and part.name == "file":
            data = bytearray()
            while chunk := await part.read_chunk(256 * 1024):
                data += chunk
                if len(data) > limit:
                    return _error(413, "too_large", f"image larger than {limit} bytes")
            return bytes(data)
        await part.release()
    return _error(400, "missing_file", "no part named 'file'")


def _segment(data: bytes, options: StubOptions) -> tuple[bytes, str]:
    image = decode(data)
    mask = detect(image, options.detector)
    if options.mode == "annotated":
        return annotate(image, mask), "image/jpeg"
    return encode_png(mask), "image/png"


@functools.lru_cache(maxsize=64)
def ready_mask(width: int, height: int) -> bytes:
    """A fixed mask (a diagonal band) of this size, encoded once: for benchmarks, where
    the service should cost only its latency."""
    yy, xx = np.mgrid[0:height, 0:width]
    band = np.abs(xx / max(width, 1) - yy / max(height, 1)) < 0.05
    return encode_png(Image.fromarray((band * 255).astype(np.uint8), mode="L"))


def picture_size(data: bytes) -> tuple[int, int]:
    """An encoded picture's (width, height) from its header (nothing is decoded)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            width, height = image.size
    except (OSError, ValueError) as exc:
        raise NotAnImage(f"cannot read image: {exc}") from None
    return width, height


def _ready(data: bytes) -> tuple[bytes, str]:
    return ready_mask(*picture_size(data)), "image/png"


async def segment(request: web.Request) -> web.Response:
    options = request.app[OPTIONS]
    data = await _read_file_part(request, options.max_image_bytes)
    if isinstance(data, web.Response):
        return data
    if await injected_failure(request):
        return _error(503, "injected_failure", "injected failure (--fail-rate)")
    try:
        if options.mode == "ready":
            body, content_type = _ready(data)
        else:
            body, content_type = await asyncio.to_thread(_segment, data, options)
    except NotAnImage as exc:
        return _error(422, "not_an_image", str(exc))
    return web.Response(body=body, headers={"Content-Type": content_type})


async def injected_failure(request: web.Request) -> bool:
    """Wait the call's latency, then play the fault drawn for it: True when it is to answer
    503 (--fail-rate); a hang waits until the client gives up, a drop closes the connection;
    False when the call is to be answered as usual."""
    options = request.app[OPTIONS]
    if options.latency_ms:
        await asyncio.sleep(options.latency_ms / 1000)
    fault = _draw_fault(request.app[RNG], options)
    if fault == "hang":
        await asyncio.Event().wait()  # until the client gives up and the handler is cancelled
    if fault == "drop":
        if request.transport is not None:
            request.transport.close()
        raise asyncio.CancelledError  # nothing is answered on a closed connection
    return fault == "fail"


def _draw_fault(rng: random.Random, options: StubOptions) -> str | None:
    draw = rng.random()
    for name, rate in (("fail", options.fail_rate), ("hang", options.hang_rate),
                       ("drop", options.drop_rate)):
        if draw < rate:
            return name
        draw -= rate
    return None


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok", "mode": request.app[OPTIONS].mode})


def create_app(options: StubOptions | None = None) -> web.Application:
    app = web.Application()
    app[OPTIONS] = options = options or StubOptions()
    app[RNG] = random.Random(options.seed)
    app.router.add_post("/segment", segment)
    app.router.add_get("/health", health)
    # The Open Inference Protocol's routes; imported here, as oip's handlers use this
    # module's keys and fault injection.
    from .oip import add_routes
    add_routes(app)
    return app


@asynccontextmanager
async def running(host: str, port: int, options: StubOptions | None = None
                  ) -> AsyncIterator[str]:
    """Serve the stub in the current event loop; yields its base URL."""
    runner = web.AppRunner(create_app(options), access_log=None, handler_cancellation=True)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound_port = runner.addresses[0][1]
        url = f"http://{host}:{bound_port}"
        logger.info("ML stub listening on %s", url)
        yield url
    finally:
        await runner.cleanup()
