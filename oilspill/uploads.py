"""Accepting an upload: stream it to disk, unpack it off the loop, record the job and tasks.

A rejected upload leaves nothing behind: its folder is removed and no row is written.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import sys
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiofiles
from PIL import Image, UnidentifiedImageError

from .config import SceneSettings, Settings
from .geo.errors import SceneError
from .jobs import NewTask, NewTile
from .masks import LABELLING, load_labelling
from .paths import JobPaths, new_id, new_user_hash, stored_image_name
from .store import Store
from .unpack import (
    ZIP_MAGIC,
    NotAZip,
    Unpacked,
    UnpackedImage,
    UnpackLimits,
    sniff_image,
    unpack_images,
)

logger = logging.getLogger(__name__)


class UploadError(Exception):
    """The upload cannot become a job."""


class UploadTooLarge(UploadError):
    pass


class DiskFull(UploadError):
    """The data folder's file system is (nearly) full."""


_DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}


@contextlib.contextmanager
def disk_full_as_error() -> Iterator[None]:
    """Turn a write that failed for lack of space (ENOSPC, EDQUOT, EFBIG) into DiskFull."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _DISK_FULL_ERRNOS:
            raise DiskFull(f"no space left for the upload: {exc.strerror}") from None
        raise


class NoImages(UploadError):
    """The zip holds no image; `skipped` says what was there instead."""

    def __init__(self, skipped: list[tuple[str, str]]) -> None:
        shown = ", ".join(f"{name} ({reason})" for name, reason in skipped[:10])
        more = f" and {len(skipped) - 10} more" if len(skipped) > 10 else ""
        super().__init__(f"the zip holds no usable image; skipped: {shown or 'nothing'}{more}")
        self.skipped = skipped


@dataclass(frozen=True)
class Accepted:
    job_id: str
    task_ids: list[str]
    skipped: list[tuple[str, str]]
    user_hash: str


def _unpack(paths: JobPaths, settings: Settings, upload_name: str) -> tuple[Unpacked, bool]:
    """The upload's images: a zip's, or the upload itself when it is one image (recognised
    by its first bytes). Returns them and whether the upload was a bare image."""
    with open(paths.upload, "rb") as fh:
        head = fh.read(16)
    kind = sniff_image(head)
    if kind is None:
        if not head.startswith(ZIP_MAGIC):
            raise NotAZip("the upload is neither a zip nor an image (PNG, JPEG, TIFF, BMP): "
                          "not a readable zip")
        unpacked = unpack_images(paths.upload, paths.images, UnpackLimits(
            max_entries=settings.max_zip_entries,
            max_unpacked_bytes=settings.max_unpacked_bytes,
            max_compression_ratio=settings.max_compression_ratio,
        ), settings.s1_polarisation)
    else:
        extension, content_type = kind
        stored = stored_image_name(0, extension)
        paths.images.mkdir()
        os.replace(paths.upload, paths.image(stored))
        unpacked = Unpacked(images=[UnpackedImage(upload_name, stored, content_type)])
    for folder in paths.result_folders:
        folder.mkdir(exist_ok=True)
    return unpacked, kind is not None


def _new_tasks(paths: JobPaths, settings: Settings, unpacked: Unpacked, bare: bool
               ) -> list[NewTask]:
    """One task per image; a TIFF, or a PNG or JPEG larger than a tile, is a scene, cut into
    units from its header. A scene that cannot be used fails its task with the reason, or
    refuses a bare upload."""
    tasks = []
    for image in unpacked.images:
        units: tuple[NewTile, ...] = ()
        error = None
        scene_settings = SceneSettings.of(settings)
        try:
            if image.content_type == "image/tiff":
                from .scenes import plan_units  # GDAL & co, loaded by the first scene
                units = plan_units(paths.image(image.stored_name), scene_settings)
            elif image.content_type in ("image/png", "image/jpeg") and not _fits_one_tile(
                    paths.image(image.stored_name), settings.tile_px):
                from .scenes import picture_as_scene
                units = picture_as_scene(paths, image.stored_name, scene_settings)
        except SceneError as exc:
            if bare:
                raise
            error = str(exc)
        tasks.append(NewTask(id=new_id(), filename=image.filename,
                             stored_name=image.stored_name, content_type=image.content_type,
                             tiles=units, error=error))
    return tasks


def _fits_one_tile(path: Path, tile_px: int) -> bool:
    """True when a picture's header (read by Pillow, no pixel decoded) gives a size within
    one tile: it is sent whole, and a server that only ever sees such pictures never loads
    the raster libraries. False when Pillow cannot tell: the scene code decides then."""
    try:
        with Image.open(path) as image:
            width, height = image.size
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        return False
    return width <= tile_px and height <= tile_px


def _prepare(paths: JobPaths, settings: Settings, upload_name: str
             ) -> tuple[list[NewTask], list[tuple[str, str]]]:
    unpacked, bare = _unpack(paths, settings, upload_name)
    if not unpacked.images:
        raise NoImages(unpacked.skipped)
    return _new_tasks(paths, settings, unpacked, bare), unpacked.skipped


class IncomingUpload:
    """One upload on its way to becoming a job; use as `async with`.

    `receive()` streams the zip to disk, `commit()` unpacks it and records the job. Leaving
    the block without a commit (an error, a client that went away) removes everything.
    """

    def __init__(self, store: Store, settings: Settings, active: set[str],
                 expected_bytes: int | None = None) -> None:
        self._store = store
        self._settings = settings
        self._active = active
        self._expected_bytes = expected_bytes or 0
        self.job_id = new_id()
        self.received_bytes = 0
        self._paths = JobPaths(settings.jobs_dir, self.job_id)
        self._committed = False
        self._loading: asyncio.Future[None] | None = None

    async def __aenter__(self) -> IncomingUpload:
        free = (await asyncio.to_thread(shutil.disk_usage, self._settings.data_dir)).free
        if free - self._expected_bytes < self._settings.min_free_bytes:
            raise DiskFull(f"the server has {free} bytes free, and keeps at least "
                           f"{self._settings.min_free_bytes} free (OILSPILL_MIN_FREE_BYTES)")
        if LABELLING not in sys.modules:  # work has come: load what answers need, meanwhile
            self._loading = asyncio.ensure_future(asyncio.to_thread(load_labelling))
        # Registered first: the orphan sweep leaves a folder alone while its upload arrives.
        self._active.add(self.job_id)
        await asyncio.to_thread(self._paths.root.mkdir, parents=True)
        return self

    async def __aexit__(self, exc_type: object, exc: BaseException | None,
                        tb: object) -> None:
        self._active.discard(self.job_id)
        if not self._committed:
            # Shielded: a cancelled request (client gone) must still clean up.
            await asyncio.shield(asyncio.to_thread(shutil.rmtree, self._paths.root, True))
            logger.info("job %s: upload rejected (%s)", self.job_id,
                        exc_type.__name__ if isinstance(exc_type, type) else "not committed")

    async def receive(self, chunks: AsyncIterator[bytes]) -> int:
        """Write the zip to disk as it arrives; raise UploadTooLarge past the limit."""
        limit = self._settings.max_upload_bytes
        received = 0
        with disk_full_as_error():
            async with aiofiles.open(self._paths.upload_part, "wb") as out:
                async for chunk in chunks:
                    received += len(chunk)
                    if received > limit:
                        raise UploadTooLarge(
                            f"upload is larger than {limit} bytes (OILSPILL_MAX_UPLOAD_BYTES)")
                    await out.write(chunk)
                await out.flush()
                await asyncio.to_thread(os.fsync, out.fileno())
        await asyncio.to_thread(os.replace, self._paths.upload_part, self._paths.upload)
        logger.info("job %s: received %d bytes", self.job_id, received)
        self.received_bytes = received
        return received

    async def adopt(self, path: Path) -> int:
        """Take a file that arrived whole by other means (a finished resumable upload) as the
        received upload: it is renamed into the job's folder (the same file system, so no
        copy), then `commit()` treats it exactly as one that `receive()` wrote."""
        size = (await asyncio.to_thread(os.stat, path)).st_size
        limit = self._settings.max_upload_bytes
        if size > limit:
            raise UploadTooLarge(f"upload is larger than {limit} bytes (OILSPILL_MAX_UPLOAD_BYTES)")
        await asyncio.to_thread(os.replace, path, self._paths.upload)
        logger.info("job %s: adopted %d bytes from a resumable upload", self.job_id, size)
        self.received_bytes = size
        return size

    async def commit(self, upload_name: str) -> Accepted:
        """Unpack the received zip (or take the image) and record the job with one queued
        task per image.

        Raises NoImages, unpack.UnpackError or, for a bare scene, geo.scene.SceneError.
        """
        with disk_full_as_error():
            tasks, skipped = await asyncio.to_thread(_prepare, self._paths, self._settings,
                                                     upload_name)
        user_hash = new_user_hash()
        await self._store.create_job(self.job_id, upload_name, tasks, skipped, user_hash)
        self._committed = True
        logger.info("job %s: queued %d tasks (%d tiles) from %s, skipped %d entries",
                    self.job_id, len(tasks), sum(len(t.tiles) for t in tasks), upload_name,
                    len(skipped))
        return Accepted(self.job_id, [t.id for t in tasks], skipped, user_hash)
