"""The Open Inference Protocol v2 (KServe, Triton, MLServer) as the backend speaks it: pure
encode and decode, no HTTP.

An endpoint URL `http://host:port/v2/models/<name>[/versions/<v>]` names one model
(`parse_url`). Its server metadata (`GET /v2`: is `binary_tensor_data` among the extensions?)
and model metadata (`GET /v2/models/<name>`: inputs and outputs) make one `ModelSpec`; `encode`
builds the inference request for one or more same-size grey images, `decode` turns the answer
into one 0/255 mask per image. Answers are read as aiohttp hands them over (decompressed).

A mask output is numbers (any datatype: non-zero, or >= 0.5 for floats, is oil) or BYTES:
one encoded picture per image (a PNG; pixels >= 128 are oil, as in a `/segment` answer),
base64 in JSON. The bundled detector on MLServer answers so, because MLServer's REST has
no binary tensors and a mask of JSON numbers costs the backend more than the whole call.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
import re
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from .geo.scale import grey_png
from .names import plain_message

HEADER_LENGTH = "Inference-Header-Content-Length"
BINARY_EXTENSION = "binary_tensor_data"
MASK_OUTPUT = "mask"
CONFIDENCE_OUTPUT = "confidence"
FLOAT_OIL_LEVEL = 0.5  # a float mask value at or above this is oil
PICTURE_OIL_LEVEL = 128  # a pixel of a mask picture (BYTES) at or above this is oil
_FAST_JSON_BYTES = 4096  # JSON answers larger than this have their number arrays read by numpy

# Little-endian, as the binary tensor extension requires whatever the machine.
_DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype("u1"), "UINT8": np.dtype("u1"), "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"), "UINT64": np.dtype("<u8"), "INT8": np.dtype("i1"),
    "INT16": np.dtype("<i2"), "INT32": np.dtype("<i4"), "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"), "FP32": np.dtype("<f4"), "FP64": np.dtype("<f8"),
}
_PIXEL_TYPES = ("UINT8", "FP32")
_ELEMENT_LENGTH = struct.Struct("<I")  # a binary BYTES element's length, little-endian
_PLACEHOLDER = "\x00oip"  # stands in, after parsing, for a number array read apart
_DATA_ARRAY = re.compile(rb'"data"\s*:\s*\[')


def _byte_table(chars: bytes) -> npt.NDArray[np.bool_]:
    table = np.zeros(256, bool)
    table[list(chars)] = True
    return table


_WHITESPACE = _byte_table(b" \t\r\n")
# Each pixel value as four bytes "  7," / " 42," / "255,": the JSON number list of a whole
# tensor is one numpy gather (spaces between array items are valid JSON).
_NUMBER_TEXT = np.frombuffer(b"".join(f"{v:>3},".encode() for v in range(256)), "<u4")


class OipError(Exception):
    """Base of this module's errors."""


class OipIncompatible(OipError):
    """The model takes an input oilspill cannot produce (or its metadata is unusable)."""


class OipBadAnswer(OipError):
    """The server's answer is not a usable inference response for the request sent."""


class Layout(StrEnum):
    """How an image becomes the model's input tensor."""

    PNG = "png"  # BYTES: one PNG per element
    HW = "hw"  # pixels [H, W], one image
    NHW = "nhw"
    NHWC = "nhwc"  # C = 1, or 3 with the grey replicated
    NCHW = "nchw"


@dataclass(frozen=True)
class OipTarget:
    """One model at an OIP server: `base` is scheme://host:port[/prefix] without `/v2`."""

    base: str
    model: str
    version: str | None = None

    @property
    def model_url(self) -> str:
        url = f"{self.base}/v2/models/{self.model}"
        return f"{url}/versions/{self.version}" if self.version else url

    @property
    def server_url(self) -> str:
        """Server metadata (`extensions`)."""
        return f"{self.base}/v2"

    @property
    def ready_url(self) -> str:
        return f"{self.base}/v2/health/ready"

    @property
    def infer_url(self) -> str:
        return f"{self.model_url}/infer"

    @property
    def config_url(self) -> str:
        """Triton's model configuration (`max_batch_size`); other servers answer 404."""
        return f"{self.model_url}/config"


