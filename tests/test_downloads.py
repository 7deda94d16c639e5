"""Downloads over a bad link: the server's result files answer Range requests with an ETag
that survives a restart; curl (`-C -`) resumes a result zip across a server restart;
`oilspill fetch` resumes a cut download with Range and If-Range, starts over when the file
changed, and asks for a zip of only some parts (`--parts`)."""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from ml_stub.scenes import write_zip
from oilspill.paths import JobPaths

from .procs import Api, Link, Stack, client_env, live_stack, poll, run_client, start_client
from .test_tus import random_png

MIB = 1024 * 1024
CURL = shutil.which("curl")
ROUTES = ("result zip", "mask", "overlay", "task GeoJSON", "job GeoJSON")


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


async def served_files(session: aiohttp.ClientSession, base: str, job_id: str
                       ) -> dict[str, str]:
    """The URL of each kind of file the server serves for a finished job."""
    async with session.get(f"{base}/api/archive/{job_id}") as resp:
        assert resp.status == 200
        archive_url = (await resp.json())["archive_url"]
    async with session.get(f"{base}/api/job/{job_id}/tasks") as resp:
        task_id = next(t["task_id"] for t in (await resp.json())["tasks"]
                       if t["status"] == "done")
    return {"result zip": archive_url, "mask": f"/api/task/{task_id}/mask",
            "overlay": f"/api/task/{task_id}/overlay",
            "task GeoJSON": f"/api/task/{task_id}/spills.geojson",
            "job GeoJSON": f"/api/job/{job_id}/spills.geojson"}


@pytest.fixture(scope="module")
def finished_job(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, Path]]:
    """A server (for this module) with a job of three scenes submitted by the client and
    finished: (base URL, job id, a folder to work in)."""
    tmp = tmp_path_factory.mktemp("downloads")
    write_zip(tmp / "scenes.zip", 3, (160, 160), seed=21)
    with live_stack(tmp) as base:
        proc = subprocess.run(
            [sys.executable, "-m", "oilspill", "submit", "scenes.zip", "--server", base,
             "--json", "--out", "results.zip"], cwd=tmp, env=client_env(tmp / "cache"),
            capture_output=True, text=True, timeout=180)
        assert proc.returncode == 0, proc.stderr
        yield base, json.loads(proc.stdout)["job_id"], tmp


@pytest.fixture(scope="module")
def large_upload() -> bytes:
    """A zip of six images of random pixels: its result zip is about 9.6 MB (overlays of
    noise do not compress)."""
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w", zipfile.ZIP_STORED) as zf:
        for i in range(6):
            zf.writestr(f"sea/{i}.png", random_png(1000, 1000, seed=40 + i))
    return out.getvalue()


async def large_result(stack: Stack, upload: bytes) -> tuple[str, str, Path]:
    """(job id, the result zip's URL, its file on the server) of a finished job."""
    async with aiohttp.ClientSession() as session:
        api = Api(session, stack.base)
        job_id = (await api.upload(upload))["job_id"]
        await api.wait_job(job_id, timeout_s=120)
        status, body = await api.get(f"/api/archive/{job_id}")
        assert status == 200, body
    archive = JobPaths(stack.data_dir / "jobs", job_id).archive
    assert archive.stat().st_size > 8 * MIB
    return job_id, body["archive_url"], archive


async def etag_of(base: str, url: str) -> str:
    async with aiohttp.ClientSession() as session, session.head(f"{base}{url}") as resp:
        assert resp.status == 200
        return resp.headers["ETag"]


