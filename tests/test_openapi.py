"""The OpenAPI document matches the routes, and the live server honours it under fuzzing."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema_rs
import numpy as np
import pytest
import rasterio
from affine import Affine

from oilspill.config import Settings
from oilspill.web.app import create_app
from oilspill.web.openapi import document

from .conftest import scene_png, upload, wait_finished, zip_bytes
from .procs import live_stack

CONFIG = Path(__file__).with_name("schemathesis.toml")
# Stateful runs delete the jobs they made and then ask for them: 410 Gone is the documented,
# right answer to a valid request then, not a refusal.
GONE_IS_AN_ANSWER = """
[checks.positive_data_acceptance]
expected-statuses = ["2xx", "3xx", "401", "403", "404", "409", "410", "429", "5xx"]
"""


def test_the_document_describes_exactly_the_routes(tmp_path):
    app = create_app(Settings(data_dir=tmp_path))
    # aiohttp adds a HEAD beside every GET; a HEAD of its own (tus) is documented.
    gets = {(r.resource.canonical, r.handler) for r in app.router.routes()
            if r.resource is not None and r.method == "GET"}
    routes = {(route.resource.canonical, route.method.lower())
              for route in app.router.routes()
              if route.resource is not None and (
                  route.method != "HEAD" or (route.resource.canonical, route.handler) not in gets)}
    documented = {(path, method) for path, item in document()["paths"].items()
                  for method in item}
    assert routes == documented


async def test_the_document_is_served(client):
    resp = await client.get("/api/openapi.json")
    assert resp.status == 200
    assert (await resp.json()) == document()


def conforms(body: Any, schema_name: str) -> None:
    """Fail with every reason when body is not valid under the document's schema."""
    schema = {"$ref": f"#/components/schemas/{schema_name}", **document()}
    validator = jsonschema_rs.Draft202012Validator(schema, validate_formats=True)
    errors = [f"{list(e.instance_path)}: {e.message}" for e in validator.iter_errors(body)]
    assert not errors, f"{schema_name}: {errors}"


def write_scene(path: Path, width: int = 700, height: int = 500) -> Path:
    """A uint16 GeoTIFF of speckled sea in UTM 33N at 10 m, with a dark band across."""
    rng = np.random.default_rng(7)
    data = np.clip(rng.gamma(4.0, 400.0, (height, width)), 1, 65535).astype(np.uint16)
    data[height * 2 // 5:height * 2 // 5 + 40, 50:width - 50] //= 12
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=1,
                       dtype="uint16", crs="EPSG:32633",
                       transform=Affine(10, 0, 500_000, 0, -10, 6_000_000)) as dst:
        dst.write(np.maximum(data, 1), 1)
    return path


async def test_a_tiled_scene_conforms_to_the_document(aiohttp_client, settings, tmp_path):
    """Fuzzing never makes a GeoTIFF: a real one, cut into tiles, gives the bodies the
    document describes (tiles_total, tiles_done, result.scene, the events)."""
    client = await aiohttp_client(create_app(dataclasses.replace(
        settings, tile_px=256, tile_overlap_px=32)))
    form = aiohttp.FormData()
    form.add_field("file", write_scene(tmp_path / "scene.tif").read_bytes(),
                   filename="scene.tif", content_type="image/tiff")
    resp = await client.post("/api/upload/", data=form)
    assert resp.status == 202, await resp.text()
    accepted = await resp.json()
    conforms(accepted, "Accepted")
    job_id, (task_id,) = accepted["job_id"], accepted["task_ids"]
    early = await client.get(f"/api/job/{job_id}/spills.geojson")
    if early.status == 409:  # ten units of work: it is all but sure to be still running
        conforms(await early.json(), "Error")
        assert (await early.json())["error"]["code"] == "job_not_finished"
    else:
        assert early.status == 200
        assert (await client.get(f"/api/job/{job_id}")).status == 200

    job = await wait_finished(client, job_id, 60)
    conforms(job, "Job")
    assert (job["done"], job["tiles_done"], job["tiles_total"]) == (1, 10, 10)  # 9 + overview
    task = await (await client.get(f"/api/task/{task_id}")).json()
    conforms(task, "Task")
    assert (task["tiles_total"], task["tiles_done"]) == (10, 10)
    assert task["result"]["scene"]["crs"] == "EPSG:32633"
    assert task["result"]["scene"]["tiles"] == 9
    conforms(await (await client.get(f"/api/job/{job_id}/tasks")).json(), "TaskPage")

    events = (await (await client.get(f"/api/job/{job_id}/events")).text()).split("\n\n")
    named = [dict(line.split(": ", 1) for line in block.splitlines()) for block in events
             if block.startswith("event: ")]
    assert [e["event"] for e in named] == ["task", "progress", "end"]
    for event in named:
        conforms(event, "Event")
        conforms(json.loads(event["data"]), "Task" if event["event"] == "task" else "Job")

    for kind, media_type in (("mask", "image/tiff"), ("overlay", "image/png")):
        resp = await client.get(f"/api/task/{task_id}/{kind}")
        assert resp.status == 200
        assert resp.content_type in document()["paths"][f"/api/task/{{task_id}}/{kind}"][
            "get"]["responses"]["200"]["content"]
        assert resp.content_type == media_type

    # The slicks: the task's and the job's GeoJSON, in lon/lat, as the document says.
    result = task["result"]
    assert result["spills_url"] == f"/api/task/{task_id}/spills.geojson"
    assert result["crs"] == "EPSG:32633" and result["total_area_km2"] > 0
    west, south, east, north = result["bounds_lonlat"]
    assert 14.9 < west < east < 15.2 and 54.0 < south < north < 54.2  # 33N, 6000 km north
    collection = await geojson(client, result["spills_url"], "/api/task/{task_id}/spills.geojson")
    assert "properties" not in collection  # lon/lat, not pixels
    slicks = [f["properties"] for f in collection["features"]]
    assert len(slicks) == result["scene"]["slick_polygons"] >= 1
    assert [s["slick_id"] for s in slicks] == list(range(1, len(slicks) + 1))
    assert sum(s["area_km2"] for s in slicks) == pytest.approx(result["total_area_km2"],
                                                               abs=1e-5)
    assert all(west <= s["centroid_lon"] <= east and south <= s["centroid_lat"] <= north
               for s in slicks)
    whole = await geojson(client, f"/api/job/{job_id}/spills.geojson",
                          "/api/job/{job_id}/spills.geojson")
    assert whole == collection  # one image: the job's file is its file


