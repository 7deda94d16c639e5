"""Each slick's confidence, from an OIP model's `confidence` output to the GeoJSON.

What is shown: a mask PNG's kept confidence (oip_client.confidence_text) goes to the right
slick of a picture's GeoJSON, even between slicks of one pixel count, as the mean of that
slick's pixels; anything else kept (per-image values, garbled text, nothing) leaves it null.
The stub's `--confidence` adds a `confidence` output that oilspill's own codec reads, binary
and JSON alike, and only with the flag. End to end: real stub processes, with and without
`--confidence`, behind real `oilspill serve` processes, the GeoJSON fetched through the API.
"""

from __future__ import annotations

import io
import json
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image
from scipy import ndimage

from ml_stub.oip import CONFIDENCE, MODEL_NAME, OUTPUTS
from ml_stub.scenes import scene_png
from oilspill import oip
from oilspill.geo.polygons import slick_polygons
from oilspill.jobs import ResultKind, Task, TaskStatus
from oilspill.oip_client import confidence_text, mask_png
from oilspill.paths import JobPaths, new_id
from oilspill.spills import ensure_task_spills, mask_confidence

from .conftest import StubFactory, zip_bytes
from .georef import UTM_TRANSFORM, amplitude_u16, band, damp, sea, write_tif
from .procs import SERVER_ARGS, Api, clean_env, free_port, server_env, stub_args

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

OIP_PATH = f"/v2/models/{MODEL_NAME}"
EIGHT = np.ones((3, 3), bool)


# --- the mask's confidence to its slicks ----------------------------------------------------

def three_slicks() -> tuple[np.ndarray, list[np.ndarray]]:
    """A 64 x 96 mask with three slicks, largest first, then two of one pixel count (60),
    the upper one first (the order PixelSlick ids follow); and each slick's pixels."""
    mask = np.zeros((64, 96), np.uint8)
    big = np.zeros_like(mask, bool)
    for n in range(30):  # a diagonal band: stair steps that simplification smooths away
        big[4 + n, 40 + n:46 + n] = True
    upper = np.zeros_like(mask, bool)
    upper[6:12, 4:14] = True  # 6 x 10
    lower = np.zeros_like(mask, bool)
    lower[45:57, 8:13] = True  # 12 x 5, also 60...
    lower[56, 12] = False  # ...less a corner...
    lower[44, 10] = True  # ...plus a lone pixel on top, its first in row order
    for slick in (big, upper, lower):
        mask[slick] = 255
    assert upper.sum() == lower.sum() == 60 < big.sum()
    assert ndimage.label(mask >= 128, structure=EIGHT)[1] == 3
    return mask, [big, upper, lower]


def write_mask(path: Path, mask: np.ndarray, values: np.ndarray | None) -> None:
    text = confidence_text(values.ravel().tolist(), mask) if values is not None else None
    path.write_bytes(mask_png(mask, text))


def test_mask_confidence_gives_each_slick_the_mean_of_its_pixels(tmp_path: Path) -> None:
    mask, slicks = three_slicks()
    values = np.random.default_rng(7).uniform(0, 1, mask.shape)
    path = tmp_path / "mask.png"
    write_mask(path, mask, values)
    pixel_slicks = slick_polygons(path)
    assert [(s.slick_id, s.pixels) for s in pixel_slicks] == [
        (1, int(slicks[0].sum())), (2, 60), (3, 60)]
    found = mask_confidence(path, pixel_slicks)
    assert found.keys() == {1, 2, 3}
    for slick_id, pixels in enumerate(slicks, start=1):
        assert found[slick_id] == pytest.approx(values[pixels].mean(), abs=1e-6), slick_id


