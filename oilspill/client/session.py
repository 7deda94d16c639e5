"""An async client of oilspill's HTTP API: used by `oilspill submit/status/fetch` and the demo.

It imports nothing heavy (no numpy, rasterio, shapely, pyproj): the GeoJSON it fetches is
saved as the server sent it.

It rides out a server that restarts or a link that drops: connection errors and 502/503/504
are retried with growing waits until `give_up_s` has passed without an answer.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiofiles
import aiohttp

from ..paths import PARTIAL_SUFFIX

CHUNK_BYTES = 256 * 1024
RETRY_STATUSES = {502, 503, 504}


class ApiFailure(Exception):
    """The server answered with an error; the message is its own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


class ServerGone(Exception):
    """The server did not answer for longer than the client is willing to wait."""


async def _json(resp: aiohttp.ClientResponse) -> Any:
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = None
    if resp.status >= 400:
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        raise ApiFailure(resp.status, message or resp.reason or "error")
    return body


class OilspillClient:
    """Calls one oilspill server through an aiohttp session.

    on_retry, when given, is told the reason each time a call is about to be retried.
    """

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str | None = None,
                 give_up_s: float = 600.0,
                 on_retry: Callable[[str], None] | None = None) -> None:
        self._session = session
        self._base = base_url.rstrip("/")
        self._headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._give_up_s = give_up_s
        self._on_retry = on_retry

    async def _retrying(self, call: Callable[[], Any]) -> Any:
        """Run `call` (a fresh request each time) until it gets a real answer."""
        deadline = time.monotonic() + self._give_up_s
        wait_s = 0.25
        while True:
            try:
                return await call()
            except ApiFailure as exc:
                if exc.status not in RETRY_STATUSES:
                    raise
                reason = f"server busy or restarting ({exc})"
            except (TimeoutError, aiohttp.ClientConnectionError) as exc:
                reason = f"server unreachable ({exc.__class__.__name__})"
            if time.monotonic() + wait_s > deadline:
                raise ServerGone(f"no answer from {self._base} for {self._give_up_s:g} s: "
                                 f"{reason}")
            if self._on_retry:
                self._on_retry(reason)
            await asyncio.sleep(random.uniform(wait_s / 2, wait_s))
            wait_s = min(wait_s * 2, 10.0)

    async def _get(self, path: str) -> Any:
        async def call() -> Any:
            async with self._session.get(f"{self._base}{path}", headers=self._headers) as resp:
                return await _json(resp)
        return await self._retrying(call)

    async def upload(self, body: Path | AsyncIterator[bytes], filename: str,
                     content_type: str = "application/zip") -> dict[str, Any]:
        """Upload a zip, or one image or scene (a file, or chunks made on the fly), streamed;
        the server's 202 answer.

        Not retried: a body made on the fly cannot be sent twice.
        """
        fh = await asyncio.to_thread(open, body, "rb") if isinstance(body, Path) else None
        try:
            form = aiohttp.FormData()
            form.add_field("file", fh or body, filename=filename, content_type=content_type)
            async with self._session.post(f"{self._base}/api/upload/", data=form,
                                          headers=self._headers) as resp:
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

    async def archive_url(self, job_id: str) -> str:
        return str((await self._get(f"/api/archive/{job_id}"))["archive_url"])

    async def download(self, url: str, dest: Path,
                       on_bytes: Callable[[int, int | None], None] | None = None) -> Path:
        """Save a file the server serves (a result zip, a job's GeoJSON), streamed to disk
        through a partial name; on_bytes(received, total) as it comes."""
        async def call() -> Path:
            async with self._session.get(f"{self._base}{url}", headers=self._headers) as resp:
                if resp.status != 200:
                    await _json(resp)
                partial = dest.with_name(dest.name + PARTIAL_SUFFIX)
                received = 0
                async with aiofiles.open(partial, "wb") as out:
                    async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                        await out.write(chunk)
                        received += len(chunk)
                        if on_bytes:
                            on_bytes(received, resp.content_length)
                await asyncio.to_thread(partial.replace, dest)
                return dest
        return Path(await self._retrying(call))
