"""The page's upload through tus, in a real browser: headless Chromium (Debian's chromium
and chromium-driver) driven by Selenium, against a real server and ML stub, behind a TCP
proxy of this file that plays a slow field-station link and records every request."""

from __future__ import annotations

import io
import itertools
import re
import socket
import struct
import threading
import time
import urllib.error
import urllib.request
import zipfile
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from . import test_browser
from .procs import live_stack
from .test_browser import TOKEN, api, wait_for

# The same Chromium with the same flags as tests/test_browser.py, skipped the same way.
browser = test_browser.browser
pytestmark = test_browser.pytestmark

MB = 1_000_000
STEP_BYTES = 16 * 1024  # the proxy forwards the client's bytes in pieces of this size
BUFFER_BYTES = 64 * 1024  # small socket buffers: what the browser sends is soon on the link


@dataclass
class Request:
    """One HTTP request through the link, as it went."""

    method: str
    path: str
    headers: dict[str, str]  # names in lower case
    sent_bytes: int = 0  # body bytes forwarded to the server
    status: int | None = None  # the server's answer, once it came
    ended: bool = False  # body forwarded whole, or its connection gone
    lost: bool = False  # its answer was not passed on (`lose_answer`)


@dataclass
class _Connection:
    client: socket.socket
    upstream: socket.socket | None = None
    waiting: deque[Request] = field(default_factory=deque)  # sent, not yet answered
    sending: Request | None = None  # whose body is on its way


