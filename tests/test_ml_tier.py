"""Many ML endpoints, and the Open Inference Protocol v2, against real components: stub
processes (`python -m ml_stub`) killed and restarted, `oilspill serve`, the real app in
process against real stub apps, and a real MLServer serving the detector.

What is shown: calls spread over the endpoints by their load and never past an endpoint's
limit; an endpoint killed mid-job costs no task anything (no failure, no attempt) and is used
again once it is back, without restarting oilspill; every endpoint down pauses the pool,
which resumes by itself; an OIP endpoint (the stub's binary tensors, MLServer's JSON) runs
whole jobs, plain images and a tiled scene, whose masks equal the /segment path's, with
tiles batched; /healthz and /metrics list the endpoints, without credentials.
"""

from __future__ import annotations

import io
import json
import re
import signal
import zipfile
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
import rasterio
from aiohttp import web
from aiohttp.test_utils import TestClient
from PIL import Image

from ml_stub.app import StubOptions
from ml_stub.app import create_app as create_stub
from ml_stub.oip import MODEL_NAME
from ml_stub.scenes import scene_png
from oilspill.config import ConfigError, Settings, from_env
from oilspill.ml_tier import public_url
from oilspill.oip_client import CONFIDENCE_KEY, confidence_text, mask_png, png_size
from oilspill.web.app import create_app

from .conftest import upload, wait_finished, zip_bytes
from .georef import UTM_TRANSFORM, amplitude_u16, band, damp, sea, write_tif
from .mlserver_env import MLServer
from .procs import (
    Api,
    Process,
    free_port,
    poll,
    scenes_zip,
    server_process,
    stub_process,
    wait_http,
)

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

OIP_PATH = f"/v2/models/{MODEL_NAME}"


# --- helpers -------------------------------------------------------------------------------

def metric_values(text: str, name: str) -> dict[str, float]:
    """A labelled metric's values by its `endpoint` label, from Prometheus text."""
    values = {}
    for match in re.finditer(rf'^{name}\{{endpoint="([^"]*)"[^}}]*\}} (\S+)$', text, re.M):
        values[match.group(1)] = values.get(match.group(1), 0.0) + float(match.group(2))
    return values


async def read(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return await resp.json() if resp.content_type == "application/json" else await resp.text()


def endpoint(health: dict[str, Any], url: str) -> dict[str, Any]:
    (found,) = [e for e in health["ml_endpoints"] if e["url"] == url]
    return dict(found)


class Stubs:
    """Stub processes on fixed ports, each killable and restartable on its port."""

    def __init__(self, tmp_path: Path, count: int, *flags: str) -> None:
        self.tmp_path, self.flags = tmp_path, flags
        self.ports = [free_port() for _ in range(count)]
        self.procs: list[Process | None] = [None] * count

    def url(self, n: int) -> str:
        return f"http://127.0.0.1:{self.ports[n]}"

    async def start(self, n: int) -> None:
        proc = stub_process(self.ports[n], self.tmp_path, *self.flags)
        self.procs[n] = proc
        await proc.start()
        await wait_http(f"{self.url(n)}/health", proc)

    async def kill(self, n: int) -> None:
        proc = self.procs[n]
        assert proc is not None
        await proc.signal(signal.SIGKILL)
        await proc.wait()

    async def close(self) -> None:
        for proc in self.procs:
            if proc is not None:
                await proc.kill()


@pytest.fixture
async def stubs(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[Stubs]]]:
    made: list[Stubs] = []

    async def make(count: int, *flags: str) -> Stubs:
        group = Stubs(tmp_path, count, *flags)
        made.append(group)
        for n in range(count):
            await group.start(n)
        return group

    yield make
    for group in made:
        await group.close()


@pytest.fixture
async def serve(tmp_path: Path) -> AsyncIterator[Callable[..., Awaitable[str]]]:
    """`oilspill serve` with these ML_SERVICE_URL and settings; returns its base URL."""
    made: list[Process] = []

    async def start(ml_url: str, **settings: str) -> str:
        port = free_port()
        proc = server_process(port, tmp_path / f"data{port}", ml_url, tmp_path,
                              OILSPILL_ML_RETRY_BASE_S="0.05", **settings)
        made.append(proc)
        await proc.start()
        base = f"http://127.0.0.1:{port}"
        await wait_http(f"{base}/healthz", proc)
        return base

    yield start
    for proc in made:
        await proc.kill()


