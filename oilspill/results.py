"""A finished job's result zip: masks, overlays, summary; built once, off the event loop,
then served by name. Overlays are drawn once however many ask at the same time.

Names in the zip come from the user's paths, made safe for every desktop and unique there
(`_zip_stems`); summary.json and summary.csv keep the user's own name beside the one in the
zip. An image whose overlay (or slicks file) cannot be made is still in the zip, without
it, and README.txt and the summary say why: one bad image never sinks the job's zip.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import shutil
import threading
import time
import zipfile
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from pathlib import Path, PurePosixPath

from .jobs import ResultKind, Task
from .masks import UnreadableImage, ensure_overlay
from .names import zip_names
from .paths import ARCHIVE_PARTS, PARTIAL_SUFFIX, JobPaths, archive_name
from .store import NotFound, Store

logger = logging.getLogger(__name__)

ALL_PARTS = frozenset(ARCHIVE_PARTS)

SUMMARY_FIELDS = ("filename", "status", "width", "height", "oil_fraction", "oil_pixels",
                  "slick_count", "largest_slick_px", "result", "overlay", "spills", "error",
                  "tiles", "crs", "bounds", "total_area_km2", "largest_slick_km2",
                  "largest_slick_centroid", "db_kind", "scale_low_db", "scale_high_db",
                  "zip_name", "overlay_error")
# A CSV cell starting with one of these is a formula to a spreadsheet (OWASP, "CSV
# injection"): such a text cell gets a leading "'".
FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
# What draws a task's overlay (path or None), in any thread: OverlayDrawings.draw.
DrawOverlay = Callable[[JobPaths, Task], Path | None]

README_TXT = """\
oilspill results
================

