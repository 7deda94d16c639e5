"""The client commands: `oilspill submit`, `oilspill status`, `oilspill fetch`.

`submit` sends a zip of images, a folder (zipped as it streams), or one bare image or
GeoTIFF scene as it is: the server tells them apart by their first bytes.

`fetch --geojson FILE` waits for the job as `fetch` does, then saves only every slick of
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
import zipfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
from tqdm import tqdm

from .folders import folder_files, zip_stream
from .session import ApiFailure, OilspillClient, ServerGone

EXIT_OK, EXIT_FAILURES, EXIT_REFUSED, EXIT_GONE, EXIT_RUNNING = 0, 1, 3, 4, 5

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
    server: str
    token: str | None
    as_json: bool
    give_up_s: float

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
    total, source, name, content_type = await asyncio.to_thread(_source, path)
    with _bar(options, total=total, unit="B", unit_scale=True, desc="upload") as bar:
        return await client.upload(_chunks(source, bar), name, content_type)


def _tiles(job: dict[str, Any]) -> tuple[int, int]:
    """(done, total) units of work of a job: its tiles, or its images from a server that
    does not count tiles."""
    if "tiles_total" in job:
        return int(job["tiles_done"]), int(job["tiles_total"])
    return job["done"] + job["failed"], job["total"]


async def _wait(client: OilspillClient, job_id: str, options: ClientOptions
                ) -> dict[str, Any]:
    with _bar(options, unit="tile", desc="tiles") as bar:
        def progress(job: dict[str, Any]) -> None:
            bar.n, bar.total = _tiles(job)
            state: dict[str, Any] = {
                "images": f"{job['done'] + job['failed']}/{job['total']}",
                "failed": job["failed"]}
            if job["waiting_for_ml_service"]:
                state["ml"] = "unreachable, waiting"
            bar.set_postfix(state, refresh=False)
            bar.refresh()
        return await client.wait(job_id, 1.0, progress)


async def _download(client: OilspillClient, job_id: str, out: Path | None,
                    options: ClientOptions) -> Path:
    url = await client.archive_url(job_id)
    dest = out or Path(url.rsplit("/", 1)[1])
    with _bar(options, unit="B", unit_scale=True, desc="download") as bar:
        def progress(received: int, total: int | None) -> None:
            bar.total = total
            bar.n = received
            bar.refresh()
        return await client.download(url, dest, progress)


def _total_km2(areas: list[Any]) -> float | None:
    """The sum of the areas known (km²), or None when none is (no georeference)."""
    known = [float(a) for a in areas if isinstance(a, (int, float))]
    return round(sum(known), 6) if known else None


def _summary(zip_path: Path) -> dict[str, Any]:
    with zipfile.ZipFile(zip_path) as zf:
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


def _report(job: dict[str, Any], summary: dict[str, Any], zip_path: Path,
            options: ClientOptions) -> int:
    code = EXIT_FAILURES if summary["failed"] else EXIT_OK
    tiles = _tiles(job)[1]
    if options.as_json:
        print(json.dumps({"job_id": job["job_id"], "status": job["status"],
                          "result": str(zip_path.resolve()), "tiles": tiles, **summary}))
        return code
    largest = summary["largest_oil_fraction"]
    print(f"job {job['job_id']}: results in {zip_path}")
    print(f"  images               {summary['images']}")
    print(f"  tiles                {tiles}")
    print(f"  done                 {summary['done']}")
    print(f"  failed               {summary['failed']}")
    print(f"  images with oil      {summary['images_with_oil']}")
    print(f"  largest oil fraction {'n/a' if largest is None else f'{largest:.2%}'}")
    print(f"  slicks               {summary['slicks']}")
    print(f"  km\u00b2                  {_km2_text(summary['total_area_km2'])}")
    for row in summary["rows"]:
        if row["status"] == "failed":
            print(f"  failed: {row['filename']}: {row['error']}")
    if code:
        print(f"oilspill: {summary['failed']} of {summary['images']} images failed",
              file=sys.stderr)
    return code


async def _download_geojson(client: OilspillClient, job_id: str, dest: Path,
                           options: ClientOptions) -> Path:
    with _bar(options, unit="B", unit_scale=True, desc="geojson") as bar:
        def progress(received: int, total: int | None) -> None:
            bar.total = total
            bar.n = received
            bar.refresh()
        return await client.download(f"/api/job/{job_id}/spills.geojson", dest, progress)


def _geojson_summary(path: Path) -> dict[str, Any]:
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


def _report_geojson(job: dict[str, Any], summary: dict[str, Any], path: Path,
                    options: ClientOptions) -> int:
    code = EXIT_FAILURES if job["failed"] else EXIT_OK
    if options.as_json:
        print(json.dumps({"job_id": job["job_id"], "status": job["status"],
                          "geojson": str(path.resolve()), "tiles": _tiles(job)[1],
                          "images": job["total"], "done": job["done"],
                          "failed": job["failed"], **summary}))
        return code
    print(f"job {job['job_id']}: slicks in {path}")
    print(f"  images               {job['total']}")
    print(f"  done                 {job['done']}")
    print(f"  failed               {job['failed']}")
    print(f"  slicks               {summary['slicks']}")
    print(f"  km\u00b2                  {_km2_text(summary['total_area_km2'])}")
    if code:
        print(f"oilspill: {job['failed']} of {job['total']} images failed", file=sys.stderr)
    return code


async def _run(options: ClientOptions, action: str, target: str, out: Path | None,
               wait: bool, geojson: Path | None = None) -> int:
    def retrying(reason: str) -> None:
        _say(options, f"oilspill: {reason}; retrying")

    # No total timeout: building the result zip of a large job may take minutes, and the
    # server answers when it is done; a dead connection is noticed and retried.
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=30)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        client = OilspillClient(session, options.server, options.token, options.give_up_s, retrying)
        try:
            if action == "submit":
                accepted = await _upload(client, Path(target), options)
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
                    tiles_done, tiles = _tiles(job)
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
                found = await asyncio.to_thread(_geojson_summary, saved)
                return _report_geojson(job, found, saved, options)
            zip_path = await _download(client, job_id, out, options)
            summary = await asyncio.to_thread(_summary, zip_path)
            return _report(job, summary, zip_path, options)
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
        wait: bool = True, geojson: Path | None = None) -> int:
    """Run one client command; returns the exit code. With `geojson` (fetch only), save the
    job's GeoJSON there instead of downloading its zip."""
    return asyncio.run(_run(options, action, target, out, wait, geojson))
