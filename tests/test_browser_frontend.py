"""The original front end's calls from a real browser on another origin: headless Chromium
loads a page from its own server (as `next dev` would serve the front end on port 3000),
whose script makes uploadService.ts's calls against a live oilspill with
OILSPILL_CORS_ORIGINS naming that origin, then follows the download link."""

from __future__ import annotations

import io
import json
import os
import threading
import time
import zipfile
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from .conftest import scene_png, zip_bytes
from .procs import free_port, live_stack
from .test_browser import CHROMIUM, DRIVER, browser  # noqa: F401 (the fixture)

pytestmark = pytest.mark.skipif(
    not (CHROMIUM and DRIVER) and not os.environ.get("CI"),
    reason="needs Debian's chromium and chromium-driver (.ci/run installs them)")

# The front end's sequence, in the page's own words: upload with FormData, poll the Celery
# state every second (at most 100 times), then the time left, then show the download link.
PAGE = """<!doctype html><html><body><p id="state">idle</p><a id="download">download</a>
<script>
const API = "%(api)s";
async function run() {
  const zip = await (await fetch("/survey.zip")).blob();
  const form = new FormData();
  form.append("file", new File([zip], "survey.zip", {type: "application/zip"}));
  const response = await fetch(`${API}/api/upload`, {method: "POST", body: form});
  if (!response.ok) throw new Error(`HTTP error! status: ${response.status}`);
  const {job_id, user_hash} = await response.json();
  let status = null;
  for (let tries = 0; tries < 100; tries++) {
    await new Promise((resolve) => setTimeout(resolve, 1000));
    const answer = await fetch(`${API}/api/status/${job_id}`);
    if (!answer.ok) throw new Error(`HTTP error! status: ${answer.status}`);
    status = await answer.json();
    if (status.status === "SUCCESS" || status.status === "FAILURE") break;
  }
  const left = await (await fetch(`${API}/api/archive_time_left/${user_hash}`)).json();
  const link = document.getElementById("download");
  link.href = `${API}/api/download/${user_hash}`;
  document.getElementById("state").textContent = JSON.stringify(
    {job_id, user_hash, status: status.status, done: status.done,
     seconds_left: left.seconds_left});
}
run().catch((error) => { document.getElementById("state").textContent = "error: " + error; });
</script></body></html>"""


class _FrontEnd(BaseHTTPRequestHandler):
    """The front end's own server: the page and the zip the user picks."""

    page = b""
    upload = b""

    def do_GET(self) -> None:
        body, kind = ((self.page, "text/html") if self.path == "/"
                      else (self.upload, "application/zip"))
        self.send_response(200)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


def test_the_front_end_works_from_another_origin(
        tmp_path: Path, browser: Any) -> None:  # noqa: F811 (the fixture's name)
    port = free_port()
    origin = f"http://localhost:{port}"
    with live_stack(tmp_path, OILSPILL_CORS_ORIGINS=origin) as api:
        handler = type("FrontEnd", (_FrontEnd,), {
            "page": (PAGE % {"api": api}).encode(),
            "upload": zip_bytes({f"pass_{i}.png": scene_png(96, 80, seed=i) for i in range(2)})})
        server = ThreadingHTTPServer(("127.0.0.1", port), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        try:
            browser.get(f"{origin}/")
            state = _wait_for_state(browser)
            assert state["status"] == "SUCCESS" and state["done"] == 2, state
            assert state["seconds_left"] > 0
            browser.find_element("id", "download").click()
            saved = _wait_for_file(browser.downloads / f"result_{state['user_hash']}.zip")
            names = zipfile.ZipFile(io.BytesIO(saved.read_bytes())).namelist()
            assert {"masks/pass_0.png", "masks/pass_1.png"} <= set(names)
        finally:
            server.shutdown()
            server.server_close()


def _wait_for_state(driver: Any, timeout_s: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        text = driver.find_element("id", "state").text
        if text.startswith("error"):
            raise AssertionError(text)
        if text.startswith("{"):
            state: dict[str, Any] = json.loads(text)
            return state
        time.sleep(0.2)
    raise AssertionError("the page never finished")


def _wait_for_file(path: Path, timeout_s: float = 30) -> Path:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if path.is_file() and path.stat().st_size > 0:
            return path
        time.sleep(0.2)
    raise AssertionError(f"no download at {path}: {list(path.parent.iterdir())}")
