"""Real processes for the durability tests: the server and the ML stub, as users run them."""

from __future__ import annotations

import asyncio
import contextlib
import io
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import zipfile
from collections.abc import Awaitable, Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from ml_stub.scenes import scene_png

T = TypeVar("T")


async def poll(check: Callable[[], Awaitable[T | None]], what: str, timeout_s: float = 30,
               interval_s: float = 0.05) -> T:
    """Call `check` until it returns something other than None (then return that), failing
    with `what` once `timeout_s` has passed: every wait in the tests goes through here."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = await check()
        if result is not None:
            return result
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        await asyncio.sleep(interval_s)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("OILSPILL_") and k != "ML_SERVICE_URL"}
    env.update(extra)
    return env


def scenes_zip(count: int, size: int = 64) -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        for i in range(count):
            zf.writestr(f"scene_{i:04d}.png", scene_png(size, size, seed=i))
    return out.getvalue()


class Process:
    """A child process whose merged output is collected line by line."""

    def __init__(self, args: list[str], env: dict[str, str], cwd: Path) -> None:
        self.args, self.env, self.cwd = args, env, cwd
        self.preexec: Callable[[], None] | None = None  # run in the child before exec
        self.proc: asyncio.subprocess.Process | None = None
        self.lines: list[str] = []
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Event()

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            *self.args, env=self.env, cwd=self.cwd, stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT, preexec_fn=self.preexec)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.proc and self.proc.stdout
        async for raw in self.proc.stdout:
            self.lines.append(raw.decode(errors="replace").rstrip())
            self._new_line.set()

    async def wait_for_line(self, pattern: str, timeout_s: float = 60) -> re.Match[str]:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout_s
        seen = 0
        while True:
            for line in self.lines[seen:]:
                if match := regex.search(line):
                    return match
            seen = len(self.lines)
            assert self.running, f"process exited while waiting for {pattern!r}:\n{self.tail()}"
            remaining = deadline - time.monotonic()
            assert remaining > 0, f"no line matching {pattern!r}:\n{self.tail()}"
            self._new_line.clear()
            try:
                await asyncio.wait_for(self._new_line.wait(), min(remaining, 0.5))
            except TimeoutError:
                pass

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def tail(self, n: int = 30) -> str:
        return "\n".join(self.lines[-n:])

    async def signal(self, sig: int) -> None:
        assert self.proc
        self.proc.send_signal(sig)

    async def wait(self, timeout_s: float = 60) -> int:
        assert self.proc
        code = await asyncio.wait_for(self.proc.wait(), timeout_s)
        if self._reader:
            await self._reader
        return code

    async def kill(self) -> None:
        if self.running:
            await self.signal(signal.SIGKILL)
            await self.wait()


SERVER_ARGS = [sys.executable, "-m", "oilspill", "serve"]


def stub_args(port: int, *flags: str) -> list[str]:
    """The ML stub's command line: the one way the tests and bench/ start it."""
    return [sys.executable, "-m", "ml_stub", "--port", str(port), *flags]


def server_env(port: int, data_dir: Path, ml_url: str, **settings: str) -> dict[str, str]:
    """The server's environment: the one way the tests and bench/ configure it."""
    return clean_env(OILSPILL_PORT=str(port), OILSPILL_DATA_DIR=str(data_dir),
                     ML_SERVICE_URL=ml_url, **settings)


def stub_process(port: int, cwd: Path, *flags: str) -> Process:
    return Process(stub_args(port, *flags), clean_env(), cwd)


def server_process(port: int, data_dir: Path, ml_url: str, cwd: Path,
                   **settings: str) -> Process:
    return Process(SERVER_ARGS, server_env(port, data_dir, ml_url, **settings), cwd)


