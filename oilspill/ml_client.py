"""All outgoing HTTP: the ML segmentation service's contract.

`POST {url}/segment` with one multipart part `file` (the image, streamed from disk) answers
200 with the mask (or, for the original YOLO service, an annotated picture); 4xx rejects the
image; 429, 5xx and connection trouble are the service's own and worth retrying.

The part's file name is a safe ASCII form of the user's (names.header_filename): a name
from a zip may hold anything, and a header may not. Redirects are never followed: a 3xx is
the service's error (the image is not sent on to another address), and the task fails with
it. The service's error text reaches users without object reprs or paths; the log has it
whole.
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import secrets
import time
from pathlib import Path
from typing import Any

import aiofiles
import aiohttp

from .metrics import Metrics
from .names import header_filename, plain_message

logger = logging.getLogger(__name__)

CHUNK_BYTES = 256 * 1024
ERROR_TEXT_BYTES = 2048
INLINE_BYTES = 1024 * 1024  # answers up to this size are kept in memory, larger ones spilled


def multipart_form(image: bytes, filename: str, content_type: str) -> tuple[bytes, str]:
    """The /segment request's body for an image in memory, whole in one buffer (one write
    to the socket rather than a form's several), and its Content-Type header. `filename`
    must already be a header-safe name (names.header_filename)."""
    boundary = secrets.token_hex(16)
    head = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; "
            f"filename=\"{filename}\"\r\nContent-Type: {content_type}\r\n\r\n").encode()
    body = b"".join((head, image, f"\r\n--{boundary}--\r\n".encode()))
    return body, f"multipart/form-data; boundary={boundary}"


class MLError(Exception):
    """The ML service did not give a usable answer."""


class MLRejected(MLError):
    """The service refused this image (a 4xx other than 429): retrying will not help."""


class MLUnavailable(MLError):
    """The service's own trouble (429, 5xx, timeout, connection): worth retrying later."""

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s


class MLUnreachable(MLUnavailable):
    """No connection could be made: the service is down or the link is."""


class MLTimeout(MLUnavailable):
    """The service took longer than OILSPILL_ML_TIMEOUT_S to answer."""


def error_kind(exc: MLError) -> str:
    """The `kind` label of oilspill_ml_errors for an ML error."""
    if isinstance(exc, MLUnreachable):
        return "unreachable"
    if isinstance(exc, MLTimeout):
        return "timeout"
    if isinstance(exc, MLUnavailable):
        return "unavailable"
    return "rejected"


def parse_retry_after(value: str | None) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def error_text(body: bytes) -> str:
    """The service's message in an error answer, as it is (for the log): the contract's
    `{"error": {"message": ...}}`, OIP's `{"error": "..."}`, FastAPI's `{"detail": ...}`,
    else the text."""
    text = body.decode("utf-8", "replace").strip()
    try:
        data = json.loads(text)
    except ValueError:
        return text[:500]
    if isinstance(data, dict):
        error = data.get("error")
        if isinstance(error, dict) and "message" in error:
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
        if "detail" in data:
            return str(data["detail"])[:500]
    return text[:500]


