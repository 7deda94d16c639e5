"""The bundled detector on a real MLServer (`mlserver start` on deploy/mlserver's settings,
in its own environment): metadata as deploy/mlserver declares it (PNGs in and out; and
UINT8 pixels both ways for the same runtime declared so), and masks, through plain HTTP
JSON as oilspill's client sends it, equal to what the stub's `/segment` answers."""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import aiohttp
import numpy as np
import pytest
from PIL import Image

from ml_stub.oip import MODEL_NAME

from .conftest import StubFactory
from .mlserver_env import (
    DEPLOY,
    MLSERVER_VERSION,
    PIXEL_TENSORS,
    PIXELS_MODEL,
    MLServer,
)
from .test_oip_stub import HEIGHT, WIDTH, pixels, segment_masks, slick_png

# One MLServer per test session: its tests run in one pytest-xdist worker.
pytestmark = pytest.mark.xdist_group("mlserver")


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def infer(server: MLServer, body: dict[str, Any], pixels: bool = False
                ) -> tuple[int, dict[str, Any]]:
    url = server.pixels_url if pixels else server.model_url
    async with aiohttp.ClientSession() as session, session.post(
            f"{url}/infer", json=body) as resp:
        return resp.status, await resp.json()


def mask_of(answer: dict[str, Any], count: int) -> np.ndarray:
    """The masks [count, H, W] of an answer: UINT8 numbers, or one base64 PNG per image."""
    (output,) = answer["outputs"]
    assert output["name"] == "mask"
    if output["datatype"] == "UINT8":
        assert output["shape"] == [count, HEIGHT, WIDTH]
        return np.array(output["data"], np.uint8).reshape(output["shape"])
    assert output["datatype"] == "BYTES" and output["shape"] == [count, 1]
    assert output["parameters"]["content_type"] == "base64"
    masks = []
    for text in output["data"]:
        with Image.open(io.BytesIO(base64.b64decode(text, validate=True))) as image:
            assert (image.format, image.mode, image.size) == ("PNG", "L", (WIDTH, HEIGHT))
            masks.append(np.asarray(image))
    return np.stack(masks)


async def test_mlserver_describes_the_model_as_the_stub_does(mlserver: MLServer) -> None:
    assert (await get(f"{mlserver.base}/v2/health/live"))[0] == 200
    assert (await get(f"{mlserver.model_url}/versions/1/ready"))[0] == 200
    status, server = await get(f"{mlserver.base}/v2")
    assert status == 200 and server["version"] == MLSERVER_VERSION
    # MLServer's REST takes tensors in JSON only: a client must not send it binary data.
    assert "binary_tensor_data" not in server["extensions"]
    deployed = json.loads((DEPLOY / "model-settings.json").read_text())
    assert deployed["inputs"] == [{"name": "image", "datatype": "BYTES", "shape": [-1]}]
    assert deployed["outputs"] == [{"name": "mask", "datatype": "BYTES", "shape": [-1, 1]}]
    for url, name, inputs, outputs in [
            (mlserver.model_url, MODEL_NAME, deployed["inputs"], deployed["outputs"]),
            (mlserver.pixels_url, PIXELS_MODEL, PIXEL_TENSORS[:1], PIXEL_TENSORS[1:])]:
        status, meta = await get(url)
        assert status == 200, meta
        assert (meta["name"], meta["inputs"], meta["outputs"]) == (name, inputs, outputs)


@pytest.mark.parametrize("answer_pixels", [False, True])
async def test_mlserver_masks_a_batch_of_pixels_as_segment_does(
        mlserver: MLServer, start_stub: StubFactory, answer_pixels: bool) -> None:
    pngs = [slick_png(seed) for seed in (0, 1, 2)]
    tiles = np.stack([pixels(png) for png in pngs])
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(tiles.shape),
                        "data": tiles.ravel().tolist()}]}
    status, answer = await infer(mlserver, body, answer_pixels)
    assert status == 200, answer
    assert answer["model_name"] == (PIXELS_MODEL if answer_pixels else MODEL_NAME)
    assert answer["outputs"][0]["datatype"] == ("UINT8" if answer_pixels else "BYTES")
    np.testing.assert_array_equal(mask_of(answer, 3), await segment_masks(await start_stub(), pngs))


@pytest.mark.parametrize("answer_pixels", [False, True])
async def test_mlserver_masks_base64_pictures_as_segment_does(
        mlserver: MLServer, start_stub: StubFactory, answer_pixels: bool) -> None:
    pngs = [slick_png(seed) for seed in (3, 4)]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1],
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(png).decode() for png in pngs]}]}
    status, answer = await infer(mlserver, body, answer_pixels)
    assert status == 200, answer
    np.testing.assert_array_equal(mask_of(answer, 2), await segment_masks(await start_stub(), pngs))


async def test_mlserver_refuses_requests_outside_the_contract(mlserver: MLServer) -> None:
    cases = [
        ({"name": "image", "datatype": "FP32", "shape": [1, 2, 2], "data": [0.5] * 4},
         "not 'FP32'"),
        ({"name": "image", "datatype": "UINT8", "shape": [4], "data": [0] * 4},
         "shape [N, H, W]"),
        ({"name": "image", "datatype": "UINT8", "shape": [1, 2, 2], "data": [0, 1, 2, 300]},
         "from 0 to 255"),
        ({"name": "image", "datatype": "BYTES", "shape": [1], "data": ["not base64 png"]},
         "base64"),
        ({"name": "image", "datatype": "BYTES", "shape": [1],
          "parameters": {"content_type": "base64"},
          "data": [base64.b64encode(slick_png(0)[:200]).decode()]}, "cannot decode image"),
        ({"name": "pixels", "datatype": "UINT8", "shape": [1, 2, 2], "data": [0] * 4},
         "one input, 'image'"),
    ]
    for request_input, reason in cases:
        status, answer = await infer(mlserver, {"inputs": [request_input]})
        assert status == 400, (request_input, answer)
        assert reason in answer["error"], (request_input, answer)
