"""Resumable uploads (tus 1.0) on disk: each one's bytes, offset, expiry and outcome.

No HTTP here; `web/tus.py` speaks the protocol. One folder per upload under
`<data_dir>/uploads/<upload_id>/` (names in `paths.UploadPaths`): `state.json` says what the
upload is (length, name, metadata) and, once finished, the job it became or why it was
refused; `data` holds the bytes received so far, in order.

Durability: the offset is the data file's size after an fsync, never a count kept beside the
file. Every append ends (done, failed, or the client gone) by writing what it holds, flushing
and fsyncing, and only then records the new offset, so a HEAD never reports a byte that is
not on disk. After a kill -9, every byte a write() accepted is in the kernel's page cache: at
start-up each data file is fsynced and its size is the offset. An append first cuts the file
back to the recorded offset, so bytes whose fsync failed are never followed by others.

One writer per upload: the server is one process, so a set of ids in memory is the lock.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Set
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from .paths import PARTIAL_SUFFIX, UploadPaths, is_id, new_id
from .recorder import fsync_path
from .uploads import DiskFull, disk_full_as_error

logger = logging.getLogger(__name__)

# Bytes gathered from the network before one write (one thread hop): bounds the memory an
# append holds, whatever the upload's size.
WRITE_BYTES = 1024 * 1024


class UnknownUpload(Exception):
    """No live upload has this id: never made, terminated, or expired."""

    def __init__(self, upload_id: str) -> None:
        super().__init__(f"no upload with id {upload_id[:64]!r} (unknown, terminated or "
                         "expired): create a new one")


class UploadBusy(Exception):
    """Another request is writing to (or finishing) this upload."""

    def __init__(self, upload_id: str) -> None:
        super().__init__(f"another request is writing to upload {upload_id}; ask HEAD for "
                         "the offset once it ends")


class OffsetMismatch(Exception):
    """The request's Upload-Offset is not the upload's offset."""

    def __init__(self, expected: int, given: int) -> None:
        super().__init__(f"Upload-Offset is {given} but the upload is at {expected}; ask HEAD "
                         "for the offset and resume from there")
        self.expected = expected


class PastLength(Exception):
    """A body that goes past Upload-Length (what fits is kept)."""


class UploadRefused(Exception):
    """The upload was complete but could not become a job; its bytes are gone."""

    def __init__(self, upload_id: str, code: str, message: str) -> None:
        super().__init__(f"upload {upload_id} was refused ({code}): {message}")


class UploadState(enum.StrEnum):
    RECEIVING = "receiving"
    """Bytes still to come (or all here, and not yet made a job)."""
    DONE = "done"
    """It became the job `job_id`."""
    REFUSED = "refused"
    """It was not a usable upload (`error` says why); its bytes are removed."""


@dataclass
class ResumableUpload:
    """One upload. Sizes are bytes, times epoch seconds.

    length: the whole upload (Upload-Length). name: the `filename` of Upload-Metadata, the
    job's upload name. metadata: Upload-Metadata as the client sent it ('' if none), given
    back by HEAD. offset: bytes durably on disk, the position of the next byte. touched_at:
    when bytes last arrived (creation at first). job_id: the job it was handed to; with
    finished_at None the hand-over is under way. error: (code, message) of a refusal.
    """

    id: str
    length: int
    name: str
    metadata: str
    created_at: float
    touched_at: float
    offset: int = 0
    job_id: str | None = None
    finished_at: float | None = None
    error: tuple[str, str] | None = None

    @property
    def state(self) -> UploadState:
        if self.finished_at is None:
            return UploadState.RECEIVING
        return UploadState.REFUSED if self.error is not None else UploadState.DONE

    @property
    def complete(self) -> bool:
        """Every byte is on disk."""
        return self.offset == self.length

    @property
    def outstanding_bytes(self) -> int:
        """Bytes still to come, which the disk must keep room for."""
        return self.length - self.offset if self.state is UploadState.RECEIVING else 0

    def expires_at(self, expiry_s: float) -> float:
        """An unfinished upload expires `expiry_s` after its last bytes, a finished one's
        record `expiry_s` after it finished."""
        return (self.finished_at or self.touched_at) + expiry_s

    def _state_json(self) -> dict[str, Any]:
        return {"length": self.length, "name": self.name, "metadata": self.metadata,
                "created_at": self.created_at, "job_id": self.job_id,
                "finished_at": self.finished_at,
                "error": list(self.error) if self.error else None}


def _write_state(paths: UploadPaths, upload: ResumableUpload, folder: Path | None = None
                 ) -> None:
    """Replace state.json atomically and durably (in `folder` while it is being made)."""
    target = (folder / paths.state.name) if folder else paths.state
    partial = target.with_name(paths.state_partial().name)
    with open(partial, "w", encoding="utf-8") as fh:
        json.dump(upload._state_json(), fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(partial, target)
    fsync_path(target.parent)


def _make_folder(paths: UploadPaths, upload: ResumableUpload) -> None:
    """The upload's folder with its state and an empty data file, all made durable, under a
    partial name first, so a crash never leaves half an upload under its id."""
    partial = paths.root_partial()
    partial.mkdir(parents=True)
    try:
        _write_state(paths, upload, partial)
        with open(partial / paths.data.name, "wb") as fh:
            os.fsync(fh.fileno())
        fsync_path(partial)
        os.replace(partial, paths.root)
        fsync_path(paths.uploads_dir)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise


def _open_at(path: Path, offset: int) -> IO[bytes]:
    """The data file, cut back to `offset` (bytes past it were never made durable) and
    positioned there."""
    fh = open(path, "r+b")  # closed by _sync_and_close
    try:
        fh.truncate(offset)
        fh.seek(offset)
    except BaseException:
        fh.close()
        raise
    return fh


def _sync_and_close(fh: IO[bytes], rest: bytes) -> int:
    """Write what is left, make it all durable, and give the file's size."""
    try:
        if rest:
            fh.write(rest)
        fh.flush()
        os.fsync(fh.fileno())
        return os.fstat(fh.fileno()).st_size
    finally:
        fh.close()


