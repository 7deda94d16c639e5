"""The client commands: `oilspill submit`, `oilspill status`, `oilspill fetch`.

`submit` sends a zip of images, a folder, or one bare image or GeoTIFF scene as it is: the
server tells them apart by their first bytes. To a server that offers tus (OPTIONS
/api/uploads/), the upload is resumable (client/tus.py): in chunks, resumed after a dropped
link and after a new run of the same command; a folder is first zipped into the user's
cache, so its size is known and a new run sends the same bytes. To an older server, one
multipart request, a folder zipped as it streams.

Downloads (the result zip, a GeoJSON) go to FILE.part and resume from there (session.py).
`fetch --parts summary,spills` asks for a zip of only those parts.

`fetch --geojson FILE` waits for the job as `fetch` does, then saves only the slicks of
the job as one GeoJSON file (kilobytes, where the result zip may be gigabytes: for a
satellite link).

Progress bars (tqdm) go to stderr, and only when it is a terminal; results go to stdout,
as a short table or, with --json, one JSON object. The job's bar counts tiles, the units of
work the server sends to the ML service (a plain image is one; a scene is cut into many).

Exit codes: 0 every image done; 1 the job finished with failed images; 2 bad arguments;
3 the server refused (bad zip, wrong token, unknown job ...); 4 no answer from the server
for longer than --give-up-s; 5 (status only) the job is not finished yet.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

from . import tus
from .cache import UploadBook, file_key, folder_key, zip_path
from .folders import folder_files, zip_stream, zip_to_file
from .reports import (
    EXIT_FAILURES,
    EXIT_GONE,
    EXIT_OK,
    EXIT_REFUSED,
    EXIT_RUNNING,
    geojson_summary,
    report,
    report_geojson,
    summary,
    tile_counts,
)
from .session import ApiFailure, OilspillClient, ServerGone

MIB = 1024 * 1024

ZIP = "application/zip"
# The content type a file is sent with, by its first bytes. Only a label: the server
# recognises the upload by its content (and refuses what it cannot use).
_MAGIC: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", ZIP), (b"PK\x05\x06", ZIP),
    (b"II*\x00", "image/tiff"), (b"MM\x00*", "image/tiff"),
    (b"II+\x00", "image/tiff"), (b"MM\x00+", "image/tiff"),  # BigTIFF
    (b"\x89PNG\r\n\x1a\n", "image/png"), (b"\xff\xd8\xff", "image/jpeg"),
    (b"BM", "image/bmp"),
)


def content_type_of(head: bytes) -> str:
    """The content type of a file that starts with `head`; application/octet-stream when
    it is none this service knows."""
    return next((kind for magic, kind in _MAGIC if head.startswith(magic)),
                "application/octet-stream")


@dataclass(frozen=True)
class ClientOptions:
    """server: its base URL. give_up_s: how long to wait for an answer (or, in a transfer,
    for a byte more). chunk_bytes: the size of each resumable upload's PATCH. cache: the
    client's folder in the user's cache (cache.cache_dir)."""

    server: str
    token: str | None
    as_json: bool
    give_up_s: float
    chunk_bytes: int = 8 * MIB
    cache: Path | None = None

    @property
    def bars(self) -> bool:
        return not self.as_json and sys.stderr.isatty()


def _bar(options: ClientOptions, **kwargs: Any) -> tqdm:
    return tqdm(file=sys.stderr, disable=not options.bars, dynamic_ncols=True, **kwargs)


def _say(options: ClientOptions, message: str) -> None:
    if not options.as_json:
        print(message, file=sys.stderr)


async def _chunks(source: Iterator[bytes], bar: tqdm) -> AsyncIterator[bytes]:
    """Read a blocking chunk source in a thread, counting bytes on the bar."""
    while (chunk := await asyncio.to_thread(next, source, None)) is not None:
        bar.update(len(chunk))
        yield chunk


def _file_chunks(path: Path) -> Iterator[bytes]:
    with open(path, "rb") as fh:
        while chunk := fh.read(256 * 1024):
            yield chunk


def _source(path: Path) -> tuple[int, Iterator[bytes], str, str]:
    """(bytes to send, the chunks, the upload's name, its content type) of a folder to zip,
    or of a file (a zip, an image, a scene) to send as it is."""
    if path.is_dir():
        files = folder_files(path)
        if not files:
            raise ApiFailure(400, f"{path} holds no files")
        total = sum(f.stat().st_size for f in files)
        return total, zip_stream(path, files), f"{path.resolve().name or 'images'}.zip", ZIP
    with open(path, "rb") as fh:
        head = fh.read(16)
    return path.stat().st_size, _file_chunks(path), path.name, content_type_of(head)


async def _upload(client: OilspillClient, path: Path, options: ClientOptions) -> dict[str, Any]:
    """One multipart request, for a server without tus."""
    total, source, name, content_type = await asyncio.to_thread(_source, path)
    with _bar(options, total=total, unit="B", unit_scale=True, desc="upload") as bar:
        return await client.upload(_chunks(source, bar), name, content_type)


@dataclass(frozen=True)
class _Resumable:
    """What a resumable upload sends: its key in the upload book, the file of its bytes and
    the upload's name. zipped: that file is a folder's zip in the cache (removed once it is
    a job); to_zip: the folder's files to zip into it first (none when an earlier run left
    the zip whole)."""

    key: str
    source: Path
    name: str
    zipped: bool = False
    to_zip: tuple[Path, ...] = ()


def _resumable(path: Path, server: str, cache: Path) -> _Resumable:
    """The upload of a file as it is, or of a folder as a zip kept in the cache."""
    if not path.is_dir():
        return _Resumable(file_key(server, path), path, path.name)
    files = folder_files(path)
    if not files:
        raise ApiFailure(400, f"{path} holds no files")
    key = folder_key(server, path, files)
    dest = zip_path(cache, key)
    return _Resumable(key, dest, f"{path.resolve().name or 'images'}.zip", True,
                      () if dest.is_file() else tuple(files))


async def _zip_folder(path: Path, upload: _Resumable, options: ClientOptions) -> None:
    total = await asyncio.to_thread(lambda: sum(f.stat().st_size for f in upload.to_zip))
    _say(options, f"oilspill: zipping {path} into {upload.source.parent} first, so that the "
                  "upload can resume")
    with _bar(options, total=total, unit="B", unit_scale=True, desc="zip") as bar:
        await asyncio.to_thread(zip_to_file, path, upload.to_zip, upload.source, bar.update)


async def _upload_resumable(client: OilspillClient, path: Path, options: ClientOptions
                            ) -> str:
    """A tus upload, resumed if an earlier run began it; the job's id."""
    assert options.cache is not None
    upload = await asyncio.to_thread(_resumable, path, client.base, options.cache)
    if upload.to_zip:
        await _zip_folder(path, upload, options)
    size = await asyncio.to_thread(lambda: upload.source.stat().st_size)
    sending = tus.TusUpload(client, UploadBook(options.cache), upload.key, upload.source,
                            size, upload.name, options.chunk_bytes)
    await sending.open()
    if sending.offset and sending.job_id is None:
        _say(options, f"oilspill: resuming the upload of {path} at byte {sending.offset} of "
                      f"{size}")
    with _bar(options, total=size, initial=sending.offset, unit="B", unit_scale=True,
              desc="upload") as bar:
        def moved(offset: int) -> None:
            bar.n = offset
            bar.refresh()
        try:
            job_id = await sending.send(moved)
        except ApiFailure:  # refused: the server has removed the upload
            await _drop_zip(upload)
            raise
        except ServerGone as exc:
            raise ServerGone(f"{exc}; the upload is kept: run the same command again to "
                             "resume it") from None
    await _drop_zip(upload)
    return job_id