# --- settings --------------------------------------------------------------------------------

def test_ml_service_url_takes_a_list_with_limits_per_url() -> None:
    s = from_env({"ML_SERVICE_URL": " http://a:8002/ , http://u:pw@b:8080/v2/models/det#limit=16,"
                                    "https://c/v2/models/det/versions/2"})
    assert [(e.url, e.limit) for e in s.ml_endpoint_list] == [
        ("http://a:8002", None), ("http://u:pw@b:8080/v2/models/det", 16),
        ("https://c/v2/models/det/versions/2", None)]
    assert s.ml_service_url == ("http://a:8002,http://u:pw@b:8080/v2/models/det#limit=16,"
                                "https://c/v2/models/det/versions/2")
    assert from_env({"OILSPILL_ML_BATCH": "3"}).ml_batch == 3
    for bad in ("http://a:1,", "http://a:1#limit=0", "http://a:1#limit=x", "http://a:1#lim=2",
                "http://a:1/v2/models/", "http://a:1/v2/models/m/extra/parts",
                "http://a:1,http://a:1#limit=2", "a:1", "http://a:1?x=1"):
        with pytest.raises(ConfigError, match="ML_SERVICE_URL"):
            from_env({"ML_SERVICE_URL": bad})
    with pytest.raises(ConfigError, match="OILSPILL_ML_BATCH"):
        from_env({"OILSPILL_ML_BATCH": "0"})
    with pytest.raises(ConfigError, match="ML_SERVICE_URL") as refused:
        from_env({"ML_SERVICE_URL": "http://oil:s3cret@a:1#limit=0"})
    assert "s3cret" not in str(refused.value)
    assert public_url("http://u:secret@h:1/v2/models/m") == "http://h:1/v2/models/m"
    assert public_url("http://h:1") == "http://h:1"


def test_a_mask_png_keeps_each_slicks_confidence() -> None:
    mask = np.zeros((40, 60), np.uint8)
    mask[5:10, 10:30] = 255
    mask[20:35, 40:45] = 255
    confidence = np.full(mask.shape, 0.1)
    confidence[5:10, 10:30] = 0.9
    confidence[20:35, 40:45] = np.linspace(0.5, 0.7, 15)[:, None]
    text = confidence_text(confidence.ravel().tolist(), mask)
    assert text is not None
    png = mask_png(mask, text)
    assert png_size(png) == (40, 60)
    with Image.open(io.BytesIO(png)) as image:
        assert (image.format, image.mode, image.size) == ("PNG", "L", (60, 40))
        np.testing.assert_array_equal(np.asarray(image), mask)
        kept = json.loads(image.text[CONFIDENCE_KEY])
    assert kept == {"slicks": [{"row": 5, "col": 10, "confidence": 0.9},
                               {"row": 20, "col": 40, "confidence": 0.6}]}
    assert json.loads(confidence_text([0.25], mask) or "") == {"values": [0.25]}


# --- spreading ----------------------------------------------------------------------------

class Watched:
    """A real stub app whose requests to /segment are counted, with the most in flight."""

    def __init__(self) -> None:
        self.calls = 0
        self.in_flight = 0
        self.most = 0
        self.other: list[str] = []

    def app(self, **options: Any) -> web.Application:
        @web.middleware
        async def watch(request: web.Request, handler):  # type: ignore[no-untyped-def]
            if request.path != "/segment":
                self.other.append(request.path)
                return await handler(request)
            self.calls += 1
            self.in_flight += 1
            self.most = max(self.most, self.in_flight)
            try:
                return await handler(request)
            finally:
                self.in_flight -= 1

        app = create_stub(StubOptions(**options))
        app.middlewares.append(watch)
        return app


