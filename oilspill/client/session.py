"""An async client of oilspill's HTTP API: used by `oilspill submit/status/fetch` and the demo.

It imports nothing heavy (no numpy, rasterio, shapely, pyproj): the GeoJSON it fetches is
saved as the server sent it.

It rides out a server that restarts or a link that drops: connection errors and 502/503/504
are retried with growing waits until `give_up_s` has passed without an answer, or, for a
transfer, without a byte more. A download goes to `FILE.part` and resumes from its size
(`Range`), guarded by the file's ETag (`If-Range`, kept in `FILE.part.etag`): a part of a
file the server has since changed is thrown away, never completed with the new file's tail.
"""

from __future__ import annotations

import asyncio
import random
import re
import time
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiofiles
import aiohttp

from ..paths import PARTIAL_SUFFIX

CHUNK_BYTES = 256 * 1024
RETRY_STATUSES = {502, 503, 504}
ETAG_SUFFIX = ".etag"
_CONTENT_RANGE = re.compile(r"^bytes (\d+)-(\d+)/(\d+|\*)$")


class ApiFailure(Exception):
    """The server answered with an error; the message is its own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class ServerGone(Exception):
    """The server did not answer for longer than the client is willing to wait."""


async def error_message(resp: aiohttp.ClientResponse) -> str:
    """The message of an error answer: the server's own, or the status's reason."""
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = None
    message = body.get("error", {}).get("message") if isinstance(body, dict) else None
    return str(message or resp.reason or "error")


async def _json(resp: aiohttp.ClientResponse) -> Any:
    if resp.status >= 400:
        raise ApiFailure(resp.status, await error_message(resp))
    try:
        return await resp.json(content_type=None)
    except ValueError:
        return None


class Patience:
    """How long a client keeps trying: until `give_up_s` pass without an answer (or without
    progress, for a transfer), waiting 0.25 s, then twice as long each time, up to 10 s."""

    def __init__(self, base: str, give_up_s: float,
                 on_retry: Callable[[str], None] | None) -> None:
        self._base = base
        self._give_up_s = give_up_s
        self._on_retry = on_retry
        self.reset()

    def reset(self) -> None:
        """Something moved: the full patience again, from the shortest wait."""
        self._deadline = time.monotonic() + self._give_up_s
        self._wait_s = 0.25

    async def wait(self, reason: str) -> None:
        """Wait before the next try; ServerGone once the patience is spent."""
        if time.monotonic() + self._wait_s > self._deadline:
            raise ServerGone(f"no answer from {self._base} for {self._give_up_s:g} s: "
                             f"{reason}")
        if self._on_retry:
            self._on_retry(reason)
        await asyncio.sleep(random.uniform(self._wait_s / 2, self._wait_s))
        self._wait_s = min(self._wait_s * 2, 10.0)


def transient_reason(exc: BaseException) -> str | None:
    """Why a call is worth trying again (a dropped link, a server restarting), or None."""
    if isinstance(exc, ApiFailure):
        return f"server busy or restarting ({exc})" if exc.status in RETRY_STATUSES else None
    if isinstance(exc, (TimeoutError, aiohttp.ClientConnectionError,
                        aiohttp.ClientPayloadError)):
        return f"server unreachable ({exc.__class__.__name__})"
    return None


class _StartOver(Exception):
    """The part on disk is not the start of the file the server now has."""


def _part_to_resume(partial: Path, tag_file: Path) -> tuple[int, str | None]:
    """(bytes of the part, its file's ETag) of a download to resume; (0, None) if there is
    none, or no ETag to make sure the rest is of the same file."""
    try:
        etag = tag_file.read_text(encoding="utf-8").strip()
        return (partial.stat().st_size, etag) if etag else (0, None)
    except OSError:
        return 0, None


def _forget_part(partial: Path, tag_file: Path) -> None:
    partial.unlink(missing_ok=True)
    tag_file.unlink(missing_ok=True)


def _keep_etag(tag_file: Path, etag: str | None) -> None:
    """Keep the ETag of the file being downloaded beside its part; only a strong one can
    guard a resumption (RFC 9110 If-Range)."""
    if etag and not etag.startswith("W/"):
        tag_file.write_text(etag, encoding="utf-8")
    else:
        tag_file.unlink(missing_ok=True)


def _finish_part(partial: Path, tag_file: Path, dest: Path) -> None:
    partial.replace(dest)
    tag_file.unlink(missing_ok=True)


def _continues(resp: aiohttp.ClientResponse, have: int, etag: str) -> bool:
    """Whether a 206 answer is the rest of the file the part began: same ETag, from the
    part's end."""
    match = _CONTENT_RANGE.match(resp.headers.get("Content-Range", ""))
    return resp.headers.get("ETag") == etag and match is not None and int(match[1]) == have


class OilspillClient:
    """Calls one oilspill server through an aiohttp session.

    on_retry, when given, is told the reason each time a call is about to be retried.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None = None,
                 give_up_s: float = 600.0,
                 on_retry: Callable[[str], None] | None = None) -> None:
        self.session = session
        self._base = base_url.rstrip("/")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._give_up_s = give_up_s
        self._on_retry = on_retry

    @property
    def base(self) -> str:
        return self._base

    def url(self, path: str) -> str:
        return f"{self._base}{path}"

    def patience(self) -> Patience:
        return Patience(self._base, self._give_up_s, self._on_retry)

    async def retrying(self, call: Callable[[], Any],
                       progress: Callable[[], int] | None = None) -> Any:
        """Run `call` (a fresh request each time) until it gets a real answer. With
        `progress` (bytes moved so far), a try that moved bytes renews the patience."""
        patience = self.patience()
        moved = progress() if progress else 0
        while True:
            try:
                return await call()
            except Exception as exc:
                reason = transient_reason(exc)
                if reason is None:
                    raise
            if progress and progress() > moved:
                moved = progress()
                patience.reset()
            await patience.wait(reason)

    async def _get(self, path: str) -> Any:
        async def call() -> Any:
            async with self.session.get(self.url(path), headers=self.headers) as resp:
                return await _json(resp)
        return await self.retrying(call)

    async def upload(self, body: Path | AsyncIterator[bytes], filename: str,
                     content_type: str = "application/zip") -> dict[str, Any]:
        """Upload a zip, or one image or scene (a file, or chunks made on the fly), streamed
        in one multipart request; the server's 202 answer.

        Not retried: a body made on the fly cannot be sent twice.
        """
        fh = await asyncio.to_thread(open, body, "rb") if isinstance(body, Path) else None
        try:
            form = aiohttp.FormData()
            form.add_field("file", fh or body, filename=filename, content_type=content_type)
            async with self.session.post(self.url("/api/upload/"), data=form,
                                         headers=self.headers) as resp:
                return dict(await _json(resp))
        finally:
            if fh is not None:
                await asyncio.to_thread(fh.close)

    async def job(self, job_id: str) -> dict[str, Any]:
        return dict(await self._get(f"/api/job/{job_id}"))

    async def wait(self, job_id: str, interval_s: float = 0.5,
                   on_progress: Callable[[dict[str, Any]], None] | None = None
                   ) -> dict[str, Any]:
        """Poll the job until it is finished; return its last progress."""
        while True:
            job = await self.job(job_id)
            if on_progress:
                on_progress(job)
            if job["finished_at"] is not None:
                return job
            await asyncio.sleep(interval_s)

    async def archive_url(self, job_id: str, parts: Sequence[str] = ()) -> str:
        """The URL of the job's result zip; with `parts`, of a zip of only those parts."""
        query = f"?parts={quote(','.join(parts), safe=',')}" if parts else ""
        return str((await self._get(f"/api/archive/{job_id}{query}"))["archive_url"])

    async def download(self, url: str, dest: Path,
                       on_bytes: Callable[[int, int | None], None] | None = None) -> Path:
        """Save a file the server serves (a result zip, a job's GeoJSON), streamed to
        `dest.part`, resumed from there after a dropped link or a new run, then renamed to
        `dest`; on_bytes(bytes on disk, total) as it comes."""
        partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
        tag_file = partial.with_name(partial.name + ETAG_SUFFIX)
        on_disk = 0

        async def attempt() -> None:
            nonlocal on_disk
            on_disk, etag = await asyncio.to_thread(_part_to_resume, partial, tag_file)
            headers = dict(self.headers)
            if on_disk and etag:
                headers.update({"Range": f"bytes={on_disk}-", "If-Range": etag})
            async with self.session.get(self.url(url), headers=headers) as resp:
                append = False
                if on_disk and etag and resp.status == 206 and _continues(resp, on_disk, etag):
                    append = True
                elif on_disk and resp.status in (206, 416):
                    # A range of another file (a server that ignores If-Range), or a part
                    # longer than the file: start over.
                    raise _StartOver
                elif resp.status == 200:
                    on_disk = 0
                    await asyncio.to_thread(_keep_etag, tag_file, resp.headers.get("ETag"))
                else:
                    await _json(resp)
                    raise ApiFailure(resp.status, resp.reason or "unexpected answer")
                total = None if resp.content_length is None else (
                    on_disk + resp.content_length)
                if on_bytes:
                    on_bytes(on_disk, total)
                async with aiofiles.open(partial, "ab" if append else "wb") as out:
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        await out.write(chunk)
                        on_disk += len(chunk)
                        if on_bytes:
                            on_bytes(on_disk, total)
                if total is not None and on_disk != total:
                    raise aiohttp.ClientPayloadError(f"{on_disk} of {total} bytes came")
            await asyncio.to_thread(_finish_part, partial, tag_file, dest)

        async def call() -> None:
            try:
                await attempt()
            except _StartOver:
                await asyncio.to_thread(_forget_part, partial, tag_file)
                await attempt()

        await self.retrying(call, lambda: on_disk)
        return dest