async def _drop_zip(upload: _Resumable) -> None:
    if upload.zipped:
        await asyncio.to_thread(upload.source.unlink, missing_ok=True)


async def _submit(client: OilspillClient, path: Path, options: ClientOptions
                  ) -> dict[str, Any]:
    """Upload `path` (resumable when the server offers it); the job's first answer."""
    if options.cache is None or not await tus.offered(client):
        return await _upload(client, path, options)
    job_id = await _upload_resumable(client, path, options)
    return await client.job(job_id)


async def _wait(client: OilspillClient, job_id: str, options: ClientOptions
                ) -> dict[str, Any]:
    with _bar(options, unit="tile", desc="tiles") as bar:
        def progress(job: dict[str, Any]) -> None:
            bar.n, bar.total = tile_counts(job)
            state: dict[str, Any] = {
                "images": f"{job['done'] + job['failed']}/{job['total']}",
                "failed": job["failed"]}
            if job["waiting_for_ml_service"]:
                state["ml"] = "unreachable, waiting"
            bar.set_postfix(state, refresh=False)
            bar.refresh()
        return await client.wait(job_id, 1.0, progress)


async def _download(client: OilspillClient, job_id: str, out: Path | None,
                    options: ClientOptions, parts: Sequence[str] = ()) -> Path:
    url = await client.archive_url(job_id, parts)
    dest = out or Path(url.rsplit("/", 1)[1])
    with _bar(options, unit="B", unit_scale=True, desc="download") as bar:
        def progress(received: int, total: int | None) -> None:
            bar.total = total
            bar.n = received
            bar.refresh()
        return await client.download(url, dest, progress)