def parse_url(url: str) -> OipTarget | None:
    """The model an endpoint URL names; None for a URL without `/v2/models/` (our /segment
    contract). ValueError for an OIP URL that names no model or has extra parts."""
    parts = urlsplit(url)
    found = re.search(r"/v2/models(/|$)", parts.path)
    if parts.scheme not in ("http", "https") or found is None:
        return None
    at = found.start()
    if parts.query or parts.fragment:
        raise ValueError(f"an OIP model URL takes no query or fragment: {url}")
    names = parts.path[at + len("/v2/models"):].strip("/").split("/")
    if names[-1] == "infer" and len(names) in (2, 4):
        names.pop()  # the inference URL itself was given
    if names[0] and len(names) == 1:
        return OipTarget(f"{parts.scheme}://{parts.netloc}{parts.path[:at]}", names[0])
    if names[0] and len(names) == 3 and names[1] == "versions" and names[2]:
        return OipTarget(f"{parts.scheme}://{parts.netloc}{parts.path[:at]}", names[0],
                         names[2])
    raise ValueError(f"an OIP URL is http://host:port/v2/models/<name>[/versions/<v>]: {url}")


def _dims(tensor: Mapping[str, Any], what: str) -> tuple[int, ...]:
    shape = tensor.get("shape")
    if not isinstance(shape, list):
        raise OipIncompatible(f"{what} has no shape in the model's metadata")
    dims = []
    for dim in shape:  # int64 may come as a string (protobuf's JSON mapping)
        if isinstance(dim, str) and re.fullmatch(r"-?\d+", dim):
            dim = int(dim)
        if isinstance(dim, bool) or not isinstance(dim, int) or dim < -1 or dim == 0:
            raise OipIncompatible(f"{what} has shape {shape}: dimensions are -1 or positive")
        dims.append(dim)
    return tuple(dims)


def _tensors(meta: Mapping[str, Any], key: str) -> list[Mapping[str, Any]]:
    tensors = meta.get(key) or []
    if not isinstance(tensors, list) or not all(
            isinstance(t, dict) and isinstance(t.get("name"), str) for t in tensors):
        raise OipIncompatible(f"the model's metadata has malformed {key}")
    return tensors