async def test_result_files_answer_ranges_with_an_etag_that_survives_a_restart(stack_factory,
                                                                                 tmp_path):
    stack = await stack_factory()
    write_zip(tmp_path / "scenes.zip", 2, (160, 160), seed=22)
    code, out, err = await run_client(tmp_path, tmp_path / "cache", "submit", "scenes.zip",
                                      "--server", stack.base, "--json")
    assert code == 0, err
    job_id = json.loads(out)["job_id"]
    before: dict[str, tuple[str, str]] = {}
    async with aiohttp.ClientSession() as session:
        urls = await served_files(session, stack.base, job_id)
        for what, url in urls.items():
            async with session.get(f"{stack.base}{url}") as resp:
                assert resp.status == 200, what
                assert resp.headers["Accept-Ranges"] == "bytes", what
                etag = resp.headers["ETag"]
                whole = await resp.read()
            assert etag.startswith('"') and etag.endswith('"'), (what, etag)  # strong
            size = len(whole)
            assert size > 10, what
            async with session.get(f"{stack.base}{url}", headers={
                    "Range": "bytes=10-", "If-Range": etag}) as resp:
                assert resp.status == 206, what
                assert resp.headers["Content-Range"] == f"bytes 10-{size - 1}/{size}", what
                assert resp.headers["ETag"] == etag, what
                assert await resp.read() == whole[10:], what
            async with session.get(f"{stack.base}{url}", headers={"Range": "bytes=0-9"}
                                   ) as resp:
                assert (resp.status, await resp.read()) == (206, whole[:10]), what
            before[what] = (etag, sha256(whole))
    assert set(before) == set(ROUTES)

    await stack.kill_server()
    await stack.start_server()
    async with aiohttp.ClientSession() as session:
        for what, url in urls.items():
            async with session.get(f"{stack.base}{url}") as resp:
                assert resp.status == 200, what
                after = (resp.headers["ETag"], sha256(await resp.read()))
            assert after == before[what], what


@pytest.mark.parametrize("what", ROUTES)
async def test_a_range_with_a_stale_if_range_gets_the_whole_file(finished_job, what):
    """RFC 9110 13.1.5: If-Range naming an ETag the file no longer has means "send it all"
    (200), never a range of the new file after the old one's first bytes."""
    base, job_id, _ = finished_job
    async with aiohttp.ClientSession() as session:
        url = (await served_files(session, base, job_id))[what]
        async with session.get(f"{base}{url}") as resp:
            whole = await resp.read()
        async with session.get(f"{base}{url}", headers={
                "Range": "bytes=10-", "If-Range": '"0-0"'}) as resp:
            assert (resp.status, await resp.read()) == (200, whole)


@pytest.mark.skipif(CURL is None and not os.environ.get("CI"), reason="needs curl")
async def test_curl_resumes_a_result_zip_across_a_server_restart(stack_factory, tmp_path,
                                                                  large_upload):
    """curl -C - (a client none of us wrote) downloads a result zip; the server is killed
    and started again in the middle; curl run again asks for the rest (Range), and the file
    is the server's, byte for byte."""
    stack = await stack_factory(["--mode", "ready"], OILSPILL_MIN_FREE_BYTES="1M")
    _, url, archive = await large_result(stack, large_upload)
    size = archive.stat().st_size
    etag = await etag_of(stack.base, url)
    link = Link(stack.port)
    base = await link.start()
    out = tmp_path / "results.zip"
    curl = ["curl", "--silent", "--show-error", "--continue-at", "-", "--output", str(out),
            f"{base}{url}"]
    try:
        link.hold_down(2 * MIB)
        first = await asyncio.create_subprocess_exec(*curl, stderr=asyncio.subprocess.PIPE)
        await asyncio.wait_for(link.held.wait(), 60)

        async def written() -> bool | None:
            return True if out.exists() and out.stat().st_size > 0 else None
        await poll(written, "curl to write the first bytes")
        await stack.kill_server()
        await link.drop()
        assert await asyncio.wait_for(first.wait(), 60) != 0
        have = out.stat().st_size
        assert 0 < have < size
        await stack.start_server()
        link.release()
        seen = len(link.requests)
        second = await asyncio.create_subprocess_exec(*curl, stderr=asyncio.subprocess.PIPE)
        _, err = await asyncio.wait_for(second.communicate(), 120)
        assert second.returncode == 0, err.decode()
    finally:
        await link.close()
    assert sha256(out.read_bytes()) == sha256(archive.read_bytes())
    (resumed,) = link.requests[seen:]
    assert resumed.headers["range"] == f"bytes={have}-"
    assert await etag_of(stack.base, url) == etag  # the same file, the same ETag


