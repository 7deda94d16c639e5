"""Real processes for the durability tests: the server and the ML stub, as users run them."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
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


async def warm_up(base: str, scene: Path, timeout_s: float = 120) -> None:
    """A tiny scene through the server (uploaded bare), waited for: what the first scene
    loads (GDAL, shapely, pyproj, scipy: about 60 MiB) is in, as in a server that has
    worked, but hardly any of a job's memory (a bigger scene would leave its freed heap
    in the process, and a measure from there would not see a job's growth). A job's memory
    is measured from there: the libraries are the server's once, not any job's."""
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", scene.read_bytes(), filename=scene.name,
                       content_type="image/tiff")
        async with session.post(f"{base}/api/upload/", data=form) as resp:
            body = await resp.json()
            assert resp.status == 202, body
        job = await Api(session, base).wait_job(body["job_id"], timeout_s=timeout_s)
        assert job["done"] == 1, job


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


def client_env(cache_home: Path) -> dict[str, str]:
    """The environment of an `oilspill` client command, its cache folder under
    `cache_home` (XDG_CACHE_HOME), not the user's."""
    return clean_env(XDG_CACHE_HOME=str(cache_home))


async def start_client(cwd: Path, cache_home: Path, *args: str
                       ) -> asyncio.subprocess.Process:
    """`oilspill ARGS...` as a user runs it, stdout and stderr piped."""
    return await asyncio.create_subprocess_exec(
        sys.executable, "-m", "oilspill", *args, cwd=cwd, env=client_env(cache_home),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)


async def run_client(cwd: Path, cache_home: Path, *args: str, timeout_s: float = 180
                     ) -> tuple[int, str, str]:
    """Run `oilspill ARGS...` to its end: (exit code, stdout, stderr)."""
    proc = await start_client(cwd, cache_home, *args)
    out, err = await asyncio.wait_for(proc.communicate(), timeout_s)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@dataclasses.dataclass(frozen=True)
class SeenRequest:
    """A request head that went through a Link; header names in lower case."""

    method: str
    path: str
    headers: dict[str, str]


class _RequestHeads:
    """Finds the request heads in the bytes a client sends on one connection (bodies sized
    by Content-Length; after a chunked body it stops looking)."""

    def __init__(self, seen: list[SeenRequest]) -> None:
        self._seen = seen
        self._head = b""
        self._body_left = 0
        self._lost = False

    def feed(self, data: bytes) -> None:
        while data and not self._lost:
            if self._body_left:
                taken = min(self._body_left, len(data))
                self._body_left -= taken
                data = data[taken:]
                continue
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                self._lost = len(self._head) > 64 * 1024
                return
            head, data = self._head[:end].decode("latin-1"), self._head[end + 4:]
            self._head = b""
            line, *fields = head.split("\r\n")
            method, path, _ = line.split(" ", 2)
            headers = {name.strip().lower(): value.strip()
                       for name, _, value in (f.partition(":") for f in fields)}
            self._seen.append(SeenRequest(method, path, headers))
            self._lost = "chunked" in headers.get("transfer-encoding", "").lower()
            self._body_left = int(headers.get("content-length", "0"))


class Link:
    """A TCP proxy to a server on loopback that breaks as a bad link does, and notes the
    request heads that go through it (`requests`) and the bytes it forwards each way
    (`up_bytes` client to server, `down_bytes` server to client).

    cut_up_after, cut_down_after: cut each connection (a reset both ways) once that many
    bytes have gone through it that way. hold_up(n), hold_down(n): once n more bytes have
    gone that way (all connections together), forward none that way any more, a stalled
    link: `held` is set; a client that goes away meanwhile is seen (its connection is cut);
    otherwise until `release()` (for new connections) or `drop()` (cuts them all)."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.cut_up_after: int | None = None
        self.cut_down_after: int | None = None
        self._hold_up_at: int | None = None
        self._hold_down_at: int | None = None
        self.held = asyncio.Event()
        self.cuts = 0
        self.up_bytes = 0
        self.down_bytes = 0
        self.requests: list[SeenRequest] = []
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[Any]] = set()

    async def start(self) -> str:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"

    def hold_up(self, after_bytes: int) -> None:
        self.held.clear()
        self._hold_up_at = self.up_bytes + after_bytes

    def hold_down(self, after_bytes: int) -> None:
        self.held.clear()
        self._hold_down_at = self.down_bytes + after_bytes

    def release(self) -> None:
        """New connections go through again (held ones stay held)."""
        self._hold_up_at = self._hold_down_at = None

    async def drop(self) -> None:
        """Cut every open connection, as a link that goes down does."""
        handlers = list(self._handlers)
        for task in handlers:
            task.cancel()
        await asyncio.gather(*handlers, return_exceptions=True)

    async def close(self) -> None:
        assert self._server
        self._server.close()
        await self.drop()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter
                     ) -> None:
        task = asyncio.current_task()
        assert task
        self._handlers.add(task)
        try:
            server_r, server_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.transport.abort()
            self._handlers.discard(task)
            return
        heads = _RequestHeads(self.requests)
        cut = False

        async def upstream() -> None:
            nonlocal cut
            sent = 0
            while data := await client_r.read(64 * 1024):
                room = len(data)
                if self.cut_up_after is not None:
                    room = min(room, self.cut_up_after - sent)
                if self._hold_up_at is not None:
                    room = min(room, max(self._hold_up_at - self.up_bytes, 0))
                data = data[:room] if room < len(data) else data
                heads.feed(data)
                server_w.write(data)
                await server_w.drain()
                sent += len(data)
                self.up_bytes += len(data)
                if self.cut_up_after is not None and sent >= self.cut_up_after:
                    self.cuts += 1
                    cut = True
                    return
                if self._hold_up_at is not None and self.up_bytes >= self._hold_up_at:
                    self.held.set()
                    while await client_r.read(64 * 1024):
                        pass  # dropped, until the client goes away
                    cut = True
                    return

        async def downstream() -> None:
            nonlocal cut
            sent = 0
            while data := await server_r.read(64 * 1024):
                room = len(data)
                if self.cut_down_after is not None:
                    room = min(room, self.cut_down_after - sent)
                if self._hold_down_at is not None:
                    room = min(room, max(self._hold_down_at - self.down_bytes, 0))
                data = data[:room] if room < len(data) else data
                client_w.write(data)
                await client_w.drain()
                sent += len(data)
                self.down_bytes += len(data)
                if self.cut_down_after is not None and sent >= self.cut_down_after:
                    self.cuts += 1
                    cut = True
                    return
                if self._hold_down_at is not None and self.down_bytes >= self._hold_down_at:
                    self.held.set()
                    await asyncio.Event().wait()  # stalled until the client goes or drop()

        pumps = [asyncio.ensure_future(upstream()), asyncio.ensure_future(downstream())]
        try:
            await asyncio.wait(pumps, return_when=asyncio.FIRST_COMPLETED)
        except asyncio.CancelledError:
            cut = True
        finally:
            for pump in pumps:
                pump.cancel()
            await asyncio.gather(*pumps, return_exceptions=True)
            for writer in (client_w, server_w):
                if cut:
                    writer.transport.abort()  # a reset, as a dropped link gives
                else:
                    writer.close()
            self._handlers.discard(task)
