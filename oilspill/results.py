"""A finished job's result zip: masks, overlays, summary; built once, off the event loop,
then served by name."""

from __future__ import annotations

import asyncio
import csv
import io
import json
import logging
import os
import time
import zipfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

from .jobs import ResultKind, Task
from .masks import ensure_overlay
from .paths import JobPaths, archive_name
from .spills import build_job_spills, ensure_task_spills
from .store import Store

logger = logging.getLogger(__name__)

SUMMARY_FIELDS = ("filename", "status", "width", "height", "oil_fraction", "oil_pixels",
                  "slick_count", "largest_slick_px", "result", "overlay", "spills", "error",
                  "tiles", "crs", "bounds", "total_area_km2", "largest_slick_km2",
                  "largest_slick_centroid", "db_kind", "scale_low_db", "scale_high_db")

README_TXT = """\
oilspill results
================

masks/<image>.png     one per image the ML service segmented: one channel, the image's
                      width and height, 0 = sea, 255 = oil. <image> is the image's path in
                      your upload, its extension replaced (a clash gets ~2, ~3 ...).
masks/<image>.tif     for a TIFF scene or Sentinel-1 product: the stitched mask as a
                      Cloud-Optimized GeoTIFF with the scene's CRS and transform (or its
                      ground control points); 0 = sea, 255 = oil, 127 = no data (outside
                      the scene's valid area).
overlays/<image>.png  the same image in grey with the oil tinted orange, for looking at;
                      its longest side is at most OILSPILL_OVERLAY_MAX_PX.
results/<image>.<ext> pictures an ML service sent instead of masks (an annotated JPEG from
                      a YOLO-style service); no statistics are computed for them.
summary.csv           one row per image of the upload:
summary.json            filename           the image's path in the upload
                        status             done or failed
                        width, height      in pixels
                        oil_fraction       oil pixels / all pixels, 0..1
                        oil_pixels         pixels marked oil in the mask
                        slick_count        separate slicks (8-connected areas of oil)
                        largest_slick_px   pixels of the largest slick
                        result, overlay    its files in this zip
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
spills/<image>.geojson  every slick of an image as RFC 7946 GeoJSON (lon/lat, WGS84) with
                      slick_id, area_km2, perimeter_km, length_km, centroid_lon/lat,
                      pixels, mean_contrast_db, confidence; pictures without georeference
                      in pixel coordinates ("coordinates": "pixel", areas null).
spills.geojson        every slick of the job in one file (opens in QGIS as it is).
"""


def _zip_stems(tasks: Sequence[Task]) -> dict[str, str]:
    """A unique name in the result zip for each done task, from its path in the upload."""
    used: set[str] = set()
    stems: dict[str, str] = {}
    for task in tasks:
        if task.result_kind is None or task.result_name is None:
            continue
        base = str(PurePosixPath(task.filename).with_suffix(""))
        stem, n = base, 1
        while stem in used:
            n += 1
            stem = f"{base}~{n}"
        used.add(stem)
        stems[task.id] = stem
    return stems


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
    """Lists (bounds, a centroid) as space-separated numbers in the CSV."""
    return " ".join(str(v) for v in value) if isinstance(value, list) else value


def summary_rows(tasks: Sequence[Task], stems: dict[str, str]) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for t in tasks:
        result, overlay = _entries(t, stems.get(t.id))
        scene = t.scene or {}
        scale = scene.get("scale") or {}
        rows.append({
            "filename": t.filename, "status": t.status.value, "width": t.width,
            "height": t.height, "oil_fraction": t.oil_fraction, "oil_pixels": t.oil_pixels,
            "slick_count": t.slick_count, "largest_slick_px": t.largest_slick_px,
            "result": result, "overlay": overlay, "spills": _spills_entry(t, stems.get(t.id)),
            "error": t.error, "tiles": scene.get("tiles"), "crs": scene.get("crs"),
            "bounds": scene.get("bounds_lonlat"), "total_area_km2": scene.get("total_area_km2"),
            "largest_slick_km2": scene.get("largest_slick_km2"),
            "largest_slick_centroid": scene.get("largest_slick_centroid"),
            "db_kind": scale.get("db_kind"), "scale_low_db": scale.get("low_db"),
            "scale_high_db": scale.get("high_db"),
        })
    return rows


