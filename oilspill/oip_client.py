"""One Open Inference Protocol v2 endpoint over aiohttp (the codec is oip.py).

The model is read before it is used, at start and whenever the endpoint comes back:
`GET /v2/health/ready`, `GET /v2` (is `binary_tensor_data` among the extensions?),
`GET /v2/models/<name>` (inputs, outputs) and, for Triton's `max_batch_size`,
`GET .../config` (others answer 404: no limit but ours). That makes one `ModelSpec`.

`infer` sends one or more images of one size in one request, as the spec asks (a PNG per
image for a BYTES input, else UINT8 or FP32 pixels; binary tensor data when the server lists
the extension, else JSON), and gives each image back its mask as the PNG the worker keeps
(0 sea, 255 oil, one channel, the image's size), so the mask ends up in the same files as
through `/segment` (with its figures already counted: the worker does not decode it
again). Pixels: each image as 8-bit grey, as the stub's `/segment` reads it (RGB
to luminance, palette and 1-bit to grey); images deeper than 8 bits are put on a log scale
between their 1st and 99th percentiles, as a scene's tiles are.

Errors follow ml_client.py: connection trouble, timeouts, 429 and 5xx are MLUnavailable
(the endpoint's; retried elsewhere or later), other 4xx are MLRejected (the image's; for a
batch the tier sends each image again alone to learn whose), an answer that cannot be read
as masks for the images sent is MLRejected too (as a `/segment` answer that is not an
image). 404 means the model is not (or no longer) served there: the endpoint's trouble.

Blocking work (decoding images, encoding the request, decoding the answer, the mask PNGs)
runs in one thread hop before the request and one after it, whatever the batch's size.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from . import oip
from .geo.scale import grey_png
from .masks import Answer, first_pixels, label_slicks, mask_answer, oil_of
from .metrics import Metrics
from .ml_client import (
    MLError,
    MLRejected,
    MLTimeout,
    MLUnavailable,
    MLUnreachable,
    error_kind,
    error_text,
    parse_retry_after,
)
from .names import plain_message

logger = logging.getLogger(__name__)

ERROR_TEXT_BYTES = 2048
CHUNK_BYTES = 256 * 1024
META_TIMEOUT_S = 10.0  # metadata and health answers are small: no need for the infer timeout
CONFIDENCE_KEY = "oilspill-confidence"  # the mask PNG's tEXt chunk holding the confidence
MAX_CONFIDENCE_VALUES = 4096  # more (and not one per pixel) is not kept
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_DEEP_MODES = ("I;16", "I;16B", "I;16L", "I", "F")


@dataclass(frozen=True)
class Image8:
    """One image to send: its bytes (or file), the name and type it came with."""

    body: bytes | Path
    filename: str
    content_type: str


def png_size(body: bytes | Path) -> tuple[int, int] | None:
    """(height, width) from a PNG's header without decoding; None for anything else (then
    the image is sent alone, as its size is not known before it is decoded)."""
    if (isinstance(body, bytes) and len(body) >= 24 and body.startswith(_PNG_SIGNATURE)
            and body[12:16] == b"IHDR"):
        width, height = struct.unpack(">II", body[16:24])
        return height, width
    return None


def _chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))


def mask_png(mask: npt.NDArray[np.uint8], text: str | None = None) -> bytes:
    """A one-channel 8-bit PNG of a 0/255 mask, rows unfiltered, deflated at level 1 (a mask
    is mostly runs: a 1024 x 1024 one is a few KB in a millisecond or two); `text`, when
    given, goes in a tEXt chunk under CONFIDENCE_KEY."""
    height, width = mask.shape
    rows = np.empty((height, width + 1), np.uint8)
    rows[:, 0] = 0
    rows[:, 1:] = mask
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    extra = (_chunk(b"tEXt", CONFIDENCE_KEY.encode() + b"\0" + text.encode("latin-1"))
             if text is not None else b"")
    return (_PNG_SIGNATURE + _chunk(b"IHDR", header) + extra
            + _chunk(b"IDAT", zlib.compress(rows.tobytes(), 1)) + _chunk(b"IEND", b""))


def kept_confidence(png: bytes) -> str | None:
    """The confidence text mask_png keeps in a mask (its tEXt chunk before the pixels), or
    None: read from the chunk itself, nothing decoded."""
    marker = b"tEXt" + CONFIDENCE_KEY.encode() + b"\0"
    at = png.find(marker, 0, max(png.find(b"IDAT"), 0))
    if at < 4:
        return None
    (length,) = struct.unpack(">I", png[at - 4:at])
    start = at + len(marker)
    end = at + 4 + length
    if end > len(png) or start > end:
        return None
    return png[start:end].decode("latin-1")


def confidence_text(values: list[float], mask: npt.NDArray[np.uint8]) -> str | None:
    """The model's `confidence` for one image as the JSON kept with its mask.

    One value per pixel: the mean over each slick (8-connected oil), each slick named by
    its first pixel in row order (`row`, `col`), which any later labelling of the same mask
    finds in the same slick. Fewer values (per image, per detection): kept as they are.
    None when there are more values than that, or none.
    """
    if not values:
        return None
    height, width = mask.shape
    if len(values) == height * width:
        labels, count = label_slicks(oil_of(mask))
        if not count:
            return json.dumps({"slicks": []})
        flat = labels.ravel()
        sums = np.bincount(flat, weights=np.asarray(values, np.float64), minlength=count + 1)
        sizes = np.bincount(flat, minlength=count + 1)
        first = first_pixels(flat, count)
        slicks = [{"row": int(first[n] // width), "col": int(first[n] % width),
                   "confidence": round(float(sums[n] / sizes[n]), 6)}
                  for n in range(1, count + 1)]
        return json.dumps({"slicks": slicks}, separators=(",", ":"))
    if len(values) <= MAX_CONFIDENCE_VALUES:
        return json.dumps({"values": [round(v, 6) for v in values]}, separators=(",", ":"))
    return None


def _deep_to_grey(values: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Deeper than 8 bits: log scale, the 1st to 99th percentile of the finite values to
    0..255 (speckle adds on a log scale; the stub's detector recognises it)."""
    logs = np.log10(np.maximum(values, np.float32(1e-6)), dtype=np.float32)
    finite = np.isfinite(logs)
    step = max(1, int(np.sqrt(logs.size / 65536)))
    sample = logs[::step, ::step][finite[::step, ::step]]
    if not sample.size:
        return np.zeros(values.shape, np.uint8)
    low, high = np.percentile(sample, (1, 99))
    scale = np.float32(255.0 / (high - low) if high > low else 0.0)
    grey = np.clip((logs - np.float32(low)) * scale, 0, 255)
    grey[~finite] = 0
    result: npt.NDArray[np.uint8] = grey.astype(np.uint8)
    return result