class Link:
    """A TCP proxy in front of the server: the browser's bytes reach the server at
    `rate_bytes_per_s` at most (all connections together, like one narrow link); every
    request is recorded with its answer's status. With `refuse` it answers 404 itself to
    the requests it matches, as a proxy that lets only some paths through; with
    `lose_answer` it hangs up instead of passing on the answers to the requests it
    matches."""

    def __init__(self, upstream_port: int, rate_bytes_per_s: float | None = None,
                 refuse: Callable[[str, str], bool] | None = None,
                 lose_answer: Callable[[Request], bool] | None = None) -> None:
        self.upstream_port = upstream_port
        self.rate_bytes_per_s = rate_bytes_per_s
        self.refuse = refuse
        self.lose_answer = lose_answer
        self.requests: list[Request] = []
        self._lock = threading.Lock()
        self._free_at = time.monotonic()  # when the link has sent what it was given
        self._connections: list[_Connection] = []
        self._closed = self._down = False
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, BUFFER_BYTES)
        self._listener.bind(("127.0.0.1", 0))
        self._listener.listen(16)
        self._listener.settimeout(0.2)
        self.url = f"http://127.0.0.1:{self._listener.getsockname()[1]}"
        self._acceptor = threading.Thread(target=self._accept, daemon=True)
        self._acceptor.start()

    def close(self) -> None:
        self._closed = True
        self._acceptor.join()
        self._listener.close()
        with self._lock:
            for conn in self._connections:
                self._hang_up(conn)

    def down(self) -> None:
        """The link goes down: every connection drops, new ones are reset, until `up()`."""
        with self._lock:
            self._down = True
            for conn in self._connections:
                self._hang_up(conn)

    def cut_bodies(self) -> None:
        """Drop the connections that are in the middle of a request's body (and the bytes
        the browser had handed to its socket for them): a reload cuts them at once, as it
        would with no socket buffers on the way."""
        with self._lock:
            for conn in self._connections:
                if conn.sending is not None:
                    self._hang_up(conn)

    def up(self) -> None:
        with self._lock:
            self._down = False

    def mark(self) -> int:
        """How many requests went so far: the ones after are `since(mark)`."""
        with self._lock:
            return len(self.requests)

    def since(self, mark: int = 0) -> list[Request]:
        with self._lock:
            return list(self.requests[mark:])

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            conn = _Connection(client)
            with self._lock:
                if self._down:  # reset at once (no FIN: linger 0)
                    client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER,
                                      struct.pack("ii", 1, 0))
                    client.close()
                    continue
                self._connections.append(conn)
            threading.Thread(target=self._forward_requests, args=(conn,), daemon=True).start()

    def _hang_up(self, conn: _Connection) -> None:
        for sock in (conn.client, conn.upstream):
            if sock is not None:
                try:
                    sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                sock.close()

    def _send(self, sock: socket.socket, data: bytes) -> None:
        """Forward `data` to the server no faster than the link's rate."""
        for start in range(0, len(data), STEP_BYTES):
            piece = data[start:start + STEP_BYTES]
            if self.rate_bytes_per_s:
                with self._lock:
                    self._free_at = max(self._free_at, time.monotonic()) + (
                        len(piece) / self.rate_bytes_per_s)
                    due = self._free_at
                time.sleep(max(0.0, due - time.monotonic()))
            sock.sendall(piece)

    def _forward_requests(self, conn: _Connection) -> None:
        """The browser's side: one request after another (no pipelining), each recorded."""
        buffer = b""
        request: Request | None = None
        try:
            while True:
                while b"\r\n\r\n" not in buffer:
                    data = conn.client.recv(65536)
                    if not data:
                        return
                    buffer += data
                head, _, buffer = buffer.partition(b"\r\n\r\n")
                line, *lines = head.decode("latin-1").split("\r\n")
                method, path, _ = line.split(" ", 2)
                headers = {name.strip().lower(): value.strip()
                           for name, _, value in (h.partition(":") for h in lines)}
                request = Request(method, path, headers)
                with self._lock:
                    self.requests.append(request)
                if self.refuse and self.refuse(method, path):
                    request.status, request.ended = 404, True
                    conn.client.sendall(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n"
                                        b"Connection: close\r\n\r\n")
                    return
                if conn.upstream is None:
                    conn.upstream = socket.socket()
                    conn.upstream.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, BUFFER_BYTES)
                    conn.upstream.connect(("127.0.0.1", self.upstream_port))
                    threading.Thread(target=self._forward_answers, args=(conn,),
                                     daemon=True).start()
                conn.waiting.append(request)
                self._send(conn.upstream, head + b"\r\n\r\n")
                assert "chunked" not in headers.get("transfer-encoding", ""), headers
                left = int(headers.get("content-length", "0"))
                conn.sending = request if left else None
                while left:
                    if not buffer:
                        buffer = conn.client.recv(65536)
                        if not buffer:
                            return  # the browser went mid-body: so does the link
                    piece, buffer = buffer[:left], buffer[left:]
                    self._send(conn.upstream, piece)
                    request.sent_bytes += len(piece)
                    left -= len(piece)
                request.ended, conn.sending = True, None
        except OSError:
            return
        finally:
            if request is not None:
                request.ended = True
            self._hang_up(conn)

    def _forward_answers(self, conn: _Connection) -> None:
        """The server's side, passed on as it comes; each answer's status is recorded on its
        request. An answer without a length (an event stream) ends the recording."""
        assert conn.upstream is not None
        buffer, body_left, reading = b"", 0, True
        try:
            while data := conn.upstream.recv(65536):
                buffer += data
                while reading:
                    if body_left:
                        skipped = min(body_left, len(buffer))
                        buffer, body_left = buffer[skipped:], body_left - skipped
                        if body_left:
                            break
                    if b"\r\n\r\n" not in buffer:
                        break
                    head, _, buffer = buffer.partition(b"\r\n\r\n")
                    line, *lines = head.decode("latin-1").split("\r\n")
                    status = int(line.split(" ")[1])
                    if status < 200:
                        continue
                    request = conn.waiting.popleft()
                    request.status = status
                    if self.lose_answer and self.lose_answer(request):
                        request.lost = True
                        return  # the connection goes with the answer
                    headers = {n.strip().lower(): v.strip()
                               for n, _, v in (h.partition(":") for h in lines)}
                    if request.method == "HEAD" or status in (204, 304):
                        body_left = 0
                    elif "content-length" in headers:
                        body_left = int(headers["content-length"])
                    else:
                        reading = False
                conn.client.sendall(data)
        except OSError:
            pass
        finally:
            self._hang_up(conn)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with live_stack(tmp_path_factory.mktemp("browser-upload"), OILSPILL_API_TOKEN=TOKEN,
                    OILSPILL_CONCURRENCY="2") as base:
        yield base


@pytest.fixture
def link_factory(server: str) -> Iterator[Callable[..., Link]]:
    port = int(server.rsplit(":", 1)[1])
    links: list[Link] = []

    def make(**options) -> Link:
        links.append(Link(port, **options))
        return links[-1]
    yield make
    for link in links:
        link.close()


