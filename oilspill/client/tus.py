"""Resumable uploads from the client's side: tus 1.0.0 at /api/uploads/ (see web/tus.py).

A file is sent in chunks, one PATCH each. When the link drops, or the server restarts, the
client asks HEAD for the offset the server has on disk and goes on from there, until
`give_up_s` pass without a byte more. The upload's URL is kept in the user's cache
(`cache.UploadBook`) from its creation until it is a job, so a new run of the same command
(after a crash, a reboot, Ctrl-C, or giving up) resumes it too.

The final PATCH answers with the job (`Oilspill-Job-Id`) or a refusal (the 4xx JSON POST
/api/upload/ would give). If that answer is lost, HEAD gives the job again; for an upload the
server no longer keeps (404, 410), GET /api/uploads/{id} says whether it became a job or
was refused, or else a new upload starts.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urljoin

import aiohttp

from .cache import UploadBook
from .session import ApiFailure, OilspillClient, error_message, transient_reason

TUS_VERSION = "1.0.0"
TUS = {"Tus-Resumable": TUS_VERSION}
COLLECTION = "/api/uploads/"
OFFSET_STREAM = "application/offset+octet-stream"
READ_BYTES = 256 * 1024
# Answers to a PATCH that say "ask HEAD and try again": another request still writing to
# the upload (a dropped one the server has not noticed yet), an offset that moved, a server
# restarting or short of disk for a moment.
_TRY_AGAIN = {409, 502, 503, 504, 507}
_GONE = {404, 410}


class _Gone(Exception):
    """The server does not know the upload any more (or refused it)."""


async def offered(client: OilspillClient) -> bool:
    """Whether the server takes tus 1.0.0 uploads (OPTIONS /api/uploads/ answers with a
    Tus-Version that has 1.0.0); an older server answers 404 or 405."""
    async def call() -> bool:
        async with client.session.options(client.url(COLLECTION),
                                          headers=client.headers) as resp:
            if resp.status in (502, 503, 504):
                raise ApiFailure(resp.status, await error_message(resp))
            versions = resp.headers.get("Tus-Version", "").split(",")
            return resp.status < 300 and TUS_VERSION in (v.strip() for v in versions)
    return bool(await client.retrying(call))


async def _fail(resp: aiohttp.ClientResponse) -> ApiFailure:
    return ApiFailure(resp.status, await error_message(resp))


async def _file_range(path: Path, start: int, end: int,
                      on_offset: Callable[[int], None]) -> AsyncIterator[bytes]:
    """Bytes start..end of the file, read in a thread, telling the offset they reach."""
    fh = await asyncio.to_thread(open, path, "rb")
    try:
        await asyncio.to_thread(fh.seek, start)
        offset = start
        while offset < end:
            data = await asyncio.to_thread(fh.read, min(READ_BYTES, end - offset))
            if not data:
                raise OSError(f"{path} is shorter than when its upload began")
            offset += len(data)
            yield data
            on_offset(offset)
    finally:
        await asyncio.to_thread(fh.close)


class TusUpload:
    """One file on its way to the server as a resumable upload.

    key: the file's key in the upload book (cache.file_key, cache.folder_key). source: the
    bytes to send (the file, or a folder's zip); name: the upload's name on the server.
    offset: bytes the server has (after `open`). job_id: the job it became, once it has.
    """

    def __init__(self, client: OilspillClient, book: UploadBook, key: str, source: Path,
                 size: int, name: str, chunk_bytes: int) -> None:
        self._client = client
        self._book = book
        self._key = key
        self.source = source
        self.size = size
        self.name = name
        self._chunk_bytes = chunk_bytes
        self.url: str | None = None
        self.offset = 0
        self.job_id: str | None = None

    async def open(self) -> None:
        """Find the upload this file began in an earlier run (HEAD gives its offset), or
        create one and remember its URL."""
        url = await asyncio.to_thread(self._book.find, self._key)
        if url is not None:
            self.url = url
            try:
                await self._head()
                await asyncio.to_thread(self._book.remember, self._key, url)  # touched
                return
            except _Gone:
                await self._settle_gone()
                if self.job_id is not None:
                    return
        await self._create()

    async def send(self, on_offset: Callable[[int], None]) -> str:
        """Send the rest in chunks of chunk_bytes; the job's id. A dropped link or a server
        restart is resumed from HEAD's offset; ServerGone after give_up_s without a byte
        more; ApiFailure for a refusal."""
        patience = self._client.patience()
        while self.job_id is None:
            before = self.offset
            try:
                await self._patch(on_offset)
                if self.offset > before:
                    patience.reset()
                continue
            except _Gone:
                await self._settle_gone()
                if self.job_id is None:
                    await self._create()
                on_offset(self.offset)
                continue
            except ApiFailure as exc:
                if exc.status not in _TRY_AGAIN:
                    if self.offset + self._chunk_bytes >= self.size:  # the final PATCH:
                        await asyncio.to_thread(self._book.forget, self._key)  # removed
                    raise
                reason = f"the upload must wait ({exc})"
            except (TimeoutError, aiohttp.ClientConnectionError,
                    aiohttp.ClientPayloadError) as exc:
                reason = transient_reason(exc) or str(exc)
            await patience.wait(reason)
            try:
                await self._head()
            except _Gone:
                continue  # the next PATCH finds it gone too, and settles it
            if self.offset > before:
                patience.reset()
            on_offset(self.offset)
        await asyncio.to_thread(self._book.forget, self._key)
        return self.job_id

    async def _create(self) -> None:
        """POST /api/uploads/: a new upload of the file; its URL remembered at once."""
        name = base64.b64encode(self.name.encode()).decode()
        headers = {**self._client.headers, **TUS, "Upload-Length": str(self.size),
                   "Upload-Metadata": f"filename {name}"}

        async def call() -> str:
            async with self._client.session.post(self._client.url(COLLECTION),
                                                 headers=headers) as resp:
                location = resp.headers.get("Location")
                if resp.status != 201 or not location:
                    raise await _fail(resp)
                return urljoin(str(resp.url), location)
        self.url = str(await self._client.retrying(call))
        self.offset, self.job_id = 0, None
        await asyncio.to_thread(self._book.remember, self._key, self.url)

    async def _head(self) -> None:
        """HEAD: the offset the server has on disk (and the job, once there is one)."""
        url = self.url
        assert url is not None

        async def call() -> tuple[int, int, str | None]:
            async with self._client.session.head(url, headers={
                    **self._client.headers, **TUS}) as resp:
                if resp.status in _GONE:
                    raise _Gone
                if resp.status != 200:
                    raise await _fail(resp)
                return (int(resp.headers.get("Upload-Offset", "")),
                        int(resp.headers.get("Upload-Length", -1)),
                        resp.headers.get("Oilspill-Job-Id"))
        offset, length, job_id = await self._client.retrying(call)
        if length != self.size:
            raise _Gone  # not an upload of this file
        self.offset, self.job_id = offset, job_id

    async def _patch(self, on_offset: Callable[[int], None]) -> None:
        """PATCH the next chunk (an empty one when every byte is there but no job yet: the
        server then makes it)."""
        assert self.url is not None
        end = min(self.offset + self._chunk_bytes, self.size)
        headers = {**self._client.headers, **TUS, "Content-Type": OFFSET_STREAM,
                   "Upload-Offset": str(self.offset), "Content-Length": str(end - self.offset)}
        body = _file_range(self.source, self.offset, end, on_offset)
        async with self._client.session.patch(self.url, data=body, headers=headers) as resp:
            if resp.status in _GONE:
                raise _Gone
            if resp.status != 204:
                raise await _fail(resp)
            self.offset = int(resp.headers.get("Upload-Offset", ""))
            self.job_id = resp.headers.get("Oilspill-Job-Id")
        on_offset(self.offset)

    async def _settle_gone(self) -> None:
        """The server no longer takes bytes for the upload: GET /api/uploads/{id} says
        whether it became a job (job_id set) or was refused (ApiFailure); if it knows
        nothing of it, or it was lost in a restart, the upload starts afresh (url None)."""
        url = self.url
        assert url is not None

        async def call() -> tuple[str | None, dict[str, str] | None]:
            async with self._client.session.get(url, headers=self._client.headers
                                                ) as resp:
                if resp.status in _GONE:
                    return None, None
                if resp.status != 200:
                    raise await _fail(resp)
                body = await resp.json(content_type=None)
                return body.get("job_id"), body.get("error")
        job_id, error = await self._client.retrying(call)
        if job_id is not None:
            self.job_id, self.offset = str(job_id), self.size
            return
        await asyncio.to_thread(self._book.forget, self._key)
        self.url, self.offset = None, 0
        if error is not None and error.get("code") != "interrupted":
            raise ApiFailure(410, f"{error.get('message')} ({error.get('code')})")
