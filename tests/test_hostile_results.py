"""Hostile inputs while reading results: every kind of picture gets an overlay, one that
cannot be drawn never sinks the job's zip, errors speak the user's terms, the ML service's
answers are held to the upload limits and never redirected, and an overlay is drawn once,
in memory bounded by its own size."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from aiohttp import web
from PIL import Image

from oilspill.jobs import ResultKind, Task, TaskStatus
from oilspill.masks import ensure_overlay
from oilspill.paths import JobPaths, new_id
from oilspill.results import ResultArchives
from oilspill.store import Store
from oilspill.web.app import create_app

from .conftest import archive_of, scene_png, tasks_of, upload, wait_finished, zip_bytes

ROOT = Path(__file__).resolve().parent.parent
OVERLAY_PX = 64


# --- pictures of every kind ------------------------------------------------------------

def gradient(width: int = 96, height: int = 72) -> np.ndarray:
    """Dark on the left, bright on the right: 0..255."""
    return np.tile(np.linspace(0, 255, width), (height, 1)).astype(np.uint8)


def encoded(image: Image.Image, fmt: str, **options: Any) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt, **options)
    return out.getvalue()


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return (struct.pack(">I", len(data)) + kind + data
            + struct.pack(">I", zlib.crc32(kind + data)))


def raw_png(rows: list[bytes], width: int, height: int, depth: int, colour: int) -> bytes:
    """A PNG written by hand (kinds Pillow does not write): rows of raw samples."""
    header = struct.pack(">IIBBBBB", width, height, depth, colour, 0, 0, 0)
    data = zlib.compress(b"".join(b"\x00" + row for row in rows))
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", data)
            + png_chunk(b"IEND", b""))


def rgb16_png() -> bytes:
    grey = gradient().astype(">u2") * 257
    rgb = np.stack([grey, grey, grey], axis=-1)
    return raw_png([row.tobytes() for row in rgb], 96, 72, 16, 2)


def grey2_png() -> bytes:
    """2-bit grey: four samples a byte."""
    levels = (gradient() // 64).astype(np.uint8)
    packed = [bytes(int(a) << 6 | int(b) << 4 | int(c) << 2 | int(d)
                    for a, b, c, d in row.reshape(-1, 4)) for row in levels]
    return raw_png(packed, 96, 72, 2, 0)


def every_kind() -> dict[str, bytes]:
    grey = Image.fromarray(gradient())
    palette = grey.convert("RGB").quantize(64)
    with_alpha = grey.convert("RGBA")
    with_alpha.putalpha(128)
    palette_trns = grey.convert("RGB").quantize(16)
    return {
        "palette.png": encoded(palette, "PNG"),
        "palette4bit.png": encoded(grey.convert("RGB").quantize(16), "PNG", bits=4),
        "palette_transparent.png": encoded(palette_trns, "PNG", transparency=0),
        "onebit.png": encoded(grey.convert("1"), "PNG"),
        "twobit.png": grey2_png(),
        "grey_alpha.png": encoded(grey.convert("LA"), "PNG"),
        "rgba.png": encoded(with_alpha, "PNG"),
        "grey16.png": encoded(Image.fromarray(gradient().astype(np.uint16) * 250), "PNG"),
        "rgb16.png": rgb16_png(),
        "cmyk.jpg": encoded(grey.convert("CMYK"), "JPEG", quality=95),
        "grey.jpg": encoded(grey, "JPEG", quality=95),
        "palette.bmp": encoded(palette, "BMP"),
        "onebit.bmp": encoded(grey.convert("1"), "BMP"),
        "rgb.bmp": encoded(grey.convert("RGB"), "BMP"),
        "big_palette.png": encoded(Image.fromarray(
            np.tile(np.linspace(0, 255, 1300), (1100, 1)).astype(np.uint8)
        ).convert("RGB").quantize(64), "PNG"),
        "big_onebit.png": encoded(Image.fromarray(
            np.tile(np.linspace(0, 255, 1300), (1100, 1)).astype(np.uint8)).convert("1"),
            "PNG"),
    }


@pytest.fixture
async def ready_client(aiohttp_client, start_stub, settings):
    """The real app against the real stub answering a fixed mask (a diagonal band) from the
    image's header only: what an ML service that accepts anything does."""
    ml = await start_stub(mode="ready")
    app = create_app(settings.with_changes(ml_service_url=ml, overlay_max_px=OVERLAY_PX,
                                           max_upload_bytes=64 * 1024 * 1024))
    return await aiohttp_client(app)


