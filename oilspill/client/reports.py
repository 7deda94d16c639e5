"""What the client commands print when a job is finished: a short table, or with --json one
JSON object, from the result zip's summary.json (or the job's own counts, for a zip without
one), or from a job's GeoJSON; and the exit code that goes with it."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path
from typing import Any

EXIT_OK, EXIT_FAILURES, EXIT_REFUSED, EXIT_GONE, EXIT_RUNNING = 0, 1, 3, 4, 5


def tile_counts(job: dict[str, Any]) -> tuple[int, int]:
    """(done, total) units of work of a job: its tiles, or its images from a server that
    does not count tiles."""
    if "tiles_total" in job:
        return int(job["tiles_done"]), int(job["tiles_total"])
    return job["done"] + job["failed"], job["total"]


def _total_km2(areas: list[Any]) -> float | None:
    """The sum of the areas known (km²), or None when none is (no georeference)."""
    known = [float(a) for a in areas if isinstance(a, (int, float))]
    return round(sum(known), 6) if known else None


def summary(zip_path: Path) -> dict[str, Any] | None:
    """The table's figures from the zip's summary.json; None for a zip without one (asked
    with --parts)."""
    with zipfile.ZipFile(zip_path) as zf:
        if "summary.json" not in zf.namelist():
            return None
        rows = json.loads(zf.read("summary.json"))
    fractions = [r["oil_fraction"] for r in rows if r["oil_fraction"] is not None]
    return {"images": len(rows), "done": sum(r["status"] == "done" for r in rows),
            "failed": sum(r["status"] == "failed" for r in rows),
            "images_with_oil": sum(f > 0 for f in fractions),
            "largest_oil_fraction": max(fractions, default=None),
            "slicks": sum(r.get("slick_count") or 0 for r in rows),
            # Only georeferenced rows (with bounds) have an area: a scene without a
            # georeference and without slicks says 0 km², not "unknown".
            "total_area_km2": _total_km2([r.get("total_area_km2") for r in rows
                                          if r.get("bounds") is not None]),
            "rows": rows}


def _km2_text(km2: float | None) -> str:
    return "n/a" if km2 is None else f"{km2:.2f}"


def report(job: dict[str, Any], found: dict[str, Any] | None, zip_path: Path,
           as_json: bool) -> int:
    """Print a finished job's table (`found`: summary()); the exit code."""
    if found is None:
        return report_counts(job, zip_path, as_json)
    code = EXIT_FAILURES if found["failed"] else EXIT_OK
    tiles = tile_counts(job)[1]
    if as_json:
        print(json.dumps({"job_id": job["job_id"], "status": job["status"],
                          "result": str(zip_path.resolve()), "tiles": tiles, **found}))
        return code
    largest = found["largest_oil_fraction"]
    print(f"job {job['job_id']}: results in {zip_path}")
    print(f"  images               {found['images']}")
    print(f"  tiles                {tiles}")
    print(f"  done                 {found['done']}")
    print(f"  failed               {found['failed']}")
    print(f"  images with oil      {found['images_with_oil']}")
    print(f"  largest oil fraction {'n/a' if largest is None else f'{largest:.2%}'}")
    print(f"  slicks               {found['slicks']}")
    print(f"  km\u00b2                  {_km2_text(found['total_area_km2'])}")
    for row in found["rows"]:
        if row["status"] == "failed":
            print(f"  failed: {row['filename']}: {row['error']}")
    if code:
        print(f"oilspill: {found['failed']} of {found['images']} images failed",
              file=sys.stderr)
    return code


def report_counts(job: dict[str, Any], zip_path: Path, as_json: bool) -> int:
    """The job's own counts, for a zip without a summary."""
    return _report_job(job, "result", zip_path, "results", {}, [], as_json)


def _report_job(job: dict[str, Any], key: str, path: Path, what: str, found: dict[str, Any],
                lines: list[str], as_json: bool) -> int:
    """The job's counts and `found` (as JSON, the file under `key`; else `what` is in
    `path`, then `lines`); a failed image makes the exit code EXIT_FAILURES."""
    code = EXIT_FAILURES if job["failed"] else EXIT_OK
    if as_json:
        print(json.dumps({"job_id": job["job_id"], "status": job["status"],
                          key: str(path.resolve()), "tiles": tile_counts(job)[1],
                          "images": job["total"], "done": job["done"],
                          "failed": job["failed"], **found}))
        return code
    print(f"job {job['job_id']}: {what} in {path}")
    print(f"  images               {job['total']}")
    print(f"  done                 {job['done']}")
    print(f"  failed               {job['failed']}")
    for line in lines:
        print(line)
    if code:
        print(f"oilspill: {job['failed']} of {job['total']} images failed", file=sys.stderr)
    return code


def geojson_summary(path: Path) -> dict[str, Any]:
    """Slicks and km² of a job's GeoJSON (km² None in pixel coordinates)."""
    with open(path, encoding="utf-8") as fh:
        collection = json.load(fh)
    if not isinstance(collection, dict) or collection.get("type") != "FeatureCollection":
        raise ValueError(f"{path} is not a GeoJSON FeatureCollection")
    features = collection.get("features") or []
    if collection.get("properties") == {"coordinates": "pixel"}:  # no georeference
        return {"slicks": len(features), "total_area_km2": None}
    areas = [(f.get("properties") or {}).get("area_km2") for f in features]
    return {"slicks": len(features), "total_area_km2": _total_km2(areas) or 0.0}


def report_geojson(job: dict[str, Any], found: dict[str, Any], path: Path,
                   as_json: bool) -> int:
    return _report_job(job, "geojson", path, "slicks", found, [
        f"  slicks               {found['slicks']}",
        f"  km\u00b2                  {_km2_text(found['total_area_km2'])}"], as_json)