@dataclass(frozen=True)
class ModelSpec:
    """How to feed one model and read its answer.

    shape: the input's shape from the metadata (-1 variable); height, width: the image size
    it requires (None: any); channels: 1 or 3 for NHWC/NCHW, else 1; binary: the binary tensor
    extension both ways (else JSON, BYTES as base64); max_batch: images per request at most
    (1: no batching; None: any number); mask_output, confidence_output: the outputs asked for
    (None when the metadata lists none: the answer's `mask` or first output is the mask).
    """

    input_name: str
    datatype: str
    layout: Layout
    shape: tuple[int, ...]
    binary: bool
    max_batch: int | None
    height: int | None = None
    width: int | None = None
    channels: int = 1
    mask_output: str | None = None
    confidence_output: str | None = None

    @property
    def takes_png(self) -> bool:
        """True when the model takes the encoded PNG, not pixels."""
        return self.layout is Layout.PNG

    @classmethod
    def from_metadata(cls, server_meta: Mapping[str, Any], model_meta: Mapping[str, Any],
                      model_config: Mapping[str, Any] | None = None,
                      input_name: str | None = None) -> ModelSpec:
        """Decide how to feed the model; OipIncompatible (saying why) when it cannot be fed."""
        inputs = _tensors(model_meta, "inputs")
        model = model_meta.get("name", "the model")
        if input_name is not None:
            inputs = [t for t in inputs if t["name"] == input_name]
            if not inputs:
                raise OipIncompatible(f"{model} has no input named {input_name!r}")
        if len(inputs) != 1:
            names = ", ".join(t["name"] for t in inputs) or "none declared"
            raise OipIncompatible(f"{model} takes {len(inputs)} inputs ({names}); oilspill "
                                  "sends one image tensor")
        tensor = inputs[0]
        name, datatype = tensor["name"], tensor.get("datatype")
        dims = _dims(tensor, f"input {name!r}")
        layout, height, width, channels = _layout(name, datatype, dims)
        max_batch: int | None = 1
        if layout is not Layout.HW and dims[0] == -1:
            limit = (model_config or {}).get("max_batch_size")
            max_batch = limit if isinstance(limit, int) and limit > 0 else None
        elif layout is not Layout.HW and dims[0] != 1:
            raise OipIncompatible(f"input {name!r} has shape {list(dims)}: its first dimension "
                                  "(the batch) must be -1 or 1")
        outputs = _tensors(model_meta, "outputs")
        named = {t["name"]: t for t in outputs}
        mask = named.get(MASK_OUTPUT) or (outputs[0] if outputs else None)
        kind = mask.get("datatype") if mask is not None else None
        if mask is not None and kind is not None and kind not in (*_DTYPES, "BYTES"):
            raise OipIncompatible(f"output {mask['name']!r} has datatype {kind}; a mask is "
                                  "BOOL, integers, floats or BYTES (a picture per image)")
        confidence = named.get(CONFIDENCE_OUTPUT)
        extensions = server_meta.get("extensions")
        return cls(input_name=name, datatype=str(datatype), layout=layout, shape=dims,
                   binary=isinstance(extensions, list) and BINARY_EXTENSION in extensions,
                   max_batch=max_batch, height=height, width=width, channels=channels,
                   mask_output=mask["name"] if mask is not None else None,
                   confidence_output=(CONFIDENCE_OUTPUT
                                      if confidence is not None and confidence is not mask
                                      else None))


def _layout(name: str, datatype: object, dims: tuple[int, ...]
            ) -> tuple[Layout, int | None, int | None, int]:
    """(layout, height, width, channels) for an input, or OipIncompatible."""
    def size(dim: int) -> int | None:
        return None if dim == -1 else dim

    if datatype == "BYTES":
        if not dims or any(d not in (1, -1) for d in dims[1:]):
            raise OipIncompatible(f"BYTES input {name!r} has shape {list(dims)}: oilspill "
                                  "sends one PNG per image, as [N] or [N, 1]")
        return Layout.PNG, None, None, 1
    if datatype not in _PIXEL_TYPES:
        raise OipIncompatible(f"input {name!r} has datatype {datatype}: oilspill sends BYTES "
                              "(a PNG), UINT8 or FP32 pixels")
    if len(dims) == 2:
        return Layout.HW, size(dims[0]), size(dims[1]), 1
    if len(dims) == 3:
        return Layout.NHW, size(dims[1]), size(dims[2]), 1
    if len(dims) == 4:
        if dims[3] in (1, 3):
            return Layout.NHWC, size(dims[1]), size(dims[2]), dims[3]
        if dims[1] in (1, 3):
            return Layout.NCHW, size(dims[2]), size(dims[3]), dims[1]
        if dims[1] == dims[3] == -1:  # channels free: most such models were made for RGB
            return Layout.NHWC, None, size(dims[2]), 3
    raise OipIncompatible(f"input {name!r} has shape {list(dims)}: oilspill sends [H, W], "
                          "[N, H, W] or [N, H, W, C] (or [N, C, H, W]) with C = 1 or 3")


def _pixels(spec: ModelSpec, images: Sequence[npt.NDArray[np.uint8]]) -> npt.NDArray[np.uint8]:
    """The images as the input tensor's uint8 values, in its layout."""
    stack: npt.NDArray[np.uint8] = np.stack(images)
    if spec.layout is Layout.HW:
        return stack.reshape(stack.shape[1:])
    if spec.layout is Layout.NHWC:
        return np.repeat(stack[..., None], spec.channels, axis=3)
    if spec.layout is Layout.NCHW:
        return np.repeat(stack[:, None], spec.channels, axis=1)
    return stack