def tinted(rgb: np.ndarray) -> np.ndarray:
    """Pixels tinted orange (oil) in an overlay."""
    return (rgb[..., 0].astype(int) - rgb[..., 2].astype(int)) > 60


async def test_every_kind_of_picture_gets_an_overlay_and_a_zip(ready_client):
    images = every_kind()
    status, body = await upload(ready_client, zip_bytes(images))
    assert status == 202, body
    job = await wait_finished(ready_client, body["job_id"], timeout_s=120)
    assert job["done"] == len(images), job
    for name, task in (await tasks_of(ready_client, body)).items():
        resp = await ready_client.get(task["result"]["overlay_url"])
        assert resp.status == 200, (name, await resp.text())
        with Image.open(io.BytesIO(await resp.read())) as overlay:
            rgb = np.asarray(overlay.convert("RGB"))
        assert max(rgb.shape[:2]) == OVERLAY_PX, name
        assert tinted(rgb).any(), f"{name}: the oil is not tinted"
        if name.startswith("big_"):
            continue  # a scene: its quick-look shows its own scale
        grey = np.asarray(Image.fromarray(rgb).convert("L"), float)
        fifth = grey.shape[1] // 5
        left, right = grey[:, :fifth].mean(), grey[:, -fifth:].mean()
        assert right - left > 60, f"{name}: {left:.0f} -> {right:.0f}, not the picture"
    with await archive_of(ready_client, body["job_id"]) as zf:
        rows = json.loads(zf.read("summary.json"))
        names = set(zf.namelist())
    for row in rows:
        assert row["overlay"] in names and row["overlay_error"] is None, row


@pytest.mark.parametrize("values", [
    gradient().astype(np.int32) * 1000 - 50_000,            # Pillow mode I
    gradient().astype(np.float32) / 7,                       # mode F
    np.where(gradient() % 17 == 0, np.nan, gradient() / 255).astype(np.float32),  # NaNs
    gradient().astype(np.uint16) * 250,                      # I;16
], ids=["I", "F", "F-with-NaN", "I;16"])
def test_deep_pictures_are_stretched_into_an_overlay(tmp_path, values):
    """TIFFs reach the server as scenes, but a picture of any depth Pillow opens draws."""
    image, mask = tmp_path / "deep.tif", tmp_path / "mask.png"
    Image.fromarray(values).save(image)
    oil = np.zeros(values.shape, np.uint8)
    oil[30:40, 20:70] = 255
    Image.fromarray(oil).save(mask)
    out = ensure_overlay(image, mask, tmp_path / "overlay.png", tmp_path / ".part", 48,
                         max_slicks=2000)
    with Image.open(out) as overlay:
        rgb = np.asarray(overlay.convert("RGB"))
    assert rgb.shape[:2] == (36, 48) and tinted(rgb).any()
    grey = np.asarray(Image.fromarray(rgb).convert("L"), float)
    assert grey[:, -8:].mean() - grey[:, :8].mean() > 60


def header_only_png(width: int, height: int) -> bytes:
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", struct.pack(
        ">IIBBBBB", width, height, 8, 0, 0, 0, 0)) + png_chunk(b"IEND", b""))


def corrupt_idat_png() -> bytes:
    header = struct.pack(">IIBBBBB", 80, 60, 8, 0, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header)
            + png_chunk(b"IDAT", b"\x78\x9c" + b"\xde\xad" * 60) + png_chunk(b"IEND", b""))


