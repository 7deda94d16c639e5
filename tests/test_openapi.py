"""The OpenAPI document matches the routes, and the live server honours it under fuzzing."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from oilspill.app import create_app
from oilspill.config import Settings
from oilspill.openapi import document

from .procs import clean_env, free_port


def test_the_document_describes_exactly_the_routes(tmp_path):
    app = create_app(Settings(data_dir=tmp_path))
    routes = {(route.resource.canonical, route.method.lower())
              for route in app.router.routes()
              if route.resource is not None and route.method != "HEAD"}
    documented = {(path, method) for path, item in document()["paths"].items()
                  for method in item}
    assert routes == documented


async def test_the_document_is_served(client):
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200
    assert (await resp.json()) == document()


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """`oilspill serve` with its bundled-stub twin: a real stub process and a real server."""
    tmp = tmp_path_factory.mktemp("live")
    stub_port, port = free_port(), free_port()
    stub = subprocess.Popen([sys.executable, "-m", "ml_stub", "--port", str(stub_port)],
                            env=clean_env(), cwd=tmp, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    server = subprocess.Popen(
        [sys.executable, "-m", "oilspill", "serve"], cwd=tmp, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=clean_env(OILSPILL_PORT=str(port), OILSPILL_DATA_DIR=str(Path(tmp) / "data"),
                      ML_SERVICE_URL=f"http://127.0.0.1:{stub_port}",
                      OILSPILL_LOG_LEVEL="WARNING"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(f"{base}/healthz", timeout=1):
                break
        except OSError:
            assert time.monotonic() < deadline and server.poll() is None, "no live server"
            time.sleep(0.05)
    yield base
    for proc in (server, stub):
        proc.terminate()
        proc.wait(timeout=30)


def test_the_live_server_honours_its_document_under_fuzzing(live_server, tmp_path):
    """Schemathesis, every check: no 5xx, and every answer (status, content type, headers,
    body) conforms to the document."""
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file",
         str(Path(__file__).with_name("schemathesis.toml")), "run",
         f"{live_server}/api/openapi.json", "--checks", "all", "--max-examples", "30",
         "--seed", "20261125", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