def _durable_size(path: Path) -> tuple[int, float]:
    """A data file's size once fsynced, and its modification time."""
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())
        st = os.fstat(fh.fileno())
        return st.st_size, st.st_mtime


def _load(paths: UploadPaths, known_job_ids: Set[str], now: float) -> ResumableUpload | None:
    """One upload as the last process left it, settled (see `ResumableUploads.open`)."""
    try:
        raw = json.loads(paths.state.read_text(encoding="utf-8"))
        upload = ResumableUpload(
            id=paths.upload_id, length=int(raw["length"]), name=str(raw["name"]),
            metadata=str(raw["metadata"]), created_at=float(raw["created_at"]),
            touched_at=float(raw["created_at"]), job_id=raw["job_id"],
            finished_at=raw["finished_at"],
            error=(str(raw["error"][0]), str(raw["error"][1])) if raw["error"] else None)
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        logger.warning("start-up: upload %s has no readable state; removed", paths.upload_id)
        return None
    for stale in paths.root.glob(f".*{PARTIAL_SUFFIX}"):
        stale.unlink(missing_ok=True)
    if upload.state is not UploadState.RECEIVING:
        upload.offset = upload.length
        return upload
    if upload.job_id is not None:  # the process stopped while handing it over to a job
        if upload.job_id in known_job_ids:
            upload.finished_at = now
            logger.info("start-up: upload %s became job %s", upload.id, upload.job_id)
        elif paths.data.exists():
            upload.job_id = None  # not moved yet: complete, waiting for its final PATCH
        else:
            upload.finished_at = now
            upload.error = ("interrupted", "the server stopped while the upload became a "
                                           "job; upload the file again")
            logger.warning("start-up: upload %s was lost becoming a job", upload.id)
        _write_state(paths, upload)
        if upload.state is not UploadState.RECEIVING:
            upload.offset = upload.length
            return upload
    if not paths.data.exists():
        with open(paths.data, "wb") as fh:
            os.fsync(fh.fileno())
    size, mtime = _durable_size(paths.data)
    if size > upload.length:
        os.truncate(paths.data, upload.length)
    upload.offset = min(size, upload.length)
    upload.touched_at = max(upload.created_at, mtime)
    return upload


def _recover(root: Path, known_job_ids: Set[str], now: float) -> dict[str, ResumableUpload]:
    root.mkdir(parents=True, exist_ok=True)
    uploads: dict[str, ResumableUpload] = {}
    for entry in root.iterdir():
        paths = UploadPaths(root, entry.name)
        upload = _load(paths, known_job_ids, now) if is_id(entry.name) and (
            entry.is_dir()) else None
        if upload is None:
            if entry.is_dir():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
        else:
            uploads[upload.id] = upload
    return uploads