def tus_head(base: str, upload_path: str) -> tuple[int, dict[str, str]]:
    """HEAD of an upload, asked of the server itself (not through the link)."""
    request = urllib.request.Request(f"{base}{upload_path}", method="HEAD", headers={
        "Authorization": f"Bearer {TOKEN}", "Tus-Resumable": "1.0.0"})
    try:
        with urllib.request.urlopen(request, timeout=10) as resp:
            return resp.status, dict(resp.headers)
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers)


def accepted_uploads(base: str) -> float:
    """The server's count of uploads that became jobs (tus and multipart alike)."""
    request = urllib.request.Request(f"{base}/metrics",
                                     headers={"Authorization": f"Bearer {TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as resp:
        text = resp.read().decode()
    match = re.search(r'^oilspill_uploads_total\{outcome="accepted"\} (\S+)$', text, re.M)
    return float(match.group(1)) if match else 0.0


def sea_zip(path: Path, count: int, side: int, seed: int) -> Path:
    """A zip of `count` RGB pictures of noise, stored (not deflated): PNG cannot shrink
    noise, so the zip is about count x side² x 3 bytes."""
    rng = np.random.default_rng(seed)
    with zipfile.ZipFile(path, "w") as zf:
        for i in range(count):
            out = io.BytesIO()
            Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8)).save(
                out, "PNG", compress_level=1)
            zf.writestr(f"sea_{i:02d}.png", out.getvalue())
    return path


def stored_tus_entries(browser) -> list[str]:
    return browser.execute_script(
        "return Object.keys(localStorage).filter(k => k.startsWith('tus::'));")


# Every text the page's message takes, recorded as it changes.
RECORD_MESSAGES = """
window.messages = [];
new MutationObserver(() => window.messages.push(document.getElementById("message").textContent))
  .observe(document.getElementById("message"), {characterData: true, childList: true,
                                                 subtree: true});
"""


def test_a_small_upload_goes_through_tus_and_shows_its_job(server, link_factory, browser,
                                                          tmp_path):
    from selenium.webdriver.common.by import By

    link = link_factory()
    images = sea_zip(tmp_path / "three.zip", 3, 96, seed=1)
    browser.get(link.url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(images))
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 3)
    wait_for(lambda: browser.find_element(By.ID, "download").is_enabled())
    job_id = browser.find_element(By.ID, "job-id").text

    sent = link.since()
    assert not [r for r in sent if r.path.startswith("/api/upload/")]  # no multipart POST
    (probe,) = [r for r in sent if r.method == "OPTIONS"]
    (create,) = [r for r in sent if r.method == "POST"]
    patches = [r for r in sent if r.method == "PATCH"]
    assert (probe.path, probe.status, create.path, create.status) == (
        "/api/uploads/", 204, "/api/uploads/", 201)
    assert create.headers["upload-length"] == str(images.stat().st_size)
    assert create.headers["upload-metadata"] == "filename dGhyZWUuemlw"  # three.zip
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert [(p.status, p.headers["upload-offset"], p.sent_bytes) for p in patches] == [
        (204, "0", images.stat().st_size)]  # one chunk: the file is under 5 MB
    upload = api(server, patches[0].path)
    assert (upload["job_id"], upload["offset"], upload["error"]) == (
        job_id, images.stat().st_size, None)
    job = api(server, f"/api/job/{job_id}")
    assert (job["total"], job["done"], job["upload_name"]) == (3, 3, "three.zip")
    assert "uploaded" in browser.find_element(By.ID, "upload-bar").text
    assert browser.find_element(By.ID, "message").text == "3 images queued."
    assert stored_tus_entries(browser) == []  # removed once the upload is a job

    # The vendored client is served like the page's own files, and only it.
    with urllib.request.urlopen(f"{server}/static/tus.min.js", timeout=10) as resp:
        assert resp.headers["Content-Type"].startswith("text/javascript")
        assert resp.read(200).startswith(b"/*! tus-js-client 4.3.1")
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(f"{server}/static/VENDORED.md", timeout=10)
    assert refused.value.code == 404