async def test_calls_spread_by_load_within_each_endpoints_limit(
        aiohttp_server: Any, aiohttp_client: Any, settings: Settings) -> None:
    limits = (1, 2, 4)
    watched = [Watched() for _ in limits]
    servers = [await aiohttp_server(w.app(latency_ms=25)) for w in watched]
    urls = [str(s.make_url("")).rstrip("/") for s in servers]
    secret = urls[2].replace("http://", "http://oil:s3cret@")
    listed = ",".join(f"{u}#limit={n}" for u, n in zip([*urls[:2], secret], limits, strict=True))
    client: TestClient = await aiohttp_client(create_app(settings.with_changes(
        ml_service_url=listed, concurrency=9)))
    images = {f"img_{i:03d}.png": scene_png(32, 32, seed=i % 5) for i in range(70)}
    images["broken.png"] = scene_png(32, 32, seed=1)[:200]  # the header reads, not the pixels
    status, body = await upload(client, zip_bytes(images))
    assert status == 202, body
    job = await wait_finished(client, body["job_id"])
    assert (job["done"], job["failed"]) == (70, 1)

    counts = [w.calls for w in watched]
    assert all(w.most <= n for w, n in zip(watched, limits, strict=True)), [w.most for w in watched]
    assert watched[2].most == 4  # the backlog filled the largest endpoint
    assert 0 < counts[0] < counts[1] < counts[2], counts  # the load follows the limits
    assert sum(counts) == 71  # the rejected image went once, to one endpoint

    health = await (await client.get("/healthz")).json()
    assert health["ml_service_url"] == ",".join(urls)  # no credentials
    assert [e["url"] for e in health["ml_endpoints"]] == urls
    for e, count, limit in zip(health["ml_endpoints"], counts, limits, strict=True):
        assert (e["protocol"], e["limit"], e["reachable"], e["in_rotation"]) == (
            "segment", limit, True, True)
        assert e["requests"] == count and e["in_flight"] == 0
        assert e["mean_latency_ms"] >= 25
    assert sum(e["calls"] for e in health["ml_endpoints"]) == 70
    assert sum(e["errors"] for e in health["ml_endpoints"]) == 1  # the 422
    tasks = (await (await client.get(f"/api/job/{body['job_id']}/tasks")).json())["tasks"]
    broken = next(t for t in tasks if t["filename"] == "broken.png")
    assert "422" in broken["error"] and broken["attempts"] == 1

    text = await (await client.get("/metrics")).text()
    assert "s3cret" not in text
    assert metric_values(text, "oilspill_ml_endpoint_requests_total") == dict(
        zip(urls, map(float, counts), strict=True))
    assert metric_values(text, "oilspill_ml_endpoint_limit") == dict(
        zip(urls, map(float, limits), strict=True))
    assert set(metric_values(text, "oilspill_ml_endpoint_up").values()) == {1.0}
    assert "oilspill_ml_rerouted_total 0.0" in text


# --- failures -----------------------------------------------------------------------------

async def job_tasks(session: aiohttp.ClientSession, base: str, job_id: str) -> list[dict[str, Any]]:
    body = await read(session, f"{base}/api/job/{job_id}/tasks?limit=1000")
    return list(body["tasks"])


async def test_a_killed_endpoint_costs_no_task_and_is_used_again_once_back(stubs, serve) -> None:
    group = await stubs(3, "--mode", "ready", "--latency-ms", "40")
    base = await serve(",".join(group.url(n) for n in range(3)), OILSPILL_CONCURRENCY="2")
    async with aiohttp.ClientSession() as session:
        api = Api(session, base)
        accepted = await api.upload(scenes_zip(150, 32))
        await api.wait_job(accepted["job_id"], "done_count", at_least_done=25)
        await group.kill(1)
        job = await api.wait_job(accepted["job_id"])
        assert (job["done"], job["failed"]) == (150, 0)
        # No call that failed on the dying endpoint cost its task an attempt.
        assert {t["attempts"] for t in await job_tasks(session, base, job["job_id"])} == {1}
        health = await read(session, f"{base}/healthz")
        dead = endpoint(health, group.url(1))
        assert (dead["in_rotation"], dead["reachable"]) == (False, False)
        assert dead["errors"] >= 1 and health["ml_service"] == "reachable"
        before = dead["calls"]
        metrics = await read(session, f"{base}/metrics")
        assert metric_values(metrics, "oilspill_ml_endpoint_up")[group.url(1)] == 0.0
        # The kill caught calls in flight there: they were sent on, not failed.
        rerouted = re.search(r"^oilspill_ml_rerouted_total (\S+)$", metrics, re.M)
        assert rerouted is not None and float(rerouted.group(1)) >= 1

        await group.start(1)  # the same port: oilspill is not restarted

        async def back() -> bool | None:
            health = await read(session, f"{base}/healthz")
            return True if endpoint(health, group.url(1))["in_rotation"] else None
        await poll(back, "the restarted endpoint to be back in rotation", 30)
        again = await api.upload(scenes_zip(60, 32))
        job = await api.wait_job(again["job_id"])
        assert (job["done"], job["failed"]) == (60, 0)
        health = await read(session, f"{base}/healthz")
        assert endpoint(health, group.url(1))["calls"] > before
        assert all(e["reachable"] and e["in_rotation"] for e in health["ml_endpoints"])