def encode(spec: ModelSpec, images: Sequence[npt.NDArray[np.uint8]],
           pngs: Sequence[bytes] | None = None) -> tuple[bytes, dict[str, str]]:
    """The inference request's body and headers for same-size uint8 [H, W] images; `pngs`
    (the same images encoded) is used when the model takes PNGs, else they are encoded here.

    ValueError for a call the spec does not allow (count, dtype, sizes differing);
    OipIncompatible when the model requires another image size.
    """
    count = len(images)
    if count < 1 or (spec.max_batch is not None and count > spec.max_batch):
        raise ValueError(f"{count} images for a model taking 1 to {spec.max_batch} a request")
    first = images[0]
    if any(i.dtype != np.uint8 or i.ndim != 2 or i.shape != first.shape for i in images):
        raise ValueError("images must be uint8 [H, W] arrays, all of one size")
    height, width = first.shape
    if (spec.height or height, spec.width or width) != (height, width):
        raise OipIncompatible(f"the model takes {spec.height or 'any'} x {spec.width or 'any'}"
                              f" pixel images (height x width), not {height} x {width}")
    inp: dict[str, Any] = {"name": spec.input_name, "datatype": spec.datatype}
    if spec.takes_png:
        elements = list(pngs) if pngs is not None else [grey_png(i) for i in images]
        if len(elements) != count:
            raise ValueError(f"{len(elements)} PNGs for {count} images")
        inp["shape"] = [count] + [1] * (len(spec.shape) - 1)
        if spec.binary:
            raw: bytes | memoryview = b"".join(
                part for png in elements for part in (_ELEMENT_LENGTH.pack(len(png)), png))
        else:
            inp["parameters"] = {"content_type": "base64"}  # MLServer's Base64Codec
            raw = b",".join(b'"%s"' % base64.b64encode(png) for png in elements)
    else:
        tensor = _pixels(spec, images)
        inp["shape"] = list(tensor.shape)
        if spec.binary:
            raw = (tensor.astype("<f4") if spec.datatype == "FP32" else tensor).tobytes()
        else:
            numbers = np.take(_NUMBER_TEXT, tensor.ravel())
            raw = memoryview(numbers.data).cast("B")[:-1]  # all but the last comma
    names = (spec.mask_output, spec.confidence_output)
    outputs: list[dict[str, Any]] = [{"name": n} for n in names if n]
    request: dict[str, Any] = {"inputs": [inp]} if spec.binary else {}
    if spec.binary:
        inp.setdefault("parameters", {})["binary_data_size"] = len(raw)
        for output in outputs:
            output["parameters"] = {"binary_data": True}
        if not outputs:
            request["parameters"] = {"binary_data_output": True}
    if outputs:
        request["outputs"] = outputs
    if spec.binary:
        header = json.dumps(request, separators=(",", ":")).encode()
        return header + raw, {"Content-Type": "application/octet-stream",
                              HEADER_LENGTH: str(len(header))}
    # JSON: the data array is spliced in as text, never a list of Python numbers.
    head = json.dumps(inp, separators=(",", ":"))[:-1].encode()
    rest = json.dumps(request, separators=(",", ":"))[1:].encode()
    body = b"".join((b'{"inputs":[', head, b',"data":[', raw, b"]}]",
                     b"," if outputs else b"", rest))
    return body, {"Content-Type": "application/json"}


@dataclass(frozen=True)
class Decoded:
    """One image's result: mask uint8 [H, W] of 0/255; confidence: that image's values of
    the `confidence` output, None when the answer has none."""

    mask: npt.NDArray[np.uint8]
    confidence: list[float] | None = None


@dataclass(frozen=True)
class _Tensor:
    name: str
    datatype: str
    shape: tuple[int, ...]
    raw: memoryview | None  # binary data, or None for JSON `data`
    data: object = None


def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:  # a plain dict is case-sensitive; HTTP header names are not
        value = next((v for k, v in headers.items() if k.lower() == name.lower()), None)
    return value


