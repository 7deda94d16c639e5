"""A small async client of oilspill's HTTP API (used by `oilspill demo`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiofiles
import aiohttp

CHUNK_BYTES = 256 * 1024


class ApiFailure(Exception):
    """The server answered with an error; the message is its own."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"{status}: {message}")
        self.status = status


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
    """Calls one oilspill server through an aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str) -> None:
        self._session = session
        self._base = base_url.rstrip("/")

    async def upload(self, zip_path: Path) -> dict[str, Any]:
        """Upload a zip (streamed from disk); the server's 202 answer."""
        fh = await asyncio.to_thread(open, zip_path, "rb")
        try:
            form = aiohttp.FormData()
            form.add_field("file", fh, filename=zip_path.name, content_type="application/zip")
            async with self._session.post(f"{self._base}/api/upload/", data=form) as resp:
                return dict(await _json(resp))
        finally:
            await asyncio.to_thread(fh.close)

    async def job(self, job_id: str) -> dict[str, Any]:
        async with self._session.get(f"{self._base}/api/job/{job_id}") as resp:
            return dict(await _json(resp))

    async def task(self, task_id: str) -> dict[str, Any]:
        async with self._session.get(f"{self._base}/api/task/{task_id}") as resp:
            return dict(await _json(resp))

    async def wait(self, job_id: str, interval_s: float = 0.25,
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
        async with self._session.get(f"{self._base}/api/archive/{job_id}") as resp:
            return str((await _json(resp))["archive_url"])

    async def download(self, url: str, dest: Path) -> Path:
        """Save a result zip (streamed to disk)."""
        async with self._session.get(f"{self._base}{url}") as resp:
            if resp.status != 200:
                await _json(resp)
            async with aiofiles.open(dest, "wb") as out:
                async for chunk in resp.content.iter_chunked(CHUNK_BYTES):
                    await out.write(chunk)
        return dest
