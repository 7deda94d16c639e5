"""`oilspill demo`: the whole path once, on generated scenes, for a newcomer."""

from __future__ import annotations

import asyncio
import json
import time
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

from ml_stub.app import running as ml_stub_running
from ml_stub.scenes import write_zip

from .client.session import OilspillClient
from .config import Settings
from .web.app import create_app

LOOPBACK = "127.0.0.1"


async def _serve(settings: Settings) -> tuple[web.AppRunner, str]:
    runner = web.AppRunner(create_app(settings), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, LOOPBACK, 0).start()
    return runner, f"http://{LOOPBACK}:{runner.addresses[0][1]}"


def _progress_line(job: dict[str, Any]) -> str:
    return (f"  {job['status']:8} {job['done'] + job['failed']:>3}/{job['total']} finished"
            f" (done {job['done']}, failed {job['failed']}, running {job['running']})")


def _summary_rows(result: Path) -> list[dict[str, Any]]:
    with zipfile.ZipFile(result) as zf:
        return list(json.loads(zf.read("summary.json")))


async def run_demo(out_dir: Path, images: int, settings: Settings) -> dict[str, Any]:
    """Start stub and service on free loopback ports, run one job, return its summary."""
    started = time.monotonic()
    await asyncio.to_thread(out_dir.mkdir, parents=True, exist_ok=True)
    zip_path = out_dir / "demo-images.zip"
    truth = await asyncio.to_thread(write_zip, zip_path, images, (384, 384), 7, False, 3)
    print(f"made {zip_path} with {images} generated SAR-like sea scenes (PNG and 16-bit TIFF)")
    async with ml_stub_running(LOOPBACK, 0) as ml_url:
        settings = settings.with_changes(ml_service_url=ml_url, data_dir=out_dir / "data")
        runner, base = await _serve(settings)
        print(f"oilspill on {base}, ML stub on {ml_url}, data in {settings.data_dir}")
        try:
            async with aiohttp.ClientSession() as session:
                client = OilspillClient(session, base)
                accepted = await client.upload(zip_path, zip_path.name)
                print(f"uploaded: job {accepted['job_id']}, {len(accepted['task_ids'])} images")
                last = [""]

                def show(job: dict[str, Any]) -> None:
                    line = _progress_line(job)
                    if line != last[0]:
                        print(line)
                        last[0] = line

                await client.wait(accepted["job_id"], 0.1, show)
                url = await client.archive_url(accepted["job_id"])
                result = await client.download(url, out_dir / url.rsplit("/", 1)[1])
        finally:
            await runner.cleanup()
    rows = await asyncio.to_thread(_summary_rows, result)
    print(f"result zip: {result.resolve()} (masks/, overlays/, summary.csv, README.txt)")
    print(f"  {'image':24} {'status':7} {'oil found':>9} {'true oil':>9} {'slicks':>6}")
    for row in rows:
        fraction = row["oil_fraction"]
        shown = f"{fraction:7.2%}" if fraction is not None else "    n/a"
        print(f"  {row['filename']:24} {row['status']:7} {shown:>9} "
              f"{truth.get(row['filename'], 0):9.2%} {row['slick_count'] or 0:6}")
    print(f"demo finished in {time.monotonic() - started:.1f} s")
    return {"result": str(result), "rows": rows}
