"""The ML tier: many endpoints, an endpoint lost mid-job, and OIP v2 against /segment.

    python -m bench ml_tier            # about a minute; writes bench-out/ml_tier.json
    python -m bench ml_tier --quick    # a few seconds

Three stub processes (`--mode ready --latency-ms 20`: a fixed mask after the latency, no
computing) serve both contracts; `oilspill serve` runs as its own process. Side by side, in
one run, each measure repeated (the table gives the median and the range):

1. spread: oilspill on the three /segment endpoints, limit 4 each (12 in flight, so at
   most 600 images a second at 20 ms), against a bare client (plain aiohttp posting the
   same images to the same three endpoints, 4 at a time each). Target: ratio >= 0.9.
2. one lost: the same job, one of the three stubs killed (SIGKILL) once a third of it is
   done: failed tasks (target 0) and the wall time against the undisturbed run's (target
   <= 1.6 x; with two endpoints left for two thirds of the job, 1.33 x is the floor).
Where the machine has two cores or more, the ML tier is given cores of its own, as it has
on other machines in a deployment: the stubs (and this process while it only watches a job)
run on every core but the first, the side under test (oilspill's server, or this process
while it is the bare client) on the first. Without that, five processes and the server's
threads share two cores, and what is measured is mostly the kernel's scheduling of them
(`--shared` measures it so, for comparison).

3. CPU: the server process's CPU seconds (upload, unpacking, calls, masks, commits: all of
   it) divided by the images, over OIP v2 with binary tensors (`/v2/models/
   oilspill-detector` on the same stubs, batches of up to OILSPILL_ML_BATCH) against
   /segment (measure 1's runs). Target: binary <= 1 ms per image and less than /segment.
   3b. the same calls through the ML tier alone, in the bench's own process, as many in
   flight as the worker pool would have, each answer read as the worker reads it: CPU per
   image of a call and its answer (OIP: the image decoded, the request encoded, HTTP, the
   masks decoded, counted and written as PNG; /segment: the multipart request, HTTP, the
   mask PNG decoded and counted), without the rest of the backend.
   3c. measure 3 on the same images stored as a scene's tiles are sent (8-bit grey PNG,
   unfiltered, uncompressed): what OIP costs when decoding the image is nearly free.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import io
import json
import os
import signal
import statistics
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from PIL import Image

from ml_stub.oip import MODEL_NAME
from ml_stub.scenes import scene_png
from oilspill.config import Settings
from oilspill.geo.scale import grey_png
from oilspill.masks import read_answer
from oilspill.metrics import Metrics
from oilspill.ml_tier import MLTier
from oilspill.oip_client import CountedMask
from tests.procs import Process, free_port, server_process, stub_process, wait_http

from .backend import cpu_s, images_zip, seconds, upload, wait_finished

DEFAULT_OUT = Path("bench-out")
LATENCY_MS = 20.0
LIMIT = 4
STUBS = 3
SIZE = 256


def pin(pid: int, cpus: set[int] | None) -> None:
    """Every thread of process `pid` (0: this one) on `cpus` (None: leave it)."""
    if cpus is None:
        return
    tasks = Path(f"/proc/{pid or os.getpid()}/task")
    for tid in os.listdir(tasks):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(tid), cpus)


class Layout:
    """Which cores the side under test and the ML tier run on: apart when there are two
    or more (and `shared` is not asked for)."""

    def __init__(self, shared: bool) -> None:
        cpus = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
        apart = not shared and len(cpus) >= 2
        self.backend: set[int] | None = {cpus[0]} if apart else None
        self.ml: set[int] | None = set(cpus[1:]) if apart else None

    def describe(self) -> str:
        if self.backend is None or self.ml is None:
            return "all processes on all cores"
        return (f"backend on core {min(self.backend)}, ML stubs and the watching client on "
                f"cores {','.join(map(str, sorted(self.ml)))}")



class Stubs:
    """The three stub processes, each restartable on its port."""

    def __init__(self, workdir: Path, layout: Layout) -> None:
        self.workdir = workdir
        self.layout = layout
        self.ports = [free_port() for _ in range(STUBS)]
        self.procs: list[Process | None] = [None] * STUBS

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.ports[n]}"

    async def start(self, n: int) -> None:
        proc = stub_process(self.ports[n], self.workdir, "--mode", "ready", "--latency-ms",
                            str(LATENCY_MS))
        self.procs[n] = proc
        await proc.start()
        await wait_http(f"{self.url(n)}/health", proc)
        assert proc.proc is not None
        pin(proc.proc.pid, self.layout.ml)

    async def kill(self, n: int) -> None:
        proc = self.procs[n]
        assert proc is not None and proc.proc is not None
        proc.proc.send_signal(signal.SIGKILL)
        await proc.wait()

    async def close(self) -> None:
        for proc in self.procs:
            if proc is not None:
                await proc.kill()


async def oilspill_run(workdir: Path, layout: Layout, ml_url: str, data: bytes, count: int,
                       kill: Stubs | None = None) -> dict[str, Any]:
    """One job through a fresh server on `ml_url`; with `kill`, its second stub is killed
    once a third of the job is done (and started again after)."""
    port = free_port()
    server = server_process(port, Path(tempfile.mkdtemp(dir=workdir)), ml_url, workdir,
                            OILSPILL_CONCURRENCY=str(LIMIT), OILSPILL_LOG_LEVEL="WARNING")
    base = f"http://127.0.0.1:{port}"
    await server.start()
    try:
        await wait_http(f"{base}/healthz", server)
        assert server.proc is not None
        pid = server.proc.pid
        pin(pid, layout.backend)
        pin(0, layout.ml)  # this process only watches
        async with aiohttp.ClientSession() as session:
            cpu_before = cpu_s(pid)
            accepted = await upload(session, base, data)
            if kill is not None:
                while True:
                    async with session.get(f"{base}/api/job/{accepted['job_id']}") as resp:
                        if (await resp.json())["done"] >= count // 3:
                            break
                    await asyncio.sleep(0.01)
                await kill.kill(1)
            # Polled as a patient client would: the wall time is the job's own.
            job = await wait_finished(session, base, accepted["job_id"], 0.1)
            cpu = cpu_s(pid) - cpu_before
            async with session.get(f"{base}/healthz") as resp:
                health = await resp.json()
        if kill is not None:
            await kill.start(1)
    finally:
        await server.kill()
    wall = seconds(job["finished_at"]) - seconds(job["created_at"])
    endpoints = health["ml_endpoints"]
    return {"images": count, "done": job["done"], "failed": job["failed"], "wall_s": wall,
            "images_per_s": count / wall, "server_cpu_s": cpu,
            "cpu_ms_per_image": cpu / count * 1000,
            "requests": sum(e["requests"] for e in endpoints),
            "calls": [e["calls"] for e in endpoints],
            "loop_lag_max_ms": health["loop_lag_max_ms"]}


async def bare_run(stubs: Stubs, pngs: list[bytes], count: int) -> dict[str, Any]:
    """Plain aiohttp: the same images to the same three endpoints, LIMIT at a time each;
    this process on the backend's core meanwhile."""
    pin(0, stubs.layout.backend)
    async with aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=2 * LIMIT * STUBS)) as session:
        queue: asyncio.Queue[int] = asyncio.Queue()

        async def caller(url: str) -> None:
            while not queue.empty():
                i = queue.get_nowait()
                form = aiohttp.FormData()
                form.add_field("file", pngs[i % len(pngs)], filename=f"{i}.png",
                               content_type="image/png")
                async with session.post(f"{url}/segment", data=form) as resp:
                    assert resp.status == 200, resp.status
                    await resp.read()

        urls = [stubs.url(n) for n in range(STUBS)]
        for i in range(LIMIT * STUBS):  # a first round opens the connections
            queue.put_nowait(i)
        await asyncio.gather(*(caller(u) for u in urls for _ in range(LIMIT)))
        for i in range(count):
            queue.put_nowait(i)
        start = time.perf_counter()
        await asyncio.gather(*(caller(u) for u in urls for _ in range(LIMIT)))
        wall = time.perf_counter() - start
    return {"images": count, "wall_s": wall, "images_per_s": count / wall}


