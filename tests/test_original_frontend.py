"""The original Next.js front end against a live oilspill: its exact calls, as it makes them
(uploadService.ts and UploadModal.tsx), from another origin, with no token."""

from __future__ import annotations

import asyncio
import io
import secrets
import zipfile
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from .conftest import scene_png, zip_bytes
from .procs import Stack, poll

FRONT_END = "http://localhost:3000"  # where `next dev` serves it
# What Chromium sends with fetch(url, {method: "POST", body: formData}) from that page.
BROWSER_HEADERS = {
    "Origin": FRONT_END, "Referer": f"{FRONT_END}/", "Accept": "*/*",
    "Accept-Language": "en-US,en;q=0.9", "Sec-Fetch-Mode": "cors", "Sec-Fetch-Site":
    "same-site", "Sec-Fetch-Dest": "empty",
    "User-Agent": "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko) "
                  "Chrome/156.0.0.0 Safari/537.36"}


def browser_form(data: bytes, filename: str) -> tuple[bytes, str]:
    """The multipart body Chromium builds for `formData.append("file", file)` with a .zip
    File: a WebKitFormBoundary, CRLF lines, the part's type from the file's extension."""
    boundary = "----WebKitFormBoundary" + secrets.token_urlsafe(12)[:16]
    body = (f"--{boundary}\r\n"
            f'Content-Disposition: form-data; name="file"; filename="{filename}"\r\n'
            f"Content-Type: application/zip\r\n\r\n").encode() + data + (
            f"\r\n--{boundary}--\r\n").encode()
    return body, f"multipart/form-data; boundary={boundary}"


class FrontEnd:
    """uploadService.ts, call for call."""

    def __init__(self, session: aiohttp.ClientSession, api: str) -> None:
        self.session, self.api = session, api

    async def _get_json(self, path: str) -> Any:
        async with self.session.get(f"{self.api}{path}", headers=BROWSER_HEADERS) as resp:
            # The browser hands the body to the page only with this header.
            assert resp.headers.get("Access-Control-Allow-Origin") == FRONT_END
            if not resp.ok:  # `throw new Error(HTTP error! status: ...)`
                raise RuntimeError(f"HTTP error! status: {resp.status}")
            return await resp.json()

    async def handle_upload(self, data: bytes, filename: str) -> dict[str, Any]:
        body, content_type = browser_form(data, filename)
        async with self.session.post(f"{self.api}/api/upload", data=body, headers={
                **BROWSER_HEADERS, "Content-Type": content_type}) as resp:
            assert resp.headers.get("Access-Control-Allow-Origin") == FRONT_END
            assert resp.ok, await resp.text()
            result = await resp.json()
        job_id, user_hash = result["job_id"], result["user_hash"]
        statuses = []
        for _ in range(100):  # every second, at most 100 times
            await asyncio.sleep(1)
            job_status = await self._get_json(f"/api/status/{job_id}")
            statuses.append(job_status)
            if job_status["status"] in ("SUCCESS", "FAILURE"):
                break
        return {"job_id": job_id, "user_hash": user_hash, "statuses": statuses}

    async def seconds_left(self, user_hash: str) -> int:
        return int((await self._get_json(f"/api/archive_time_left/{user_hash}"))["seconds_left"])

    async def follow_download_link(self, user_hash: str) -> aiohttp.ClientResponse:
        # An <a href> navigation: no CORS, the browser saves what comes.
        return await self.session.get(f"{self.api}/api/download/{user_hash}",
                                      headers={"Referer": f"{FRONT_END}/"})


@pytest.fixture
async def front_end(tmp_path: Path, stack_factory: Any) -> FrontEnd:
    stack: Stack = await stack_factory(
        OILSPILL_CORS_ORIGINS=FRONT_END, OILSPILL_RETENTION_S="3600")
    session = aiohttp.ClientSession()
    yield FrontEnd(session, stack.base)
    await session.close()


