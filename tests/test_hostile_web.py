"""Hostile HTTP against a real `oilspill serve` process: malformed requests, stalled and
vanishing clients, bodies that lie, odd bytes in headers, a deleted job's leftovers. The
rule: a JSON error with the right status (or a correct answer), one log line, never a
traceback, and nothing left behind."""

from __future__ import annotations

import asyncio
import io
import json
import socket
import struct
import zipfile
from typing import Any

import aiohttp

from .conftest import scene_png
from .procs import Stack, poll, scenes_zip

TOKEN = "station-7"


def exchange(port: int, data: bytes, half_close: bool = False, timeout_s: float = 10) -> bytes:
    """Send raw bytes, read one whole answer (by its Content-Length, else until the server
    closes). The server may keep reading a refused body for a while (aiohttp's lingering
    close), so the answer is not awaited as a close."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(data)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        out = b""
        while chunk := sock.recv(65536):
            out += chunk
            head, sep, body = out.partition(b"\r\n\r\n")
            length = [ln for ln in head.lower().split(b"\r\n")
                      if ln.startswith(b"content-length:")]
            if sep and length and len(body) >= int(length[0].split(b":")[1]):
                break
    return out


def split(answer: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def no_tracebacks(stack: Stack) -> None:
    assert stack.server is not None
    text = "\n".join(stack.server.lines)
    assert "Traceback" not in text and " ERROR " not in text, text[-4000:]


async def metric(base: str, name: str, **labels: str) -> float:
    async with aiohttp.ClientSession() as session, session.get(f"{base}/metrics") as resp:
        text = await resp.text()
    want = [f'{k}="{v}"' for k, v in labels.items()]
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name) and all(w in line for w in want))


def multipart(parts: list[tuple[str, str | None, bytes]], boundary: str = "b0und") -> bytes:
    out = b""
    for name, filename, data in parts:
        disposition = f'form-data; name="{name}"' + (
            f'; filename="{filename}"' if filename is not None else "")
        out += f"--{boundary}\r\nContent-Disposition: {disposition}\r\n\r\n".encode()
        out += data + b"\r\n"
    return out + f"--{boundary}--\r\n".encode()


PROTOCOL_ERRORS = {
    "a 100 KB URL": b"GET /" + b"a" * 100_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
    "a NUL in a header": b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n",
    "an unknown method": b"G\x01T / HTTP/1.1\r\nHost: x\r\n\r\n",
    "too many headers": b"GET / HTTP/1.1\r\nHost: x\r\n"
                        + b"".join(b"X-%d: y\r\n" % i for i in range(300)) + b"\r\n",
    "a 20 KB header": b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 20_000 + b"\r\n\r\n",
    "not HTTP at all": b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + b"\x00" * 40 + b"\r\n\r\n",
    "a bad version": b"GET / HTTP/9.9x\r\nHost: x\r\n\r\n",
    "a bad chunk size": b"POST /api/upload/ HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked"
                        b"\r\nContent-Type: multipart/form-data; boundary=b\r\n\r\nzz\r\n",
}


async def test_protocol_errors_answer_json_and_log_one_warning(stack_factory: Any) -> None:
    stack: Stack = await stack_factory()
    for what, request in PROTOCOL_ERRORS.items():
        answer = await asyncio.to_thread(exchange, stack.port, request)
        status, headers, body = split(answer)
        assert 400 <= status < 500, (what, answer[:300])
        assert headers["content-type"].startswith("application/json"), what
        error = json.loads(body)["error"]
        assert error["code"] and error["message"].startswith("the request is malformed"), what
        assert len(error["message"]) < 400, what
    warnings = [ln for ln in stack.server.lines if "refused a malformed request" in ln]
    assert len(warnings) >= len(PROTOCOL_ERRORS) - 1  # TLS garbage may be logged at debug
    assert all(" WARNING " in ln and "\n" not in ln for ln in warnings)
    no_tracebacks(stack)


async def test_a_body_shorter_than_its_length_is_one_info_line(stack_factory: Any) -> None:
    stack: Stack = await stack_factory()
    head = (b"POST /api/upload/ HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 50000\r\n\r\n")
    body = b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.zip"\r\n\r\nPK'
    assert await asyncio.to_thread(exchange, stack.port, head + body, True) == b""
    await stack.server.wait_for_line("the client went away")
    assert await metric(stack.base, "oilspill_http_requests_total", status="500") == 0
    assert await metric(stack.base, "oilspill_uploads_total", outcome="client_gone") == 1
    assert not list((stack.data_dir / "jobs").iterdir())
    no_tracebacks(stack)


async def test_a_stalled_upload_is_refused_and_removed(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(OILSPILL_UPLOAD_IDLE_S="1")
    head = (b"POST /api/upload/ HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; "
            b"boundary=b\r\nContent-Length: 100000\r\n\r\n")
    for body in (b"", b'--b\r\nContent-Disposition: form-data; name="file"; '
                      b'filename="a.zip"\r\n\r\nPK\x03\x04'):
        answer = await asyncio.to_thread(exchange, stack.port, head + body)
        status, _, payload = split(answer)
        assert status == 408 and json.loads(payload)["error"]["code"] == "upload_stalled"
    assert not list((stack.data_dir / "jobs").iterdir())
    assert await metric(stack.base, "oilspill_uploads_total", outcome="upload_stalled") == 2
    no_tracebacks(stack)


async def test_the_size_limit_bounds_the_whole_body(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(OILSPILL_MAX_UPLOAD_BYTES=str(1 << 20))
    big = multipart([("notes", None, b"x" * (3 << 20)), ("file", "a.zip", scenes_zip(1))])
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(c), c)
                       for c in (big[i:i + 65536] for i in range(0, len(big), 65536)))
    request = (b"POST /api/upload/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Type: "
               b"multipart/form-data; boundary=b0und\r\nTransfer-Encoding: chunked\r\n\r\n"
               + chunked + b"0\r\n\r\n")
    status, _, body = split(await asyncio.to_thread(exchange, stack.port, request))
    assert status == 413 and json.loads(body)["error"]["code"] == "upload_too_large"
    # A small extra field is fine.
    small = multipart([("note", None, b"from the ship"), ("file", "a.zip", scenes_zip(1))])
    async with aiohttp.ClientSession() as session, session.post(
            f"{stack.base}/api/upload/", data=small,
            headers={"Content-Type": "multipart/form-data; boundary=b0und"}) as resp:
        assert resp.status == 202
    no_tracebacks(stack)


async def test_bytes_that_are_not_utf8_in_headers(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(OILSPILL_API_TOKEN=TOKEN)
    for auth in (b"Bearer \xff\xfe", b"\xc3\x28 x", b"Bearer " + TOKEN.encode() + b"\xff"):
        request = (b"GET /api/job/00000000-0000-4000-8000-000000000000 HTTP/1.1\r\nHost: x\r\n"
                   b"Connection: close\r\nAuthorization: " + auth + b"\r\n\r\n")
        status, _, body = split(await asyncio.to_thread(exchange, stack.port, request))
        assert status == 401 and json.loads(body)["error"]["code"] == "unauthorized"
    body = multipart([("file", "NAME", scenes_zip(1))]).replace(
        b'filename="NAME"', b'filename="cap\xff\xfe.zip"')
    request = (b"POST /api/upload/ HTTP/1.1\r\nHost: x\r\nConnection: close\r\nAuthorization: "
               b"Bearer " + TOKEN.encode() + b"\r\nContent-Type: multipart/form-data; "
               b"boundary=b0und\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
    status, _, answer = split(await asyncio.to_thread(exchange, stack.port, request))
    assert status == 202, answer
    job_id = json.loads(answer)["job_id"]
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        async with session.get(f"{stack.base}/api/job/{job_id}") as resp:
            assert (await resp.json())["upload_name"] == "cap\ufffd\ufffd.zip"
    no_tracebacks(stack)


async def test_head_on_events_and_readers_that_vanish(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(("--latency-ms", "200"), OILSPILL_CONCURRENCY="1")
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", scenes_zip(4), filename="x.zip")
        async with session.post(f"{stack.base}/api/upload/", data=form) as resp:
            job_id = (await resp.json())["job_id"]
        request = (f"HEAD /api/job/{job_id}/events HTTP/1.1\r\nHost: x\r\nConnection: close"
                   "\r\n\r\n").encode()
        status, headers, body = split(await asyncio.to_thread(exchange, stack.port, request))
        assert status == 200 and headers["content-type"] == "text/event-stream" and body == b""
        # Readers that reset mid-stream (RST, not FIN).
        for _ in range(3):
            sock = socket.create_connection(("127.0.0.1", stack.port))
            sock.sendall(f"GET /api/job/{job_id}/events HTTP/1.1\r\nHost: x\r\n\r\n".encode())
            assert sock.recv(100).startswith(b"HTTP/1.1 200")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        await stack.server.wait_for_line("an event stream's reader went away")
        async with session.get(f"{stack.base}/api/job/{job_id}/events") as resp:
            assert (await resp.text()).rstrip().endswith("}")  # read to its `end`
    no_tracebacks(stack)


async def test_every_reader_gets_the_same_events(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(("--latency-ms", "100"), OILSPILL_CONCURRENCY="2")
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", scenes_zip(8), filename="x.zip")
        async with session.post(f"{stack.base}/api/upload/", data=form) as resp:
            job_id = (await resp.json())["job_id"]

        async def read() -> list[tuple[str, dict[str, Any]]]:
            async with session.get(f"{stack.base}/api/job/{job_id}/events") as resp:
                text = await resp.text()
            events = []
            for block in text.split("\n\n"):
                lines = dict(ln.split(": ", 1) for ln in block.splitlines()
                             if ln.startswith(("event", "data")))
                if lines:
                    events.append((lines["event"], json.loads(lines["data"])))
            return events

        early = [asyncio.create_task(read()) for _ in range(4)]
        await asyncio.sleep(0.4)
        late = asyncio.create_task(read())
        streams = await asyncio.gather(*early, late)
    for events in streams:
        tasks = sorted(d["filename"] for kind, d in events if kind == "task")
        assert tasks == [f"scene_{i:04d}.png" for i in range(8)]
        assert events[-1][0] == "end" and events[-1][1]["done"] == 8
    task_events = [[d for k, d in s if k == "task"] for s in streams[:4]]
    assert all(t == task_events[0] for t in task_events)


async def test_a_job_body_carries_the_first_skipped_names(stack_factory: Any) -> None:
    stack: Stack = await stack_factory()
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as zf:
        zf.writestr("scene.png", scene_png())
        for i in range(250):
            zf.writestr(f"notes/{i:04d}-" + "n" * 150 + ".txt", b"not a picture")
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", out.getvalue(), filename="x.zip")
        async with session.post(f"{stack.base}/api/upload/", data=form) as resp:
            accepted = await resp.json()
        assert len(accepted["skipped"]) == 100 and accepted["skipped_total"] == 250
        async with session.get(f"{stack.base}/api/job/{accepted['job_id']}") as resp:
            job = await resp.json()
        assert len(job["skipped"]) == 100 and job["skipped_total"] == 250
        names = []
        for offset in (0, 120, 240):
            async with session.get(f"{stack.base}{job['skipped_url']}",
                                   params={"offset": offset, "limit": 120}) as resp:
                page = await resp.json()
            assert page["total"] == 250
            names += [s["filename"] for s in page["skipped"]]
        assert names == [f"notes/{i:04d}-" + "n" * 150 + ".txt" for i in range(250)]
        for query in ({"offset": "99999999999999999999"}, {"limit": "0"}, {"offset": "-1"}):
            async with session.get(f"{stack.base}{job['skipped_url']}", params=query) as resp:
                assert resp.status == 400
            async with session.get(f"{stack.base}/api/job/{job['job_id']}/tasks",
                                   params=query) as resp:
                assert resp.status == 400
    no_tracebacks(stack)


async def test_a_deleted_job_costs_no_further_ml_call(stack_factory: Any) -> None:
    stack: Stack = await stack_factory(("--latency-ms", "400"), OILSPILL_CONCURRENCY="2")
    async with aiohttp.ClientSession() as session:
        form = aiohttp.FormData()
        form.add_field("file", scenes_zip(20), filename="x.zip")
        async with session.post(f"{stack.base}/api/upload/", data=form) as resp:
            job_id = (await resp.json())["job_id"]

        async def running() -> bool | None:
            async with session.get(f"{stack.base}/api/job/{job_id}") as resp:
                return True if (await resp.json())["running"] else None
        await poll(running, "the job to start")
        async with session.delete(f"{stack.base}/api/job/{job_id}") as resp:
            assert resp.status == 200
        calls = await metric(stack.base, "oilspill_ml_call_seconds_count")
        await asyncio.sleep(1.5)  # several call lengths: long enough for any claimed ahead
        assert await metric(stack.base, "oilspill_ml_call_seconds_count") == calls
        assert calls <= 4
    assert not (stack.data_dir / "jobs" / job_id).exists()
    no_tracebacks(stack)


async def test_methods_a_route_does_not_have(stack_factory: Any) -> None:
    stack: Stack = await stack_factory()
    async with aiohttp.ClientSession() as session:
        for method in ("PATCH", "PUT", "TRACE"):
            async with session.request(
                    method, f"{stack.base}/api/job/00000000-0000-4000-8000-000000000000") as resp:
                assert resp.status == 405 and (await resp.json())["error"]["code"]
    no_tracebacks(stack)
