"""The stub on the Open Inference Protocol (v2): a client no one here wrote (Triton's
`tritonclient.http`) against a real stub process, and plain HTTP for the JSON forms other
clients send (base64 pictures, as MLServer's codecs do); every mask is checked against what
`/segment` answers for the same picture."""

from __future__ import annotations

import asyncio
import base64
import io
import subprocess
import time
import urllib.request
from collections.abc import Iterator
from typing import Any

import aiohttp
import numpy as np
import pytest
import tritonclient.http as triton
from PIL import Image
from tritonclient.utils import InferenceServerException

from ml_stub.app import ready_mask
from ml_stub.oip import HEADER_LENGTH, MODEL_NAME
from ml_stub.scenes import scene_png

from .conftest import StubFactory
from .procs import clean_env, free_port, stub_args

WIDTH, HEIGHT = 160, 120
EXPECTED_TENSORS = {
    "inputs": [{"name": "image", "datatype": "UINT8", "shape": [-1, -1, -1]}],
    "outputs": [{"name": "mask", "datatype": "UINT8", "shape": [-1, -1, -1]}],
}


def slick_png(seed: int, width: int = WIDTH, height: int = HEIGHT) -> bytes:
    """A seeded 8-bit sea picture with two slicks and no look-alike."""
    return scene_png(width, height, seed, slicks=2, lookalikes=0)


def pixels(png: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(png)) as image:
        assert image.mode == "L"
        return np.asarray(image, dtype=np.uint8)