def _loads(text: bytes) -> tuple[Any, list[bytes]]:
    """The JSON document, with each large flat number array under a "data" key left as text
    (replaced by a placeholder string naming its index in the list returned)."""
    segments: list[bytes] = []
    if len(text) > _FAST_JSON_BYTES:
        parts, pos = [], 0
        match = _DATA_ARRAY.search(text)
        while match is not None:
            end = text.find(b"]", match.end())
            if end < 0:
                break
            segment = text[match.end():end]
            if b"[" in segment or b"{" in segment or b'"' in segment:
                match = _DATA_ARRAY.search(text, match.end())  # nested: left to json
                continue
            parts += [text[pos:match.end() - 1], b'"\\u0000oip%d"' % len(segments)]
            segments.append(segment)
            pos = end + 1
            match = _DATA_ARRAY.search(text, pos)
        text = b"".join([*parts, text[pos:]])
    try:
        return json.loads(text), segments
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise OipBadAnswer(f"the answer is not valid JSON: {exc}") from None


def _parse_outputs(body: bytes, headers: Mapping[str, str]
                   ) -> tuple[dict[str, _Tensor], list[str], list[bytes]]:
    length = _header(headers, HEADER_LENGTH)
    if length is None:
        doc, segments = _loads(body)
        binary = memoryview(b"")
    else:
        if not length.strip().isdigit() or int(length) > len(body):
            raise OipBadAnswer(f"{HEADER_LENGTH} is {length!r} for a body of {len(body)} bytes")
        doc, segments = _loads(body[:int(length)])
        binary = memoryview(body)[int(length):]
    outputs = doc.get("outputs") if isinstance(doc, dict) else None
    if not isinstance(outputs, list) or not outputs:
        error = doc.get("error") if isinstance(doc, dict) else None
        raise OipBadAnswer(f"the answer has no outputs{f': {error}' if error else ''}"[:500])
    tensors: dict[str, _Tensor] = {}
    offset = 0
    for out in outputs:
        if not isinstance(out, dict) or not isinstance(out.get("name"), str):
            raise OipBadAnswer("an output of the answer has no name")
        name, params = out["name"], out.get("parameters") or {}
        shape = out.get("shape")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise OipBadAnswer(f"output {name!r} has shape {shape!r}")
        size = params.get("binary_data_size") if isinstance(params, dict) else None
        raw = None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise OipBadAnswer(f"output {name!r} declares {size!r} bytes of binary data; "
                                   f"{len(binary) - offset} are left: the answer is truncated")
            raw, offset = binary[offset:offset + size], offset + size
        elif "data" not in out:
            raise OipBadAnswer(f"output {name!r} has neither data nor binary_data_size")
        tensors[name] = _Tensor(name, str(out.get("datatype")), tuple(shape), raw,
                                out.get("data"))
    if offset != len(binary):
        raise OipBadAnswer(f"{len(binary) - offset} bytes follow the tensors the answer declares")
    return tensors, [o["name"] for o in outputs], segments


def _segment(tensor: _Tensor, segments: list[bytes]) -> bytes | None:
    data = tensor.data
    index = data[len(_PLACEHOLDER):] if isinstance(data, str) else ""
    if isinstance(data, str) and data.startswith(_PLACEHOLDER) and index.isdigit():
        return segments[int(index)]
    return None


def _values(tensor: _Tensor, segments: list[bytes]) -> npt.NDArray[Any]:
    """The tensor's elements, flat, as numbers (bools as 0/1)."""
    count = math.prod(tensor.shape)
    if tensor.raw is not None:
        dtype = _DTYPES.get(tensor.datatype)
        if dtype is None:
            raise OipBadAnswer(f"output {tensor.name!r} has datatype {tensor.datatype}")
        if len(tensor.raw) != count * dtype.itemsize:
            raise OipBadAnswer(f"output {tensor.name!r} has {len(tensor.raw)} bytes for shape "
                               f"{list(tensor.shape)} of {tensor.datatype}")
        return np.frombuffer(tensor.raw, dtype)
    segment = _segment(tensor, segments)
    try:
        data = json.loads(b"[%s]" % segment) if segment is not None else tensor.data
        values = np.asarray(data).ravel()
    except ValueError:  # bad JSON numbers, ragged lists
        raise OipBadAnswer(f"output {tensor.name!r} has malformed data") from None
    if values.dtype.kind not in "biuf" or values.size != count:
        raise OipBadAnswer(f"output {tensor.name!r} has {values.size} values of kind "
                           f"{values.dtype} for shape {list(tensor.shape)}")
    return values