async def test_every_endpoint_down_pauses_the_pool_until_one_is_back(stubs, serve) -> None:
    group = await stubs(2, "--mode", "ready", "--latency-ms", "30")
    base = await serve(f"{group.url(0)},{group.url(1)}", OILSPILL_CONCURRENCY="2",
                       OILSPILL_ML_MAX_ATTEMPTS="20")
    async with aiohttp.ClientSession() as session:
        api = Api(session, base)
        accepted = await api.upload(scenes_zip(80, 32))
        await api.wait_job(accepted["job_id"], "done_count", at_least_done=10)
        await group.kill(0)
        await group.kill(1)

        async def paused() -> dict[str, Any] | None:
            _, job = await api.get(f"/api/job/{accepted['job_id']}")
            health = await read(session, f"{base}/healthz")
            if job["waiting_for_ml_service"] and health["ml_service"] == "unreachable":
                return dict(health)
            return None
        health = await poll(paused, "the pool to pause", 30)
        assert not any(e["reachable"] for e in health["ml_endpoints"])
        _, job = await api.get(f"/api/job/{accepted['job_id']}")
        assert job["finished_at"] is None and job["failed"] == 0

        await group.start(1)
        job = await api.wait_job(accepted["job_id"])
        assert (job["done"], job["failed"]) == (80, 0)
        health = await read(session, f"{base}/healthz")
        assert health["ml_service"] == "reachable"
        assert endpoint(health, group.url(1))["in_rotation"]
        assert not endpoint(health, group.url(0))["reachable"]


# --- the Open Inference Protocol --------------------------------------------------------------

def scene_tif(tmp_path: Path, width: int = 600, height: int = 500) -> bytes:
    """A uint16 UTM GeoTIFF with two slicks, a few 256 px tiles."""
    shape = (height, width)
    truth = (band(shape, (0.35 * height, 0.4 * width), 0.5 * width, 30, 15)
             | band(shape, (0.7 * height, 0.65 * width), 0.35 * width, 45, -40))
    intensity = damp(sea(height, width, 3), truth)
    return write_tif(tmp_path / "scene.tif", amplitude_u16(intensity), crs="EPSG:32633",
                     transform=UTM_TRANSFORM).read_bytes()


def mixed_job(tmp_path: Path) -> bytes:
    """Plain pictures (two of one size, so they can share a request) and a tiled scene."""
    return zip_bytes({
        "sea/a.png": scene_png(96, 80, seed=1), "sea/b.png": scene_png(96, 80, seed=2),
        "sea/c.png": scene_png(130, 110, seed=3), "sea/rgb.png": rgb_png(120, 90, seed=4),
        "scenes/gulf.tif": scene_tif(tmp_path)})


def rgb_png(width: int, height: int, seed: int) -> bytes:
    grey = np.asarray(Image.open(io.BytesIO(scene_png(width, height, seed))))
    rgb = np.stack([grey, np.clip(grey.astype(int) + 20, 0, 255).astype(np.uint8), grey], -1)
    out = io.BytesIO()
    Image.fromarray(rgb, "RGB").save(out, "PNG")
    return out.getvalue()


FIGURES = ("oil_pixels", "oil_fraction", "slick_count", "largest_slick_px")


async def run_and_collect(client: TestClient, data: bytes) -> tuple[dict[str, Any],
                                                                   dict[str, Any]]:
    """Run the job; its masks from the result zip by name, and each image's figures from
    its summary (under "figures")."""
    status, body = await upload(client, data)
    assert status == 202, body
    job = await wait_finished(client, body["job_id"], 120)
    assert (job["done"], job["failed"]) == (5, 0), job
    url = (await (await client.get(f"/api/archive/{body['job_id']}")).json())["archive_url"]
    masks: dict[str, Any] = {}
    with zipfile.ZipFile(io.BytesIO(await (await client.get(url)).read())) as zf:
        for name in zf.namelist():
            if name.startswith("masks/"):
                with rasterio.open(io.BytesIO(zf.read(name))) as src:
                    masks[name] = src.read(1)
        masks["figures"] = {row["filename"]: {k: row[k] for k in FIGURES}
                            for row in json.loads(zf.read("summary.json"))}
    return job, masks