masks/<image>.png     one per image the ML service segmented: one channel, the image's
                      width and height, 0 = sea, 255 = oil. <image> is the image's path in
                      your upload, its extension replaced, made safe to unpack on Windows,
                      macOS and Linux: characters they refuse (<>:"|?* and controls) become
                      _, trailing dots and spaces go, device names (CON, NUL, COM1 ...) get
                      a _ before them; names that would be one file there (Scene and scene,
                      composed and decomposed accents) or a file and a folder at once get
                      ~2, ~3 ... (summary: zip_name).
masks/<image>.tif     for a TIFF scene or Sentinel-1 product: the stitched mask as a
                      Cloud-Optimized GeoTIFF with the scene's CRS and transform (or its
                      ground control points); 0 = sea, 255 = oil, 127 = no data (outside
                      the scene's valid area).
overlays/<image>.png  the same image in grey with the oil tinted orange, for looking at;
                      its longest side is at most OILSPILL_OVERLAY_MAX_PX.
results/<image>.<ext> pictures an ML service sent instead of masks (an annotated JPEG from
                      a YOLO-style service); no statistics are computed for them.
summary.csv           one row per image of the upload (a text cell that a spreadsheet
summary.json          would take for a formula, starting with = + - @, starts with '):
                        filename           the image's path in the upload, as you named it
                        zip_name           its name in this zip (<image> above)
                        status             done or failed
                        width, height      in pixels
                        oil_fraction       oil pixels / all pixels, 0..1
                        oil_pixels         pixels marked oil in the mask
                        slick_count        separate slicks (8-connected areas of oil)
                        largest_slick_px   pixels of the largest slick
                        result, overlay    its files in this zip
                        overlay_error      why its overlay is not in this zip, if it is not
                        error              why it failed, for a failed image
                        tiles              for a scene: the tiles it was cut into
                        crs                for a scene: its coordinate reference system
                        db_kind, scale_low_db, scale_high_db
                                           for a scene: the one scale its tiles were sent
                                           to the ML service on (dB of sigma0, amplitude
                                           or intensity, 1st and 99th percentile -> 0, 255)
                        spills             its slicks' GeoJSON in this zip
                        bounds             for a scene: west, south, east, north (degrees)
                        total_area_km2, largest_slick_km2
                                           for a georeferenced scene: geodesic areas
                        largest_slick_centroid
                                           its centre: latitude, longitude (degrees)
For a scene, oil_fraction is over its valid area (the border and nodata are not sea).
spills/<image>.geojson  an image's slicks as RFC 7946 GeoJSON (lon/lat, WGS84) with
                      slick_id, area_km2, perimeter_km, length_km, centroid_lon/lat,
                      pixels, mean_contrast_db, confidence; pictures without georeference
                      in pixel coordinates ("coordinates": "pixel", areas null).
spills.geojson        the job's slicks in one file (opens in QGIS as it is). An image with
                      more slicks than the server outlines (OILSPILL_MAX_SLICKS) has its
                      largest ones here; slick_count in the summary counts them all.
"""


def _places(task: Task) -> list[tuple[str, str]]:
    """(folder, suffix) of each file a done task has in the zip, below its name there."""
    if task.result_name is None:
        return []
    suffix = PurePosixPath(task.result_name).suffix
    if task.result_kind is ResultKind.MASK:
        return [("masks", suffix), ("overlays", ".png"), ("spills", ".geojson")]
    return [("results", suffix)]


def _zip_stems(tasks: Sequence[Task]) -> dict[str, str]:
    """A name in the result zip for each done task, from its path in the upload: safe and
    unique on every desktop (see names.zip_names)."""
    return zip_names((task.id, task.filename, places) for task in tasks
                     if task.result_kind is not None and (places := _places(task)))


def _entries(task: Task, stem: str | None) -> tuple[str | None, str | None]:
    """(result, overlay) paths in the zip of a task."""
    if stem is None or task.result_name is None:
        return None, None
    if task.result_kind is ResultKind.MASK:
        suffix = PurePosixPath(task.result_name).suffix
        return f"masks/{stem}{suffix}", f"overlays/{stem}.png" if task.has_overlay else None
    return f"results/{stem}{PurePosixPath(task.result_name).suffix}", None


def _spills_entry(task: Task, stem: str | None) -> str | None:
    """The task's GeoJSON in the zip: a mask's slicks."""
    if stem is None or task.result_kind is not ResultKind.MASK:
        return None
    return f"spills/{stem}.geojson"


def _csv_value(value: object) -> object:
    """A summary value as a CSV cell: lists (bounds, a centroid) as space-separated numbers;
    text that a spreadsheet would run as a formula behind a "'"."""
    if isinstance(value, list):
        value = " ".join(str(v) for v in value)
    if isinstance(value, str) and value.startswith(FORMULA_START):
        return f"'{value}"
    return value


def summary_rows(tasks: Sequence[Task], stems: dict[str, str],
                 left_out: dict[str, str] | None = None) -> list[dict[str, object]]:
    """One row per task; `left_out`: why a task's overlay is not in the zip (by task id)."""
    left_out = left_out or {}
    rows: list[dict[str, object]] = []
    for t in tasks:
        result, overlay = _entries(t, stems.get(t.id))
        scene = t.scene or {}
        scale = scene.get("scale") or {}
        rows.append({
            "filename": t.filename, "status": t.status.value, "width": t.width,
            "height": t.height, "oil_fraction": t.oil_fraction, "oil_pixels": t.oil_pixels,
            "slick_count": t.slick_count, "largest_slick_px": t.largest_slick_px,
            "result": result, "overlay": None if t.id in left_out else overlay,
            "spills": _spills_entry(t, stems.get(t.id)),
            "error": t.error, "tiles": scene.get("tiles"), "crs": scene.get("crs"),
            "bounds": scene.get("bounds_lonlat"), "total_area_km2": scene.get("total_area_km2"),
            "largest_slick_km2": scene.get("largest_slick_km2"),
            "largest_slick_centroid": scene.get("largest_slick_centroid"),
            "db_kind": scale.get("db_kind"), "scale_low_db": scale.get("low_db"),
            "scale_high_db": scale.get("high_db"), "zip_name": stems.get(t.id),
            "overlay_error": left_out.get(t.id),
        })
    return rows


def task_overlay(paths: JobPaths, task: Task, max_px: int, *, max_slicks: int) -> Path | None:
    """A done mask's overlay: a scene's quick-look, drawn by strips when it was stitched and
    never redrawn whole (None if it is gone), or a picture's, drawn on first use and kept.
    Raises UnreadableImage (why, in user's terms) or FileNotFoundError."""
    if not task.has_overlay or task.result_name is None:
        return None
    if task.tiled:
        quicklook = paths.overlay(task.result_name)
        return quicklook if quicklook.is_file() else None
    started = time.monotonic()
    overlay = paths.overlay(task.result_name)
    if overlay.is_file():
        return overlay
    try:
        drawn = ensure_overlay(paths.image(task.stored_name),
                               paths.result(ResultKind.MASK, task.result_name),
                               overlay, paths.overlay_partial(task.result_name), max_px,
                               max_slicks=max_slicks)
    except UnreadableImage as exc:
        # The user reads the reason; the log keeps the reader's own words (GDAL's) too.
        cause: BaseException = exc
        while cause.__cause__ is not None:
            cause = cause.__cause__
        logger.warning("job %s task %s: %s (%s)", task.job_id, task.id, exc, cause)
        raise
    logger.info("job %s task %s: overlay drawn in %.2f s", task.job_id, task.id,
                time.monotonic() - started)
    return drawn


class OverlayDrawings:
    """Draws each overlay once, however many ask at the same time: the first asker starts
    the drawing (in a thread), the others wait for its result; a request on the event loop
    waits without holding a thread. What one drawing costs is then what six cost."""

    def __init__(self, max_px: int, *, max_slicks: int) -> None:
        self._max_px = max_px
        self._max_slicks = max_slicks
        # Drawings in flight by overlay path; the lock guards only this dict.
        self._lock = threading.Lock()
        self._flights: dict[Path, Future[Path | None]] = {}
        self._threads: set[asyncio.Future[None]] = set()

    def _join(self, paths: JobPaths, task: Task) -> tuple[Path, Future[Path | None], bool]:
        """(key, the drawing in flight, True if the caller is to draw it)."""
        key = paths.overlay(task.result_name or "")
        with self._lock:
            flight = self._flights.get(key)
            if flight is not None:
                return key, flight, False
            flight = Future()
            # Running from the start: a waiter that goes away cannot cancel it for the rest.
            flight.set_running_or_notify_cancel()
            self._flights[key] = flight
            return key, flight, True

    def _fly(self, key: Path, flight: Future[Path | None], paths: JobPaths, task: Task
             ) -> None:
        try:
            flight.set_result(task_overlay(paths, task, self._max_px,
                                           max_slicks=self._max_slicks))
        except BaseException as exc:  # every waiter gets it
            flight.set_exception(exc)
            if not isinstance(exc, Exception):
                raise
        finally:
            with self._lock:
                del self._flights[key]

    def draw(self, paths: JobPaths, task: Task) -> Path | None:
        """The overlay (see task_overlay), from any thread; blocks until it is drawn."""
        if not task.has_overlay:
            return None
        key, flight, mine = self._join(paths, task)
        if mine:
            self._fly(key, flight, paths, task)
        return flight.result()

    async def draw_async(self, paths: JobPaths, task: Task) -> Path | None:
        """The overlay (see task_overlay), for the event loop: drawn in a thread."""
        if not task.has_overlay:
            return None
        key, flight, mine = self._join(paths, task)
        if mine:
            # Kept until it ends: the drawing goes on if this request goes away.
            thread = asyncio.get_running_loop().run_in_executor(
                None, self._fly, key, flight, paths, task)
            self._threads.add(thread)
            thread.add_done_callback(self._threads.discard)
        return await asyncio.wrap_future(flight)


def _readme(left_out: Sequence[str], parts: frozenset[str] = ALL_PARTS) -> str:
    """README.txt, with what was left out of this zip and why."""
    text = README_TXT
    if parts != ALL_PARTS:
        text += ("\nThis zip holds only: " + ", ".join(p for p in ARCHIVE_PARTS if p in parts)
                 + " (asked for with ?parts=); the whole zip has the rest.\n")
    if not left_out:
        return text
    return (text + "\nLeft out of this zip (the summary says the same):\n"
            + "".join(f"  {line}\n" for line in left_out))


def _write_extras(zf: zipfile.ZipFile, paths: JobPaths, task: Task, stem: str | None,
                  draw: DrawOverlay, left_out: dict[str, str], notes: list[str],
                  parts: frozenset[str], max_slicks: int) -> None:
    """A done task's overlay and slicks into the zip (those of `parts`); what cannot be made
    is noted, never raised: one bad image does not sink the zip."""
    _, overlay = _entries(task, stem)
    if overlay and "overlays" in parts:
        try:
            drawn = draw(paths, task)
            if drawn is None:
                raise UnreadableImage("the overlay is missing")
            zf.write(drawn, overlay, compress_type=zipfile.ZIP_STORED)
        except Exception as exc:
            if isinstance(exc, UnreadableImage):  # task_overlay logged why
                reason = str(exc)
                logger.info("job %s task %s: overlay left out of the zip", task.job_id, task.id)
            else:
                reason = ("the overlay could not be drawn (the server log has why, under "
                          f"task {task.id})")
                logger.exception("job %s task %s: overlay left out of the zip", task.job_id,
                                 task.id)
            left_out[task.id] = reason
            notes.append(f"{overlay}: {reason}")
    # An image's own slicks sit beside its mask; spills.geojson holds them all anyway.
    if (spills := _spills_entry(task, stem)) and {"spills", "masks"} <= parts:
        try:
            zf.write(task_spills(paths, task, max_slicks=max_slicks), spills)
        except Exception:
            logger.exception("job %s task %s: slicks left out of the zip", task.job_id, task.id)
            notes.append(f"{spills}: its slicks could not be read from the mask (the server "
                         f"log has why, under task {task.id})")


def build_result_zip(paths: JobPaths, tasks: Sequence[Task], overlay_max_px: int,
                     draw: DrawOverlay | None = None,
                     parts: frozenset[str] = ALL_PARTS, *, max_slicks: int) -> Path:
    """Write the job's result zip atomically: of `parts`, masks/ and results/ ("masks"),
    overlays/ ("overlays"), spills.geojson ("spills"; and spills/, each image's, with
    "masks" too), summary.csv and summary.json ("summary"); README.txt always. `draw`
    makes each overlay (by default: task_overlay)."""
    def draw_here(paths: JobPaths, task: Task) -> Path | None:
        return task_overlay(paths, task, overlay_max_px, max_slicks=max_slicks)

    draw = draw or draw_here
    stems = _zip_stems(tasks)
    left_out: dict[str, str] = {}
    notes: list[str] = []
    target = paths.archive_of(parts)
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for task in tasks:
            result, _ = _entries(task, stems.get(task.id))
            if result is None or task.result_kind is None or task.result_name is None:
                continue
            if "masks" in parts:
                # PNG and JPEG are compressed already: store them as they are.
                zf.write(paths.result(task.result_kind, task.result_name), result,
                         compress_type=zipfile.ZIP_STORED)
            _write_extras(zf, paths, task, stems.get(task.id), draw, left_out, notes, parts,
                          max_slicks)
        if "spills" in parts:
            try:
                zf.write(job_spills(paths, tasks, max_slicks=max_slicks), "spills.geojson")
            except Exception:
                logger.exception("job %s: spills.geojson left out of the zip", paths.job_id)
                notes.append("spills.geojson: the job's slicks could not be gathered (the "
                             f"server log has why, under job {paths.job_id})")
        if "summary" in parts:
            rows = summary_rows(tasks, stems, left_out)
            text = io.StringIO()
            # RFC 4180's CRLF: a name holding a lone CR or LF is then quoted, never a new row.
            writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS, lineterminator="\r\n")
            writer.writeheader()
            writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
            zf.writestr("summary.csv", text.getvalue())
            zf.writestr("summary.json", json.dumps(rows, indent=1))
        zf.writestr("README.txt", _readme(notes, parts))
    with open(partial, "rb+") as fh:
        os.fsync(fh.fileno())
    os.replace(partial, target)
    return target


class JobNotFinished(Exception):
    """The job still has queued or running tasks."""

    def __init__(self, job_id: str) -> None:
        super().__init__(f"job {job_id} is still running; ask again when it is finished")


class ResultArchives:
    """Builds each finished job's result zip at most once, even under concurrent requests."""

    def __init__(self, store: Store, jobs_dir: Path, overlay_max_px: int, *,
                 max_slicks: int) -> None:
        self._store = store
        self._jobs_dir = jobs_dir
        self._overlay_max_px = overlay_max_px
        self._max_slicks = max_slicks
        self._locks: dict[str, asyncio.Lock] = {}
        self._overlays = OverlayDrawings(overlay_max_px, max_slicks=max_slicks)

    async def overlay(self, task: Task) -> Path | None:
        """A done mask's overlay (see task_overlay), drawn once even if many ask at once.
        Raises UnreadableImage or FileNotFoundError."""
        return await self._overlays.draw_async(JobPaths(self._jobs_dir, task.job_id), task)

    def draw_overlay(self, task: Task) -> Path | None:
        """The same from a thread, blocking until it is drawn."""
        return self._overlays.draw(JobPaths(self._jobs_dir, task.job_id), task)

    async def ensure_spills(self, job_id: str) -> Path:
        """The finished job's GeoJSON, built once. Raises JobNotFinished."""
        job = await self._store.get_job(job_id)
        if not job.finished:
            raise JobNotFinished(job_id)
        paths = JobPaths(self._jobs_dir, job_id)
        if paths.job_spills.is_file():
            return paths.job_spills
        lock = self._locks.setdefault(f"{job_id}/spills", asyncio.Lock())
        try:
            async with lock:
                if not paths.job_spills.is_file():
                    tasks = await self._store.list_tasks(job_id)
                    try:
                        await asyncio.to_thread(job_spills, paths, tasks,
                                                max_slicks=self._max_slicks)
                    except Exception:
                        await self._unless_deleted(paths)
                        raise
                    await self._unless_deleted(paths)
                    logger.info("job %s: spills GeoJSON built (%d tasks)", job_id, len(tasks))
                return paths.job_spills
        finally:
            if not lock.locked():
                self._locks.pop(f"{job_id}/spills", None)

    async def ensure(self, job_id: str, parts: frozenset[str] = ALL_PARTS) -> str:
        """The result zip's file name (the whole zip, or one of only `parts`), building it
        first if needed. Raises JobNotFinished; NotFound if the job is deleted meanwhile."""
        job = await self._store.get_job(job_id)
        if not job.finished:
            raise JobNotFinished(job_id)
        paths = JobPaths(self._jobs_dir, job_id)
        name = archive_name(job_id, parts)
        if job.archive_name == name or (
                parts != ALL_PARTS and await asyncio.to_thread(paths.archive_of(parts).is_file)):
            return name
        key = f"{job_id}/{name}"
        lock = self._locks.setdefault(key, asyncio.Lock())
        try:
            async with lock:
                job = await self._store.get_job(job_id)
                if job.archive_name == name or (parts != ALL_PARTS and await asyncio.to_thread(
                        paths.archive_of(parts).is_file)):
                    return name
                tasks = await self._store.list_tasks(job_id)
                logger.info("job %s: building result zip %s", job_id, name)
                started = time.monotonic()
                try:
                    await asyncio.to_thread(build_result_zip, paths, tasks,
                                            self._overlay_max_px, self._overlays.draw, parts,
                                            max_slicks=self._max_slicks)
                except Exception:
                    await self._unless_deleted(paths)
                    raise
                await self._unless_deleted(paths)
                if parts == ALL_PARTS:
                    await self._store.set_job_archive(job_id, name)
                logger.info("job %s: result zip %s built in %.2f s (%d tasks)", job_id, name,
                            time.monotonic() - started, len(tasks))
                return name
        finally:
            if not lock.locked():
                self._locks.pop(key, None)

    async def _unless_deleted(self, paths: JobPaths) -> None:
        """After a build: if the job was deleted meanwhile, remove what the build left in
        its folder (the deletion's own sweep may have run before the build wrote it) and
        raise NotFound (answered 410)."""
        try:
            await self._store.get_job(paths.job_id)
        except NotFound:
            await asyncio.to_thread(shutil.rmtree, paths.root, True)
            raise


# GeoJSON needs the geometry libraries (GDAL, shapely, pyproj): imported by the first call, in
# the thread that builds it, so that a server whose results nobody asks as GeoJSON never
# loads them and the event loop never waits for them.

def task_spills(paths: JobPaths, task: Task, *, max_slicks: int) -> Path:
    """A done task's GeoJSON file (see spills.ensure_task_spills). Blocking."""
    from .spills import ensure_task_spills
    return ensure_task_spills(paths, task, max_slicks=max_slicks)


def job_spills(paths: JobPaths, tasks: Sequence[Task], *, max_slicks: int) -> Path:
    """A finished job's spills.geojson (see spills.build_job_spills). Blocking."""
    from .spills import build_job_spills
    return build_job_spills(paths, tasks, max_slicks=max_slicks)