def _text_oil(segment: bytes) -> npt.NDArray[np.bool_] | None:
    """Oil per element of a JSON array of non-negative integers or of booleans, read from
    its text by numpy without a Python object per element; None for any other text."""
    text = np.frombuffer(segment, np.uint8)
    if text.size and text.min() <= ord(" "):
        text = text[~_WHITESPACE[text]]
    if text.size == 0 or text[-1] == ord(","):
        return None
    commas = np.flatnonzero(text == ord(","))
    starts = np.empty(commas.size + 1, np.intp)  # (np.concatenate is ten times slower)
    starts[0] = 0
    np.add(commas, 1, out=starts[1:])
    first = text[starts]
    low, high = text.min(), text.max()
    if low >= ord(",") and high <= ord("9") and not ((text - np.uint8(ord("-"))) < 3).any():
        # Digits and commas only. JSON integers have no leading zeros: "0" is the only zero.
        if (first == ord(",")).any():
            return None  # an empty element
        oil: npt.NDArray[np.bool_] = first != ord("0")
        return oil
    if low >= ord(",") and high <= ord("u"):
        # true/false: the letters counted must be exactly those of the elements' words.
        lengths = np.diff(starts, append=text.size + 1) - 1
        true = first == ord("t")
        trues, falses = int(true.sum()), int((first == ord("f")).sum())
        counts = np.bincount(text, minlength=256)
        expected = {",": commas.size, "t": trues, "r": trues, "u": trues, "e": trues + falses,
                    "f": falses, "a": falses, "l": falses, "s": falses}
        if (trues + falses == first.size and (lengths == np.where(true, 4, 5)).all()
                and all(counts[ord(c)] == n for c, n in expected.items())):
            return np.asarray(true, bool)
    return None


def _oil(tensor: _Tensor, segments: list[bytes]) -> npt.NDArray[np.bool_]:
    floats = tensor.datatype.startswith("FP")
    segment = _segment(tensor, segments) if tensor.raw is None else None
    if segment is not None:
        oil = _text_oil(segment)
        if oil is not None:
            if oil.size != math.prod(tensor.shape):
                raise OipBadAnswer(f"output {tensor.name!r} has {oil.size} values for shape "
                                   f"{list(tensor.shape)}")
            return oil
    values = _values(tensor, segments)
    if values.dtype.kind == "f" or floats:
        result: npt.NDArray[np.bool_] = values >= FLOAT_OIL_LEVEL  # NaN is not oil
        return result
    return np.asarray(values != 0, bool)


def _elements(tensor: _Tensor) -> list[bytes]:
    """A BYTES tensor's elements: from binary data (each its 4-byte little-endian length,
    then its bytes) or from JSON base64 strings (MLServer's Base64Codec)."""
    name = tensor.name
    if tensor.raw is not None:
        raw, items, pos = tensor.raw, [], 0
        while pos < len(raw):
            if pos + _ELEMENT_LENGTH.size > len(raw):
                raise OipBadAnswer(f"output {name!r}: its binary data ends inside a length")
            (length,) = _ELEMENT_LENGTH.unpack_from(raw, pos)
            pos += _ELEMENT_LENGTH.size
            if pos + length > len(raw):
                raise OipBadAnswer(f"output {name!r}: its binary data ends inside an element")
            items.append(bytes(raw[pos:pos + length]))
            pos += length
        return items
    data = tensor.data
    if isinstance(data, list) and all(isinstance(d, list) for d in data):
        data = [item for row in data for item in row]  # [N, 1] written nested
    if not isinstance(data, list) or not all(isinstance(d, str) for d in data):
        raise OipBadAnswer(f"output {name!r} is BYTES: in JSON, a list of base64 strings")
    try:
        return [base64.b64decode(d, validate=True) for d in data]
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII string
        raise OipBadAnswer(f"output {name!r} holds a string that is not base64") from None


