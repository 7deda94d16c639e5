"""`oilspill submit` over a bad link: a resumable (tus) upload through a link cut every 4 MB,
the client killed mid-upload and run again, an upload the server forgot, and a server without
tus, which still gets today's one multipart request. Real processes: the server, the ML
stub, the client as a user runs it, a TCP proxy in between that sees every request head."""

from __future__ import annotations

import asyncio
import json
import signal
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from ml_stub.scenes import write_zip
from oilspill.paths import uploads_dir

from .procs import Link, SeenRequest, poll, run_client, start_client
from .test_tus import random_png

MIB = 1024 * 1024
IMAGES = 20


@pytest.fixture(scope="module")
def sea_zip(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 20 MB zip of 20 images of random pixels, stored (a PNG does not deflate)."""
    path = tmp_path_factory.mktemp("resume") / "sea.zip"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        for i in range(IMAGES):
            zf.writestr(f"sea/{i:02d}.png", random_png(1000, 1000, seed=100 + i))
    return path


def book_entries(cache_home: Path) -> dict[str, Any]:
    """The client's unfinished uploads, as its state file has them."""
    path = cache_home / "oilspill" / "uploads.json"
    return dict(json.loads(path.read_text())["uploads"]) if path.exists() else {}


def patch_offsets(requests: list[SeenRequest]) -> list[int]:
    return [int(r.headers["upload-offset"]) for r in requests if r.method == "PATCH"]


def creations(requests: list[SeenRequest]) -> list[SeenRequest]:
    return [r for r in requests if r.method == "POST" and r.path == "/api/uploads/"]


def server_uploads(data_dir: Path) -> list[Path]:
    folder = uploads_dir(data_dir)
    return [p for p in folder.iterdir() if not p.name.startswith(".")] if folder.exists() else []


def jobs(data_dir: Path) -> list[Path]:
    folder = data_dir / "jobs"
    return list(folder.iterdir()) if folder.exists() else []


async def test_submit_goes_through_a_link_cut_every_4_mb(stack_factory, tmp_path, sea_zip):
    stack = await stack_factory(["--mode", "ready"], OILSPILL_MIN_FREE_BYTES="1M")
    link = Link(stack.port)
    base = await link.start()
    link.cut_up_after = 4 * MIB
    try:
        code, out, err = await run_client(tmp_path, tmp_path / "cache", "submit", str(sea_zip),
                                          "--server", base, "--json", "--out", "results.zip")
    finally:
        await link.close()
    assert code == 0, err
    report = json.loads(out)
    assert (report["images"], report["done"], report["failed"]) == (IMAGES, IMAGES, 0)
    assert link.cuts >= 4  # 20 MB, at most 4 MB a connection: it never ends if not resumed
    assert len(creations(link.requests)) == 1
    assert not any(r.path.startswith("/api/upload/") for r in link.requests)  # no multipart
    offsets = patch_offsets(link.requests)
    assert offsets == sorted(offsets) and offsets[0] == 0
    # Chunks of 8 MiB, but resumed from HEAD's offset mid-chunk after each cut:
    assert any(offset % (8 * MIB) for offset in offsets)
    assert len(jobs(stack.data_dir)) == 1 and len(server_uploads(stack.data_dir)) == 1
    assert book_entries(tmp_path / "cache") == {}


async def test_a_killed_client_resumes_where_the_server_is_on_a_new_run(stack_factory,
                                                                          tmp_path, sea_zip):
    """SIGKILL while a PATCH streams; run again, the same command: it asks HEAD, goes on from
    the server's offset (no new upload, far fewer bytes sent), one job with every image."""
    stack = await stack_factory(["--mode", "ready"], OILSPILL_MIN_FREE_BYTES="1M")
    link = Link(stack.port)
    base = await link.start()
    cache = tmp_path / "cache"
    command = ("submit", str(sea_zip), "--server", base, "--chunk-mb", "1",
               "--out", "results.zip")
    try:
        link.hold_up(6 * MIB)  # five chunks answered, the sixth stalls
        first = await start_client(tmp_path, cache, *command)
        await asyncio.wait_for(link.held.wait(), 120)
        assert len(book_entries(cache)) == 1  # the upload's URL, kept before any byte went
        first.send_signal(signal.SIGKILL)
        await first.wait()
        link.release()
        seen_before, sent_before = len(link.requests), link.up_bytes
        code, out, err = await run_client(tmp_path, cache, *command)
    finally:
        await link.close()
    assert code == 0, err
    second = link.requests[seen_before:]
    assert creations(second) == []
    assert [r.method for r in second if r.path.startswith("/api/uploads/")][:2] == [
        "OPTIONS", "HEAD"]
    resumed_at = patch_offsets(second)[0]
    assert resumed_at >= 5 * MIB
    assert f"resuming the upload of {sea_zip} at byte {resumed_at} of " in err
    size = sea_zip.stat().st_size
    assert link.up_bytes - sent_before < size - 4 * MIB
    assert f"  images               {IMAGES}\n" in out and "  failed               0\n" in out
    assert len(jobs(stack.data_dir)) == 1 and len(server_uploads(stack.data_dir)) == 1
    assert book_entries(cache) == {}


async def test_an_upload_the_server_forgot_starts_afresh(stack_factory, tmp_path):
    """The remembered upload is gone from the server (terminated here; expired, in life):
    HEAD answers 404 and the new run uploads the file from its first byte."""
    stack = await stack_factory(["--mode", "ready"], OILSPILL_MIN_FREE_BYTES="1M")
    picture = tmp_path / "scene.png"
    picture.write_bytes(random_png(1500, 1500, seed=7))  # 2.2 MB
    link = Link(stack.port)
    base = await link.start()
    cache = tmp_path / "cache"
    command = ("submit", str(picture), "--server", base, "--chunk-mb", "0.5", "--no-wait")
    try:
        link.hold_up(MIB)
        first = await start_client(tmp_path, cache, *command)
        await asyncio.wait_for(link.held.wait(), 120)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        link.release()
        (entry,) = book_entries(cache).values()
        async with aiohttp.ClientSession() as session:
            async def terminated() -> bool | None:  # 409 while the dropped PATCH settles
                async with session.delete(entry["url"], headers={"Tus-Resumable": "1.0.0"}
                                          ) as resp:
                    return True if resp.status == 204 else None
            await poll(terminated, "the upload to be terminated")
        seen_before = len(link.requests)
        code, out, err = await run_client(tmp_path, cache, *command)
    finally:
        await link.close()
    assert code == 0, err
    second = link.requests[seen_before:]
    assert len(creations(second)) == 1
    assert patch_offsets(second)[0] == 0
    assert "resuming" not in err
    async with aiohttp.ClientSession() as session:
        async with session.get(f"{stack.base}/api/job/{out.strip()}") as resp:
            assert resp.status == 200
            assert (await resp.json())["upload_name"] == "scene.png"
    assert book_entries(cache) == {}


async def test_a_folder_is_zipped_into_the_cache_and_resumed(stack_factory, tmp_path):
    """A folder is zipped into the cache first (a tus upload needs its size); a new run after
    a kill sends the rest of that same zip, which is removed once it is a job."""
    stack = await stack_factory(["--mode", "ready"], OILSPILL_MIN_FREE_BYTES="1M")
    folder = tmp_path / "survey"
    for i in range(3):
        (folder / f"leg{i}").mkdir(parents=True)
        (folder / f"leg{i}" / "scene.png").write_bytes(random_png(800, 800, seed=i))
    link = Link(stack.port)
    base = await link.start()
    cache = tmp_path / "cache"
    command = ("submit", str(folder), "--server", base, "--chunk-mb", "0.5", "--json")
    try:
        link.hold_up(MIB)
        first = await start_client(tmp_path, cache, *command)
        await asyncio.wait_for(link.held.wait(), 120)
        first.send_signal(signal.SIGKILL)
        await first.wait()
        link.release()
        (zipped,) = (cache / "oilspill" / "zips").iterdir()
        seen_before = len(link.requests)
        code, out, err = await run_client(tmp_path, cache, *command)
    finally:
        await link.close()
    assert code == 0, err
    report = json.loads(out)
    assert {r["filename"] for r in report["rows"]} == {f"leg{i}/scene.png" for i in range(3)}
    assert report["done"] == 3
    assert creations(link.requests[seen_before:]) == []
    assert patch_offsets(link.requests[seen_before:])[0] > 0
    assert not zipped.exists()
    assert len(jobs(stack.data_dir)) == 1


async def test_a_server_without_tus_gets_one_multipart_request(aiohttp_server, stack_factory,
                                                                tmp_path):
    """An older server, without /api/uploads/ (OPTIONS there is 404): the file goes in one
    POST /api/upload/, as before, and nothing is kept in the cache."""
    stack = await stack_factory(["--mode", "ready"])
    seen: list[tuple[str, str]] = []

    async def forward(request: web.Request) -> web.StreamResponse:
        seen.append((request.method, request.path))
        if request.path.startswith("/api/uploads"):
            return web.json_response({"error": {"code": "not_found", "message": "no route"}},
                                     status=404)
        headers = {k: v for k, v in request.headers.items()
                   if k.lower() in ("content-type", "authorization", "range", "if-range")}
        async with aiohttp.ClientSession() as session, session.request(
                request.method, f"{stack.base}{request.path_qs}", headers=headers,
                data=request.content if request.body_exists else None) as upstream:
            body = await upstream.read()
            return web.Response(status=upstream.status, body=body, headers={
                k: v for k, v in upstream.headers.items()
                if k.lower() in ("content-type", "etag", "content-range", "accept-ranges")})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", forward)
    older = await aiohttp_server(app)
    write_zip(tmp_path / "scenes.zip", 4, (96, 96), seed=8)
    cache = tmp_path / "cache"
    code, out, err = await run_client(tmp_path, cache, "submit", "scenes.zip", "--server",
                                      str(older.make_url("")).rstrip("/"), "--json")
    assert code == 0, err
    assert json.loads(out)["done"] == 4
    assert [s for s in seen if s[1].startswith("/api/upload")] == [
        ("OPTIONS", "/api/uploads/"), ("POST", "/api/upload/")]
    assert not (cache / "oilspill").exists()
