"""Fixtures: a real ML stub and the real oilspill app, each on a free loopback port, with a
real SQLite file in a temporary data dir."""

from __future__ import annotations

import io
import zipfile
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient

from ml_stub.app import StubOptions
from ml_stub.app import create_app as create_stub
from ml_stub.scenes import scene_png as make_scene_png
from oilspill.config import Settings
from oilspill.web.app import create_app

# MLServer's fixture, registered once here: one server for the session's tests that use it
# (imported into each test module, it would be a fixture of each, started twice).
from .mlserver_env import mlserver_fixture  # noqa: F401
from .procs import Stack, poll


def scene_png(width: int = 64, height: int = 48, seed: int = 0) -> bytes:
    return make_scene_png(width, height, seed)


def zip_bytes(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
    return out.getvalue()


def form(data: bytes, filename: str = "images.zip", field: str = "file") -> aiohttp.FormData:
    fd = aiohttp.FormData()
    fd.add_field(field, data, filename=filename, content_type="application/zip")
    return fd


async def upload(client: TestClient, data: bytes, filename: str = "images.zip"
                 ) -> tuple[int, dict[str, Any]]:
    resp = await client.post("/api/upload/", data=form(data, filename))
    return resp.status, await resp.json()


async def wait_finished(client: TestClient, job_id: str, timeout_s: float = 30.0
                        ) -> dict[str, Any]:
    """Poll the job until it is finished (a condition, not a fixed sleep)."""
    async def finished() -> dict[str, Any] | None:
        resp = await client.get(f"/api/job/{job_id}")
        assert resp.status == 200
        job: dict[str, Any] = await resp.json()
        return job if job["finished_at"] is not None else None
    return await poll(finished, f"job {job_id} to finish", timeout_s, 0.02)


async def tasks_of(client: TestClient, body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """An upload's tasks (as GET /api/task/{id} answers) by file name."""
    tasks = [await (await client.get(f"/api/task/{i}")).json() for i in body["task_ids"]]
    return {t["filename"]: t for t in tasks}


async def archive_of(client: TestClient, job_id: str) -> zipfile.ZipFile:
    """A finished job's result zip, built and downloaded."""
    resp = await client.get(f"/api/archive/{job_id}")
    assert resp.status == 200, await resp.text()
    url = (await resp.json())["archive_url"]
    return zipfile.ZipFile(io.BytesIO(await (await client.get(url)).read()))


StubFactory = Callable[..., Awaitable[str]]


@pytest.fixture(autouse=True)
def _own_cache_folder(tmp_path_factory: pytest.TempPathFactory,
                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI keeps upload URLs and folder zips in the user's cache folder: each test gets
    its own (subprocesses inherit it), never the real one."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))


@pytest.fixture
async def start_stub(aiohttp_server: Any) -> StubFactory:
    """Start a real ML stub on a free loopback port; returns its base URL."""
    async def start(**options: Any) -> str:
        server = await aiohttp_server(create_stub(StubOptions(**options)))
        return str(server.make_url("")).rstrip("/")
    return start


@pytest.fixture
async def ml_url(start_stub: StubFactory) -> str:
    return await start_stub()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def settings(data_dir: Path, ml_url: str) -> Settings:
    return Settings(data_dir=data_dir, ml_service_url=ml_url, concurrency=4,
                    max_upload_bytes=8 * 1024 * 1024, shutdown_grace_s=0.5,
                    ml_retry_base_s=0.05)


@pytest.fixture
async def client(aiohttp_client: Any, settings: Settings) -> TestClient:
    return await aiohttp_client(create_app(settings))


@pytest.fixture
async def stack_factory(tmp_path: Path) -> Any:
    """Start an ML stub process and an `oilspill serve` process (flags for the stub, settings
    for the server); all are killed at the end."""
    made: list[Stack] = []

    async def make(stub_flags: Sequence[str] = (), **settings: str) -> Stack:
        stack = Stack(tmp_path, stub_flags, **settings)
        made.append(stack)
        return await stack.start()

    yield make
    for stack in made:
        await stack.close()