def test_an_upload_cut_by_a_reload_resumes_where_the_server_stopped(
        server, link_factory, browser, tmp_path):
    """24 MB over a 2.5 MB/s link, in 5 MB chunks; the page is reloaded mid-upload. It lists
    the unfinished upload; the same file chosen again (with the right token) goes on from
    the server's offset (no new upload, no byte sent twice once resumed), and exactly one
    job comes of it."""
    from selenium.webdriver.common.by import By

    link = link_factory(rate_bytes_per_s=2.5 * MB)
    survey = sea_zip(tmp_path / "survey.zip", 8, 1000, seed=2)
    length = survey.stat().st_size
    assert 20 * MB < length < 30 * MB
    jobs_before = accepted_uploads(server)
    browser.get(link.url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(survey))

    first = wait_for(lambda: [r for r in link.since() if r.method == "PATCH"])[0]
    upload_path = first.path
    wait_for(lambda: int(tus_head(server, upload_path)[1]["Upload-Offset"]) > 0)
    link.rate_bytes_per_s = 50_000  # the link all but stalls: the file cannot end before
    browser.refresh()
    link.cut_bodies()
    reloaded = link.mark()
    # The PATCH under way when the page went is cut at the link; what reached the server
    # before is kept, and it is not the whole file.
    wait_for(lambda: all(r.ended for r in link.since()[:reloaded]))
    status, headers = tus_head(server, upload_path)
    offset_at_reload = int(headers["Upload-Offset"])
    assert status == 200 and 0 < offset_at_reload < length
    assert int(headers["Upload-Length"]) == length

    # The page lists it, and the token typed before the reload is still there.
    note = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#unfinished-list li"))[0]
    assert note.get_attribute("data-filename") == "survey.zip"
    shown = int(note.get_attribute("data-offset"))  # asked as the page loaded
    assert 0 < shown < length
    assert f"{shown * 100 // length}% is on the server" in note.text
    assert note.find_element(By.CSS_SELECTOR, "button.discard").is_displayed()
    token = browser.find_element(By.ID, "token")
    assert token.get_attribute("value") == TOKEN
    assert len(stored_tus_entries(browser)) == 1

    # With a wrong token the server will not say where it stopped: the page says so and
    # keeps the upload (tus-js-client alone would forget it and start anew).
    token.clear()
    token.send_keys("not-the-token")
    chooser = browser.find_element(By.ID, "file")
    chooser.send_keys(str(survey))
    message = wait_for(lambda: browser.find_element(By.ID, "message").text)
    assert message.startswith("Upload refused (401): give the right token"), message
    assert len(stored_tus_entries(browser)) == 1
    assert not [r for r in link.since(reloaded) if r.method in ("POST", "PATCH")]

    token.clear()
    token.send_keys(TOKEN)
    link.rate_bytes_per_s = 2.5 * MB
    browser.execute_script(RECORD_MESSAGES)
    browser.execute_script("arguments[0].value = '';", chooser)
    chooser.send_keys(str(survey))
    wait_for(lambda: browser.find_element(By.ID, "download").is_enabled(), timeout_s=120)
    job_id = browser.find_element(By.ID, "job-id").text

    messages = browser.execute_script("return window.messages")
    resumed = [m for m in messages if m.startswith("An unfinished upload of this file")]
    assert resumed, messages
    assert re.search(r"\((\d+)%, [\d.]+ of [\d.]+ MB already on the server\): resuming",
                     resumed[0])
    assert not browser.find_elements(By.CSS_SELECTOR, "#unfinished-list li")

    after = link.since(reloaded)
    assert not [r for r in after if r.method == "POST"]  # no new upload was created
    patches = [r for r in after if r.method == "PATCH"]
    assert {r.path for r in patches} == {upload_path}
    taken = sorted((int(r.headers["upload-offset"]), r.sent_bytes)
                   for r in patches if r.status == 204)
    # Resumed, not restarted: the first accepted PATCH starts where the server had stopped,
    # and the rest of the file went once, chunk after chunk, to its last byte.
    assert taken[0][0] >= offset_at_reload > 0
    assert all(start + size == following for (start, size), (following, _)
               in itertools.pairwise(taken))
    assert taken[-1][0] + taken[-1][1] == length
    assert sum(r.sent_bytes for r in patches) < length
    first_resumed = int(patches[0].headers["upload-offset"])
    assert first_resumed > 0

    assert accepted_uploads(server) == jobs_before + 1  # exactly one job of it
    assert api(server, upload_path)["job_id"] == job_id
    job = api(server, f"/api/job/{job_id}")
    assert (job["total"], job["done"], job["failed"], job["upload_name"]) == (
        8, 8, 0, "survey.zip")
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 8)
    assert stored_tus_entries(browser) == []


