"""The bundled detector on a real MLServer (`mlserver start` on deploy/mlserver's settings,
in its own environment): metadata as the stub's, and masks, through plain HTTP JSON as
oilspill's client sends it, equal to what the stub's `/segment` answers."""

from __future__ import annotations

import base64
from typing import Any

import aiohttp
import numpy as np

from ml_stub.oip import INPUTS, MODEL_NAME, OUTPUTS

from .conftest import StubFactory
from .mlserver_env import MLSERVER_VERSION, MLServer, mlserver_fixture  # noqa: F401
from .test_oip_stub import HEIGHT, WIDTH, pixels, segment_masks, slick_png


async def get(url: str) -> tuple[int, Any]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        return resp.status, await resp.json(content_type=None)


async def infer(server: MLServer, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as session, session.post(
            f"{server.model_url}/infer", json=body) as resp:
        return resp.status, await resp.json()


def mask_of(answer: dict[str, Any], count: int) -> np.ndarray:
    (output,) = answer["outputs"]
    assert (output["name"], output["datatype"]) == ("mask", "UINT8")
    assert output["shape"] == [count, HEIGHT, WIDTH]
    return np.array(output["data"], np.uint8).reshape(output["shape"])


async def test_mlserver_describes_the_model_as_the_stub_does(mlserver: MLServer) -> None:
    assert (await get(f"{mlserver.base}/v2/health/live"))[0] == 200
    assert (await get(f"{mlserver.model_url}/versions/1/ready"))[0] == 200
    status, server = await get(f"{mlserver.base}/v2")
    assert status == 200 and server["version"] == MLSERVER_VERSION
    # MLServer's REST takes tensors in JSON only: a client must not send it binary data.
    assert "binary_tensor_data" not in server["extensions"]
    status, meta = await get(mlserver.model_url)
    assert status == 200, meta
    assert (meta["name"], meta["inputs"], meta["outputs"]) == (MODEL_NAME, INPUTS, OUTPUTS)


async def test_mlserver_masks_a_batch_of_pixels_as_segment_does(
        mlserver: MLServer, start_stub: StubFactory) -> None:
    pngs = [slick_png(seed) for seed in (0, 1, 2)]
    tiles = np.stack([pixels(png) for png in pngs])
    body = {"inputs": [{"name": "image", "datatype": "UINT8", "shape": list(tiles.shape),
                        "data": tiles.ravel().tolist()}]}
    status, answer = await infer(mlserver, body)
    assert status == 200, answer
    assert answer["model_name"] == MODEL_NAME
    np.testing.assert_array_equal(mask_of(answer, 3), await segment_masks(await start_stub(), pngs))


async def test_mlserver_masks_base64_pictures_as_segment_does(
        mlserver: MLServer, start_stub: StubFactory) -> None:
    pngs = [slick_png(seed) for seed in (3, 4)]
    body = {"inputs": [{"name": "image", "datatype": "BYTES", "shape": [2, 1],
                        "parameters": {"content_type": "base64"},
                        "data": [base64.b64encode(png).decode() for png in pngs]}]}
    status, answer = await infer(mlserver, body)
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
