"""What the first requests for an overlay cost the server: peak RSS growth and drawings.

    python -m bench.overlay_memory                 # 4000 x 4000 uint16, 1 and 6 requests
    python -m bench.overlay_memory --side 1500 --concurrency 1 2     # seconds

For each case and each number of concurrent requests N, a fresh server and ML stub run as
processes (`--mode ready`: a fixed mask of the input's size, no computing); one picture is
uploaded bare and segmented; then the server's peak RSS is reset (/proc/<pid>/clear_refs)
and N requests for the task's overlay are sent at once. Reported: peak RSS growth over the
RSS before them (VmHWM - VmRSS), how many times the overlay was drawn (the server's
"overlay drawn" log lines), and that every answer is the same PNG.

Cases:
- png16: a side x side uint16 grey PNG, sent whole (OILSPILL_TILE_PX above its side), so its
  overlay is drawn on first request: the path whose memory this measures.
- tiff: the same pixels as a TIFF, which is always a scene: its overlay is the quick-look
  drawn by strips when the scene was stitched, so a request only serves the file.

JSON in --out/overlay_memory.json. Run it against another checkout with PYTHONPATH set to
that checkout (the server processes inherit it).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from tests.procs import Stack

from .scene import BenchError, mib, proc_status

DEFAULT_OUT = Path("bench-out")
CASES = ("png16", "tiff")


def write_picture(path: Path, side: int, fmt: str, seed: int = 0) -> None:
    """A speckled uint16 sea (amplitude of gamma speckle, as SAR DN) with a dark band."""
    if path.is_file():
        return
    rng = np.random.default_rng(seed)
    sea = np.sqrt(rng.gamma(4.0, 0.25, (side, side)).astype(np.float32)) * np.float32(9000)
    sea[side // 3:side // 3 + side // 20, side // 8:7 * side // 8] *= np.float32(0.2)
    part = path.with_name(f".{path.name}.part")
    Image.fromarray(np.clip(sea, 1, 65535).astype(np.uint16)).save(part, format=fmt)
    part.replace(path)


def reset_peak(pid: int) -> bool:
    """Reset the process's VmHWM to its VmRSS (Linux 4.0+); False if not allowed."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
        return True
    except OSError:
        return False


async def upload_bare(session: aiohttp.ClientSession, base: str, path: Path) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", await asyncio.to_thread(path.read_bytes), filename=path.name,
                   content_type="application/octet-stream")
    async with session.post(f"{base}/api/upload/", data=form) as resp:
        body = await resp.json()
        if resp.status != 202:
            raise BenchError(f"upload refused: {resp.status} {body}")
        return dict(body)


async def wait_done(session: aiohttp.ClientSession, base: str, job_id: str,
                    timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while True:
        async with session.get(f"{base}/api/job/{job_id}") as resp:
            job = await resp.json()
        if job["finished_at"] is not None:
            if job["done"] != job["total"]:
                raise BenchError(f"the job did not finish well: {job}")
            return
        if time.monotonic() > deadline:
            raise BenchError(f"the job did not finish in {timeout_s} s: {job}")
        await asyncio.sleep(0.1)


async def fetch(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with session.get(url) as resp:
        body = await resp.read()
        return resp.status, hashlib.sha256(body).hexdigest()


async def measure(case: str, picture: Path, side: int, concurrency: int, idle_s: float,
                  timeout_s: float) -> dict[str, Any]:
    size = (await asyncio.to_thread(picture.stat)).st_size
    settings = {"OILSPILL_MAX_UPLOAD_BYTES": str(size + 2**20),
                "OILSPILL_LOG_JSON": "1", "OILSPILL_CONCURRENCY": "2"}
    if case == "png16":
        settings["OILSPILL_TILE_PX"] = str(max(1024, side))  # sent whole, drawn on request
    with tempfile.TemporaryDirectory(prefix="oilspill-bench-overlay-") as tmp:
        stack = Stack(Path(tmp), ("--mode", "ready"), **settings)
        try:
            await stack.start()
            assert stack.server is not None and stack.server.proc is not None
            pid = stack.server.proc.pid
            timeout = aiohttp.ClientTimeout(total=timeout_s)
            async with aiohttp.ClientSession(timeout=timeout) as session:
                accepted = await upload_bare(session, stack.base, picture)
                await wait_done(session, stack.base, accepted["job_id"], timeout_s)
                task_id = accepted["task_ids"][0]
                async with session.get(f"{stack.base}/api/task/{task_id}") as resp:
                    task = await resp.json()
                url = f"{stack.base}{task['result']['overlay_url']}"
                await asyncio.sleep(idle_s)  # the job's own work settled
                reset = reset_peak(pid)
                before = proc_status(pid)
                started = time.perf_counter()
                answers = await asyncio.gather(*(fetch(session, url)
                                                 for _ in range(concurrency)))
                wall_s = time.perf_counter() - started
                after = proc_status(pid)
            lines = list(stack.server.lines)
        finally:
            await stack.close()
    drawn = sum(1 for line in lines if "overlay drawn" in line and task_id in line)
    statuses = sorted({status for status, _ in answers})
    return {
        "case": case, "side": side, "concurrency": concurrency,
        "scene": bool((task.get("result") or {}).get("scene")),
        "statuses": statuses, "same_png": len({digest for _, digest in answers}) == 1,
        "drawings": drawn, "wall_s": round(wall_s, 3), "peak_reset": reset,
        "rss_before_mib": round(mib(before["VmRSS"]), 1),
        "hwm_after_mib": round(mib(after["VmHWM"]), 1),
        "rss_after_mib": round(mib(after["VmRSS"]), 1),
        "peak_growth_mib": round(mib(after["VmHWM"] - before["VmRSS"]), 1),
    }


async def run(args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    results = []
    for case in args.cases:
        fmt, suffix = ("PNG", "png") if case == "png16" else ("TIFF", "tif")
        picture = args.out / f"overlay-{args.side}-uint16.{suffix}"
        write_picture(picture, args.side, fmt)
        for concurrency in args.concurrency:
            result = await measure(case, picture, args.side, concurrency, args.idle_s,
                                   args.timeout_s)
            results.append(result)
            print(f"{case:6} x{concurrency}: peak RSS growth {result['peak_growth_mib']:7.1f} "
                  f"MiB, drawn {result['drawings']} time(s), {result['wall_s']:.2f} s, "
                  f"answers {result['statuses']}", flush=True)
    return {"python": sys.version.split()[0], "runs": results}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.overlay_memory",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--side", type=int, default=4000)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 6])
    parser.add_argument("--cases", nargs="+", choices=CASES, default=list(CASES))
    parser.add_argument("--idle-s", type=float, default=1.0)
    parser.add_argument("--timeout-s", type=float, default=300.0)
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    try:
        results = asyncio.run(run(args))
    except BenchError as exc:
        sys.exit(f"bench: {exc}")
    target = args.out / "overlay_memory.json"
    target.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {target}")


if __name__ == "__main__":
    main()