async def _download_geojson(client: OilspillClient, job_id: str, dest: Path,
                           options: ClientOptions) -> Path:
    with _bar(options, unit="B", unit_scale=True, desc="geojson") as bar:
        def progress(received: int, total: int | None) -> None:
            bar.total = total
            bar.n = received
            bar.refresh()
        return await client.download(f"/api/job/{job_id}/spills.geojson", dest, progress)


async def _run(options: ClientOptions, action: str, target: str, out: Path | None,
               wait: bool, geojson: Path | None = None, parts: Sequence[str] = ()) -> int:
    def retrying(reason: str) -> None:
        _say(options, f"oilspill: {reason}; retrying")

    # No total timeout: building the result zip of a large job may take minutes, and the
    # server answers when it is done; a dead connection is noticed and retried.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = OilspillClient(session, options.server, options.token, options.give_up_s, retrying)
        try:
            if action == "submit":
                accepted = await _submit(client, Path(target), options)
                job_id = accepted["job_id"]
                if not wait:
                    print(json.dumps(accepted) if options.as_json else job_id)
                    return EXIT_OK
            else:
                job_id = target
            if action == "status":
                job = await client.job(job_id)
                if options.as_json:
                    print(json.dumps(job))
                else:
                    tiles_done, tiles = tile_counts(job)
                    print(f"job {job_id}: {job['status']}, {job['done']} done, {job['failed']}"
                          f" failed, {job['queued'] + job['running']} to go of {job['total']};"
                          f" {tiles_done} of {tiles} tiles"
                          + (" (waiting for the ML service)"
                             if job["waiting_for_ml_service"] else ""))
                return EXIT_RUNNING if job["finished_at"] is None else (
                    EXIT_FAILURES if job["failed"] else EXIT_OK)
            job = await _wait(client, job_id, options)
            if geojson is not None:  # only the slicks, no zip
                saved = await _download_geojson(client, job_id, geojson, options)
                slicks = await asyncio.to_thread(geojson_summary, saved)
                return report_geojson(job, slicks, saved, options.as_json)
            zip_path = await _download(client, job_id, out, options, parts)
            found = await asyncio.to_thread(summary, zip_path)
            return report(job, found, zip_path, options.as_json)
        except ApiFailure as exc:
            print(f"oilspill: the server refused: {exc}", file=sys.stderr)
            return EXIT_REFUSED
        except ServerGone as exc:
            print(f"oilspill: {exc}", file=sys.stderr)
            return EXIT_GONE
        except (OSError, ValueError) as exc:  # ValueError: a body that is not GeoJSON
            print(f"oilspill: {exc}", file=sys.stderr)
            return EXIT_REFUSED


def run(options: ClientOptions, action: str, target: str, out: Path | None = None,
        wait: bool = True, geojson: Path | None = None, parts: Sequence[str] = ()) -> int:
    """Run one client command; returns the exit code. With `geojson` (fetch only), save the
    job's GeoJSON there instead of downloading its zip; with `parts`, download a zip of
    only those parts."""
    return asyncio.run(_run(options, action, target, out, wait, geojson, parts))