def test_an_unfinished_upload_can_be_discarded_after_a_reload(server, link_factory, browser,
                                                              tmp_path):
    from selenium.webdriver.common.by import By

    link = link_factory(rate_bytes_per_s=2.5 * MB)
    big = tmp_path / "big.zip"
    big.write_bytes(np.random.default_rng(3).bytes(12 * MB))
    browser.get(link.url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(big))
    first = wait_for(lambda: [r for r in link.since() if r.method == "PATCH"])[0]
    wait_for(lambda: int(tus_head(server, first.path)[1]["Upload-Offset"]) > 0)
    link.rate_bytes_per_s = 50_000  # the link all but stalls: the file cannot end before
    browser.refresh()
    link.cut_bodies()

    note = wait_for(lambda: browser.find_elements(By.CSS_SELECTOR, "#unfinished-list li"))[0]
    assert note.get_attribute("data-filename") == "big.zip"
    note.find_element(By.CSS_SELECTOR, "button.discard").click()
    wait_for(lambda: not browser.find_elements(By.CSS_SELECTOR, "#unfinished-list li"))
    assert browser.find_element(By.ID, "message").text == "The unfinished upload was discarded."
    assert not browser.find_element(By.ID, "unfinished").is_displayed()
    assert tus_head(server, first.path)[0] == 404  # its bytes are gone from the server
    assert stored_tus_entries(browser) == []
    # A DELETE while the server still takes the cut PATCH's last bytes gets 409 and is
    # tried again.
    deletes = [(r.path, r.status) for r in link.since() if r.method == "DELETE"]
    assert deletes[-1] == (first.path, 204)
    assert set(deletes[:-1]) <= {(first.path, 409)}


def test_without_tus_the_page_falls_back_to_the_multipart_post(server, link_factory, browser,
                                                               tmp_path):
    """Behind a proxy that lets only the old paths through, OPTIONS /api/uploads/ gets 404:
    the page sends POST /api/upload/ as before and follows the job."""
    from selenium.webdriver.common.by import By

    link = link_factory(refuse=lambda method, path: path.startswith("/api/uploads"))
    images = sea_zip(tmp_path / "two.zip", 2, 64, seed=4)
    browser.get(link.url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(images))
    wait_for(lambda: len(browser.find_elements(By.CSS_SELECTOR, "#gallery figure")) == 2)
    wait_for(lambda: browser.find_element(By.ID, "download").is_enabled())
    sent = link.since()
    assert [(r.method, r.path, r.status) for r in sent if "/api/upload" in r.path] == [
        ("OPTIONS", "/api/uploads/", 404), ("POST", "/api/upload/", 202)]
    assert browser.find_element(By.ID, "message").text == "2 images queued."
    job = api(server, f"/api/job/{browser.find_element(By.ID, 'job-id').text}")
    assert (job["total"], job["done"], job["upload_name"]) == (2, 2, "two.zip")


