"""The OpenAPI document matches the routes, and the live server honours it under fuzzing."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from oilspill.config import Settings
from oilspill.web.app import create_app
from oilspill.web.openapi import document

from .procs import live_stack


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
    """A real stub process and a real `oilspill serve` process."""
    with live_stack(tmp_path_factory.mktemp("live")) as base:
        yield base


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