def scene_settings(settings: Settings, tmp_path: Path, name: str, **changes: Any) -> Settings:
    return settings.with_changes(data_dir=tmp_path / name, tile_px=256, tile_overlap_px=32,
                                 max_upload_bytes=64 * 2**20, min_free_bytes=2**20, **changes)


async def segment_masks(aiohttp_client: Any, settings: Settings, tmp_path: Path,
                        data: bytes, ml_url: str) -> dict[str, np.ndarray]:
    client = await aiohttp_client(create_app(scene_settings(settings, tmp_path, "segment",
                                                            ml_service_url=ml_url)))
    _, masks = await run_and_collect(client, data)
    await client.close()
    assert len(masks) == 6 and "masks/scenes/gulf.tif" in masks
    assert all((m == 255).any() for n, m in masks.items() if n != "figures")  # oil in each
    return masks


def assert_same_masks(got: dict[str, Any], expected: dict[str, Any]) -> None:
    """The same mask files, pixel for pixel, and the same figures for every image."""
    assert got.keys() == expected.keys()
    for name, mask in expected.items():
        if name != "figures":
            np.testing.assert_array_equal(got[name], mask, err_msg=name)
    assert got["figures"] == expected["figures"]


async def test_a_whole_job_over_oip_binary_has_the_segment_masks_and_batches(
        aiohttp_client: Any, settings: Settings, tmp_path: Path, stubs) -> None:
    group = await stubs(1)  # the detector, on /segment and on /v2
    data = mixed_job(tmp_path)
    expected = await segment_masks(aiohttp_client, settings, tmp_path, data, group.url(0))

    model_url = f"{group.url(0)}{OIP_PATH}"
    # One request at a time: what waits meanwhile is batched.
    client = await aiohttp_client(create_app(scene_settings(
        settings, tmp_path, "oip", ml_service_url=model_url, concurrency=1)))
    job, masks = await run_and_collect(client, data)
    assert_same_masks(masks, expected)
    units = job["tiles_total"]  # 4 pictures, the scene's 9 tiles and its overview
    assert units == 4 + 9 + 1

    health = await (await client.get("/healthz")).json()
    (oip,) = health["ml_endpoints"]
    assert (oip["url"], oip["protocol"], oip["model"], oip["binary"], oip["batch"]) == (
        model_url, "oip", MODEL_NAME, True, 8)
    assert oip["calls"] == units and oip["errors"] == 0
    assert oip["requests"] < units, oip  # batched
    text = await (await client.get("/metrics")).text()
    assert metric_values(text, "oilspill_ml_endpoint_calls_total") == {model_url: units}
    assert metric_values(text, "oilspill_ml_endpoint_requests_total")[model_url] < units


@pytest.mark.xdist_group("mlserver")  # the worker that runs the session's one MLServer
@pytest.mark.parametrize("declared", ["pngs", "pixels"])
async def test_a_whole_job_through_mlserver_has_the_segment_masks(
        aiohttp_client: Any, settings: Settings, tmp_path: Path, start_stub: Any,
        mlserver: MLServer, declared: str) -> None:
    """deploy/mlserver's model (base64 PNGs in, a PNG mask out), and the same runtime
    declared with UINT8 pixels both ways (JSON numbers)."""
    data = mixed_job(tmp_path)
    expected = await segment_masks(aiohttp_client, settings, tmp_path, data, await start_stub())
    url = mlserver.model_url if declared == "pngs" else mlserver.pixels_url
    client = await aiohttp_client(create_app(scene_settings(
        settings, tmp_path, "mlserver", ml_service_url=url)))
    job, masks = await run_and_collect(client, data)
    assert_same_masks(masks, expected)
    health = await (await client.get("/healthz")).json()
    (oip,) = health["ml_endpoints"]
    assert (oip["protocol"], oip["binary"], oip["calls"]) == ("oip", False, job["tiles_total"])