def declared_bmp(width: int, height: int, data: bytes) -> bytes:
    """An 8-bit BMP whose header declares width x height; only `data` follows."""
    palette = b"".join(bytes([i, i, i, 0]) for i in range(256))
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 8, 0, width * height, 2835, 2835,
                       256, 0)
    offset = 14 + len(info) + len(palette)
    return (b"BM" + struct.pack("<IHHI", offset + width * height, 0, 0, offset) + info
            + palette + data)


UNDRAWABLE = {
    "header_only.png": header_only_png(90, 70),
    "corrupt_data.png": corrupt_idat_png(),
    "truncated.jpg": encoded(Image.fromarray(gradient()), "JPEG")[:400],
    "declared_2000x2000.bmp": declared_bmp(2000, 2000, b"\x80" * 1000),
}


async def test_an_image_that_cannot_be_drawn_never_sinks_the_zip(ready_client, caplog):
    caplog.set_level(logging.WARNING, logger="oilspill")
    files = {**UNDRAWABLE, "good.png": scene_png(80, 60)}
    status, body = await upload(ready_client, zip_bytes(files))
    assert status == 202, body
    job = await wait_finished(ready_client, body["job_id"], timeout_s=60)
    assert job["done"] == len(files), job  # the ML service took them all
    tasks = await tasks_of(ready_client, body)
    for name in UNDRAWABLE:
        resp = await ready_client.get(tasks[name]["result"]["overlay_url"])
        assert resp.status == 404, (name, resp.status, await resp.text())
        assert (await resp.json())["error"]["code"] == "not_found"
    with await archive_of(ready_client, body["job_id"]) as zf:
        names = set(zf.namelist())
        rows = {r["filename"]: r for r in json.loads(zf.read("summary.json"))}
        readme = zf.read("README.txt").decode()
        csv_text = zf.read("summary.csv").decode()
    assert {f"masks/{Path(n).stem}.png" for n in files} <= names
    assert "overlays/good.png" in names and rows["good.png"]["overlay_error"] is None
    assert "Left out of this zip" in readme
    for name in UNDRAWABLE:
        row = rows[name]
        assert row["overlay"] is None and f"overlays/{Path(name).stem}.png" not in names
        assert row["overlay_error"].startswith("cannot draw the overlay: the image")
        assert f"overlays/{Path(name).stem}.png: cannot draw the overlay" in readme
    assert "overlay_error" in csv_text.splitlines()[0]
    # The log keeps what the reader said, with the task's id.
    for name in UNDRAWABLE:
        assert any(tasks[name]["task_id"] in r.getMessage() and "cannot draw" in r.getMessage()
                   for r in caplog.records), name


# --- the ML service's answers ----------------------------------------------------------

