"""The stub on the Open Inference Protocol (v2, REST), beside `/segment`: health, server and
model metadata, and inference of the model `oilspill-detector`.

The model takes one input, `image`, in either of two forms:
- UINT8 pixels of shape [N, H, W]: N one-band tiles of one size;
- BYTES of N elements (shape [N] or [N, 1]), each an encoded picture (PNG, or anything
  `/segment` decodes), as binary data or, in JSON, base64 with
  `parameters.content_type = "base64"`; the pictures of one request share one size.
It answers one output, `mask`: UINT8 [N, H, W], 0 sea and 255 oil, for each tile the mask
`/segment` gives the same picture (the detector runs tile by tile). With `--confidence` it
has a second output, `confidence`: FP32 [N, H, W], for each pixel the fraction of oil in its
5 x 5 neighbourhood (edges mirrored), an honest if simple measure of how sure the mask is
there; without the flag, its metadata and answers are as if it did not exist.

Tensors travel as JSON (`data`, flat or nested, row-major) or with the binary tensor data
extension: the JSON header, `Inference-Header-Content-Length` bytes long, then each binary
input's `parameters.binary_data_size` bytes, little-endian (a BYTES element is its 4-byte
length, then its bytes). Each output is answered the same way when the request asks for it
(`parameters.binary_data_output`, or `binary_data` on the output), else as JSON; a request
that names no output gets them all. Errors are
`{"error": "..."}`: 400 for a request that breaks the protocol or the model's contract, 404
for another model, 413 past the stub's size limit, 503 for an injected failure.

The stub's `--latency-ms` and fault injection apply per call as on `/segment`; `--mode
ready` answers its fixed masks without computing; `--mode annotated` (a JPEG picture) has
no place in a tensor answer, so there the masks are computed as in `mask` mode.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import io
import json
import math
import struct
from dataclasses import dataclass
from importlib import metadata
from typing import Any

import numpy as np
from aiohttp import web
from PIL import Image
from scipy import ndimage

from .app import (
    OPTIONS,
    StubOptions,
    injected_failure,
    picture_size,
    ready_mask,
)
from .detector import NotAnImage, detect_batch

MODEL_NAME = "oilspill-detector"
MODEL_VERSION = "1"
PLATFORM = "ml_stub-dark-spot"
INPUT = "image"
OUTPUT = "mask"
CONFIDENCE = "confidence"
CONFIDENCE_PX = 5  # the neighbourhood a pixel's confidence is measured on, a side
HEADER_LENGTH = "Inference-Header-Content-Length"
_ELEMENT_LENGTH = struct.Struct("<I")  # a BYTES element's length, little-endian

# What model metadata says of the tensors: -1 is any size. The pictures' BYTES form is the
# same input under another datatype, which metadata has no way to list.
INPUTS = [{"name": INPUT, "datatype": "UINT8", "shape": [-1, -1, -1]}]
OUTPUTS = [{"name": OUTPUT, "datatype": "UINT8", "shape": [-1, -1, -1]}]
# With --confidence: the mask, then its confidence, in the same layout.
CONFIDENCE_OUTPUTS = [*OUTPUTS, {"name": CONFIDENCE, "datatype": "FP32", "shape": [-1, -1, -1]}]


class BadRequest(ValueError):
    """A request that breaks the protocol or the model's contract; its message is the answer."""


@dataclass(frozen=True)
class InferRequest:
    """An inference request, read.

    tiles: UINT8 pixels [N, H, W], or N encoded pictures. binary_mask: whether `mask` is
    answered as binary data. request_id: the request's `id`, echoed in the answer.
    confidence: None when `confidence` is not to be answered, else whether as binary data.
    answer_mask: whether `mask` is to be answered (not when only `confidence` is asked).
    """

    tiles: np.ndarray | list[bytes]
    binary_mask: bool
    request_id: str | None
    confidence: bool | None = None
    answer_mask: bool = True


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


def _object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise BadRequest(f"{what} must be a JSON object")
    return value


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise BadRequest(f"{what} must be true or false")
    return value


def _shape(value: Any) -> list[int]:
    if (not isinstance(value, list)
            or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0
                       for n in value)):
        raise BadRequest("the shape of input 'image' must be a list of sizes")
    return value


def _flatten(data: Any) -> list[Any]:
    """A tensor's JSON data, flat or nested, as one flat list."""
    if not isinstance(data, list):
        raise BadRequest("the data of input 'image' must be a list")
    if not any(isinstance(item, list) for item in data):
        return data
    return [leaf for item in data for leaf in _flatten(item if isinstance(item, list)
                                                         else [item])]


