"""The bundled detector as an MLServer model: `mlserver start deploy/mlserver` serves it as
`oilspill-detector` on the Open Inference Protocol (REST and gRPC).

It needs mlserver and the detector's NumPy, SciPy and Pillow, not oilspill's service: only
ml_stub.detector is imported. MLServer imports this module by the dotted path in
model-settings.json (`ml_stub.mlserver_runtime.OilSpillDetector`), so the folder that holds
`ml_stub/` must be on PYTHONPATH (MLServer also puts its working directory on sys.path).

Input `image`: UINT8 pixels [N, H, W], or BYTES pictures (shape [N] or [N, 1]; in JSON base64
strings with the input's `parameters.content_type` "base64", since MLServer's REST has no
binary tensor data; over gRPC the raw bytes). Output `mask`, 0 sea and 255 oil, the mask
the stub's `/segment` gives each tile, in the datatype model-settings.json declares for it:
BYTES [N, 1], one PNG per tile (base64 in JSON: a few hundred bytes where the same mask as
JSON numbers is 2 to 4 bytes a pixel), or UINT8 [N, H, W]. A request that breaks this contract gets
400 `{"error": "..."}`. The detector's options come from model-settings.json's
`parameters.extra`, by name (`{"k": 2.5}`); unknown names stop the model from loading.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import fields
from typing import Any

import numpy as np
from mlserver import MLModel
from mlserver.codecs import Base64Codec, NumpyCodec
from mlserver.errors import InferenceError
from mlserver.types import Datatype, InferenceRequest, InferenceResponse, RequestInput
from PIL import Image

from .detector import DetectorOptions, detect_batch, encode_png

INPUT = "image"
OUTPUT = "mask"


def detector_options(extra: dict[str, Any] | None) -> DetectorOptions:
    """DetectorOptions from model-settings.json's `parameters.extra`."""
    given = dict(extra or {})
    known = {f.name: f for f in fields(DetectorOptions)}
    if unknown := sorted(set(given) - set(known)):
        raise ValueError(f"unknown detector options {unknown}; known: {sorted(known)}")
    # Each option's type is its default's (all are int or float), as on the stub's CLI.
    values: dict[str, Any] = {
        name: (int if isinstance(known[name].default, int) else float)(value)
        for name, value in given.items()}
    return DetectorOptions(**values)


def _pixels(request_input: RequestInput) -> np.ndarray:
    shape = list(request_input.shape)
    if len(shape) != 3 or 0 in shape:
        raise InferenceError(f"UINT8 input 'image' must have shape [N, H, W] with no size 0, "
                             f"not {shape}")
    try:
        values = np.asarray(request_input.data.root)
    except ValueError:
        raise InferenceError("the data of input 'image' is not a list of numbers") from None
    if values.dtype.kind not in "iu" or values.size != math.prod(shape):
        raise InferenceError(f"input 'image' of shape {shape} takes {math.prod(shape)} "
                             f"whole numbers")
    if values.min() < 0 or values.max() > 255:
        raise InferenceError("UINT8 values are whole numbers from 0 to 255")
    return values.astype(np.uint8).reshape(shape)


def _pictures(request_input: RequestInput) -> list[bytes]:
    parameters = request_input.parameters
    if parameters is not None and parameters.content_type == Base64Codec.ContentType:
        pictures: list[Any] = Base64Codec.decode_input(request_input)
    else:
        pictures = list(request_input.data.root)
        if not all(isinstance(p, bytes) for p in pictures):
            raise InferenceError("pictures in JSON are base64 strings with the input's "
                                 "parameters.content_type 'base64'")
    if not pictures or len(pictures) != math.prod(request_input.shape):
        raise InferenceError(f"input 'image' of shape {list(request_input.shape)} holds "
                             f"{len(pictures)} pictures")
    return pictures


def _masks(tiles: np.ndarray | list[bytes], options: DetectorOptions, as_pictures: bool
           ) -> np.ndarray | list[bytes]:
    """The masks [N, H, W], or one PNG each when `as_pictures`."""
    try:
        masks = detect_batch(tiles, options)
    except ValueError as exc:  # not an image, or pictures of several sizes
        raise InferenceError(str(exc)) from None
    if as_pictures:
        return [encode_png(Image.fromarray(mask, mode="L")) for mask in masks]
    return masks


def answers_pictures(outputs: list[Any]) -> bool:
    """True when the settings declare the `mask` output BYTES (a PNG per tile)."""
    return any(o.name == OUTPUT and Datatype(o.datatype) == Datatype.BYTES for o in outputs)


# mlserver ships no type information (no py.typed), so to mypy MLModel is Any.
class OilSpillDetector(MLModel):  # type: ignore[misc]
    """The dark-spot detector on MLServer: one run per tile of the request."""

    async def load(self) -> bool:
        parameters = self.settings.parameters
        self._options = detector_options(parameters.extra if parameters else None)
        self._pictures = answers_pictures(self.settings.outputs)
        return True

    async def predict(self, payload: InferenceRequest) -> InferenceResponse:
        if len(payload.inputs) != 1 or payload.inputs[0].name != INPUT:
            raise InferenceError(f"the model takes exactly one input, {INPUT!r}")
        request_input = payload.inputs[0]
        # A plain string here: MLServer's types keep the enum's values.
        datatype = Datatype(request_input.datatype)
        tiles: np.ndarray | list[bytes]
        if datatype == Datatype.UINT8:
            tiles = _pixels(request_input)
        elif datatype == Datatype.BYTES:
            tiles = _pictures(request_input)
        else:
            raise InferenceError(f"input 'image' is UINT8 pixels [N, H, W] or BYTES "
                                 f"pictures, not {datatype.value!r}")
        # In a thread: MLServer runs predict() on its event loop (parallel_workers 0), which
        # must go on answering health checks while the detector works.
        masks = await asyncio.to_thread(_masks, tiles, self._options, self._pictures)
        output = (Base64Codec.encode_output(OUTPUT, masks, use_bytes=False)
                  if isinstance(masks, list) else NumpyCodec.encode_output(OUTPUT, masks))
        return InferenceResponse(model_name=self.name, model_version=self.version,
                                 id=payload.id, outputs=[output])