def done_task(jobs_dir: Path, mask: np.ndarray, values: np.ndarray | None,
              text: str | None = None) -> tuple[JobPaths, Task]:
    """A done picture task and its mask, as the worker leaves them (`text`, when given, is
    kept instead of the confidence of `values`)."""
    paths = JobPaths(jobs_dir, new_id())
    for folder in (paths.images, *paths.result_folders):
        folder.mkdir(parents=True)
    path = paths.result(ResultKind.MASK, "000000.png")
    if text is None:
        write_mask(path, mask, values)
    else:
        path.write_bytes(mask_png(mask, text))
    height, width = mask.shape
    oil = int(np.count_nonzero(mask))
    task = Task(id=new_id(), job_id=paths.job_id, seq=0, filename="sea.png",
                stored_name="000000.png", content_type="image/png", status=TaskStatus.DONE,
                attempts=1, created_at=0.0, started_at=0.0, finished_at=0.0, width=width,
                height=height, result_kind=ResultKind.MASK, result_name="000000.png",
                oil_pixels=oil, oil_fraction=oil / mask.size, error=None, slick_count=3,
                largest_slick_px=oil)
    return paths, task


def features(path: Path) -> dict[int, dict[str, Any]]:
    collection = json.loads(path.read_text(encoding="utf-8"))
    assert collection["properties"] == {"coordinates": "pixel"}
    return {f["properties"]["slick_id"]: f["properties"] for f in collection["features"]}


def test_a_pictures_geojson_carries_each_slicks_confidence(tmp_path: Path) -> None:
    mask, slicks = three_slicks()
    rng = np.random.default_rng(3)
    values = rng.uniform(0, 1, mask.shape)  # the sea's count for nothing
    means = (0.8125, 0.3071, 0.6502)  # within the GeoJSON's 4 decimals
    for pixels, mean in zip(slicks, means, strict=True):
        noise = rng.uniform(-0.15, 0.15, int(pixels.sum()))
        values[pixels] = mean + noise - noise.mean()
    assert all(0 <= v <= 1 for s in slicks for v in values[s])
    paths, task = done_task(tmp_path / "jobs", mask, values)
    got = features(ensure_task_spills(paths, task, max_slicks=2000))
    assert {n: p["pixels"] for n, p in got.items()} == {
        n: int(s.sum()) for n, s in enumerate(slicks, start=1)}
    for slick_id, pixels in enumerate(slicks, start=1):
        assert got[slick_id]["confidence"] == pytest.approx(values[pixels].mean(), abs=1e-6)


@pytest.mark.parametrize("text", [
    None,  # no confidence kept (a /segment mask)
    json.dumps({"values": [0.9]}),  # one value per image: no slick's own
    "{not json",
    json.dumps({"slicks": "all"}),
    json.dumps({"slicks": [{"row": 6, "col": 4}]}),  # no confidence
    json.dumps({"slicks": [{"row": -1, "col": 4, "confidence": 0.5}]}),
    json.dumps({"slicks": [{"row": 0, "col": 0, "confidence": 0.5}]}),  # sea
    json.dumps({"slicks": [{"row": 6, "col": 4, "confidence": 1.5}]}),  # not a confidence
    json.dumps({"slicks": [{"row": 999, "col": 4, "confidence": 0.5}]}),  # off the mask
])
def test_without_a_usable_confidence_it_stays_null(tmp_path: Path, text: str | None) -> None:
    mask, _ = three_slicks()
    if text is None:
        paths, task = done_task(tmp_path / "jobs", mask, None)
    else:
        paths, task = done_task(tmp_path / "jobs", mask, None, text)
    got = features(ensure_task_spills(paths, task, max_slicks=2000))
    assert len(got) == 3
    assert all(p["confidence"] is None for p in got.values())


# --- the stub's confidence output -----------------------------------------------------------

def sea_png(seed: int) -> bytes:
    """A small seeded sea picture with two dark slicks and no look-alike."""
    return scene_png(128, 96, seed, slicks=2, lookalikes=0)