async def hostile_ml(aiohttp_server, handler) -> str:
    """An ML service of our own making, on a loopback port: it answers `handler`."""
    async def health(request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    app = web.Application()
    app.router.add_post("/segment", handler)
    app.router.add_get("/health", health)
    server = await aiohttp_server(app)
    return str(server.make_url("")).rstrip("/")


async def image_size(request: web.Request) -> tuple[int, int]:
    form = await request.post()
    field = form["file"]
    assert isinstance(field, web.FileField)
    with Image.open(field.file) as image:
        return image.size


@pytest.mark.parametrize(("size", "outcome"), [
    ((60, 60), "done"),          # 3,600 pixels: within the limit, kept as a picture
    ((100, 60), "over"),         # 6,000: over, though under Pillow's 2x bomb threshold
    ((400, 300), "far"),         # 120,000: Pillow's bomb guard would refuse it itself
], ids=["within", "over", "far-over"])
async def test_a_picture_answer_is_held_to_the_pixel_limit(aiohttp_client, aiohttp_server,
                                                           settings, size, outcome):
    async def answer(request: web.Request) -> web.Response:
        await image_size(request)
        picture = encoded(Image.new("RGBA", size, (10, 20, 30, 255)), "PNG")
        return web.Response(body=picture, content_type="image/png")

    ml = await hostile_ml(aiohttp_server, answer)
    client = await aiohttp_client(create_app(settings.with_changes(
        ml_service_url=ml, max_image_pixels=5000)))
    status, body = await upload(client, zip_bytes({"a.png": scene_png(40, 30)}))
    assert status == 202, body
    await wait_finished(client, body["job_id"])
    task = (await tasks_of(client, body))["a.png"]
    if outcome == "done":
        assert task["status"] == "done" and task["result"]["picture_url"]
        return
    assert task["status"] == "failed", task
    assert "OILSPILL_MAX_IMAGE_PIXELS" in task["error"]
    assert task["attempts"] == 1  # refused at once: asking again gets the same answer
    if outcome == "over":
        assert task["error"] == ("the ML service's answer is 100x60 = 6000 pixels, over the "
                                 "limit of 5000 (OILSPILL_MAX_IMAGE_PIXELS)")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
async def test_redirects_from_the_ml_service_are_not_followed(aiohttp_client, aiohttp_server,
                                                              settings, status):
    received: list[str] = []

    async def elsewhere(request: web.Request) -> web.Response:
        received.append(request.path)
        return web.Response(body=b"")

    other = web.Application()
    other.router.add_route("*", "/{tail:.*}", elsewhere)
    other_url = str((await aiohttp_server(other)).make_url("/collect"))

    async def redirect(request: web.Request) -> web.Response:
        await image_size(request)
        return web.Response(status=status, headers={"Location": other_url})

    ml = await hostile_ml(aiohttp_server, redirect)
    client = await aiohttp_client(create_app(settings.with_changes(ml_service_url=ml)))
    _, body = await upload(client, zip_bytes({"a.png": scene_png(40, 30)}))
    await wait_finished(client, body["job_id"])
    task = (await tasks_of(client, body))["a.png"]
    assert task["status"] == "failed" and task["attempts"] == 1
    assert task["error"].startswith(f"ML service answered {status}, a redirect, which is not "
                                    "followed")
    assert received == []  # the image went nowhere else


async def test_the_ml_services_error_text_reaches_users_without_internals(
        aiohttp_client, aiohttp_server, settings, caplog):
    caplog.set_level(logging.INFO, logger="oilspill")
    detail = ("cannot identify image file '/srv/ml/tmp/upload-1234.png' "
              "<_io.BytesIO object at 0x7f3a2b1c0d90>\n at C:\\models\\yolo\\run.py")

    async def refuse(request: web.Request) -> web.Response:
        await image_size(request)
        return web.json_response({"detail": detail}, status=422)

    ml = await hostile_ml(aiohttp_server, refuse)
    client = await aiohttp_client(create_app(settings.with_changes(ml_service_url=ml)))
    _, body = await upload(client, zip_bytes({"a.png": scene_png(40, 30)}))
    await wait_finished(client, body["job_id"])
    task = (await tasks_of(client, body))["a.png"]
    assert task["error"] == "ML service answered 422: cannot identify image file at", task
    for internal in ("/srv", "0x7f", "BytesIO", "models", "\n"):
        assert internal not in task["error"]
    assert any(detail in r.getMessage() for r in caplog.records)  # the log keeps it whole


async def test_an_unreadable_upload_error_names_no_server_path(client, settings):
    broken = b"\x89PNG\r\n\x1a\n" + b"\x00" * 40  # a PNG signature, then nothing usable
    _, body = await upload(client, zip_bytes({"bad.png": broken, "good.png": scene_png()}))
    await wait_finished(client, body["job_id"])
    task = (await tasks_of(client, body))["bad.png"]
    assert task["status"] == "failed"
    for internal in (str(settings.data_dir), "/jobs/", "images/", "0x", "object at"):
        assert internal not in task["error"], task["error"]


# --- one drawing, bounded memory -------------------------------------------------------

def big_grey16(path: Path, side: int) -> None:
    """A side x side 16-bit grey PNG: smooth, so small on disk, but side² x 2 bytes whole."""
    ramp = np.linspace(0, 60_000, side, dtype=np.float32)
    Image.fromarray((ramp[None, :] * 0.5 + ramp[:, None] * 0.5).astype(np.uint16)).save(path)


def done_task(jobs_dir: Path, side: int) -> Task:
    """A done task of a side x side 16-bit picture and its mask, as the worker leaves it."""
    job_id = new_id()
    paths = JobPaths(jobs_dir, job_id)
    for folder in (paths.images, *paths.result_folders):
        folder.mkdir(parents=True)
    big_grey16(paths.image("000000.png"), side)
    mask = np.zeros((side, side), np.uint8)
    mask[side // 4:side // 3, side // 8:side // 2] = 255
    Image.fromarray(mask).save(paths.result(ResultKind.MASK, "000000.png"))
    oil = int(np.count_nonzero(mask))
    return Task(id=new_id(), job_id=job_id, seq=0, filename="big.png",
                stored_name="000000.png", content_type="image/png", status=TaskStatus.DONE,
                attempts=1, created_at=0.0, started_at=0.0, finished_at=0.0, width=side,
                height=side, result_kind=ResultKind.MASK, result_name="000000.png",
                oil_pixels=oil, oil_fraction=oil / side**2, error=None, slick_count=1,
                largest_slick_px=oil)


async def test_concurrent_first_requests_draw_an_overlay_once(tmp_path, caplog):
    """Six requests on the event loop and the zip's builder in a thread ask at once for the
    overlay of a 4000 x 4000 16-bit picture: one drawing, one file, all get it."""
    caplog.set_level(logging.INFO, logger="oilspill.results")
    jobs_dir = tmp_path / "jobs"
    task = done_task(jobs_dir, 4000)
    store = await Store.open(tmp_path / "db.sqlite3")
    try:
        archives = ResultArchives(store, jobs_dir, 512, max_slicks=2000)
        in_thread = asyncio.to_thread(archives.draw_overlay, task)
        results = await asyncio.gather(*(archives.overlay(task) for _ in range(6)), in_thread)
    finally:
        await store.close()
    assert len(set(results)) == 1 and results[0] is not None and results[0].is_file()
    drawn = [r for r in caplog.records if "overlay drawn" in r.getMessage()]
    assert len(drawn) == 1, [r.getMessage() for r in drawn]
    with Image.open(results[0]) as overlay:
        assert overlay.size == (512, 512)
    assert not [p for p in results[0].parent.iterdir() if p.name.endswith(".part")]


MEMORY_SCRIPT = textwrap.dedent("""
    import sys
    from pathlib import Path
    import numpy as np
    from PIL import Image
    import oilspill.geo.polygons, oilspill.outlines  # what drawing imports, before measuring
    from oilspill.masks import ensure_overlay

    def hwm():
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM"):
                return int(line.split()[1]) * 1024

    image, mask, out = (Path(a) for a in sys.argv[1:4])
    warm = out.with_name("warm.png")  # GDAL's drivers registered, first allocations made
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(warm)
    ensure_overlay(warm, warm, out.with_name("warm-overlay.png"), out.with_name(".w"), 8,
                   max_slicks=2000)
    before = hwm()
    ensure_overlay(image, mask, out, out.with_name(".part"), 1024, max_slicks=2000)
    print(hwm() - before)
""")


def test_drawing_an_overlay_costs_memory_for_the_overlay_not_the_image(tmp_path):
    """A 6000 x 6000 16-bit picture is 69 MiB decoded; drawn whole, as overlays were before,
    its overlay cost 825 MiB at peak. Read at the overlay's size: under 20 MiB."""
    image, mask = tmp_path / "big.png", tmp_path / "mask.png"
    big_grey16(image, 6000)
    Image.fromarray(np.zeros((6000, 6000), np.uint8)).save(mask)
    proc = subprocess.run([sys.executable, "-c", MEMORY_SCRIPT, str(image), str(mask),
                           str(tmp_path / "overlay.png")], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    growth_mib = int(proc.stdout.split()[-1]) / 2**20
    assert growth_mib < 40, f"peak RSS grew {growth_mib:.0f} MiB"
    with Image.open(tmp_path / "overlay.png") as overlay:
        assert overlay.size == (1024, 1024)