def _unfiltered_grey(body: bytes) -> npt.NDArray[np.uint8] | None:
    """The pixels of an 8-bit grey PNG whose rows are all unfiltered (a scene's tiles:
    geo/scale.grey_png), read with one inflate and no per-row work (a tenth of Pillow's
    time); None for any other PNG, which Pillow decodes."""
    size = png_size(body)
    if size is None or body[24:29] != b"\x08\x00\x00\x00\x00":  # depth 8, grey, no interlace
        return None
    height, width = size
    idat, pos = [], 8
    while pos + 8 <= len(body):
        (length,), kind = struct.unpack(">I", body[pos:pos + 4]), body[pos + 4:pos + 8]
        if kind == b"IDAT":
            idat.append(body[pos + 8:pos + 8 + length])
        elif kind == b"IEND":
            break
        pos += 12 + length
    try:
        raw = zlib.decompress(b"".join(idat))
    except zlib.error:
        return None
    if len(raw) != height * (width + 1):
        return None
    rows = np.frombuffer(raw, np.uint8).reshape(height, width + 1)
    if rows[:, 0].any():  # some row filtered: Pillow undoes that
        return None
    return rows[:, 1:]


def grey_of(body: bytes | Path) -> npt.NDArray[np.uint8]:
    """The image as 8-bit grey [H, W]; MLRejected when it does not decode (the worker has
    checked its header and pixel count already)."""
    if isinstance(body, bytes) and (pixels := _unfiltered_grey(body)) is not None:
        return pixels
    try:
        with Image.open(io.BytesIO(body) if isinstance(body, bytes) else body) as image:
            if image.mode in _DEEP_MODES:
                return _deep_to_grey(np.asarray(image.convert("F"), np.float32))
            grey = image if image.mode == "L" else image.convert("L")
            return np.asarray(grey, np.uint8)
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError) as exc:
        raise MLRejected(f"cannot decode image: {plain_message(str(exc)) or 'corrupt'}"
                         ) from None