def _pixels(shape: list[int], data: Any, raw: bytes | None) -> np.ndarray:
    """UINT8 [N, H, W] pixels from JSON data or binary data."""
    if len(shape) != 3 or 0 in shape:
        raise BadRequest(f"UINT8 input 'image' must have shape [N, H, W] with no size 0, "
                         f"not {shape}")
    count = math.prod(shape)
    if raw is not None:
        if len(raw) != count:
            raise BadRequest(f"input 'image' of shape {shape} takes {count} bytes of binary "
                             f"data, not {len(raw)}")
        return np.frombuffer(raw, dtype=np.uint8).reshape(shape)
    values = _flatten(data)
    if len(values) != count:
        raise BadRequest(f"input 'image' of shape {shape} takes {count} values, "
                         f"not {len(values)}")
    if not all(isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255
               for v in values):
        raise BadRequest("UINT8 values are whole numbers from 0 to 255")
    return np.array(values, dtype=np.uint8).reshape(shape)


def _unpack_elements(raw: bytes) -> list[bytes]:
    """BYTES binary data: each element its 4-byte little-endian length, then its bytes."""
    elements, offset = [], 0
    while offset < len(raw):
        if offset + _ELEMENT_LENGTH.size > len(raw):
            raise BadRequest("BYTES binary data ends inside an element's length")
        (length,) = _ELEMENT_LENGTH.unpack_from(raw, offset)
        offset += _ELEMENT_LENGTH.size
        if offset + length > len(raw):
            raise BadRequest("BYTES binary data ends inside an element")
        elements.append(raw[offset:offset + length])
        offset += length
    return elements


def _pictures(shape: list[int], data: Any, raw: bytes | None, content_type: Any
              ) -> list[bytes]:
    """The encoded pictures of a BYTES input, from binary data or base64 JSON strings."""
    if raw is not None:
        elements = _unpack_elements(raw)
    elif content_type != "base64":
        raise BadRequest("pictures in JSON are base64 strings with the input's "
                         "parameters.content_type 'base64' (or send them as binary data)")
    else:
        strings = _flatten(data)
        if not all(isinstance(s, str) for s in strings):
            raise BadRequest("the data of a base64 BYTES input must be strings")
        try:
            elements = [base64.b64decode(s, validate=True) for s in strings]
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(f"an element of input 'image' is not base64: {exc}") from None
    if not elements:
        raise BadRequest("input 'image' holds no picture")
    if math.prod(shape) != len(elements):
        raise BadRequest(f"input 'image' of shape {shape} takes {math.prod(shape)} "
                         f"elements, not {len(elements)}")
    return elements


def _binary_outputs(request: dict[str, Any], names: tuple[str, ...]) -> dict[str, bool]:
    """The outputs to answer, of the model's `names`, each with whether as binary data: the
    output's own `binary_data`, else the request's `binary_data_output`; all of them when
    the request names none."""
    parameters = _object(request.get("parameters", {}), "the request's parameters")
    default = _flag(parameters.get("binary_data_output", False), "binary_data_output")
    outputs = request.get("outputs")
    if outputs is None:
        return dict.fromkeys(names, default)
    if not isinstance(outputs, list):
        raise BadRequest("outputs must be a list")
    binary: dict[str, bool] = {}
    for item in outputs:
        output = _object(item, "an output")
        if output.get("name") not in names:
            raise BadRequest(f"unknown output {output.get('name')!r}: the model answers "
                             f"{' and '.join(repr(n) for n in names)}")
        out_parameters = _object(output.get("parameters", {}), "the output's parameters")
        binary[output["name"]] = _flag(out_parameters.get("binary_data", default),
                                       "binary_data")
    return binary or dict.fromkeys(names, default)