def _picture_oil(tensor: _Tensor, count: int, size: tuple[int, int]
                 ) -> npt.NDArray[np.bool_]:
    """Oil [count, H, W] of a BYTES mask output: one picture per image, each of the image's
    size (checked from its header before it is decoded)."""
    pictures = _elements(tensor)
    name, dims = tensor.name, tensor.shape
    if (len(pictures) != count or math.prod(dims) != count
            or any(d != 1 for d in dims[1:])):
        raise OipBadAnswer(f"output {name!r} has shape {list(dims)} and {len(pictures)} "
                           f"pictures: not one picture for each of {count} image(s)")
    height, width = size
    oil = np.empty((count, height, width), bool)
    for n, picture in enumerate(pictures):
        which = f"output {name!r}, picture {n + 1} of {count}"
        try:
            # PNG only, as a /segment mask: no lossy format, and no other decoder's surprises.
            with Image.open(io.BytesIO(picture), formats=["PNG"]) as image:
                if image.size != (width, height):
                    raise OipBadAnswer(f"{which} is {image.size[0]} x {image.size[1]} pixels, "
                                       f"not the image's {width} x {height}")
                grey = image if image.mode == "L" else image.convert("L")
                oil[n] = np.asarray(grey) >= PICTURE_OIL_LEVEL
        except OipBadAnswer:
            raise
        except UnidentifiedImageError:
            raise OipBadAnswer(f"{which} is not a PNG") from None
        except Exception as exc:  # whatever a damaged PNG makes Pillow raise
            raise OipBadAnswer(f"{which} does not decode: "
                               f"{plain_message(str(exc)) or exc.__class__.__name__}") from None
    return oil


def _per_item(shape: tuple[int, ...], count: int, size: tuple[int, int], name: str) -> None:
    """OipBadAnswer unless the shape is `count` masks of `size` (1-dimensions aside)."""
    items = shape
    if count > 1:
        if not shape or shape[0] != count:
            raise OipBadAnswer(f"output {name!r} has shape {list(shape)} for {count} images")
        items = shape[1:]
    if [d for d in items if d != 1] != [d for d in size if d != 1]:
        raise OipBadAnswer(f"output {name!r} has shape {list(shape)}: not {count} mask(s) of "
                           f"{size[0]} x {size[1]}")


def decode(spec: ModelSpec, body: bytes, headers: Mapping[str, str], count: int,
           size: tuple[int, int]) -> list[Decoded]:
    """One mask per image sent (`count` images of `size` = (height, width)), from the
    answer's body and headers; OipBadAnswer for anything malformed."""
    if count < 1:
        raise ValueError("decode needs the count of images sent")
    tensors, order, segments = _parse_outputs(body, headers)
    name = spec.mask_output or (MASK_OUTPUT if MASK_OUTPUT in tensors else order[0])
    if name not in tensors:
        raise OipBadAnswer(f"the answer has no output {name!r} (it has {', '.join(order)})")
    mask = tensors[name]
    if mask.datatype == "BYTES":
        oil = _picture_oil(mask, count, size)
    else:
        _per_item(mask.shape, count, size, name)
        oil = _oil(mask, segments).reshape(count, *size)
    masks = oil.view(np.uint8) * np.uint8(255)
    confidence: Sequence[list[float] | None] = [None] * count
    conf = tensors.get(CONFIDENCE_OUTPUT) if name != CONFIDENCE_OUTPUT else None
    if conf is not None:
        values = _values(conf, segments).astype(np.float64)
        if values.size % count:
            raise OipBadAnswer(f"output {CONFIDENCE_OUTPUT!r} has {values.size} values for "
                               f"{count} images")
        confidence = values.reshape(count, -1).tolist()
    return [Decoded(m, c) for m, c in zip(masks, confidence, strict=True)]