@dataclass(frozen=True)
class _Request:
    """An encoded request: its body and headers, the images it holds (indexes into the
    batch) and their size (height, width); the others' errors by index."""

    body: bytes
    headers: dict[str, str]
    sent: list[int]
    size: tuple[int, int]
    errors: dict[int, MLError]


def _encode(spec: oip.ModelSpec, images: Sequence[Image8]) -> _Request:
    """Decode each image and encode the request for those that decode (one size: the
    tier batches only images whose PNG headers agree; another size is sent apart)."""
    greys: list[npt.NDArray[np.uint8]] = []
    sent: list[int] = []
    errors: dict[int, MLError] = {}
    for n, image in enumerate(images):
        try:
            grey = grey_of(image.body)
        except MLRejected as exc:
            errors[n] = exc
            continue
        if greys and grey.shape != greys[0].shape:
            errors[n] = MLUnavailable("batched with images of another size; sent again")
            continue
        greys.append(grey)
        sent.append(n)
    if not greys:
        return _Request(b"", {}, [], (0, 0), errors)
    pngs = None
    if spec.takes_png:
        pngs = [_as_png(images[n].body, grey) for n, grey in zip(sent, greys, strict=True)]
    try:
        body, headers = oip.encode(spec, greys, pngs)
    except oip.OipIncompatible as exc:
        rejection = MLRejected(f"the model cannot take this image: {exc}")
        return _Request(b"", {}, [], (0, 0), {**errors, **dict.fromkeys(sent, rejection)})
    height, width = greys[0].shape
    return _Request(body, headers, sent, (height, width), errors)


def _as_png(body: bytes | Path, grey: npt.NDArray[np.uint8]) -> bytes:
    """The image as the PNG a BYTES input takes: an 8-bit grey PNG (a scene's tile) as it
    is, anything else as its grey encoded."""
    if (isinstance(body, bytes) and png_size(body) is not None and len(body) >= 26
            and body[24] == 8 and body[25] == 0):  # bit depth 8, colour type 0 (grey)
        return body
    return grey_png(grey)


class CountedMask(bytes):
    """A mask PNG made here, with the figures masks.read_answer would count in it (`answer`)
    and its (width, height): counted from the array it was made from, so the worker keeps it
    without decoding it again."""

    answer: Answer
    size: tuple[int, int]


def counted_mask(mask: npt.NDArray[np.uint8], text: str | None = None) -> CountedMask:
    """The mask's PNG and its figures: oil pixels, slicks (8-connected), the largest."""
    png = CountedMask(mask_png(mask, text))
    png.size = (mask.shape[1], mask.shape[0])
    png.answer = mask_answer(oil_of(mask))
    return png


def _decode(spec: oip.ModelSpec, request: _Request, answer: bytes, headers: dict[str, str]
            ) -> list[CountedMask]:
    """Each image's mask PNG from the answer; MLRejected when it cannot be read."""
    try:
        decoded = oip.decode(spec, answer, headers, len(request.sent), request.size)
    except oip.OipBadAnswer as exc:
        raise MLRejected(f"the ML service's answer cannot be read: {exc}") from None
    pngs = []
    for result in decoded:
        text = (confidence_text(result.confidence, result.mask)
                if result.confidence is not None else None)
        pngs.append(counted_mask(result.mask, text))
    return pngs