def read_request(body: bytes, header_length: str | None,
                 names: tuple[str, ...] = (OUTPUT,)) -> InferRequest:
    """An inference request from its body, and its Inference-Header-Content-Length header
    (None when the whole body is JSON), for a model with the outputs `names`."""
    if header_length is None:
        header, rest = body, b""
    else:
        try:
            length = int(header_length)
        except ValueError:
            raise BadRequest(f"{HEADER_LENGTH} is not a number: {header_length!r}") from None
        if not 0 < length <= len(body):
            raise BadRequest(f"{HEADER_LENGTH} {length} does not fit a body of "
                             f"{len(body)} bytes")
        header, rest = body[:length], body[length:]
    try:
        request = _object(json.loads(header), "the request")
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BadRequest(f"the request is not JSON: {exc}") from None
    inputs = request.get("inputs")
    if not isinstance(inputs, list) or len(inputs) != 1:
        raise BadRequest(f"the model takes exactly one input, {INPUT!r}")
    spec = _object(inputs[0], "the input")
    if spec.get("name") != INPUT:
        raise BadRequest(f"unknown input {spec.get('name')!r}: the model takes {INPUT!r}")
    shape = _shape(spec.get("shape"))
    parameters = _object(spec.get("parameters", {}), "the input's parameters")
    size = parameters.get("binary_data_size")
    raw: bytes | None = None
    if size is not None:
        if header_length is None:
            raise BadRequest(f"binary_data_size needs the {HEADER_LENGTH} header")
        if size != len(rest):
            raise BadRequest(f"input 'image' declares {size} bytes of binary data; the body "
                             f"holds {len(rest)} after the header")
        raw = rest
    elif rest:
        raise BadRequest("binary data after the header that no input declares")
    elif "data" not in spec:
        raise BadRequest("input 'image' has neither data nor binary_data_size")
    datatype = spec.get("datatype")
    tiles: np.ndarray | list[bytes]
    if datatype == "UINT8":
        tiles = _pixels(shape, spec.get("data"), raw)
    elif datatype == "BYTES":
        tiles = _pictures(shape, spec.get("data"), raw, parameters.get("content_type"))
    else:
        raise BadRequest(f"input 'image' is UINT8 pixels [N, H, W] or BYTES pictures, "
                         f"not {datatype!r}")
    request_id = request.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise BadRequest("the request's id must be a string")
    outputs = _binary_outputs(request, names)
    return InferRequest(tiles, outputs.get(OUTPUT, False), request_id,
                        confidence=outputs.get(CONFIDENCE), answer_mask=OUTPUT in outputs)


@functools.lru_cache(maxsize=64)
def _ready_array(width: int, height: int) -> np.ndarray:
    with Image.open(io.BytesIO(ready_mask(width, height))) as image:
        return np.asarray(image, dtype=np.uint8)


def _picture_size(data: bytes) -> tuple[int, int]:
    try:
        return picture_size(data)
    except NotAnImage as exc:
        raise BadRequest(str(exc)) from None


def _one_size(sizes: list[tuple[int, int]]) -> None:
    if len(set(sizes)) > 1:
        raise BadRequest(f"the pictures of one request share one size, not {sorted(set(sizes))}"
                         f" (width, height): send the others in their own requests")


def masks(tiles: np.ndarray | list[bytes], options: StubOptions) -> np.ndarray:
    """The masks [N, H, W] (0 sea, 255 oil) of a request's tiles, one detector run each."""
    if options.mode == "ready":
        if isinstance(tiles, np.ndarray):
            sizes = [(tiles.shape[2], tiles.shape[1])] * tiles.shape[0]
        else:
            sizes = [_picture_size(data) for data in tiles]
            _one_size(sizes)
        return np.stack([_ready_array(*size) for size in sizes])
    try:
        return detect_batch(tiles, options.detector)
    except ValueError as exc:  # not an image, or pictures of several sizes
        raise BadRequest(str(exc)) from None


def confidence(found: np.ndarray) -> np.ndarray:
    """The `confidence` of masks [N, H, W] (0 sea, 255 oil): per pixel, the fraction of oil
    pixels in its CONFIDENCE_PX x CONFIDENCE_PX neighbourhood (edges mirrored), FP32."""
    oil = (found >= 128).astype(np.float32)
    near: np.ndarray = ndimage.uniform_filter(oil, size=(1, CONFIDENCE_PX, CONFIDENCE_PX))
    return np.clip(near, 0, 1, out=near)