async def geojson(client: Any, url: str, documented: str) -> dict[str, Any]:
    """GET a GeoJSON body, checked against the document: status, media type, headers, body."""
    resp = await client.get(url)
    assert resp.status == 200, await resp.text()
    response = document()["paths"][documented]["get"]["responses"]["200"]
    assert resp.content_type == "application/geo+json"
    assert set(response["content"]) == {"application/geo+json"}
    for header, spec in response.get("headers", {}).items():
        assert not spec.get("required") or header in resp.headers
    body: dict[str, Any] = json.loads(await resp.read())
    conforms(body, "SpillCollection")
    assert body["type"] == "FeatureCollection"
    return body


async def test_pictures_slicks_conform_to_the_document(client):
    """Plain pictures, without georeference: their slicks in pixel coordinates, areas null;
    a task without a mask and a deleted job answer with documented errors."""
    images = {f"scene_{i}.png": scene_png(160, 160, seed=i) for i in range(3)}
    broken = b"\x89PNG\r\n\x1a\n" + b"\0" * 50  # a PNG signature, then nothing readable
    status, accepted = await upload(client, zip_bytes({**images, "broken.png": broken}))
    assert status == 202, accepted
    job_id = accepted["job_id"]
    await wait_finished(client, job_id)
    tasks = (await (await client.get(f"/api/job/{job_id}/tasks")).json())["tasks"]
    assert sorted(t["status"] for t in tasks) == ["done", "done", "done", "failed"]
    features = []
    for task in tasks:
        conforms(task, "Task")
        if task["status"] == "failed":
            resp = await client.get(f"/api/task/{task['task_id']}/spills.geojson")
            assert resp.status == 404
            conforms(await resp.json(), "Error")
            continue
        result = task["result"]
        assert (result["crs"], result["bounds_lonlat"], result["total_area_km2"]) == (
            None, None, None)
        collection = await geojson(client, result["spills_url"],
                                   "/api/task/{task_id}/spills.geojson")
        assert collection["properties"] == {"coordinates": "pixel"}
        assert len(collection["features"]) == result["slick_count"]
        for feature in collection["features"]:
            props = feature["properties"]
            assert props["image"] == task["filename"]
            assert (props["area_km2"], props["centroid_lat"], props["centroid_lon"]) == (
                None, None, None)
            assert feature["geometry"]["type"] in ("Polygon", "MultiPolygon")
        features += collection["features"]
    assert features  # the stub finds oil in these scenes
    whole = await geojson(client, f"/api/job/{job_id}/spills.geojson",
                          "/api/job/{job_id}/spills.geojson")
    assert whole == {"type": "FeatureCollection", "features": features,
                     "properties": {"coordinates": "pixel"}}

    assert (await client.delete(f"/api/job/{job_id}")).status == 200
    for url in (f"/api/job/{job_id}/spills.geojson",
                f"/api/task/{tasks[0]['task_id']}/spills.geojson"):
        resp = await client.get(url)
        assert resp.status == 410, url
        conforms(await resp.json(), "Error")


async def test_a_bad_bare_scene_is_refused_with_a_documented_code(client, tmp_path):
    form = aiohttp.FormData()
    truncated = write_scene(tmp_path / "cut.tif").read_bytes()[:4096]
    form.add_field("file", truncated, filename="cut.tif", content_type="image/tiff")
    resp = await client.post("/api/upload/", data=form)
    assert resp.status == 422
    body = await resp.json()
    conforms(body, "Error")
    assert body["error"]["code"] == "unreadable_scene"
    documented = document()["paths"]["/api/upload/"]["post"]["responses"]["422"]
    assert "`unreadable_scene`" in documented["description"]


@pytest.fixture(scope="module")
def live_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real stub process and a real `oilspill serve` process."""
    with live_stack(tmp_path_factory.mktemp("live")) as base:
        yield base


def test_the_live_server_honours_its_document_under_fuzzing(live_server, tmp_path):
    """Schemathesis, every check: no 5xx, and every answer (status, content type, headers,
    body) conforms to the document. A bare image is a valid upload, so its stateful phase
    follows real jobs (upload, progress, events, tasks, deletion)."""
    config = tmp_path / "schemathesis.toml"
    config.write_text(CONFIG.read_text() + GONE_IS_AN_ANSWER)
    proc = subprocess.run(
        [sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "run",
         f"{live_server}/api/openapi.json", "--checks", "all", "--max-examples", "30",
         "--seed", "20261125", "--suppress-health-check", "all"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path,
        env={**os.environ, "SCHEMATHESIS_HOOKS": "schemathesis_hooks",
             "PYTHONPATH": str(Path(__file__).parent)})
    assert proc.returncode == 0, proc.stdout[-6000:] + proc.stderr[-2000:]
