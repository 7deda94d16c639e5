"""The backend's own cost: throughput against the physical limit, CPU, memory, latency.

    python -m bench              # everything, about two minutes; writes bench/results.json
    python -m bench --quick      # tiny sizes, a few seconds (the test suite runs this)

The real server (`python -m oilspill serve`) and the real ML stub (`python -m ml_stub`, in
`--mode ready`: a fixed mask of the right size after `--latency-ms`, no computing) run as
separate processes on loopback. With latency L and C calls in flight no backend can finish
more than C/L images a second; the ratio to that is what the backend costs.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import random
import statistics
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from ml_stub.scenes import scene_png
from oilspill.metrics import Metrics
from oilspill.ml_client import MLClient
from tests.procs import (
    Process,
    free_port,
    server_process,
    stub_process,
    wait_http,
)

OUT = Path(__file__).with_name("results.json")
TICKS = os.sysconf("SC_CLK_TCK")
PAGE = os.sysconf("SC_PAGE_SIZE")


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def rss_bytes(pid: int) -> int:
    return int(Path(f"/proc/{pid}/statm").read_text().split()[1]) * PAGE


def images_zip(count: int, size: int, distinct: int = 20) -> bytes:
    """A zip of `count` scenes (reusing `distinct` different ones) under unique names."""
    pngs = [scene_png(size, size, seed) for seed in range(min(distinct, count))]
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i in range(count):
            zf.writestr(f"img_{i:05d}.png", pngs[i % len(pngs)])
    return out.getvalue()


def seconds(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass
class Stack:
    """One stub process and one server process."""

    workdir: Path
    latency_ms: float
    concurrency: int
    settings: dict[str, str] = field(default_factory=dict)
    stub: Process | None = None
    server: Process | None = None
    base: str = ""
    started_in_s: float = 0.0

    async def __aenter__(self) -> Stack:
        stub_port, port = free_port(), free_port()
        self.stub = stub_process(stub_port, self.workdir, "--mode", "ready", "--latency-ms",
                                 str(self.latency_ms))
        await self.stub.start()
        await wait_http(f"http://127.0.0.1:{stub_port}/health", self.stub)
        data_dir = Path(tempfile.mkdtemp(dir=self.workdir))
        self.server = server_process(
            port, data_dir, f"http://127.0.0.1:{stub_port}", self.workdir,
            OILSPILL_CONCURRENCY=str(self.concurrency), OILSPILL_LOG_LEVEL="WARNING",
            **self.settings)
        self.base = f"http://127.0.0.1:{port}"
        start = time.perf_counter()
        await self.server.start()
        # Polled every 2 ms, for a fair start-up time.
        await wait_http(f"{self.base}/healthz", self.server, interval_s=0.002)
        self.started_in_s = time.perf_counter() - start
        return self

    async def __aexit__(self, *exc: object) -> None:
        for proc in (self.server, self.stub):
            if proc:
                await proc.kill()

    @property
    def pid(self) -> int:
        assert self.server and self.server.proc
        return self.server.proc.pid

    @property
    def stub_pid(self) -> int:
        assert self.stub and self.stub.proc
        return self.stub.proc.pid


async def upload(session: aiohttp.ClientSession, base: str, data: bytes | Any) -> dict[str, Any]:
    form = aiohttp.FormData()
    form.add_field("file", data, filename="bench.zip", content_type="application/zip")
    async with session.post(f"{base}/api/upload/", data=form) as resp:
        body = await resp.json()
        if resp.status != 202:
            raise RuntimeError(f"upload refused: {resp.status} {body}")
        return dict(body)


async def wait_finished(session: aiohttp.ClientSession, base: str, job_id: str,
                        interval_s: float = 0.02) -> dict[str, Any]:
    while True:
        async with session.get(f"{base}/api/job/{job_id}") as resp:
            job = await resp.json()
        if job["finished_at"]:
            return dict(job)
        await asyncio.sleep(interval_s)


async def poll_status(base: str, job_id: str, task_ids: list[str], stop: asyncio.Event,
                      latencies_ms: list[float], interval_s: float) -> None:
    """Another client asking for a task and the job, over and over, timing each answer."""
    rng = random.Random(1)
    async with aiohttp.ClientSession() as session:
        while not stop.is_set():
            for path in (f"/api/task/{rng.choice(task_ids)}", f"/api/job/{job_id}"):
                start = time.perf_counter()
                async with session.get(f"{base}{path}") as resp:
                    await resp.read()
                latencies_ms.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(interval_s)


async def throughput_run(workdir: Path, count: int, size: int, latency_ms: float,
                         concurrency: int, poll: bool) -> dict[str, Any]:
    data = images_zip(count, size)
    async with Stack(workdir, latency_ms, concurrency) as stack:
        async with aiohttp.ClientSession() as session:
            cpu_before = cpu_s(stack.pid)
            stub_before = cpu_s(stack.stub_pid)
            client_before = time.process_time()
            accepted = await upload(session, stack.base, data)
            stop, latencies = asyncio.Event(), list[float]()
            poller = asyncio.create_task(poll_status(
                stack.base, accepted["job_id"], accepted["task_ids"], stop, latencies, 0.005)
            ) if poll else None
            job = await wait_finished(session, stack.base, accepted["job_id"])
            cpu = cpu_s(stack.pid) - cpu_before
            stub_cpu = cpu_s(stack.stub_pid) - stub_before
            client_cpu = time.process_time() - client_before
            stop.set()
            if poller:
                await poller
            async with session.get(f"{stack.base}/healthz") as resp:
                health = await resp.json()
            start = time.perf_counter()
            async with session.get(f"{stack.base}/api/archive/{accepted['job_id']}") as resp:
                assert resp.status == 200, await resp.text()
            archive_s = time.perf_counter() - start
    elapsed = seconds(job["finished_at"]) - seconds(job["created_at"])
    limit = concurrency / (latency_ms / 1000) if latency_ms else float("inf")
    bare = await bare_client_run(workdir, count, size, latency_ms, concurrency) if poll else 0
    result = {
        "images": count, "size_px": size, "latency_ms": latency_ms,
        "concurrency": concurrency, "done": job["done"], "failed": job["failed"],
        "seconds": elapsed, "images_per_s": count / elapsed, "limit_per_s": limit,
        "ratio_to_limit": (count / elapsed) / limit if latency_ms else None,
        "bare_client_images_per_s": bare,
        "ratio_to_bare_client": (count / elapsed) / bare if bare else None,
        "server_cpu_s": cpu, "cpu_ms_per_image": cpu / count * 1000,
        "stub_cpu_ms_per_image": stub_cpu / count * 1000,
        "bench_client_cpu_ms_per_image": client_cpu / count * 1000,
        "loop_lag_max_ms": health["loop_lag_max_ms"], "archive_s": archive_s,
        "archive_ms_per_image": archive_s / count * 1000,
    }
    if poll:
        result["status_calls"] = len(latencies)
        result["status_p50_ms"] = pct(latencies, 0.50)
        result["status_p99_ms"] = pct(latencies, 0.99)
        result["status_max_ms"] = max(latencies) if latencies else 0.0
    return result


async def bare_client_run(workdir: Path, count: int, size: int, latency_ms: float,
                          concurrency: int) -> float:
    """Images a second that a client doing nothing but the ML calls gets from the same stub:
    what the machine allows, before any backend work."""
    pngs = [scene_png(size, size, seed) for seed in range(20)]
    port = free_port()
    stub = stub_process(port, workdir, "--mode", "ready", "--latency-ms", str(latency_ms))
    await stub.start()
    try:
        await wait_http(f"http://127.0.0.1:{port}/health", stub)
        async with aiohttp.ClientSession() as session:
            ml = MLClient(session, f"http://127.0.0.1:{port}", 60, 10, 2**28, Metrics())
            slots = asyncio.Semaphore(concurrency)
            spill = workdir / "spill.part"

            async def call(i: int) -> None:
                async with slots:
                    await ml.segment(pngs[i % len(pngs)], f"{i}.png", "image/png", spill)

            await call(0)
            start = time.perf_counter()
            await asyncio.gather(*(call(i) for i in range(count)))
            return count / (time.perf_counter() - start)
    finally:
        await stub.kill()


async def big_zip_stream(total_bytes: int, entry_bytes: int) -> AsyncIterator[bytes]:
    """A zip of stored entries made on the fly: one real image, then filler entries."""
    block = random.Random(7).randbytes(1024 * 1024)
    chunks: list[bytes] = []

    class Sink(io.RawIOBase):
        def writable(self) -> bool:
            return True

        def write(self, b: Any) -> int:
            chunks.append(bytes(b))
            return len(b)

    sink = Sink()
    zf = zipfile.ZipFile(sink, "w", zipfile.ZIP_STORED)  # unseekable: data descriptors
    zf.writestr("scene.png", scene_png(128, 128, 1))
    written = 0
    n = 0
    while written < total_bytes:
        with zf.open(zipfile.ZipInfo(f"filler/{n:04d}.bin"), "w", force_zip64=True) as entry:
            for _ in range(entry_bytes // len(block)):
                entry.write(block)
                if chunks:
                    yield b"".join(chunks)
                    chunks.clear()
        written += entry_bytes
        n += 1
    zf.close()
    yield b"".join(chunks)


async def upload_memory_run(workdir: Path, total_bytes: int) -> dict[str, Any]:
    async with Stack(workdir, 0, 4, {"OILSPILL_MAX_UPLOAD_BYTES": str(total_bytes * 2),
                                     "OILSPILL_MAX_UNPACKED_BYTES": str(total_bytes * 2)}
                     ) as stack:
        before = rss_bytes(stack.pid)
        peak = [before]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak[0] = max(peak[0], rss_bytes(stack.pid))
                time.sleep(0.01)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        async with aiohttp.ClientSession() as session:
            start = time.perf_counter()
            accepted = await upload(session, stack.base,
                                    big_zip_stream(total_bytes, 64 * 1024 * 1024))
            elapsed = time.perf_counter() - start
            await wait_finished(session, stack.base, accepted["job_id"])
        done.set()
        sampler.join()
    return {"upload_bytes": total_bytes, "seconds_to_accept": elapsed,
            "mb_per_s": total_bytes / 1e6 / elapsed,
            "rss_before_mib": before / 2**20, "peak_rss_growth_mib": (peak[0] - before) / 2**20,
            "tasks": len(accepted["task_ids"]), "skipped": len(accepted["skipped"])}


async def startup_run(workdir: Path, repeats: int) -> dict[str, Any]:
    times, rss = [], []
    for _ in range(repeats):
        async with Stack(workdir, 0, 4) as stack:
            await asyncio.sleep(0.5)  # idle
            times.append(stack.started_in_s)
            rss.append(rss_bytes(stack.pid))
    return {"startup_s_median": statistics.median(times), "startup_s_max": max(times),
            "idle_rss_mib": statistics.median(rss) / 2**20}


async def scale_runs(workdir: Path, counts: list[int]) -> list[dict[str, Any]]:
    runs = []
    for count in counts:
        run = await throughput_run(workdir, count, 32, 0, 8, poll=False)
        run["seconds_per_image"] = run["seconds"] / count
        runs.append(run)
    return runs


def table(results: dict[str, Any]) -> str:
    lines = []
    t8, t32 = results["throughput_c8"], results["throughput_c32"]
    for t in (t8, t32):
        lines.append(f"throughput C={t['concurrency']:<3} L={t['latency_ms']:g} ms: "
                     f"{t['images_per_s']:7.1f} img/s of a {t['limit_per_s']:.0f} limit "
                     f"= {t['ratio_to_limit']:.1%}   ({t['images']} images, {t['seconds']:.2f} s"
                     f", {t['failed']} failed)")
        lines.append(f"    a bare client making only the ML calls gets "
                     f"{t['bare_client_images_per_s']:.1f} img/s = "
                     f"{t['bare_client_images_per_s'] / t['limit_per_s']:.1%} of the limit; "
                     f"the backend reaches {t['ratio_to_bare_client']:.1%} of that")
    lines.append(f"backend CPU per image (C=8 run): {t8['cpu_ms_per_image']:.2f} ms "
                 f"(the stub: {t8['stub_cpu_ms_per_image']:.2f} ms, the bench client: "
                 f"{t8['bench_client_cpu_ms_per_image']:.2f} ms, on {os.cpu_count()} cores)")
    lines.append(f"status calls under load: p50 {t8['status_p50_ms']:.2f} ms, "
                 f"p99 {t8['status_p99_ms']:.2f} ms, max {t8['status_max_ms']:.2f} ms "
                 f"({t8['status_calls']} calls); largest loop stall "
                 f"{t8['loop_lag_max_ms']:.1f} ms")
    m = results["upload_memory"]
    lines.append(f"upload of {m['upload_bytes'] / 2**30:.2f} GiB: peak RSS growth "
                 f"{m['peak_rss_growth_mib']:.1f} MiB, accepted in {m['seconds_to_accept']:.2f} s"
                 f" = {m['mb_per_s']:.0f} MB/s")
    s = results["startup"]
    lines.append(f"start-up to /healthz 200: {s['startup_s_median'] * 1000:.0f} ms (max "
                 f"{s['startup_s_max'] * 1000:.0f}); idle RSS {s['idle_rss_mib']:.1f} MiB")
    base = results["scale"][0]["seconds_per_image"]
    for run in results["scale"]:
        lines.append(f"scale {run['images']:>6} images: {run['seconds_per_image'] * 1000:.3f} "
                     f"ms/image ({run['seconds_per_image'] / base:.2f}x), archive "
                     f"{run['archive_ms_per_image']:.3f} ms/image, CPU "
                     f"{run['cpu_ms_per_image']:.2f} ms/image")
    return "\n".join(lines)


async def run(quick: bool) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="oilspill-bench-") as tmp:
        workdir = Path(tmp)
        n = 60 if quick else 1000
        results: dict[str, Any] = {"quick": quick, "python": sys.version.split()[0],
                                   "cpus": os.cpu_count()}
        results["throughput_c8"] = await throughput_run(workdir, n, 256, 20, 8, poll=True)
        results["throughput_c32"] = await throughput_run(workdir, n, 256, 20, 32, poll=True)
        size = 64 * 2**20 if quick else 2**30
        results["upload_memory"] = await upload_memory_run(workdir, size)
        results["startup"] = await startup_run(workdir, 1 if quick else 3)
        results["scale"] = await scale_runs(workdir, [20, 50] if quick else [100, 1000, 10000])
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes, a few seconds")
    parser.add_argument("--out", type=Path, default=OUT, help=f"JSON file (default {OUT})")
    args = parser.parse_args(argv)
    started = time.perf_counter()
    results = asyncio.run(run(args.quick))
    args.out.write_text(json.dumps(results, indent=1))
    print(table(results))
    print(f"written {args.out} in {time.perf_counter() - started:.0f} s")