def test_a_dropped_link_is_retried_from_the_servers_offset(server, link_factory, browser,
                                                            tmp_path):
    """The link goes down in the middle of a chunk for a while: the page says so, tries
    again and again, and when the link is back asks the server for its offset and goes on
    from there by itself, in the same upload."""
    from selenium.webdriver.common.by import By

    link = link_factory(rate_bytes_per_s=2.5 * MB)
    images = sea_zip(tmp_path / "station.zip", 4, 1000, seed=5)
    length = images.stat().st_size
    jobs_before = accepted_uploads(server)
    browser.get(link.url + "/")
    browser.execute_script(RECORD_MESSAGES)
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(images))
    first = wait_for(lambda: [r for r in link.since() if r.method == "PATCH"])[0]
    wait_for(lambda: int(tus_head(server, first.path)[1]["Upload-Offset"]) > 0)
    cut_at = link.mark()
    link.down()
    wait_for(lambda: browser.find_element(By.ID, "message").text.startswith(
        "The link dropped: trying again in "))
    assert browser.find_element(By.ID, "message").get_attribute("class") == "warn"
    link.up()
    wait_for(lambda: browser.find_element(By.ID, "download").is_enabled(), timeout_s=120)

    messages = browser.execute_script("return window.messages")
    dropped = [i for i, m in enumerate(messages) if m.startswith("The link dropped")]
    assert "The link is back: the upload goes on." in messages[dropped[0]:], messages
    after = link.since(cut_at)
    assert not [r for r in after if r.method == "POST"]  # the same upload went on
    # It asked the server for its offset before going on (a PATCH cut by the drop may be
    # recorded after the mark: what matters is the HEAD before the first PATCH that lands).
    on_path = [r for r in after if r.path == first.path]
    landed = next(i for i, r in enumerate(on_path) if r.method == "PATCH" and r.status == 204)
    assert "HEAD" in [r.method for r in on_path[:landed]]
    resumed = [r for r in after if r.method == "PATCH" and r.status == 204]
    assert int(resumed[0].headers["upload-offset"]) > 0
    assert int(resumed[-1].headers["upload-offset"]) + resumed[-1].sent_bytes == length
    assert accepted_uploads(server) == jobs_before + 1
    job = api(server, f"/api/job/{browser.find_element(By.ID, 'job-id').text}")
    assert (job["total"], job["done"], job["upload_name"]) == (4, 4, "station.zip")
    assert stored_tus_entries(browser) == []


def test_a_refused_file_is_reported_and_not_offered_for_resuming(server, link_factory,
                                                                  browser, tmp_path):
    """A file that is neither a zip nor an image is refused by the final PATCH with the
    very error POST /api/upload/ gives: the page shows it and forgets the upload."""
    from selenium.webdriver.common.by import By

    link = link_factory()
    notes = tmp_path / "notes.zip"
    notes.write_bytes(b"field notes, not a zip\n" * 4000)
    browser.get(link.url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(notes))
    message = wait_for(lambda: browser.find_element(By.ID, "message").text)
    (patch,) = [r for r in link.since() if r.method == "PATCH"]
    assert patch.status == 400
    refusal = api(server, patch.path)["error"]
    assert message == f"Upload refused (400): {refusal['message']}"
    assert browser.find_element(By.ID, "message").get_attribute("class") == "warn"
    wait_for(lambda: stored_tus_entries(browser) == [])
    assert tus_head(server, patch.path)[0] == 410
    browser.refresh()  # nothing to resume is offered
    assert not browser.find_element(By.ID, "unfinished").is_displayed()
    assert not browser.find_elements(By.CSS_SELECTOR, "#unfinished-list li")


def test_a_lost_answer_to_the_last_patch_still_finds_the_job(server, link_factory, browser,
                                                            tmp_path):
    """The link drops the final PATCH's answer (the job was made): the page asks again, the
    server says the upload is complete and names its job, and the page follows it. No
    second upload, no second job."""
    from selenium.webdriver.common.by import By

    images = sea_zip(tmp_path / "lost.zip", 2, 64, seed=6)
    length = images.stat().st_size
    lost: list[Request] = []

    def last_patch(request: Request) -> bool:
        if lost or request.method != "PATCH":
            return False
        offset = int(request.headers["upload-offset"])
        if offset + int(request.headers["content-length"]) != length:
            return False
        lost.append(request)
        return True

    link = link_factory(lose_answer=last_patch)
    jobs_before = accepted_uploads(server)
    browser.get(link.url + "/")
    browser.find_element(By.ID, "token").send_keys(TOKEN)
    browser.find_element(By.ID, "file").send_keys(str(images))
    wait_for(lambda: browser.find_element(By.ID, "download").is_enabled())
    job_id = browser.find_element(By.ID, "job-id").text

    assert [(r.status, r.lost) for r in lost] == [(204, True)]
    sent = link.since()
    assert len([r for r in sent if r.method == "POST"]) == 1
    assert api(server, lost[0].path)["job_id"] == job_id
    assert accepted_uploads(server) == jobs_before + 1
    job = api(server, f"/api/job/{job_id}")
    assert (job["total"], job["done"], job["upload_name"]) == (2, 2, "lost.zip")
    assert stored_tus_entries(browser) == []