async def test_fetch_resumes_a_cut_download_with_range_and_if_range(stack_factory, tmp_path,
                                                                     large_upload):
    stack = await stack_factory(["--mode", "ready"], OILSPILL_MIN_FREE_BYTES="1M")
    job_id, url, archive = await large_result(stack, large_upload)
    etag = await etag_of(stack.base, url)
    link = Link(stack.port)
    base = await link.start()
    link.cut_down_after = 3 * MIB
    try:
        code, out, err = await run_client(tmp_path, tmp_path / "cache", "fetch", job_id,
                                          "--server", base, "--out", "results.zip", "--json")
    finally:
        await link.close()
    assert code == 0, err
    assert json.loads(out)["done"] == 6
    assert sha256((tmp_path / "results.zip").read_bytes()) == sha256(archive.read_bytes())
    downloads = [r for r in link.requests if r.path == url]
    assert "range" not in downloads[0].headers
    resumed = downloads[1:]
    assert len(resumed) >= 2 and link.cuts >= 2  # 9.6 MB, 3 MB a connection
    starts = [int(r.headers["range"].removeprefix("bytes=").removesuffix("-"))
              for r in resumed]
    assert starts == sorted(set(starts)) and starts[0] > 0
    assert all(r.headers["if-range"] == etag for r in resumed)
    assert not list(tmp_path.glob("results.zip.*"))


def rebuilt(archive: Path) -> None:
    """Make the server's result zip another file, as a rebuilt one would be: a note first,
    so that even its first bytes differ; written aside and renamed in."""
    with zipfile.ZipFile(archive) as old:
        entries = [(info, old.read(info)) for info in old.infolist()]
    fresh = archive.with_name("fresh.zip")
    with zipfile.ZipFile(fresh, "w") as new:
        new.writestr("NOTE.txt", f"rebuilt at {time.time()}\n")
        for info, data in entries:
            new.writestr(info, data)
    os.replace(fresh, archive)


async def test_fetch_starts_over_when_the_file_changed_since_its_part(stack_factory, tmp_path,
                                                                       large_upload):
    """A fetch killed midway leaves results.zip.part and the file's ETag beside it; the
    server's file then changes. The next fetch asks for the rest only if it is the same file
    (If-Range), sees it is not, and downloads the new file whole."""
    stack = await stack_factory(["--mode", "ready"], OILSPILL_MIN_FREE_BYTES="1M")
    job_id, url, archive = await large_result(stack, large_upload)
    old_etag = await etag_of(stack.base, url)
    link = Link(stack.port)
    base = await link.start()
    part = tmp_path / "results.zip.part"
    tag = tmp_path / "results.zip.part.etag"
    command = ("fetch", job_id, "--server", base, "--out", "results.zip", "--json")
    try:
        link.hold_down(2 * MIB)
        first = await start_client(tmp_path, tmp_path / "cache", *command)
        await asyncio.wait_for(link.held.wait(), 60)

        async def partly_there() -> bool | None:
            return True if part.exists() and part.stat().st_size > 0 else None
        await poll(partly_there, "the first bytes in results.zip.part")
        first.send_signal(signal.SIGKILL)
        await first.wait()
        link.release()
        have = part.stat().st_size
        assert 0 < have < archive.stat().st_size
        assert tag.read_text() == old_etag
        rebuilt(archive)
        new_sha = sha256(archive.read_bytes())
        assert await etag_of(stack.base, url) != old_etag
        seen = len(link.requests)
        code, out, err = await run_client(tmp_path, tmp_path / "cache", *command)
    finally:
        await link.close()
    assert code == 0, err
    assert json.loads(out)["done"] == 6
    assert sha256((tmp_path / "results.zip").read_bytes()) == new_sha
    with zipfile.ZipFile(tmp_path / "results.zip") as zf:
        assert zf.namelist()[0] == "NOTE.txt"
    asked = [r for r in link.requests[seen:] if r.path == url]
    assert (asked[0].headers["range"], asked[0].headers["if-range"]) == (f"bytes={have}-",
                                                                         old_etag)
    assert not part.exists() and not tag.exists()


async def test_fetch_parts_downloads_a_zip_of_only_those_parts(finished_job):
    """`fetch --parts summary,spills`: GET /api/archive/{id}?parts=summary,spills, a zip
    with the summary and the slicks, no masks or overlays (for a slow link)."""
    base, job_id, tmp = finished_job
    code, out, err = await run_client(tmp, tmp / "cache", "fetch", job_id, "--server", base,
                                      "--parts", "summary,spills", "--out", "parts.zip",
                                      "--json")
    assert code == 0, err
    assert json.loads(out)["done"] == 3
    with zipfile.ZipFile(tmp / "parts.zip") as zf:
        names = zf.namelist()
    assert {"summary.json", "summary.csv", "spills.geojson"} <= set(names), names
    others = [n for n in names if n not in ("README.txt", "summary.json", "summary.csv",
                                            "spills.geojson") and not n.startswith("spills/")]
    assert others == [], others