class MLClient:
    """Calls one ML service through a shared aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, timeout_s: float,
                 connect_timeout_s: float, max_response_bytes: int, metrics: Metrics) -> None:
        self._session = session
        self._metrics = metrics
        self._base_url = base_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=timeout_s, sock_connect=connect_timeout_s)
        self._max_response_bytes = max_response_bytes

    @property
    def base_url(self) -> str:
        return self._base_url

    async def segment(self, image: bytes | Path, filename: str, content_type: str,
                      spill_to: Path) -> bytes | Path:
        """Send one image (bytes, or a file streamed from disk) and return the service's 200
        answer: bytes when it is small, else `spill_to`, where it was written as it came.

        Raises MLRejected or MLUnavailable; then no file is left at `spill_to`.
        """
        started = time.monotonic()
        try:
            return await self._segment(image, filename, content_type, spill_to)
        except MLError as exc:
            self._metrics.ml_errors.labels(error_kind(exc)).inc()
            raise
        finally:
            self._metrics.ml_call_seconds.observe(time.monotonic() - started)

    async def _segment(self, image: bytes | Path, filename: str, content_type: str,
                       spill_to: Path) -> bytes | Path:
        fh = await asyncio.to_thread(open, image, "rb") if isinstance(image, Path) else None
        try:
            safe_name = header_filename(filename, content_type)
            body: dict[str, Any]
            if isinstance(image, bytes):
                data, form_type = multipart_form(image, safe_name, content_type)
                body = {"data": data, "headers": {"Content-Type": form_type}}
            else:
                form = aiohttp.FormData()
                # aiohttp streams a file object in chunks, reading it in its executor.
                form.add_field("file", fh, filename=safe_name, content_type=content_type)
                body = {"data": form}
            # Never redirected: the image would go, unasked, to whatever address is named.
            async with self._session.post(f"{self._base_url}/segment", **body,
                                          timeout=self._timeout,
                                          allow_redirects=False) as resp:
                if resp.status != 200:
                    raise await self._refusal(resp, filename)
                return await self._receive(resp, spill_to)
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            logger.info("ML call failed: %r", exc)
            raise MLUnreachable(f"ML service unreachable at {self._base_url}") from None
        except TimeoutError:
            raise MLTimeout(f"ML service timed out after {self._timeout.total:g} s") from None
        except aiohttp.ClientError as exc:
            # The class names the trouble; its text can carry internals, so the log has it.
            logger.info("ML call failed: %r", exc)
            raise MLUnavailable(f"ML service connection failed: {exc.__class__.__name__}"
                                ) from None
        finally:
            if fh is not None:
                await asyncio.to_thread(fh.close)

    async def _refusal(self, resp: aiohttp.ClientResponse, filename: str) -> MLError:
        """The error for a non-200 answer: its message in user's terms, the detail logged."""
        status = resp.status
        body = await resp.content.read(ERROR_TEXT_BYTES)
        detail = error_text(body)
        if 300 <= status < 400:
            logger.warning("ML call for %s: redirect %d to %r not followed", filename, status,
                           resp.headers.get("Location", ""))
            return MLRejected(f"ML service answered {status}, a redirect, which is not "
                              "followed: ML_SERVICE_URL must be the service's own address")
        if detail:
            logger.info("ML call for %s: answered %d: %s", filename, status, detail)
        message = f"ML service answered {status}: {plain_message(detail) or 'no message'}"
        if status == 429 or status >= 500:
            return MLUnavailable(message, parse_retry_after(resp.headers.get("Retry-After")))
        return MLRejected(message)

    async def _receive(self, resp: aiohttp.ClientResponse, spill_to: Path) -> bytes | Path:
        """Small answers (a mask is a few KB) stay in memory; large ones go to disk in
        chunks, so memory stays bounded whatever the service sends."""
        kept = bytearray()
        total = 0
        out = None
        try:
            async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                total += len(chunk)
                if total > self._max_response_bytes:
                    raise MLRejected(
                        f"ML service's answer is larger than {self._max_response_bytes} bytes "
                        "(OILSPILL_MAX_ML_RESPONSE_BYTES)")
                if out is None and total <= INLINE_BYTES:
                    kept += chunk
                    continue
                if out is None:
                    out = await aiofiles.open(spill_to, "wb")
                    await out.write(bytes(kept))
                    kept.clear()
                await out.write(chunk)
        except BaseException:
            if out is not None:  # a partial answer is of no use to anyone
                await out.close()
                await asyncio.to_thread(spill_to.unlink, True)
            raise
        if out is not None:
            await out.close()
        return spill_to if out is not None else bytes(kept)

    async def healthy(self) -> bool:
        """True when `GET {url}/health` answers 200."""
        try:
            async with self._session.get(f"{self._base_url}/health", timeout=self._timeout,
                                         allow_redirects=False) as resp:
                return resp.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False