async def test_the_front_end_sequence_gets_every_mask(front_end: FrontEnd) -> None:
    names = [f"slicks/pass_{i}.png" for i in range(3)]
    upload = zip_bytes({name: scene_png(96, 80, seed=i) for i, name in enumerate(names)})

    run = await front_end.handle_upload(upload, "survey.zip")

    assert len(run["user_hash"]) == 32 and run["user_hash"] not in run["job_id"]
    last = run["statuses"][-1]
    assert last["status"] == "SUCCESS"
    assert {s["status"] for s in run["statuses"]} <= {"PENDING", "STARTED", "SUCCESS"}
    assert (last["total"], last["done"], last["failed"]) == (3, 3, 0)
    assert sorted(last["result"]["processed_files"]) == names
    assert last["result"]["errors"] == []

    seconds = await front_end.seconds_left(run["user_hash"])
    assert 3500 < seconds <= 3600

    async with await front_end.follow_download_link(run["user_hash"]) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Disposition"] == (
            f'attachment; filename="result_{run["user_hash"]}.zip"')
        archive = zipfile.ZipFile(io.BytesIO(await resp.read()))
    masks = {n for n in archive.namelist() if n.startswith("masks/")}
    assert masks == {f"masks/slicks/pass_{i}.png" for i in range(3)}
    # The same zip again (built once), and the API's own names for it still work.
    async with await front_end.follow_download_link(run["user_hash"]) as again:
        assert again.status == 200
    async with front_end.session.get(f"{front_end.api}/api/archive/{run['job_id']}") as resp:
        link = (await resp.json())["archive_url"]
    async with front_end.session.get(f"{front_end.api}{link}") as resp:
        assert resp.status == 200 and link.endswith(".zip")


async def test_all_failed_is_failure_and_delete_leaves_no_time(front_end: FrontEnd) -> None:
    broken = b"\x89PNG\r\n\x1a\n" + b"\0" * 50  # a PNG signature, then nothing readable
    upload = zip_bytes({"a.png": broken, "b.png": broken})

    run = await front_end.handle_upload(upload, "broken.zip")

    last = run["statuses"][-1]
    assert last["status"] == "FAILURE"
    assert (last["done"], last["failed"]) == (0, 2)
    errors = {e["file"]: e["error"] for e in last["result"]["errors"]}
    assert set(errors) == {"a.png", "b.png"} and all(errors.values())
    assert await front_end.seconds_left(run["user_hash"]) > 0

    async with front_end.session.delete(f"{front_end.api}/api/job/{run['job_id']}") as resp:
        assert resp.status == 200
    assert await front_end.seconds_left(run["user_hash"]) == 0
    async with await front_end.follow_download_link(run["user_hash"]) as resp:
        assert resp.status == 404


async def test_a_running_job_is_started_and_its_download_waits(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(("--latency-ms", "1500"),
                                       OILSPILL_CORS_ORIGINS="*", OILSPILL_CONCURRENCY="1")
    async with aiohttp.ClientSession() as session:
        body, content_type = browser_form(zip_bytes({"x.png": scene_png(seed=3)}), "x.zip")
        async with session.post(f"{stack.base}/api/upload", data=body, headers={
                "Content-Type": content_type, "Origin": "https://elsewhere.example"}) as resp:
            assert resp.headers["Access-Control-Allow-Origin"] == "https://elsewhere.example"
            accepted = await resp.json()

        async def started() -> dict[str, Any] | None:
            async with session.get(f"{stack.base}/api/status/{accepted['job_id']}") as r:
                status: dict[str, Any] = await r.json()
            return status if status["status"] == "STARTED" else None
        running = await poll(started, "the job to start", 20)
        assert running["result"] is None and running["running"] == 1
        async with session.get(f"{stack.base}/api/download/{accepted['user_hash']}") as resp:
            assert resp.status == 409
            assert (await resp.json())["error"]["code"] == "job_not_finished"


async def test_guessed_and_malformed_handles_find_nothing(front_end: FrontEnd) -> None:
    session, api = front_end.session, front_end.api
    for handle in (secrets.token_hex(16), "0" * 32, "ABCDEF" * 6, "%2e%2e%2fetc", "x" * 300):
        async with session.get(f"{api}/api/archive_time_left/{handle}") as resp:
            assert resp.status == 200 and await resp.json() == {"seconds_left": 0}
    async with session.get(f"{api}/api/download/{secrets.token_hex(16)}") as resp:
        assert resp.status == 404 and (await resp.json())["error"]["code"] == "not_found"
    async with session.get(f"{api}/api/status/not-a-job") as resp:
        assert resp.status == 404