@pytest.fixture(scope="module")
def stub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A stub process, as `oilspill-ml-stub` runs; yields its base URL. tritonclient is
    blocking (gevent), so the stub must not share the test's event loop."""
    port = free_port()
    proc = subprocess.Popen(stub_args(port), env=clean_env(),
                            cwd=tmp_path_factory.mktemp("stub"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/health", timeout=1):
                    break
            except OSError:
                assert proc.poll() is None, "the stub exited"
                assert time.monotonic() < deadline, "the stub did not answer in 30 s"
                time.sleep(0.05)
        yield base
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def triton_client(stub: str) -> Iterator[triton.InferenceServerClient]:
    client = triton.InferenceServerClient(url=stub.removeprefix("http://"))
    yield client
    client.close()


async def segment_masks(base: str, pngs: list[bytes]) -> np.ndarray:
    """The masks `/segment` answers for these pictures, stacked [N, H, W]."""
    async with aiohttp.ClientSession() as session:
        found = []
        for png in pngs:
            form = aiohttp.FormData()
            form.add_field("file", png, filename="sea.png", content_type="image/png")
            async with session.post(f"{base}/segment", data=form) as resp:
                assert resp.status == 200, await resp.text()
                found.append(pixels(await resp.read()))
    masks = np.stack(found)
    assert set(np.unique(masks)) == {0, 255}, "every reference mask shows sea and oil"
    return masks


def segment(base: str, pngs: list[bytes]) -> np.ndarray:
    """segment_masks() from a test without an event loop (tritonclient blocks)."""
    return asyncio.run(segment_masks(base, pngs))


def pixel_input(tiles: np.ndarray, binary: bool) -> triton.InferInput:
    image = triton.InferInput("image", list(tiles.shape), "UINT8")
    image.set_data_from_numpy(tiles, binary_data=binary)
    return image


def picture_input(pngs: list[bytes]) -> triton.InferInput:
    image = triton.InferInput("image", [len(pngs)], "BYTES")
    image.set_data_from_numpy(np.array(pngs, dtype=np.object_), binary_data=True)
    return image


def test_health_and_metadata_answer_as_the_protocol_says(
        triton_client: triton.InferenceServerClient) -> None:
    assert triton_client.is_server_live() and triton_client.is_server_ready()
    assert triton_client.is_model_ready(MODEL_NAME)
    assert triton_client.is_model_ready(MODEL_NAME, "1")
    assert not triton_client.is_model_ready("yolo")
    assert not triton_client.is_model_ready(MODEL_NAME, "2")
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]
    for version in ("", "1"):
        meta = triton_client.get_model_metadata(MODEL_NAME, version)
        assert (meta["name"], meta["versions"]) == (MODEL_NAME, ["1"])
        assert {k: meta[k] for k in EXPECTED_TENSORS} == EXPECTED_TENSORS
    with pytest.raises(InferenceServerException) as err:
        triton_client.get_model_metadata("yolo")
    assert err.value.status() == "404" and "oilspill-detector" in err.value.message()


def test_a_batch_of_pixels_in_binary_gets_binary_masks_equal_to_segment(
        stub: str, triton_client: triton.InferenceServerClient) -> None:
    pngs = [slick_png(seed) for seed in range(3)]
    tiles = np.stack([pixels(png) for png in pngs])
    expected = segment(stub, pngs)
    # No outputs named: tritonclient asks for every output in binary (binary_data_output).
    result = triton_client.infer(MODEL_NAME, [pixel_input(tiles, binary=True)])
    output = result.get_output("mask")
    assert output["datatype"] == "UINT8" and output["shape"] == [3, HEIGHT, WIDTH]
    assert output["parameters"]["binary_data_size"] == 3 * HEIGHT * WIDTH
    np.testing.assert_array_equal(result.as_numpy("mask"), expected)
    # The same, asked by name, on the versioned path.
    result = triton_client.infer(
        MODEL_NAME, [pixel_input(tiles, binary=True)], model_version="1",
        outputs=[triton.InferRequestedOutput("mask", binary_data=True)], request_id="tiles-7")
    assert result.get_response()["id"] == "tiles-7"
    np.testing.assert_array_equal(result.as_numpy("mask"), expected)


def test_pixels_in_json_get_masks_in_json(
        stub: str, triton_client: triton.InferenceServerClient) -> None:
    pngs = [slick_png(seed) for seed in (3, 4, 5)]
    tiles = np.stack([pixels(png) for png in pngs])
    result = triton_client.infer(
        MODEL_NAME, [pixel_input(tiles, binary=False)],
        outputs=[triton.InferRequestedOutput("mask", binary_data=False)])
    output = result.get_output("mask")
    assert "parameters" not in output and len(output["data"]) == 3 * HEIGHT * WIDTH
    np.testing.assert_array_equal(result.as_numpy("mask"), segment(stub, pngs))


def test_pictures_as_binary_bytes_and_a_gzipped_request(
        stub: str, triton_client: triton.InferenceServerClient) -> None:
    pngs = [slick_png(seed) for seed in (6, 7, 8)]
    expected = segment(stub, pngs)
    result = triton_client.infer(MODEL_NAME, [picture_input(pngs)])
    np.testing.assert_array_equal(result.as_numpy("mask"), expected)
    tiles = np.stack([pixels(png) for png in pngs])
    zipped = triton_client.infer(MODEL_NAME, [pixel_input(tiles, binary=True)],
                                 request_compression_algorithm="gzip")
    np.testing.assert_array_equal(zipped.as_numpy("mask"), expected)


def tensor_input(name: str, array: np.ndarray, datatype: str) -> triton.InferInput:
    return triton.InferInput(name, list(array.shape), datatype).set_data_from_numpy(array)


@pytest.mark.parametrize(("make_input", "message"), [
    (lambda: tensor_input("image", np.zeros((1, 8, 8), np.float32), "FP32"), "not 'FP32'"),
    (lambda: pixel_input(np.zeros((8, 8), np.uint8), True), "shape [N, H, W]"),
    (lambda: picture_input([slick_png(0), slick_png(1, 64, 64)]), "share one size"),
    (lambda: picture_input([slick_png(0)[:200]]), "cannot decode image"),
    (lambda: tensor_input("pixels", np.zeros((1, 8, 8), np.uint8), "UINT8"),
     "unknown input 'pixels'"),
], ids=["fp32", "no-batch-axis", "two-sizes", "truncated-png", "other-name"])
def test_requests_outside_the_contract_get_400_with_the_reason(
        triton_client: triton.InferenceServerClient, make_input: Any, message: str) -> None:
    with pytest.raises(InferenceServerException) as err:
        triton_client.infer(MODEL_NAME, [make_input()])
    assert err.value.status() == "400"
    assert message in err.value.message()


def test_an_unknown_output_or_model_is_refused(
        triton_client: triton.InferenceServerClient) -> None:
    tiles = np.zeros((1, 8, 8), np.uint8)
    with pytest.raises(InferenceServerException) as err:
        triton_client.infer(MODEL_NAME, [pixel_input(tiles, True)],
                            outputs=[triton.InferRequestedOutput("boxes")])
    assert err.value.status() == "400" and "unknown output 'boxes'" in err.value.message()
    with pytest.raises(InferenceServerException) as err:
        triton_client.infer("yolo", [pixel_input(tiles, True)])
    assert err.value.status() == "404"


def json_request(pngs: list[bytes], content_type: str | None = "base64") -> dict[str, Any]:
    """Pictures as JSON BYTES, shape [N, 1] as MLServer's base64 codec sends them."""
    parameters = {"content_type": content_type} if content_type else {}
    return {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [len(pngs), 1],
                        "parameters": parameters,
                        "data": [base64.b64encode(png).decode() for png in pngs]}]}