class OipClient:
    """Calls one model on one OIP v2 server through a shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, url: str, timeout_s: float,
                 connect_timeout_s: float, max_response_bytes: int, max_batch: int,
                 metrics: Metrics, label: str | None = None) -> None:
        target = oip.parse_url(url)
        if target is None:
            raise ValueError(f"not an Open Inference Protocol model URL: {url}")
        self._target = target
        self._session = session
        self._metrics = metrics
        self._label = label or url
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._meta_timeout = aiohttp.ClientTimeout(total=min(timeout_s, META_TIMEOUT_S),
                                                   sock_connect=connect_timeout_s)
        self._max_response_bytes = max_response_bytes
        self._max_batch = max_batch
        self._spec: oip.ModelSpec | None = None
        self._loading: asyncio.Lock = asyncio.Lock()

    @property
    def spec(self) -> oip.ModelSpec | None:
        """The model's spec once read; None before (or while it cannot be read)."""
        return self._spec

    @property
    def model(self) -> str:
        return self._target.model

    @property
    def max_batch(self) -> int:
        """Images per request: OILSPILL_ML_BATCH, or fewer when the model says so; 1 until
        the model is read."""
        if self._spec is None:
            return 1
        return min(self._max_batch, self._spec.max_batch or self._max_batch)

    async def healthy(self) -> bool:
        """True when the server is ready and the model's metadata reads into a usable spec
        (read afresh: the model may have been replaced while the endpoint was away)."""
        try:
            await self.load()
        except MLError as exc:
            logger.info("ML endpoint %s: not ready: %s", self._label, exc)
            return False
        return True

    async def load(self) -> oip.ModelSpec:
        """Read the model (ready, server and model metadata, config) into its spec.
        MLUnavailable when the server is not ready, the metadata cannot be read or the model
        cannot be fed (the reason says why); MLUnreachable when nothing answers."""
        async with self._loading:
            status, _ = await self._get(self._target.ready_url, "readiness")
            if status != 200:  # its body says nothing more (MLServer's is empty)
                raise MLUnavailable(f"ML endpoint is not ready: it answered {status}")
            server = await self._get_json(self._target.server_url, "server metadata",
                                          required=False)
            meta = await self._get_json(self._target.model_url, "model metadata")
            config = await self._get_json(self._target.config_url, "model config",
                                          required=False)
            try:
                spec = oip.ModelSpec.from_metadata(server or {}, meta or {}, config)
            except oip.OipIncompatible as exc:
                logger.error("ML endpoint %s: the model cannot be used: %s", self._label, exc)
                raise MLUnavailable(f"the model at the ML endpoint cannot be used: {exc}"
                                    ) from None
            if spec != self._spec:
                logger.info("ML endpoint %s: model %s, input %s %s %s, %s, batch up to %s",
                            self._label, self._target.model, spec.input_name, spec.datatype,
                            list(spec.shape), "binary tensors" if spec.binary else "JSON",
                            min(self._max_batch, spec.max_batch or self._max_batch))
            self._spec = spec
            return spec

    async def _get(self, url: str, what: str) -> tuple[int, bytes]:
        """The status and body of `GET url` (the body bounded by the answer limit)."""
        try:
            async with self._session.get(url, timeout=self._meta_timeout,
                                         allow_redirects=False) as resp:
                return resp.status, await resp.content.read(self._max_response_bytes)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
            raise MLUnreachable(f"ML endpoint unreachable at {self._label}") from None
        except TimeoutError:
            raise MLTimeout(f"ML endpoint's {what} took longer than "
                            f"{self._meta_timeout.total:g} s") from None
        except aiohttp.ClientError as exc:
            raise MLUnavailable(f"ML endpoint connection failed: {exc.__class__.__name__}"
                                ) from None

    async def _get_json(self, url: str, what: str, required: bool = True
                        ) -> dict[str, Any] | None:
        """The JSON object at `url`; None for a non-200 answer or a body that is not a JSON
        object when not `required`, else MLUnavailable."""
        status, body = await self._get(url, what)
        if status != 200:
            if required:
                raise MLUnavailable(f"ML endpoint's {what} answered {status}")
            return None
        try:
            data = json.loads(body)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            if required:
                raise MLUnavailable(f"ML endpoint's {what} is not a JSON object")
            return None
        return data

    async def infer(self, images: Sequence[Image8]) -> list[bytes | MLError]:
        """Each image's mask PNG, or the error that image alone met (it does not decode, the
        model cannot take its size). Raises MLUnavailable or MLRejected for the request as a
        whole (then nothing was kept)."""
        spec = self._spec or await self.load()
        request = await asyncio.to_thread(_encode, spec, images)
        results: list[bytes | MLError] = [request.errors.get(n, MLRejected("not sent"))
                                          for n in range(len(images))]
        if not request.sent:
            return results
        started = time.monotonic()
        try:
            answer, headers = await self._post(request)
            pngs = await asyncio.to_thread(_decode, spec, request, answer, headers)
        except MLError as exc:
            self._metrics.ml_errors.labels(error_kind(exc)).inc()
            raise
        finally:
            self._metrics.ml_call_seconds.observe(time.monotonic() - started)
        for n, png in zip(request.sent, pngs, strict=True):
            results[n] = png
        return results

    async def _post(self, request: _Request) -> tuple[bytes, dict[str, str]]:
        try:
            # Never redirected: the images would go, unasked, to whatever address is named.
            async with self._session.post(self._target.infer_url, data=request.body,
                                          headers=request.headers, timeout=self._timeout,
                                          allow_redirects=False) as resp:
                if resp.status != 200:
                    raise await self._refusal(resp)
                return await self._receive(resp), dict(resp.headers)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            logger.info("ML endpoint %s: call failed: %r", self._label, exc)
            raise MLUnreachable(f"ML endpoint unreachable at {self._label}") from None
        except TimeoutError:
            raise MLTimeout(f"ML service timed out after {self._timeout.total:g} s") from None
        except aiohttp.ClientError as exc:
            logger.info("ML endpoint %s: call failed: %r", self._label, exc)
            raise MLUnavailable(f"ML service connection failed: {exc.__class__.__name__}"
                                ) from None

    async def _refusal(self, resp: aiohttp.ClientResponse) -> MLError:
        status = resp.status
        detail = error_text(await resp.content.read(ERROR_TEXT_BYTES))
        if detail:
            logger.info("ML endpoint %s: answered %d: %s", self._label, status, detail)
        if 300 <= status < 400:
            return MLRejected(f"ML service answered {status}, a redirect, which is not "
                              "followed: ML_SERVICE_URL must be the service's own address")
        message = f"ML service answered {status}: {plain_message(detail) or 'no message'}"
        if status in (404, 429) or status >= 500:
            if status == 404:
                self._spec = None  # read the model again before the next request
            return MLUnavailable(message, parse_retry_after(resp.headers.get("Retry-After")))
        return MLRejected(message)

    async def _receive(self, resp: aiohttp.ClientResponse) -> bytes:
        """The whole answer (masks for the batch: kept in memory, bounded)."""
        if resp.content_length is not None and resp.content_length > self._max_response_bytes:
            raise self._too_large()
        body = bytearray()
        async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
            body += chunk
            if len(body) > self._max_response_bytes:
                raise self._too_large()
        return bytes(body)

    def _too_large(self) -> MLRejected:
        return MLRejected(f"ML service's answer is larger than {self._max_response_bytes} "
                          "bytes (OILSPILL_MAX_ML_RESPONSE_BYTES)")