async def tier_cpu_run(workdir: Path, layout: Layout, ml_url: str, pngs: list[bytes],
                       count: int) -> dict[str, Any]:
    """The tier alone, in this process: `count` calls with as many in flight as the worker
    pool would have (its capacity), each answer then read as the worker reads it (in a
    thread: a /segment mask PNG decoded and its slicks counted; an OIP mask comes counted);
    this process's CPU per image, nothing of the rest of the backend."""
    pin(0, layout.backend)
    settings = Settings(ml_service_url=ml_url, concurrency=LIMIT)
    spill = workdir / "spill.part"
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(
            limit=MLTier.connections_for(settings))) as session:
        tier = MLTier.from_settings(session, settings, Metrics())
        tier.start()
        slots = asyncio.Semaphore(tier.capacity)

        async def call(i: int) -> None:
            async with slots:
                body = await tier.segment(pngs[i % len(pngs)], f"{i}.png", "image/png", spill)
            if not isinstance(body, CountedMask):
                await asyncio.to_thread(read_answer, body, SIZE, SIZE)

        await asyncio.gather(*(call(i) for i in range(tier.capacity)))  # warm: connections
        cpu_before, start = time.process_time(), time.perf_counter()
        await asyncio.gather(*(call(i) for i in range(count)))
        cpu, wall = time.process_time() - cpu_before, time.perf_counter() - start
        requests = sum(e.requests for e in tier.endpoints)
        await tier.close()
    return {"images": count, "cpu_ms_per_image": cpu / count * 1000, "wall_s": wall,
            "images_per_s": count / wall, "requests": requests}