async def post_infer(base: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{base}/v2/models/{MODEL_NAME}/infer", json=body) as resp:
        assert HEADER_LENGTH not in resp.headers
        return resp.status, await resp.json()


async def test_base64_pictures_in_plain_json(start_stub: StubFactory) -> None:
    base = await start_stub()
    pngs = [slick_png(seed) for seed in (9, 10)]
    status, answer = await post_infer(base, json_request(pngs))
    assert status == 200, answer
    (output,) = answer["outputs"]
    assert (answer["model_name"], output["name"], output["shape"]) == (
        MODEL_NAME, "mask", [2, HEIGHT, WIDTH])
    found = np.array(output["data"], np.uint8).reshape(output["shape"])
    np.testing.assert_array_equal(found, await segment_masks(base, pngs))
    status, answer = await post_infer(base, json_request(pngs, content_type=None))
    assert status == 400 and "base64" in answer["error"]


async def test_stub_modes_apply_to_infer(start_stub: StubFactory) -> None:
    failing = await start_stub(fail_rate=1.0)
    status, answer = await post_infer(failing, json_request([slick_png(0)]))
    assert (status, answer) == (503, {"error": "injected failure (--fail-rate)"})
    ready = await start_stub(mode="ready")
    status, answer = await post_infer(ready, json_request([slick_png(0), slick_png(1)]))
    assert status == 200, answer
    (output,) = answer["outputs"]
    band = pixels(ready_mask(WIDTH, HEIGHT))
    np.testing.assert_array_equal(np.array(output["data"], np.uint8).reshape(output["shape"]),
                                  np.stack([band, band]))


async def test_a_request_past_the_size_limit_gets_413(start_stub: StubFactory) -> None:
    small = await start_stub(max_image_bytes=4096)
    status, answer = await post_infer(small, json_request([slick_png(0)]))
    assert status == 413 and "4096" in answer["error"]


async def test_a_binary_request_whose_sizes_do_not_add_up_gets_400(
        start_stub: StubFactory) -> None:
    base = await start_stub()
    header = (b'{"inputs": [{"name": "image", "datatype": "UINT8", "shape": [1, 4, 4], '
              b'"parameters": {"binary_data_size": 16}}]}')
    async with aiohttp.ClientSession() as session:
        for raw, reason in ((bytes(15), "declares 16 bytes"), (bytes(17), "declares 16 bytes")):
            async with session.post(f"{base}/v2/models/{MODEL_NAME}/infer", data=header + raw,
                                    headers={HEADER_LENGTH: str(len(header))}) as resp:
                assert resp.status == 400
                assert reason in (await resp.json())["error"]
        async with session.post(f"{base}/v2/models/{MODEL_NAME}/infer", data=header + bytes(16),
                                headers={HEADER_LENGTH: str(len(header))}) as resp:
            assert resp.status == 200  # binary in, JSON out: no output asked binary
            assert (await resp.json())["outputs"][0]["data"] == [0] * 16