def grey(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        return np.asarray(image, np.uint8)


async def read_json(session: aiohttp.ClientSession, url: str) -> Any:
    async with session.get(url) as resp:
        assert resp.status == 200, await resp.text()
        return json.loads(await resp.read())


async def infer(session: aiohttp.ClientSession, base: str, spec: oip.ModelSpec,
                tiles: list[np.ndarray]) -> list[oip.Decoded]:
    """The stub's answer for these tiles, sent and read by oilspill's own codec."""
    body, headers = oip.encode(spec, tiles)
    async with session.post(f"{base}{OIP_PATH}/infer", data=body, headers=headers) as resp:
        answer = await resp.read()
        assert resp.status == 200, answer[:500]
        return oip.decode(spec, answer, dict(resp.headers), len(tiles), tiles[0].shape)


async def test_the_stubs_confidence_output_is_read_binary_and_json(
        start_stub: StubFactory) -> None:
    tiles = [grey(sea_png(seed)) for seed in (1, 2)]
    with_flag, without = await start_stub(confidence=True), await start_stub()
    async with aiohttp.ClientSession() as session:
        meta = await read_json(session, f"{with_flag}{OIP_PATH}")
        assert meta["outputs"] == [*OUTPUTS, {"name": CONFIDENCE, "datatype": "FP32",
                                              "shape": [-1, -1, -1]}]
        plain = await read_json(session, f"{without}{OIP_PATH}")
        assert plain["outputs"] == OUTPUTS  # unchanged without the flag
        server = await read_json(session, f"{with_flag}/v2")
        for binary in (True, False):
            spec = oip.ModelSpec.from_metadata(server if binary else {}, meta)
            assert (spec.binary, spec.confidence_output) == (binary, CONFIDENCE)
            decoded = await infer(session, with_flag, spec, tiles)
            for result in decoded:
                assert result.confidence is not None
                assert len(result.confidence) == result.mask.size  # one value per pixel
                expected = ndimage.uniform_filter((result.mask >= 128).astype(np.float32), 5)
                np.testing.assert_allclose(np.reshape(result.confidence, result.mask.shape),
                                           expected, atol=1e-6)
                assert (result.mask == 255).any()
                kept = json.loads(confidence_text(result.confidence, result.mask) or "")
                assert kept["slicks"] and all(0 < s["confidence"] <= 1
                                              for s in kept["slicks"])
        # Without the flag the model has no such output: its answers carry only the mask.
        spec = oip.ModelSpec.from_metadata(server, plain)
        assert spec.confidence_output is None
        assert all(r.confidence is None for r in await infer(session, without, spec, tiles))
        asked = oip.ModelSpec.from_metadata(server, meta)  # as if it had one
        body, headers = oip.encode(asked, tiles)
        async with session.post(f"{without}{OIP_PATH}/infer", data=body,
                                headers=headers) as resp:
            assert resp.status == 400
            assert "unknown output 'confidence'" in (await resp.json())["error"]


# --- end to end -------------------------------------------------------------------------------

def wait_ok(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            with urllib.request.urlopen(url, timeout=1):
                return
        except OSError:
            assert proc.poll() is None, f"{what} exited"
            assert time.monotonic() < deadline, f"{what} did not answer in 30 s"
            time.sleep(0.05)


@pytest.fixture(scope="module")
def servers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[bool, str]]:
    """Two stub processes, one with `--confidence`, each behind an `oilspill serve` that
    calls its OIP model; yields each server's base URL by whether its stub has the flag."""
    tmp = tmp_path_factory.mktemp("stacks")
    procs: list[subprocess.Popen[bytes]] = []
    bases: dict[bool, str] = {}
    stubs: dict[bool, tuple[str, subprocess.Popen[bytes]]] = {}
    try:
        for flag in (True, False):  # all four start at once; each is waited for below
            stub_port, port = free_port(), free_port()
            stub = subprocess.Popen(
                stub_args(stub_port, *(["--confidence"] if flag else [])), env=clean_env(),
                cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            procs.append(stub)
            stubs[flag] = (f"http://127.0.0.1:{stub_port}", stub)
            model_url = f"http://127.0.0.1:{stub_port}{OIP_PATH}"
            server = subprocess.Popen(
                SERVER_ARGS, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env=server_env(port, tmp / f"data-{flag}", model_url,
                               OILSPILL_LOG_LEVEL="WARNING", OILSPILL_ML_RETRY_BASE_S="0.05"))
            procs.append(server)
            bases[flag] = f"http://127.0.0.1:{port}"
            wait_ok(f"{stubs[flag][0]}/v2/health/ready", stub, "the stub")
            wait_ok(f"{bases[flag]}/healthz", server, "the server")
        yield bases
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(timeout=30)


async def job_features(base: str) -> list[dict[str, Any]]:
    """Upload two sea pictures, wait for the job, and fetch its GeoJSON's features."""
    data = zip_bytes({f"sea_{seed}.png": sea_png(seed) for seed in (1, 2)})
    async with aiohttp.ClientSession() as session:
        api = Api(session, base)
        job = await api.wait_job((await api.upload(data))["job_id"], timeout_s=30)
        assert (job["done"], job["failed"]) == (2, 0), job
        collection = await read_json(session, f"{base}/api/job/{job['job_id']}/spills.geojson")
    assert collection["properties"] == {"coordinates": "pixel"}
    found = [f["properties"] for f in collection["features"]]
    assert {p["image"] for p in found} == {"sea_1.png", "sea_2.png"}  # slicks in each
    return found


async def test_a_job_through_an_oip_model_with_confidence_has_it_per_slick(
        servers: dict[bool, str]) -> None:
    found = await job_features(servers[True])
    assert all(isinstance(p["confidence"], float) and 0 < p["confidence"] <= 1
               for p in found), found


async def test_a_job_through_an_oip_model_without_confidence_has_it_null(
        servers: dict[bool, str]) -> None:
    found = await job_features(servers[False])
    assert all(p["confidence"] is None for p in found), found


def scene_tif(tmp_path: Path) -> bytes:
    """A 1,400 x 1,200 UTM scene (four tiles of the default 1,024 px, and an overview) with a
    long slick across the tiles' core boundaries and a small one inside one core."""
    height, width = 1200, 1400
    slicks = (band((height, width), (600, 700), 900, 40, 25)
              | band((height, width), (200, 250), 120, 30, -10))
    data = amplitude_u16(damp(sea(height, width, seed=7), slicks))
    return write_tif(tmp_path / "scene.tif", data, crs="EPSG:32633",
                     transform=UTM_TRANSFORM).read_bytes()


@pytest.mark.parametrize("flag", [True, False])
async def test_a_scenes_slicks_carry_the_confidence_of_their_tiles(
        servers: dict[bool, str], tmp_path: Path, flag: bool) -> None:
    """A scene through the real stub's OIP model: each slick stitched from its tiles has
    the model's mean confidence (the long one's pixels mostly inside it: near 1), or null
    when the model gives none."""
    async with aiohttp.ClientSession() as session:
        api = Api(session, servers[flag])
        accepted = await api.upload(zip_bytes({"scene.tif": scene_tif(tmp_path)}))
        job = await api.wait_job(accepted["job_id"], timeout_s=60)
        assert (job["done"], job["failed"]) == (1, 0), job
        (task_id,) = accepted["task_ids"]
        task = await read_json(session, f"{servers[flag]}/api/task/{task_id}")
        assert task["result"]["scene"]["tiles"] == 4
        collection = await read_json(session, f"{servers[flag]}/api/task/{task_id}/"
                                              "spills.geojson")
    found = [f["properties"] for f in collection["features"]]
    assert len(found) >= 2 and found[0]["area_km2"] > 0.2, found
    if not flag:
        assert all(p["confidence"] is None for p in found), found
        return
    assert all(isinstance(p["confidence"], float) and 0 < p["confidence"] <= 1
               for p in found), found
    assert found[0]["confidence"] > 0.8, found[0]
