"""One Sentinel-1-sized scene through the real server: wall time, peak memory, CPU per tile.

    python -m bench scene                        # 26,000 x 17,000 uint16, several minutes
    python -m bench scene --width 1500 --height 1200 --tile-px 512   # seconds (the tests)

A GeoTIFF like a Sentinel-1 GRD measurement (uint16 amplitude, georeferenced by a grid of
GCPs in EPSG:4326 and no affine transform, an all-zero border of varying width, speckled sea
with a few dark slicks) is written strip by strip into --out (never whole in memory), or
reused when a kept one of the same size is there. The real ML stub (`--mode ready`: a fixed
mask after --latency-ms, no computing) and the real server (`python -m oilspill serve`) run
as separate processes on free loopback ports with a temporary data folder. The scene is
uploaded bare, streamed from disk, and the job is followed until it finishes.

With latency L and C calls in flight, the tiles (and the overview) cannot take less than
tiles x L / C; the ratio of the job's wall time to that is what the server costs on top
(target <= 1.15). Memory: the server's VmHWM (peak RSS since it started) minus its idle
VmRSS (target <= 256 MiB). The stages (survey, tiles, stitch) are timed from the server's
log lines and the job's tiles_done, so a miss says where the time went.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO

import aiohttp
import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.control import GroundControlPoint
from rasterio.crs import CRS
from rasterio.windows import Window

from tests.procs import Stack, warm_up

DEFAULT_WIDTH, DEFAULT_HEIGHT = 26_000, 17_000
DEFAULT_OUT = Path("bench-out")
TARGET_RATIO = 1.15
TARGET_GROWTH_MIB = 256.0
SERVER_OVERLAP_PX = 128  # the server's default OILSPILL_TILE_OVERLAP_PX
SERVER_MAX_SCENE_PIXELS = 1_000_000_000  # the server's default OILSPILL_MAX_SCENE_PIXELS
SCENE_TAG = "OILSPILL_BENCH_SCENE"
SCENE_FORMAT = "1"  # bump when the generator changes: a kept scene of another format is remade
STRIP_ROWS = 512  # rows written at once: one row of 512 x 512 blocks
TICKS = os.sysconf("SC_CLK_TCK")


class BenchError(Exception):
    """The bench cannot go on; the message says why."""


# --- the scene ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Slick:
    """A dark, elongated, slightly bent band (scene pixels, radians, dB of damping)."""

    row: float
    col: float
    length: float  # half-length along the band
    thickness: float  # half-thickness at the middle
    angle: float
    bend: float  # amplitude of the bend, in thicknesses
    waves: float  # half-periods of the bend along the band
    damp_db: float

    def bounds(self) -> tuple[int, int, int, int]:
        """(row0, row1, col0, col1) holding the band, end exclusive."""
        reach = self.length + self.thickness * (1 + abs(self.bend))
        return (math.floor(self.row - reach), math.ceil(self.row + reach) + 1,
                math.floor(self.col - reach), math.ceil(self.col + reach) + 1)


def plan_slicks(width: int, height: int, seed: int, count: int = 5) -> list[Slick]:
    """A few slicks of sizes like real ones, some long enough to cross several tiles."""
    rng = np.random.default_rng([seed, 1])
    scale = min(width, height)
    slicks = []
    for _ in range(count):
        length = float(rng.uniform(0.03, 0.15)) * scale
        slicks.append(Slick(row=float(rng.uniform(0.15, 0.85)) * height,
                            col=float(rng.uniform(0.15, 0.85)) * width, length=length,
                            thickness=length / float(rng.uniform(8.0, 20.0)),
                            angle=float(rng.uniform(0, math.pi)),
                            bend=float(rng.uniform(-1.0, 1.0)),
                            waves=float(rng.uniform(0.5, 1.5)),
                            damp_db=float(rng.uniform(5.0, 11.0))))
    return slicks


def border(width: int, height: int, rows: npt.NDArray[np.float64]
           ) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64], int, int]:
    """S1-like zero border: per row, the first valid column and the first invalid one after
    the valid run (both varying slowly along the rows); and the zero rows at top and bottom."""
    phase = rows / max(height, 1)
    left = np.round(width * (0.012 + 0.008 * np.sin(2.1 * np.pi * phase + 0.4))
                    + 0.004 * width * phase).astype(np.int64)
    right = width - np.round(width * (0.010 + 0.007 * np.cos(1.7 * np.pi * phase))
                             + 0.006 * width * (1 - phase)).astype(np.int64)
    return left, right, max(1, round(height * 0.002)), max(1, round(height * 0.0025))


def gcp_grid(width: int, height: int, lines: int = 10, pixels: int = 21
             ) -> list[GroundControlPoint]:
    """A grid of GCPs (as in an S1 GRD annotation) over a descending pass in the North Sea:
    a footprint about 250 x 170 km, tilted, with lon/lat in EPSG:4326."""
    points = []
    for row in np.linspace(0, height - 1, lines):
        for col in np.linspace(0, width - 1, pixels):
            u, v = col / max(width - 1, 1), row / max(height - 1, 1)
            lon = 2.0 + 3.6 * u + 0.45 * v + 0.05 * u * v
            lat = 55.2 - 0.35 * u - 1.55 * v + 0.02 * u * u
            points.append(GroundControlPoint(row=float(row), col=float(col), x=lon, y=lat,
                                             z=0.0))
    return points


def scene_strip(width: int, height: int, top: int, rows: int, slicks: list[Slick],
                seed: int) -> npt.NDArray[np.uint16]:
    """Rows top..top+rows of the scene: amplitude DNs (uint16), zero outside the footprint."""
    rng = np.random.default_rng([seed, 2, top])
    looks = 4.4
    # Intensity: gamma speckle (mean 1) times the sea's backscatter, in place throughout.
    values = rng.standard_gamma(looks, size=(rows, width), dtype=np.float32)
    values *= np.float32(1 / looks)
    row_idx = np.arange(top, top + rows, dtype=np.float64)
    u = np.arange(width, dtype=np.float32) / np.float32(width)
    # Wind: about 6 dB across the swath (incidence angle), with slow swells along it.
    sea_db = (-3.0 * u)[None, :] + (1.2 * np.sin(row_idx / height * 7.0 + 1.0)
                                    ).astype(np.float32)[:, None]
    values *= np.power(np.float32(10), sea_db / np.float32(10), dtype=np.float32)
    for slick in slicks:
        r0, r1, c0, c1 = slick.bounds()
        r0, r1 = max(r0, top), min(r1, top + rows)
        c0, c1 = max(c0, 0), min(c1, width)
        if r0 >= r1 or c0 >= c1:
            continue
        yy = np.arange(r0, r1, dtype=np.float32)[:, None] - np.float32(slick.row)
        xx = np.arange(c0, c1, dtype=np.float32)[None, :] - np.float32(slick.col)
        cos, sin = np.float32(math.cos(slick.angle)), np.float32(math.sin(slick.angle))
        along = xx * cos + yy * sin
        across = yy * cos - xx * sin
        t = along / np.float32(slick.length)
        bend = np.float32(slick.bend * slick.thickness) * np.sin(t * np.float32(
            math.pi * slick.waves))
        taper = np.sqrt(np.clip(1 - t * t, 0, 1))
        inside = np.abs(across - bend) <= np.float32(slick.thickness) * taper
        values[r0 - top:r1 - top, c0:c1][inside] *= np.float32(10 ** (-slick.damp_db / 10))
    # Amplitude DN as in GRD products: about 150 over an average sea.
    np.sqrt(values, out=values)
    values *= np.float32(150)
    np.clip(values, 1, 65535, out=values)
    strip = values.astype(np.uint16)
    del values
    left, right, top_rows, bottom_rows = border(width, height, row_idx)
    columns = np.arange(width)
    outside = (columns[None, :] < left[:, None]) | (columns[None, :] >= right[:, None])
    outside |= ((row_idx < top_rows) | (row_idx >= height - bottom_rows))[:, None]
    strip[outside] = 0
    return strip


def scene_is_current(path: Path, width: int, height: int, seed: int) -> bool:
    """A kept scene of this size, made by this generator with this seed."""
    if not path.is_file():
        return False
    try:
        with rasterio.open(path) as src:
            return bool(src.width == width and src.height == height
                        and src.dtypes[0] == "uint16"
                        and src.tags().get(SCENE_TAG) == f"{SCENE_FORMAT}:{seed}")
    except rasterio.errors.RasterioError:
        return False


def write_scene(path: Path, width: int, height: int, seed: int = 0,
                strip_rows: int = STRIP_ROWS) -> None:
    """Write the scene strip by strip (window writes; tiled 512 x 512, no compression,
    BigTIFF if needed); memory is a few copies of one strip. Written under another name,
    then renamed: a file at `path` is always whole."""
    slicks = plan_slicks(width, height, seed)
    part = path.with_name(f".{path.name}.part")
    profile: dict[str, Any] = {
        "driver": "GTiff", "width": width, "height": height, "count": 1, "dtype": "uint16",
        "tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "none",
        "BIGTIFF": "IF_SAFER", "nodata": None,
    }
    try:
        # A small block cache: each strip is whole rows of blocks, flushed as it goes.
        with rasterio.Env(GDAL_CACHEMAX=64), rasterio.open(
                part, "w", gcps=gcp_grid(width, height), crs=CRS.from_epsg(4326),
                **profile) as dst:
            dst.update_tags(**{SCENE_TAG: f"{SCENE_FORMAT}:{seed}"})
            for top in range(0, height, strip_rows):
                rows = min(strip_rows, height - top)
                dst.write(scene_strip(width, height, top, rows, slicks, seed), 1,
                          window=Window(0, top, width, rows))
        os.replace(part, path)
    finally:
        part.unlink(missing_ok=True)


# --- the server process ---------------------------------------------------------------------


def proc_status(pid: int) -> dict[str, int]:
    """The kB fields of /proc/<pid>/status (VmRSS, VmHWM ...), in bytes."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, rest = line.partition(":")
        parts = rest.split()
        if len(parts) == 2 and parts[1] == "kB":
            values[key] = int(parts[0]) * 1024
    return values


def cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process so far (/proc/<pid>/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS


def open_binary(path: Path) -> BinaryIO:
    return path.open("rb")


def log_events(lines: list[str], job_id: str) -> dict[str, float]:
    """Epoch times of the job's stage lines in the server's JSON log: 'scene' (its survey
    is done), 'done' (stitched), and the first and last tile done when logged (DEBUG)."""
    events: dict[str, float] = {}
    for line in lines:
        if not line.startswith("{"):
            continue
        with contextlib.suppress(ValueError, KeyError):
            entry = json.loads(line)
            message = str(entry["message"])
            if f"job {job_id} " not in message:
                continue
            at = datetime.fromisoformat(entry["time"].replace("Z", "+00:00")).timestamp()
            if ": scene " in message:
                events.setdefault("scene_opened", at)
            elif ": done " in message:
                events["stitched"] = at
            elif " done" in message and (": tile " in message or ": overview " in message):
                events.setdefault("first_unit_logged", at)
                events["last_unit_logged"] = at
    return events


async def start_profiler(pid: int, out: Path) -> asyncio.subprocess.Process:
    """py-spy recording the server into `out` (every thread not idle, 100 a second, without
    pausing it), raw format: one line per distinct stack with its count. On a loaded machine
    a thread waiting for a core counts as busy: read the shares, not the seconds."""
    # The venv's bin folder need not be on PATH.
    exe = shutil.which("py-spy", path=f"{Path(sys.executable).parent}{os.pathsep}"
                                       f"{os.environ.get('PATH', '')}")
    if exe is None:
        raise BenchError("--profile needs py-spy: pip install py-spy (into this venv)")
    proc = await asyncio.create_subprocess_exec(
        exe, "record", "--pid", str(pid), "--rate", "100", "--threads", "--nonblocking",
        "--format", "raw", "--output", str(out), stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE)
    await asyncio.sleep(1.0)  # attached
    if proc.returncode is not None:
        err = (await proc.stderr.read()).decode() if proc.stderr else ""
        raise BenchError(f"py-spy could not attach to the server: {err.strip()}")
    return proc


async def stop_profiler(proc: asyncio.subprocess.Process) -> None:
    if proc.returncode is None:
        proc.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
        try:
            await asyncio.wait_for(proc.wait(), 60)
        except TimeoutError:
            proc.kill()
            await proc.wait()


@dataclass
class Sample:
    """One look at the job and the server while it runs."""

    at: float  # epoch seconds (client clock, same host as the server)
    tiles_done: int
    rss: int
    cpu_s: float


def mib(n: float) -> float:
    return n / 2**20


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


@contextlib.contextmanager
def scene_file(args: argparse.Namespace) -> Iterator[tuple[Path, dict[str, Any]]]:
    """The scene in --out, written or reused; removed afterwards unless --keep."""
    path = args.out / f"scene-{args.width}x{args.height}.tif"
    info: dict[str, Any] = {"path": str(path)}
    if scene_is_current(path, args.width, args.height, args.seed):
        info.update(reused=True, write_s=0.0)
        print(f"reusing {path}", flush=True)
    else:
        print(f"writing {path} ({args.width} x {args.height} uint16) ...", flush=True)
        start = time.perf_counter()
        write_scene(path, args.width, args.height, args.seed)
        info.update(reused=False, write_s=time.perf_counter() - start)
        print(f"  written in {info['write_s']:.1f} s", flush=True)
    info["bytes"] = path.stat().st_size
    try:
        yield path, info
    finally:
        if not args.keep:
            path.unlink(missing_ok=True)


async def upload_bare(session: aiohttp.ClientSession, base: str, path: Path
                      ) -> dict[str, Any]:
    """Upload the scene as it is, streamed from disk."""
    fh = await asyncio.to_thread(open_binary, path)
    try:
        form = aiohttp.FormData()
        form.add_field("file", fh, filename=path.name, content_type="image/tiff")
        async with session.post(f"{base}/api/upload/", data=form) as resp:
            body = await resp.json()
            if resp.status != 202:
                raise BenchError(f"upload refused: {resp.status} {body}")
            return dict(body)
    finally:
        fh.close()


async def follow_job(session: aiohttp.ClientSession, base: str, job_id: str, pid: int,
                     stack: Stack, deadline: float, interval_s: float
                     ) -> tuple[dict[str, Any], list[Sample]]:
    """Poll the job until it finishes, sampling its progress and the server's RSS and CPU."""
    samples: list[Sample] = []
    while True:
        if stack.server is None or not stack.server.running:
            tail = stack.server.tail() if stack.server else ""
            raise BenchError(f"the server exited while the job ran:\n{tail}")
        async with session.get(f"{base}/api/job/{job_id}") as resp:
            job = await resp.json()
            if resp.status != 200:
                raise BenchError(f"GET /api/job/{job_id}: {resp.status} {job}")
        samples.append(Sample(time.time(), int(job["tiles_done"]),
                              proc_status(pid)["VmRSS"], cpu_s(pid)))
        if job["finished_at"]:
            return dict(job), samples
        if time.monotonic() > deadline:
            raise BenchError(f"gave up: the job was not finished after the time allowed "
                             f"(--timeout-s); {job['tiles_done']}/{job['tiles_total']} units "
                             f"done, status {job['status']}")
        await asyncio.sleep(interval_s)


def stages(accepted_at: float, finished_at: float, tiles_total: int,
           events: dict[str, float], samples: list[Sample], cpu_accepted: float,
           cpu_end: float) -> dict[str, Any]:
    """Survey (upload accepted -> scene opened), tiles (-> every ML unit done), stitch
    (-> finished): seconds, the server's CPU seconds and its largest sampled RSS in each."""
    units_done_at = next((s.at for s in samples if s.tiles_done >= tiles_total), finished_at)
    first_done_at = next((s.at for s in samples if s.tiles_done > 0), units_done_at)
    opened = events.get("scene_opened", first_done_at)
    bounds = [("survey", accepted_at, opened), ("tiles", opened, units_done_at),
              ("stitch", units_done_at, finished_at)]
    result: dict[str, Any] = {}
    for name, start, end in bounds:
        inside = [s for s in samples if start <= s.at <= end]
        before = [s for s in samples if s.at <= start]
        after = [s for s in samples if s.at >= end]
        cpu_start = before[-1].cpu_s if before else cpu_accepted
        cpu_stop = after[0].cpu_s if after else cpu_end
        result[name] = {
            "s": max(0.0, end - start),
            "server_cpu_s": max(0.0, cpu_stop - cpu_start),
            "max_sampled_rss_mib": mib(max((s.rss for s in inside), default=0)),
        }
    result["first_unit_done_after_s"] = first_done_at - accepted_at
    if "stitched" in events:
        result["stitch_logged_after_s"] = events["stitched"] - accepted_at
    if "first_unit_logged" in events:
        result["units_logged_s"] = events["last_unit_logged"] - events["first_unit_logged"]
    return result


async def measure(args: argparse.Namespace, scene: Path, scene_bytes: int) -> dict[str, Any]:
    settings = {
        "OILSPILL_CONCURRENCY": str(args.concurrency),
        "OILSPILL_MAX_UPLOAD_BYTES": str(scene_bytes + 2**20),
        "OILSPILL_MAX_SCENE_PIXELS": str(max(SERVER_MAX_SCENE_PIXELS,
                                             args.width * args.height)),
        "OILSPILL_LOG_JSON": "1", "OILSPILL_LOG_LEVEL": args.log_level,
    }
    if args.tile_px is not None:
        settings["OILSPILL_TILE_PX"] = str(args.tile_px)
    overlap = args.overlap_px
    if overlap is None and args.tile_px is not None and 2 * SERVER_OVERLAP_PX >= args.tile_px:
        overlap = args.tile_px // 8
    if overlap is not None:
        settings["OILSPILL_TILE_OVERLAP_PX"] = str(overlap)
    deadline = time.monotonic() + args.timeout_s
    profiler: asyncio.subprocess.Process | None = None
    with tempfile.TemporaryDirectory(prefix="oilspill-bench-scene-") as tmp:
        stack = Stack(Path(tmp), ("--mode", "ready", "--latency-ms", f"{args.latency_ms:g}"),
                      **settings)
        try:
            await stack.start()
            assert stack.server and stack.server.proc and stack.stub and stack.stub.proc
            pid, stub_pid = stack.server.proc.pid, stack.stub.proc.pid
            # A small scene first: the libraries the first scene loads (about 60 MiB,
            # once per server) are not this scene's growth.
            warm = Path(tmp) / "warm-up.tif"
            write_scene(warm, 64, 64, seed=args.seed + 1)
            await warm_up(stack.base, warm)
            await asyncio.sleep(args.idle_s)  # settle: what an idle server holds
            idle = proc_status(pid)
            profiler = (await start_profiler(pid, args.out / "scene-profile.txt")
                        if args.profile else None)
            timeout = aiohttp.ClientTimeout(total=max(1.0, deadline - time.monotonic()))
            async with aiohttp.ClientSession(timeout=timeout) as session:
                cpu_before, stub_cpu_before = cpu_s(pid), cpu_s(stub_pid)
                upload_start = time.perf_counter()
                accepted = await upload_bare(session, stack.base, scene)
                upload_s = time.perf_counter() - upload_start
                accepted_at = time.time()
                cpu_accepted = cpu_s(pid)
                job, samples = await follow_job(session, stack.base, accepted["job_id"], pid,
                                                stack, deadline, args.poll_s)
                cpu_after, stub_cpu_after = cpu_s(pid), cpu_s(stub_pid)
                end = proc_status(pid)
                async with session.get(f"{stack.base}/healthz") as resp:
                    endpoint = (await resp.json())["ml_endpoints"][0]
            lines = list(stack.server.lines)
        finally:
            if profiler is not None:
                await stop_profiler(profiler)
            await stack.close()
    log_path = args.out / "scene-server.log"
    log_path.write_text("\n".join(lines) + "\n")
    finished_at = epoch(job["finished_at"])
    units = int(job["tiles_total"])
    latency_s = args.latency_ms / 1000
    ideal_s = units * latency_s / args.concurrency
    wall_s = finished_at - accepted_at
    cpu_job = cpu_after - cpu_before
    growth = end["VmHWM"] - idle["VmRSS"]
    phase = stages(accepted_at, finished_at, units, log_events(lines, job["job_id"]), samples,
                   cpu_accepted, cpu_after)
    return {
        "job_id": job["job_id"], "status": job["status"], "done": job["done"],
        "failed": job["failed"], "tiles_total": units, "tiles_done": job["tiles_done"],
        "upload": {"bytes": scene_bytes, "s": upload_s,
                   "mb_per_s": scene_bytes / 1e6 / upload_s if upload_s else None,
                   "server_cpu_s": cpu_accepted - cpu_before},
        "wall_s": wall_s, "ideal_s": ideal_s,
        "ratio": wall_s / ideal_s if ideal_s else None, "target_ratio": TARGET_RATIO,
        # The tiles alone (scene opened -> every ML unit done): how close the ML calls
        # themselves run to C/L, without the survey before them and the stitch after.
        "tiles_phase_ratio": phase["tiles"]["s"] / ideal_s if ideal_s else None,
        "memory": {"idle_vmrss_mib": mib(idle["VmRSS"]), "idle_vmhwm_mib": mib(idle["VmHWM"]),
                   "vmhwm_mib": mib(end["VmHWM"]), "end_vmrss_mib": mib(end["VmRSS"]),
                   "peak_growth_mib": mib(growth), "target_growth_mib": TARGET_GROWTH_MIB},
        "cpu": {"server_s": cpu_job, "server_ms_per_tile": cpu_job / units * 1000,
                "server_s_after_upload": cpu_after - cpu_accepted,
                "stub_s": stub_cpu_after - stub_cpu_before,
                "stub_ms_per_tile": (stub_cpu_after - stub_cpu_before) / units * 1000},
        # The ML calls as the server timed them (the warm-up scene's two included): over
        # the stub's latency is sending the tile, the answer's way back and the event loop.
        "ml_calls": {"calls": endpoint["calls"],
                     "mean_latency_ms": endpoint["mean_latency_ms"],
                     "stub_latency_ms": args.latency_ms},
        "stages": phase, "samples": len(samples), "server_log": str(log_path),
        "server_settings": settings,
    }


def summary(results: dict[str, Any]) -> str:
    r, sc = results["run"], results["scene"]
    m, c, st = r["memory"], r["cpu"], r["stages"]
    ok_ratio = r["ratio"] is not None and r["ratio"] <= TARGET_RATIO
    ok_mem = m["peak_growth_mib"] <= TARGET_GROWTH_MIB
    written = "reused" if sc["reused"] else f"written in {sc['write_s']:.1f} s"
    lines = [
        f"scene {sc['width']} x {sc['height']} uint16, {sc['bytes'] / 1e6:.0f} MB "
        f"({written}); "
        f"C={results['concurrency']}, L={results['latency_ms']:g} ms, "
        f"{r['tiles_total']} ML units (tiles + overview); job {r['status']}, "
        f"{r['failed']} failed",
        f"upload (bare, streamed): {r['upload']['s']:.2f} s = "
        f"{r['upload']['mb_per_s']:.0f} MB/s",
        f"job wall time, accepted -> finished: {r['wall_s']:.2f} s; ideal "
        f"tiles x L / C = {r['ideal_s']:.2f} s; ratio {r['ratio']:.2f} "
        f"(target <= {TARGET_RATIO}) {'OK' if ok_ratio else 'MISSED'}",
        f"  survey {st['survey']['s']:.2f} s (CPU {st['survey']['server_cpu_s']:.1f} s), "
        f"tiles {st['tiles']['s']:.2f} s (CPU {st['tiles']['server_cpu_s']:.1f} s), "
        f"stitch {st['stitch']['s']:.2f} s (CPU {st['stitch']['server_cpu_s']:.1f} s); "
        f"first unit done {st['first_unit_done_after_s']:.2f} s after acceptance; tiles "
        f"phase alone / ideal = {r['tiles_phase_ratio']:.2f}",
        f"server memory: idle VmRSS {m['idle_vmrss_mib']:.1f} MiB (VmHWM at idle "
        f"{m['idle_vmhwm_mib']:.1f}), VmHWM after the job {m['vmhwm_mib']:.1f} MiB; peak "
        f"growth {m['peak_growth_mib']:.1f} MiB (target <= {TARGET_GROWTH_MIB:.0f}) "
        f"{'OK' if ok_mem else 'MISSED'}; largest sampled RSS per stage: survey "
        f"{st['survey']['max_sampled_rss_mib']:.0f}, tiles "
        f"{st['tiles']['max_sampled_rss_mib']:.0f}, stitch "
        f"{st['stitch']['max_sampled_rss_mib']:.0f} MiB",
        f"ML calls as the server timed them: {r['ml_calls']['calls']}, mean "
        f"{r['ml_calls']['mean_latency_ms']:.1f} ms for the stub's "
        f"{r['ml_calls']['stub_latency_ms']:g} ms",
        f"server CPU: {c['server_s']:.1f} s = {c['server_ms_per_tile']:.1f} ms per unit "
        f"(upload included; {c['server_s_after_upload']:.1f} s after it); stub "
        f"{c['stub_ms_per_tile']:.1f} ms per unit; {results['cpus']} cores, load before "
        f"{results['loadavg_before'][0]:.2f}",
    ]
    return "\n".join(lines)


async def run(args: argparse.Namespace) -> dict[str, Any]:
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {
        "python": sys.version.split()[0], "cpus": os.cpu_count(),
        "loadavg_before": list(os.getloadavg()), "concurrency": args.concurrency,
        "latency_ms": args.latency_ms, "tile_px": args.tile_px,
    }
    with scene_file(args) as (path, info):
        results["scene"] = {"width": args.width, "height": args.height, "seed": args.seed,
                            "slicks": [asdict(s) for s in plan_slicks(args.width, args.height,
                                                                      args.seed)],
                            **info}
        results["run"] = await measure(args, path, info["bytes"])
    results["loadavg_after"] = list(os.getloadavg())
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench scene",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--width", type=int, default=DEFAULT_WIDTH)
    parser.add_argument("--height", type=int, default=DEFAULT_HEIGHT)
    parser.add_argument("--tile-px", type=int, default=None,
                        help="OILSPILL_TILE_PX for the server (default: the server's, 1024)")
    parser.add_argument("--overlap-px", type=int, default=None,
                        help="OILSPILL_TILE_OVERLAP_PX (default: the server's, 128, or "
                             "tile/8 for tiles of 256 px or less)")
    parser.add_argument("--concurrency", type=int, default=8, help="OILSPILL_CONCURRENCY")
    parser.add_argument("--latency-ms", type=float, default=100.0,
                        help="the stub's latency per call")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT,
                        help=f"folder for the scene, scene.json and the server's log "
                             f"(default {DEFAULT_OUT}/)")
    parser.add_argument("--keep", action="store_true",
                        help="keep the scene file (a later run of the same size reuses it)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--timeout-s", type=float, default=1800.0,
                        help="give up after this long from the start of the upload")
    parser.add_argument("--idle-s", type=float, default=1.0,
                        help="wait before reading the server's idle RSS")
    parser.add_argument("--poll-s", type=float, default=0.1,
                        help="interval of the job polls and RSS/CPU samples")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO"],
                        help="the server's; DEBUG logs every tile (costs the server a little)")
    parser.add_argument("--profile", action="store_true",
                        help="record the server with py-spy (pip install py-spy) from the "
                             "upload to the end, into <out>/scene-profile.txt")
    args = parser.parse_args(argv)
    if args.width < 1 or args.height < 1 or args.concurrency < 1 or args.latency_ms < 0:
        parser.error("width, height and concurrency must be >= 1, latency >= 0")
    started = time.perf_counter()
    try:
        results = asyncio.run(run(args))
    except (BenchError, AssertionError, TimeoutError) as exc:
        # AssertionError: the process helpers' (a server that did not start, ...).
        print(f"bench scene failed: {type(exc).__name__}: {exc}", file=sys.stderr)
        sys.exit(1)
    out = args.out / "scene.json"
    out.write_text(json.dumps(results, indent=1))
    print(summary(results))
    print(f"written {out} in {time.perf_counter() - started:.0f} s")