def tiles_zip(count: int, size: int, distinct: int = 20) -> bytes:
    """The same scenes as 8-bit grey PNGs stored unfiltered and uncompressed, as the backend
    sends a scene's tiles (geo/scale.grey_png)."""
    greys = [np.asarray(Image.open(io.BytesIO(scene_png(size, size, seed))))
             for seed in range(min(distinct, count))]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"tile_{i:05d}.png", grey_png(greys[i % len(greys)]))
    return out.getvalue()


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def run(count: int, repeats: int, layout: Layout) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="oilspill-bench-") as tmp:
        workdir = Path(tmp)
        stubs = Stubs(workdir, layout)
        for n in range(STUBS):
            await stubs.start(n)
        try:
            data, tiles = images_zip(count, SIZE), tiles_zip(count, SIZE)
            pngs = [scene_png(SIZE, SIZE, seed) for seed in range(20)]
            segment_url = ",".join(stubs.url(n) for n in range(STUBS))
            oip_url = ",".join(f"{stubs.url(n)}/v2/models/{MODEL_NAME}" for n in range(STUBS))
            runs: dict[str, list[dict[str, Any]]] = {
                "bare": [], "segment": [], "oip": [], "one_lost": [], "tier_segment": [],
                "tier_oip": [], "segment_tiles": [], "oip_tiles": []}
            job = functools.partial(oilspill_run, workdir, layout)
            tier = functools.partial(tier_cpu_run, workdir, layout)
            for _ in range(repeats):  # interleaved: the machine's mood is shared
                runs["bare"].append(await bare_run(stubs, pngs, count))
                runs["segment"].append(await job(segment_url, data, count))
                runs["oip"].append(await job(oip_url, data, count))
                runs["tier_segment"].append(await tier(segment_url, pngs, count))
                runs["tier_oip"].append(await tier(oip_url, pngs, count))
                runs["segment_tiles"].append(await job(segment_url, tiles, count))
                runs["oip_tiles"].append(await job(oip_url, tiles, count))
                runs["one_lost"].append(await job(segment_url, data, count, kill=stubs))
        finally:
            await stubs.close()
    limit_per_s = LIMIT * STUBS / (LATENCY_MS / 1000)
    ratios = [s["images_per_s"] / b["images_per_s"]
              for s, b in zip(runs["segment"], runs["bare"], strict=True)]
    slowdowns = [k["wall_s"] / s["wall_s"]
                 for k, s in zip(runs["one_lost"], runs["segment"], strict=True)]
    return {
        "images": count, "size_px": SIZE, "latency_ms": LATENCY_MS, "endpoints": STUBS,
        "limit_each": LIMIT, "limit_per_s": limit_per_s, "repeats": repeats,
        "cpus": os.cpu_count(), "layout": layout.describe(),
        "loadavg": list(os.getloadavg()), "runs": runs,
        "summary": {
            "bare_images_per_s": spread([r["images_per_s"] for r in runs["bare"]]),
            "oilspill_images_per_s": spread([r["images_per_s"] for r in runs["segment"]]),
            "ratio_to_bare": spread(ratios),
            "one_lost_failed": max(r["failed"] for r in runs["one_lost"]),
            "one_lost_wall_ratio": spread(slowdowns),
            "segment_cpu_ms_per_image": spread([r["cpu_ms_per_image"]
                                                for r in runs["segment"]]),
            "oip_binary_cpu_ms_per_image": spread([r["cpu_ms_per_image"]
                                                   for r in runs["oip"]]),
            "oip_images_per_request": spread([r["images"] / r["requests"]
                                              for r in runs["oip"]]),
            "tier_segment_cpu_ms_per_image": spread([r["cpu_ms_per_image"]
                                                     for r in runs["tier_segment"]]),
            "tier_oip_binary_cpu_ms_per_image": spread([r["cpu_ms_per_image"]
                                                        for r in runs["tier_oip"]]),
            "oip_images_per_s": spread([r["images_per_s"] for r in runs["oip"]]),
            "segment_tiles_cpu_ms_per_image": spread([r["cpu_ms_per_image"]
                                                      for r in runs["segment_tiles"]]),
            "oip_tiles_cpu_ms_per_image": spread([r["cpu_ms_per_image"]
                                                  for r in runs["oip_tiles"]]),
        },
    }


