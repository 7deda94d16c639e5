"""The JSON bodies of a job and a task, as every route and event carries them."""

from __future__ import annotations

from typing import Any

from ..jobs import Job, ResultKind, Task
from .middlewares import iso_utc


def task_body(task: Task) -> dict[str, Any]:
    result: dict[str, Any] | None = None
    if task.result_kind is not None:
        link = f"/api/task/{task.id}/{task.result_kind.value}"
        result = {
            "oil_fraction": task.oil_fraction, "oil_pixels": task.oil_pixels,
            "slick_count": task.slick_count, "largest_slick_px": task.largest_slick_px,
            "width": task.width, "height": task.height,
            "mask_url": link if task.result_kind is ResultKind.MASK else None,
            "overlay_url": f"/api/task/{task.id}/overlay" if task.has_overlay else None,
            "picture_url": link if task.result_kind is ResultKind.PICTURE else None,
        }
        scene = task.scene or {}
        mask = task.result_kind is ResultKind.MASK
        result.update({
            "crs": scene.get("crs"), "bounds_lonlat": scene.get("bounds_lonlat"),
            "total_area_km2": scene.get("total_area_km2"),
            "spills_url": f"/api/task/{task.id}/spills.geojson" if mask else None})
        if task.scene:
            result["scene"] = task.scene
    return {"task_id": task.id, "job_id": task.job_id, "filename": task.filename,
            "status": task.status.value, "attempts": task.attempts, "result": result,
            "error": task.error, "tiles_total": task.tiles_total, "tiles_done": task.tiles_done}


def job_body(job: Job, ml_reachable: bool) -> dict[str, Any]:
    p = job.progress
    return {"job_id": job.id, "status": p.status.value, "total": p.total, "queued": p.queued,
            "running": p.running, "done": p.done, "failed": p.failed,
            "created_at": iso_utc(job.created_at), "finished_at": iso_utc(job.finished_at),
            "upload_name": job.upload_name, "tiles_total": job.tiles_total,
            "tiles_done": job.tiles_done,
            "skipped": [{"filename": f, "reason": r} for f, r in job.skipped],
            "skipped_total": job.skipped_total, "skipped_url": f"/api/job/{job.id}/skipped",
            "waiting_for_ml_service": not job.finished and not ml_reachable,
            "archive_url": f"/api/download/{job.archive_name}" if job.archive_name else None}