def _remove(paths: UploadPaths) -> None:
    shutil.rmtree(paths.root, ignore_errors=True)


class ResumableUploads:
    """Every resumable upload of this data folder; open with `await ResumableUploads.open()`.

    Uploads live in memory (a record each) and on disk (their folder); the disk is the truth
    at start-up. One request at a time writes to an upload: `writing()` holds its slot.
    """

    def __init__(self, root: Path, uploads: dict[str, ResumableUpload], *, expiry_s: float,
                 min_free_bytes: int) -> None:
        self._root = root
        self._uploads = uploads
        self._expiry_s = expiry_s
        self._min_free_bytes = min_free_bytes
        self._writing: set[str] = set()
        # An append's last step (write, fsync, record the offset), by upload id: it runs to
        # its end even when the request is cancelled, and the slot is freed after it.
        self._settling: dict[str, asyncio.Task[None]] = {}

    @classmethod
    async def open(cls, root: Path, *, expiry_s: float, min_free_bytes: int,
                   known_job_ids: Set[str]) -> ResumableUploads:
        """Load every upload from disk: offsets from the data files (fsynced first), partial
        folders removed, and an upload the last process was handing to a job settled by
        whether that job's row exists (`known_job_ids`)."""
        uploads = await asyncio.to_thread(_recover, root, known_job_ids, time.time())
        if uploads:
            logger.info("start-up: %d resumable uploads found", len(uploads))
        return cls(root, uploads, expiry_s=expiry_s, min_free_bytes=min_free_bytes)

    def _paths(self, upload_id: str) -> UploadPaths:
        return UploadPaths(self._root, upload_id)

    def expires_at(self, upload: ResumableUpload) -> float:
        return upload.expires_at(self._expiry_s)

    def _live(self, upload: ResumableUpload, now: float) -> bool:
        return upload.id in self._writing or self.expires_at(upload) > now

    def peek(self, upload_id: str) -> ResumableUpload | None:
        """The live upload of this id, or None."""
        upload = self._uploads.get(upload_id)
        return upload if upload is not None and self._live(upload, time.time()) else None

    def find(self, upload_id: str) -> ResumableUpload:
        """The live upload of this id; UnknownUpload if there is none (never made,
        terminated, expired)."""
        upload = self.peek(upload_id)
        if upload is None:
            raise UnknownUpload(upload_id)
        return upload

    @property
    def outstanding_bytes(self) -> int:
        """Bytes still to come for the live unfinished uploads."""
        now = time.time()
        return sum(u.outstanding_bytes for u in self._uploads.values() if self._live(u, now))

    async def create(self, length: int, name: str, metadata: str) -> ResumableUpload:
        """A new, empty upload of `length` bytes. DiskFull when the disk cannot keep
        OILSPILL_MIN_FREE_BYTES free once this and every unfinished upload have arrived."""
        free = (await asyncio.to_thread(shutil.disk_usage, self._root)).free
        # From here to the insertion, no await: two creations cannot both count the same
        # free space.
        outstanding = self.outstanding_bytes
        if free - outstanding - length < self._min_free_bytes:
            raise DiskFull(f"the server has {free} bytes free, {outstanding} of them promised "
                           f"to unfinished uploads, and keeps at least {self._min_free_bytes} "
                           "free (OILSPILL_MIN_FREE_BYTES)")
        now = time.time()
        upload = ResumableUpload(id=new_id(), length=length, name=name, metadata=metadata,
                                 created_at=now, touched_at=now)
        self._uploads[upload.id] = upload
        try:
            with disk_full_as_error():
                await asyncio.to_thread(_make_folder, self._paths(upload.id), upload)
        except BaseException:
            self._uploads.pop(upload.id, None)
            raise
        logger.info("upload %s: created, %d bytes to come (%s)", upload.id, length, name)
        return upload

    @contextlib.asynccontextmanager
    async def writing(self, upload_id: str) -> AsyncIterator[ResumableUpload]:
        """Hold the upload's one writer slot: UploadBusy if another request has it. Freed
        once the last append's bytes are durable and counted, even if the request is
        cancelled meanwhile."""
        upload = self.find(upload_id)
        if upload_id in self._writing:
            raise UploadBusy(upload_id)
        self._writing.add(upload_id)
        try:
            yield upload
        finally:
            settling = self._settling.pop(upload_id, None)
            if settling is not None and not settling.done():
                settling.add_done_callback(lambda _: self._writing.discard(upload_id))
            else:
                self._writing.discard(upload_id)

    async def append(self, upload: ResumableUpload, offset: int,
                     chunks: AsyncIterator[bytes]) -> None:
        """Write `chunks` at `offset` (the caller holds the slot), then make them durable and
        advance the offset, whatever ends the stream. OffsetMismatch (nothing written) when
        `offset` is not the upload's; PastLength when the body goes past the length (what
        fits is kept); the stream's own error when it breaks (what arrived is kept)."""
        assert upload.id in self._writing, "append without the writer slot"
        if offset != upload.offset:
            raise OffsetMismatch(upload.offset, offset)
        with disk_full_as_error():
            fh = await asyncio.to_thread(_open_at, self._paths(upload.id).data, upload.offset)
        room = upload.length - upload.offset
        pending: list[bytes] = []
        pending_bytes = written = 0
        try:
            async for chunk in chunks:
                if written + pending_bytes + len(chunk) > room:
                    pending.append(chunk[:room - written - pending_bytes])
                    raise PastLength(f"the body goes past Upload-Length ({upload.length} "
                                     "bytes); the bytes up to it are kept")
                pending.append(chunk)
                pending_bytes += len(chunk)
                if pending_bytes >= WRITE_BYTES:
                    data = b"".join(pending)
                    pending.clear()
                    pending_bytes = 0
                    with disk_full_as_error():
                        await asyncio.to_thread(fh.write, data)
                    written += len(data)
        finally:
            settle = asyncio.ensure_future(self._settle(upload, fh, b"".join(pending)))
            # Logged in _settle; retrieved here for when the request is gone before it ends.
            settle.add_done_callback(lambda t: t.cancelled() or t.exception())
            self._settling[upload.id] = settle
            with disk_full_as_error():
                await asyncio.shield(settle)

    async def _settle(self, upload: ResumableUpload, fh: IO[bytes], rest: bytes) -> None:
        try:
            size = await asyncio.to_thread(_sync_and_close, fh, rest)
        except BaseException:
            logger.warning("upload %s: could not make the last bytes durable; offset stays "
                           "%d", upload.id, upload.offset, exc_info=True)
            raise
        upload.offset = min(size, upload.length)
        upload.touched_at = time.time()

    async def hand_over(self, upload: ResumableUpload, job_id: str) -> Path:
        """Record that the complete upload becomes job `job_id` (so a crash from here on is
        settled at start-up) and give its data file, to be renamed into the job."""
        assert upload.complete and upload.id in self._writing
        upload.job_id = job_id
        await asyncio.to_thread(_write_state, self._paths(upload.id), upload)
        return self._paths(upload.id).data

    async def handed_over(self, upload: ResumableUpload) -> None:
        """The job is recorded: the upload is done (its record kept until it expires)."""
        upload.finished_at = time.time()
        await asyncio.to_thread(_write_state, self._paths(upload.id), upload)
        logger.info("upload %s: became job %s", upload.id, upload.job_id)

    async def refuse(self, upload: ResumableUpload, code: str, message: str) -> None:
        """The complete upload cannot become a job: its bytes go, the reason is kept until
        the record expires."""
        paths = self._paths(upload.id)
        upload.job_id = None
        upload.error = (code, message)
        upload.finished_at = time.time()
        await asyncio.to_thread(paths.data.unlink, missing_ok=True)
        await asyncio.to_thread(_write_state, paths, upload)
        logger.info("upload %s: refused (%s)", upload.id, code)

    async def terminate(self, upload_id: str) -> None:
        """Remove an upload now (tus termination): UnknownUpload, or UploadBusy while a
        request writes to it."""
        self.find(upload_id)
        if upload_id in self._writing:
            raise UploadBusy(upload_id)
        del self._uploads[upload_id]
        await asyncio.to_thread(_remove, self._paths(upload_id))
        logger.info("upload %s: terminated", upload_id)

    async def expire(self, now: float) -> int:
        """Remove the uploads expired at `now` (unfinished ones and finished ones' records);
        returns how many."""
        expired = [u.id for u in self._uploads.values() if not self._live(u, now)]
        for upload_id in expired:  # forgotten at once, before any await: no request sees it
            del self._uploads[upload_id]
        for upload_id in expired:
            await asyncio.to_thread(_remove, self._paths(upload_id))
            logger.info("upload %s: expired and removed", upload_id)
        return len(expired)