def table(results: dict[str, Any]) -> str:
    s = results["summary"]

    def fmt(row: dict[str, float], unit: str = "", digits: int = 2) -> str:
        return (f"{row['median']:.{digits}f}{unit} ({row['min']:.{digits}f}-"
                f"{row['max']:.{digits}f})")

    lines = [
        f"{results['images']} images of {results['size_px']} px, {results['endpoints']} stub "
        f"endpoints at {results['latency_ms']:g} ms, limit {results['limit_each']} each "
        f"(C/L = {results['limit_per_s']:.0f} img/s); median (range) of {results['repeats']} "
        f"runs on {results['cpus']} cores ({results['layout']}), load "
        f"{results['loadavg'][0]:.1f}",
        f"{'measure':<46}{'measured':<30}target",
        f"{'1. bare client, 12 in flight':<46}{fmt(s['bare_images_per_s'], ' img/s', 0):<30}",
        f"{'1. oilspill over 3 /segment endpoints':<46}"
        f"{fmt(s['oilspill_images_per_s'], ' img/s', 0):<30}",
        f"{'1. oilspill / bare client':<46}{fmt(s['ratio_to_bare']):<30}>= 0.9",
        f"{'2. one of 3 killed mid-job: failed tasks':<46}{s['one_lost_failed']:<30}0",
        f"{'2. wall time / undisturbed':<46}{fmt(s['one_lost_wall_ratio'], ' x'):<30}<= 1.6 x",
        f"{'3. server CPU per image, /segment':<46}"
        f"{fmt(s['segment_cpu_ms_per_image'], ' ms'):<30}",
        f"{'3. server CPU per image, OIP v2 binary':<46}"
        f"{fmt(s['oip_binary_cpu_ms_per_image'], ' ms'):<30}<= 1 ms, < /segment",
        f"{'3. OIP images per request (batching)':<46}{fmt(s['oip_images_per_request']):<30}",
        f"{'3b. calls+answers alone: CPU/image, /segment':<46}"
        f"{fmt(s['tier_segment_cpu_ms_per_image'], ' ms'):<30}",
        f"{'3b. calls+answers alone: CPU/image, OIP bin.':<46}"
        f"{fmt(s['tier_oip_binary_cpu_ms_per_image'], ' ms'):<30}<= 1 ms, < /segment",
        f"{'3. OIP v2 binary throughput':<46}{fmt(s['oip_images_per_s'], ' img/s', 0):<30}",
        f"{'3c. tile PNGs: server CPU/image, /segment':<46}"
        f"{fmt(s['segment_tiles_cpu_ms_per_image'], ' ms'):<30}",
        f"{'3c. tile PNGs: server CPU/image, OIP binary':<46}"
        f"{fmt(s['oip_tiles_cpu_ms_per_image'], ' ms'):<30}< /segment",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench ml_tier",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true", help="120 images, one run")
    parser.add_argument("--shared", action="store_true",
                        help="every process on every core (no cores of its own for the ML tier)")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.images, args.repeats = 120, 1
    started = time.perf_counter()
    results = asyncio.run(run(args.images, args.repeats, Layout(args.shared)))
    args.out.mkdir(parents=True, exist_ok=True)
    out = args.out / "ml_tier.json"
    out.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"written {out} in {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