def task_overlay(paths: JobPaths, task: Task, max_px: int) -> Path | None:
    """A done mask's overlay: a scene's quick-look, drawn by strips when it was stitched and
    never redrawn whole (None if it is gone), or a picture's, drawn on first use and kept."""
    if not task.has_overlay or task.result_name is None:
        return None
    if task.tiled:
        quicklook = paths.overlay(task.result_name)
        return quicklook if quicklook.is_file() else None
    return ensure_overlay(paths.image(task.stored_name),
                          paths.result(ResultKind.MASK, task.result_name),
                          paths.overlay(task.result_name),
                          paths.overlay_partial(task.result_name), max_px)


def build_result_zip(paths: JobPaths, tasks: Sequence[Task], overlay_max_px: int) -> Path:
    """Write the job's result zip (masks/, overlays/, results/, summary.csv, summary.json,
    README.txt) atomically."""
    stems = _zip_stems(tasks)
    rows = summary_rows(tasks, stems)
    target, partial = paths.archive, paths.archive_partial
    with zipfile.ZipFile(partial, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("README.txt", README_TXT)
        for task in tasks:
            result, overlay = _entries(task, stems.get(task.id))
            if result is None or task.result_kind is None or task.result_name is None:
                continue
            # PNG and JPEG are compressed already: store them as they are.
            zf.write(paths.result(task.result_kind, task.result_name), result,
                     compress_type=zipfile.ZIP_STORED)
            if overlay and (drawn := task_overlay(paths, task, overlay_max_px)) is not None:
                zf.write(drawn, overlay, compress_type=zipfile.ZIP_STORED)
            if spills := _spills_entry(task, stems.get(task.id)):
                zf.write(ensure_task_spills(paths, task), spills)
        zf.write(build_job_spills(paths, tasks), "spills.geojson")
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows({k: _csv_value(v) for k, v in row.items()} for row in rows)
        zf.writestr("summary.csv", text.getvalue())
        zf.writestr("summary.json", json.dumps(rows, indent=1))
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

    def __init__(self, store: Store, jobs_dir: Path, overlay_max_px: int) -> None:
        self._store = store
        self._jobs_dir = jobs_dir
        self._overlay_max_px = overlay_max_px
        self._locks: dict[str, asyncio.Lock] = {}

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
                    await asyncio.to_thread(build_job_spills, paths, tasks)
                    logger.info("job %s: spills GeoJSON built (%d tasks)", job_id, len(tasks))
                return paths.job_spills
        finally:
            if not lock.locked():
                self._locks.pop(f"{job_id}/spills", None)

    async def ensure(self, job_id: str) -> str:
        """The result zip's file name, building it first if needed. Raises JobNotFinished."""
        job = await self._store.get_job(job_id)
        if not job.finished:
            raise JobNotFinished(job_id)
        if job.archive_name:
            return job.archive_name
        lock = self._locks.setdefault(job_id, asyncio.Lock())
        try:
            async with lock:
                job = await self._store.get_job(job_id)
                if job.archive_name:
                    return job.archive_name
                tasks = await self._store.list_tasks(job_id)
                logger.info("job %s: building result zip", job_id)
                started = time.monotonic()
                await asyncio.to_thread(build_result_zip, JobPaths(self._jobs_dir, job_id), tasks,
                                        self._overlay_max_px)
                name = archive_name(job_id)
                await self._store.set_job_archive(job_id, name)
                logger.info("job %s: result zip built in %.2f s (%d tasks)", job_id,
                            time.monotonic() - started, len(tasks))
                return name
        finally:
            if not lock.locked():
                self._locks.pop(job_id, None)
