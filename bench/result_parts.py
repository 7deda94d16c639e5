"""How small a result zip of only some parts is, for a satellite link:

    python -m bench.result_parts              # 1,000 images: bench-out/result_parts.json
    python -m bench.result_parts --images 50  # quicker

A real server and the real ML stub (its detector, so masks and slicks are real) run as
separate processes on loopback; one job of generated SAR scenes (256 x 256, each with
slicks); then the whole zip and `?parts=summary,spills` (and each part alone) are built
and downloaded, and their sizes printed side by side.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import aiohttp

from ml_stub.scenes import scene_png
from tests.procs import free_port, server_process, stub_process, wait_http

OUT = Path("bench-out") / "result_parts.json"
CHOICES = ("summary,spills", "summary", "spills", "masks", "overlays", None)


def images_zip(count: int, size: int) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"pass_{i // 100:02d}/img_{i:05d}.png", scene_png(size, size, seed=i))
    return out.getvalue()


async def run(images: int, size: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        stub_port, port = free_port(), free_port()
        stub = stub_process(stub_port, tmp)
        server = server_process(port, tmp / "data", f"http://127.0.0.1:{stub_port}", tmp,
                                OILSPILL_LOG_LEVEL="WARNING", OILSPILL_CONCURRENCY="4")
        base = f"http://127.0.0.1:{port}"
        await stub.start()
        await wait_http(f"http://127.0.0.1:{stub_port}/health", stub)
        await server.start()
        await wait_http(f"{base}/healthz", server)
        try:
            async with aiohttp.ClientSession() as session:
                form = aiohttp.FormData()
                form.add_field("file", images_zip(images, size), filename="survey.zip")
                async with session.post(f"{base}/api/upload/", data=form) as resp:
                    job_id = (await resp.json())["job_id"]
                started = time.monotonic()
                while True:
                    async with session.get(f"{base}/api/job/{job_id}") as resp:
                        job = await resp.json()
                    if job["finished_at"]:
                        break
                    await asyncio.sleep(0.5)
                job_s = time.monotonic() - started
                sizes: dict[str, int] = {}
                for parts in CHOICES:
                    query = {} if parts is None else {"parts": parts}
                    async with session.get(f"{base}/api/archive/{job_id}", params=query) as r:
                        url = (await r.json())["archive_url"]
                    async with session.get(f"{base}{url}") as resp:
                        sizes[parts or "all"] = len(await resp.read())
        finally:
            await server.kill()
            await stub.kill()
    return {"images": images, "size_px": size, "done": job["done"], "failed": job["failed"],
            "job_s": round(job_s, 1), "zip_bytes": sizes,
            "all_over_summary_spills": round(sizes["all"] / sizes["summary,spills"], 1)}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--size", type=int, default=256)
    args = parser.parse_args(argv)
    result = asyncio.run(run(args.images, args.size))
    print(f"{result['images']} images of {args.size} px, job {result['job_s']} s "
          f"({result['done']} done, {result['failed']} failed)")
    for name, size in result["zip_bytes"].items():
        print(f"  parts={name:<15} {size:>12,} bytes")
    print(f"whole zip / summary,spills: {result['all_over_summary_spills']} x (target >= 100)")
    OUT.parent.mkdir(exist_ok=True)
    OUT.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