async def wait_http(url: str, proc: Process, timeout_s: float = 30,
                    interval_s: float = 0.05) -> None:
    """Until `url` answers 200; fails if the process exits or the time runs out."""
    async with aiohttp.ClientSession() as session:
        async def answered() -> bool | None:
            assert proc.running, f"process exited:\n{proc.tail()}"
            try:
                async with session.get(url) as resp:
                    return True if resp.status == 200 else None
            except aiohttp.ClientError:
                return None
        await poll(answered, f"{url} to answer", timeout_s, interval_s)


class Api:
    """Just enough of a client for the tests, against a server that may go away."""

    def __init__(self, session: aiohttp.ClientSession, base: str) -> None:
        self.session, self.base = session, base

    async def upload(self, data: bytes) -> dict[str, Any]:
        form = aiohttp.FormData()
        form.add_field("file", data, filename="scenes.zip", content_type="application/zip")
        async with self.session.post(f"{self.base}/api/upload/", data=form) as resp:
            assert resp.status == 202, await resp.text()
            return dict(await resp.json())

    async def get(self, path: str) -> tuple[int, Any]:
        async with self.session.get(f"{self.base}{path}") as resp:
            return resp.status, await resp.json()

    async def wait_job(self, job_id: str, until: str = "finished", timeout_s: float = 120,
                       at_least_done: int = 0) -> dict[str, Any]:
        async def there() -> dict[str, Any] | None:
            status, job = await self.get(f"/api/job/{job_id}")
            assert status == 200, job
            if until == "finished" and job["finished_at"] is not None:
                return dict(job)
            if until == "done_count" and job["done"] >= at_least_done:
                return dict(job)
            return None
        return await poll(there, f"job {job_id} to be {until}", timeout_s, 0.02)

    async def archive(self, job_id: str) -> zipfile.ZipFile:
        status, body = await self.get(f"/api/archive/{job_id}")
        assert status == 200, body
        async with self.session.get(f"{self.base}{body['archive_url']}") as resp:
            assert resp.status == 200
            return zipfile.ZipFile(io.BytesIO(await resp.read()))


@contextlib.contextmanager
def live_stack(tmp: Path, stub_flags: tuple[str, ...] = (), **settings: str) -> Iterator[str]:
    """A stub process and a server process for a whole test module (no event loop needed);
    yields the server's base URL."""
    stub_port, port = free_port(), free_port()
    stub = subprocess.Popen(stub_args(stub_port, *stub_flags), env=clean_env(), cwd=tmp,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    server = subprocess.Popen(
        SERVER_ARGS, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        env=server_env(port, tmp / "data", f"http://127.0.0.1:{stub_port}",
                       **{"OILSPILL_LOG_LEVEL": "WARNING", **settings}))
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                    break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, "no server"
                time.sleep(0.05)
        yield base
    finally:
        for proc in (server, stub):
            proc.terminate()
            proc.wait(timeout=30)


class Stack:
    """One stub process and a server process that can be killed and restarted."""

    def __init__(self, tmp_path: Path, stub_flags: Sequence[str], **settings: str) -> None:
        self.tmp_path = tmp_path
        self.data_dir = tmp_path / "data"
        self.stub_port, self.port = free_port(), free_port()
        self.stub_flags = stub_flags
        self.settings = settings
        self.stub: Process | None = None
        self.server: Process | None = None
        self.base = f"http://127.0.0.1:{self.port}"
        self.ml_url = f"http://127.0.0.1:{self.stub_port}"

    async def start_stub(self) -> None:
        self.stub = stub_process(self.stub_port, self.tmp_path, *self.stub_flags)
        await self.stub.start()
        await wait_http(f"{self.ml_url}/health", self.stub)

    async def start_server(self) -> None:
        self.server = server_process(self.port, self.data_dir, self.ml_url, self.tmp_path,
                                     **self.settings)
        await self.server.start()
        await wait_http(f"{self.base}/healthz", self.server)

    async def kill_server(self) -> None:
        assert self.server
        await self.server.kill()

    async def start(self) -> Stack:
        await self.start_stub()
        await self.start_server()
        return self

    async def close(self) -> None:
        for proc in (self.server, self.stub):
            if proc:
                await proc.kill()