def encode_answer(found: np.ndarray, request: InferRequest) -> tuple[bytes, dict[str, str]]:
    """The inference answer's body and headers: each output asked for (`mask`, and
    `confidence` when the request says so) as binary data or as JSON."""
    tensors: list[tuple[str, str, np.ndarray, bool]] = []
    if request.answer_mask:
        tensors.append((OUTPUT, "UINT8", np.ascontiguousarray(found, dtype=np.uint8),
                        request.binary_mask))
    if request.confidence is not None:
        tensors.append((CONFIDENCE, "FP32", confidence(found).astype("<f4"),
                        request.confidence))
    outputs: list[dict[str, Any]] = []
    answer: dict[str, Any] = {"model_name": MODEL_NAME, "model_version": MODEL_VERSION,
                              "outputs": outputs}
    if request.request_id is not None:
        answer["id"] = request.request_id
    raw: list[bytes] = []
    for name, datatype, values, binary in tensors:
        output: dict[str, Any] = {"name": name, "datatype": datatype,
                                  "shape": list(values.shape)}
        if binary:
            raw.append(values.tobytes())
            output["parameters"] = {"binary_data_size": len(raw[-1])}
        else:
            output["data"] = values.ravel().tolist()
        outputs.append(output)
    if raw:
        header = json.dumps(answer).encode()
        return header + b"".join(raw), {"Content-Type": "application/octet-stream",
                                        HEADER_LENGTH: str(len(header))}
    return (json.dumps(answer, separators=(",", ":")).encode(),
            {"Content-Type": "application/json"})


def _infer(body: bytes, header_length: str | None, options: StubOptions
           ) -> tuple[bytes, dict[str, str]]:
    request = read_request(body, header_length, tuple(o["name"] for o in _outputs(options)))
    return encode_answer(masks(request.tiles, options), request)


def _outputs(options: StubOptions) -> list[dict[str, Any]]:
    """The model's outputs, as its metadata lists them."""
    return CONFIDENCE_OUTPUTS if options.confidence else OUTPUTS


def _other_model(request: web.Request) -> web.Response | None:
    """404 unless the path names this model (and, if any, its version)."""
    name = request.match_info["model"]
    version = request.match_info.get("version", MODEL_VERSION)
    if name != MODEL_NAME:
        return _error(404, f"unknown model {name!r}: this server serves {MODEL_NAME!r}")
    if version != MODEL_VERSION:
        return _error(404, f"unknown version {version!r} of {MODEL_NAME!r}: it has "
                           f"{MODEL_VERSION!r}")
    return None


async def _read_body(request: web.Request, limit: int) -> bytes | None:
    """The request's body (decompressed, when sent with a Content-Encoding), or None past
    `limit` bytes. Read from the stream: aiohttp's own cap for request.read() is 1 MiB."""
    if request.content_length is not None and request.content_length > limit:
        return None
    body = bytearray()
    async for chunk in request.content.iter_chunked(256 * 1024):
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


async def server_live(request: web.Request) -> web.Response:
    return web.json_response({"live": True})


async def server_ready(request: web.Request) -> web.Response:
    return web.json_response({"ready": True})


def _server_version() -> str:
    try:
        return metadata.version("oilspill")
    except metadata.PackageNotFoundError:
        return "unknown"


async def server_metadata(request: web.Request) -> web.Response:
    return web.json_response({"name": "oilspill-ml-stub", "version": _server_version(),
                              "extensions": ["binary_tensor_data"]})


async def model_metadata(request: web.Request) -> web.Response:
    if (missing := _other_model(request)) is not None:
        return missing
    return web.json_response({"name": MODEL_NAME, "versions": [MODEL_VERSION],
                              "platform": PLATFORM, "inputs": INPUTS,
                              "outputs": _outputs(request.app[OPTIONS])})


async def model_ready(request: web.Request) -> web.Response:
    if (missing := _other_model(request)) is not None:
        return missing
    return web.json_response({"name": MODEL_NAME, "ready": True})


async def infer(request: web.Request) -> web.Response:
    if (missing := _other_model(request)) is not None:
        return missing
    options = request.app[OPTIONS]
    body = await _read_body(request, options.max_image_bytes)
    if body is None:
        return _error(413, f"request larger than {options.max_image_bytes} bytes")
    if await injected_failure(request):
        return _error(503, "injected failure (--fail-rate)")
    try:
        answer, headers = await asyncio.to_thread(
            _infer, body, request.headers.get(HEADER_LENGTH), options)
    except BadRequest as exc:
        return _error(400, str(exc))
    return web.Response(body=answer, headers=headers)


def add_routes(app: web.Application) -> None:
    """Mount the protocol's routes on the stub's application."""
    app.router.add_get("/v2/health/live", server_live)
    app.router.add_get("/v2/health/ready", server_ready)
    app.router.add_get("/v2", server_metadata)
    for model in ("/v2/models/{model}", "/v2/models/{model}/versions/{version}"):
        app.router.add_get(model, model_metadata)
        app.router.add_get(f"{model}/ready", model_ready)
        app.router.add_post(f"{model}/infer", infer)
