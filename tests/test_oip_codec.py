"""The Open Inference Protocol v2 codec (oilspill/oip.py), checked against tritonclient.

tritonclient is the independent peer: its InferInput / generate_request_body is what a Triton
or KServe server is built to read, so our requests must mean the same; its own tensor
serialisation builds the answers our decode must read, and its InferResult must read the
tensors we frame. MLServer's base64 BYTES convention is checked as its Base64Codec decodes.
"""

from __future__ import annotations

import base64
import io
import json
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

from oilspill.geo.scale import grey_png
from oilspill.oip import (
    HEADER_LENGTH,
    Layout,
    ModelSpec,
    OipBadAnswer,
    OipIncompatible,
    OipTarget,
    decode,
    encode,
    parse_url,
)

BINARY_SERVER = {"name": "triton", "extensions": ["classification", "binary_tensor_data"]}
JSON_SERVER = {"name": "mlserver", "version": "1.6", "extensions": []}
ALL_TYPES = ["BOOL", "UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64",
             "FP16", "FP32", "FP64"]
NP_TYPES = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32,
            "UINT64": np.uint64, "INT8": np.int8, "INT16": np.int16, "INT32": np.int32,
            "INT64": np.int64, "FP16": np.float16, "FP32": np.float32, "FP64": np.float64}


def model(datatype: str, shape: list[Any], outputs: list[dict[str, Any]] | None = None,
          name: str = "image") -> dict[str, Any]:
    if outputs is None:
        outputs = [{"name": "mask", "datatype": "UINT8", "shape": [-1, -1, -1]}]
    return {"name": "slicks", "versions": ["1"], "platform": "onnxruntime_onnx",
            "inputs": [{"name": name, "datatype": datatype, "shape": shape}],
            "outputs": outputs}


def spec_for(datatype: str, shape: list[Any], binary: bool = True,
             outputs: list[dict[str, Any]] | None = None) -> ModelSpec:
    return ModelSpec.from_metadata(BINARY_SERVER if binary else JSON_SERVER,
                                   model(datatype, shape, outputs))


def images(count: int, height: int = 6, width: int = 5, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (height, width), dtype=np.uint8) for _ in range(count)]


def png(image: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(image).save(out, "PNG")
    return out.getvalue()


def split(body: bytes, headers: dict[str, str]) -> tuple[dict[str, Any], bytes]:
    """The JSON object and the binary part of a body."""
    length = headers.get(HEADER_LENGTH)
    if length is None:
        return json.loads(body), b""
    return json.loads(body[:int(length)]), body[int(length):]


def triton_body(inputs: list[triton.InferInput],
                outputs: list[triton.InferRequestedOutput] | None = None
                ) -> tuple[bytes, int | None]:
    """A request body as tritonclient builds it, and its JSON header's length (None: JSON)."""
    body, length = triton.InferenceServerClient.generate_request_body(inputs, outputs=outputs)
    return (body.encode() if isinstance(body, str) else body), length


def tensor_input(name: str, array: np.ndarray, datatype: str, binary: bool) -> triton.InferInput:
    tensor = triton.InferInput(name, list(array.shape), datatype)
    tensor.set_data_from_numpy(array, binary_data=binary)
    return tensor


def answer(tensors: dict[str, tuple[str, np.ndarray]], binary: bool
           ) -> tuple[bytes, dict[str, str]]:
    """An inference answer with these outputs, each tensor serialised by tritonclient (its
    request framing with `inputs` renamed `outputs`: the same tensor encoding both ways)."""
    inputs = [tensor_input(name, array, datatype, binary)
              for name, (datatype, array) in tensors.items()]
    body, length = triton_body(inputs)
    header = json.loads(body[:length] if length is not None else body)
    header = {"model_name": "slicks", "model_version": "1", "outputs": header["inputs"]}
    text = json.dumps(header).encode()
    if length is None:
        return text, {"Content-Type": "application/json"}
    return text + body[length:], {HEADER_LENGTH: str(len(text))}


def read_request_with_triton(body: bytes, headers: dict[str, str], name: str) -> np.ndarray:
    """tritonclient's InferResult reading the input tensor we framed (renamed an output)."""
    header, raw = split(body, headers)
    text = json.dumps({"outputs": header["inputs"]}).encode()
    length = len(text) if HEADER_LENGTH in headers else None
    result = triton.InferResult.from_response_body(text + raw, header_length=length)
    array = result.as_numpy(name)
    assert array is not None
    return array


# --- URLs -----------------------------------------------------------------------------------

@pytest.mark.parametrize(("url", "target"), [
    ("http://ml:8000/v2/models/slicks", OipTarget("http://ml:8000", "slicks")),
    ("http://ml:8000/v2/models/slicks/", OipTarget("http://ml:8000", "slicks")),
    ("https://ml/v2/models/slicks/versions/3", OipTarget("https://ml", "slicks", "3")),
    ("http://ml:8000/v2/models/slicks/infer", OipTarget("http://ml:8000", "slicks")),
    ("http://ml:8000/v2/models/slicks/versions/2/infer",
     OipTarget("http://ml:8000", "slicks", "2")),
    ("http://gw/kserve/v2/models/slicks", OipTarget("http://gw/kserve", "slicks")),
    ("http://ml:8002", None),
    ("http://ml:8002/segment", None),
    ("http://ml:8002/v2/modelsx/slicks", None),
    ("ftp://ml/v2/models/slicks", None),
])
def test_parse_url_finds_the_model_or_says_the_url_is_not_oip(url, target):
    assert parse_url(url) == target


@pytest.mark.parametrize("url", [
    "http://ml/v2/models", "http://ml/v2/models/", "http://ml/v2/models/slicks/versions/",
    "http://ml/v2/models/slicks/ready", "http://ml/v2/models/slicks?x=1",
    "http://ml/v2/models/a/versions/1/b",
])
def test_parse_url_refuses_a_malformed_oip_url(url):
    with pytest.raises(ValueError, match="OIP"):
        parse_url(url)


def test_target_urls_are_the_protocol_endpoints():
    target = parse_url("http://ml:8000/v2/models/slicks/versions/3")
    assert target is not None
    assert target.server_url == "http://ml:8000/v2"
    assert target.ready_url == "http://ml:8000/v2/health/ready"
    assert target.model_url == "http://ml:8000/v2/models/slicks/versions/3"
    assert target.infer_url == "http://ml:8000/v2/models/slicks/versions/3/infer"
    assert target.config_url == "http://ml:8000/v2/models/slicks/versions/3/config"
    assert OipTarget("http://ml", "m").infer_url == "http://ml/v2/models/m/infer"


# --- choosing how to feed a model -----------------------------------------------------------

@pytest.mark.parametrize(("datatype", "shape", "layout", "hw", "channels", "max_batch"), [
    ("BYTES", [1], Layout.PNG, (None, None), 1, 1),
    ("BYTES", [-1], Layout.PNG, (None, None), 1, None),
    ("BYTES", [-1, 1], Layout.PNG, (None, None), 1, None),
    ("UINT8", [-1, -1], Layout.HW, (None, None), 1, 1),
    ("FP32", [512, 512], Layout.HW, (512, 512), 1, 1),
    ("UINT8", [-1, -1, -1], Layout.NHW, (None, None), 1, None),
    ("FP32", [1, 256, 256], Layout.NHW, (256, 256), 1, 1),
    ("UINT8", [-1, -1, -1, 3], Layout.NHWC, (None, None), 3, None),
    ("FP32", [-1, 256, 320, 1], Layout.NHWC, (256, 320), 1, None),
    ("FP32", [-1, 3, -1, -1], Layout.NCHW, (None, None), 3, None),
    ("FP32", [1, 1, 256, 256], Layout.NCHW, (256, 256), 1, 1),
    ("FP32", ["-1", "-1", "-1", "3"], Layout.NHWC, (None, None), 3, None),  # int64 as text
])
def test_spec_follows_the_input_metadata(datatype, shape, layout, hw, channels, max_batch):
    spec = spec_for(datatype, shape)
    assert (spec.layout, (spec.height, spec.width), spec.channels) == (layout, hw, channels)
    assert spec.max_batch == max_batch
    assert spec.takes_png == (layout is Layout.PNG)
    assert spec.input_name == "image" and spec.datatype == datatype
    assert spec.binary and spec.mask_output == "mask" and spec.confidence_output is None


def test_spec_binary_only_when_the_server_lists_the_extension():
    meta = model("UINT8", [-1, -1, -1])
    assert ModelSpec.from_metadata(BINARY_SERVER, meta).binary
    assert not ModelSpec.from_metadata(JSON_SERVER, meta).binary
    assert not ModelSpec.from_metadata({"name": "x"}, meta).binary


def test_spec_batch_limit_comes_from_the_model_config():
    meta = model("UINT8", [-1, -1, -1])
    assert ModelSpec.from_metadata(BINARY_SERVER, meta, {"max_batch_size": 8}).max_batch == 8
    assert ModelSpec.from_metadata(BINARY_SERVER, meta, {"max_batch_size": 0}).max_batch is None
    fixed = model("UINT8", [1, -1, -1])
    assert ModelSpec.from_metadata(BINARY_SERVER, fixed, {"max_batch_size": 8}).max_batch == 1


def test_spec_picks_the_mask_and_confidence_outputs():
    outputs = [{"name": "logits", "datatype": "FP32", "shape": [-1, -1, -1]},
               {"name": "confidence", "datatype": "FP32", "shape": [-1]},
               {"name": "mask", "datatype": "BOOL", "shape": [-1, -1, -1]}]
    spec = spec_for("UINT8", [-1, -1, -1], outputs=outputs)
    assert (spec.mask_output, spec.confidence_output) == ("mask", "confidence")
    spec = spec_for("UINT8", [-1, -1, -1], outputs=outputs[:2])
    assert (spec.mask_output, spec.confidence_output) == ("logits", "confidence")
    spec = spec_for("UINT8", [-1, -1, -1], outputs=[])  # MLServer without declared outputs
    assert (spec.mask_output, spec.confidence_output) == (None, None)


def test_spec_chooses_a_named_input_among_several():
    meta = model("UINT8", [-1, -1, -1])
    meta["inputs"].append({"name": "mean", "datatype": "FP32", "shape": [1]})
    with pytest.raises(OipIncompatible, match="2 inputs"):
        ModelSpec.from_metadata(BINARY_SERVER, meta)
    assert ModelSpec.from_metadata(BINARY_SERVER, meta, input_name="image").layout is Layout.NHW
    with pytest.raises(OipIncompatible, match="no input named"):
        ModelSpec.from_metadata(BINARY_SERVER, meta, input_name="pixels")


@pytest.mark.parametrize(("meta", "reason"), [
    (model("INT64", [-1, -1, -1]), "datatype INT64"),
    (model("FP16", [-1, -1, -1]), "datatype FP16"),
    (model("UINT8", [-1, -1, -1, 4]), "C = 1 or 3"),
    (model("FP32", [-1, 4, -1, -1]), "C = 1 or 3"),
    (model("UINT8", [-1]), r"\[H, W\]"),
    (model("UINT8", [1, 1, -1, -1, 3]), r"\[H, W\]"),
    (model("UINT8", [4, -1, -1]), "batch"),
    (model("BYTES", [-1, 3]), "one PNG per image"),
    (model("BYTES", []), "one PNG per image"),
    (model("UINT8", [-1, 0, 5]), "dimensions"),
    (model("UINT8", [-1, "x", 5]), "dimensions"),
    (model("UINT8", [-1, -1, -1], [{"name": "mask", "datatype": "BF16", "shape": [-1]}]),
     "a mask is"),
    ({"name": "slicks", "inputs": [], "outputs": []}, "0 inputs"),
    ({"name": "slicks"}, "0 inputs"),
    ({"name": "slicks", "inputs": [{"name": "x", "datatype": "UINT8"}]}, "no shape"),
    ({"name": "slicks", "inputs": "x"}, "malformed inputs"),
    ({"name": "slicks", "inputs": [{"datatype": "UINT8", "shape": [1]}]}, "malformed inputs"),
])
def test_spec_refuses_a_model_it_cannot_feed(meta, reason):
    with pytest.raises(OipIncompatible, match=reason):
        ModelSpec.from_metadata(BINARY_SERVER, meta)


# --- requests: the same meaning as tritonclient's -------------------------------------------

PIXEL_CASES = [  # metadata shape, datatype, images, the tensor the model must get
    ([-1, -1], "UINT8", 1, lambda s: s[0]),
    ([-1, -1, -1], "FP32", 3, lambda s: s.astype(np.float32)),
    ([-1, -1, -1, 3], "UINT8", 2, lambda s: np.stack([s, s, s], axis=3)),
    ([-1, -1, -1, 1], "FP32", 1, lambda s: s[..., None].astype(np.float32)),
    ([-1, 3, -1, -1], "FP32", 2, lambda s: np.stack([s, s, s], axis=1).astype(np.float32)),
    ([1, 1, 6, 5], "UINT8", 1, lambda s: s[:, None]),
]


@pytest.mark.parametrize(("shape", "datatype", "count", "expect"), PIXEL_CASES)
def test_binary_request_means_what_tritonclient_sends(shape, datatype, count, expect):
    spec = spec_for(datatype, shape, outputs=[
        {"name": "mask", "datatype": "FP32", "shape": [-1, -1, -1]},
        {"name": "confidence", "datatype": "FP32", "shape": [-1]}])
    imgs = images(count)
    body, headers = encode(spec, imgs)
    tensor = expect(np.stack(imgs))
    theirs, length = triton_body(
        [tensor_input("image", tensor, datatype, True)],
        [triton.InferRequestedOutput("mask", binary_data=True),
         triton.InferRequestedOutput("confidence", binary_data=True)])
    assert length is not None
    assert split(body, headers) == (json.loads(theirs[:length]), theirs[length:])
    assert headers["Content-Type"] == "application/octet-stream"
    assert np.array_equal(read_request_with_triton(body, headers, "image"), tensor)


@pytest.mark.parametrize(("shape", "datatype", "count", "expect"), PIXEL_CASES)
def test_json_request_means_what_tritonclient_sends(shape, datatype, count, expect):
    spec = spec_for(datatype, shape, binary=False)
    imgs = images(count)
    body, headers = encode(spec, imgs)
    assert headers == {"Content-Type": "application/json"}
    tensor = expect(np.stack(imgs))
    theirs, length = triton_body([tensor_input("image", tensor, datatype, False)],
                                 [triton.InferRequestedOutput("mask", binary_data=False)])
    assert length is None
    ours, expected = json.loads(body), json.loads(theirs)
    assert ours["inputs"] == expected["inputs"]  # name, shape, datatype, flat data
    assert [o["name"] for o in ours["outputs"]] == ["mask"]
    assert "parameters" not in ours and "parameters" not in ours["outputs"][0]
    assert np.array_equal(read_request_with_triton(body, headers, "image"), tensor)


@pytest.mark.parametrize("shape", [[-1], [-1, 1]])
def test_binary_png_request_is_tritonclient_bytes_tensor(shape):
    spec = spec_for("BYTES", shape)
    imgs = images(3, 9, 11)
    body, headers = encode(spec, imgs)
    elements = np.array([[p] for p in map(grey_png, imgs)], dtype=np.object_)
    elements = elements.reshape([3] + [1] * (len(shape) - 1))
    theirs, length = triton_body([tensor_input("image", elements, "BYTES", True)],
                                 [triton.InferRequestedOutput("mask", binary_data=True)])
    assert split(body, headers) == (json.loads(theirs[:length]), theirs[length:])
    read = read_request_with_triton(body, headers, "image").ravel()
    assert [np.array(Image.open(io.BytesIO(p))).tolist() for p in read] == [
        i.tolist() for i in imgs]


def test_png_request_uses_the_pngs_given():
    spec = spec_for("BYTES", [-1])
    imgs = images(2)
    pngs = [png(i) for i in imgs]
    body, headers = encode(spec, imgs, pngs)
    assert list(read_request_with_triton(body, headers, "image")) == pngs


def test_json_png_request_is_base64_as_mlserver_decodes_it():
    spec = spec_for("BYTES", [-1, 1], binary=False)
    imgs = images(2, 30, 40)
    body, _ = encode(spec, imgs)
    tensor = json.loads(body)["inputs"][0]
    assert tensor["shape"] == [2, 1] and tensor["datatype"] == "BYTES"
    assert tensor["parameters"] == {"content_type": "base64"}
    # MLServer's Base64Codec: base64.b64decode(element.encode("ascii"), validate=True).
    decoded = [base64.b64decode(e.encode("ascii"), validate=True) for e in tensor["data"]]
    assert [np.array(Image.open(io.BytesIO(p))).tolist() for p in decoded] == [
        i.tolist() for i in imgs]


def test_request_without_declared_outputs_asks_all_outputs_binary():
    spec = spec_for("UINT8", [-1, -1, -1], outputs=[])
    header, _ = split(*encode(spec, images(1)))
    assert header["parameters"] == {"binary_data_output": True} and "outputs" not in header
    body, _ = encode(spec_for("UINT8", [-1, -1], False, []), images(1))
    assert set(json.loads(body)) == {"inputs"}  # JSON: every output, as JSON


def test_encode_enforces_what_the_spec_allows():
    with pytest.raises(ValueError, match="1 to 1"):
        encode(spec_for("UINT8", [1, -1, -1]), images(2))
    with pytest.raises(ValueError, match="1 to 2"):
        encode(ModelSpec.from_metadata(BINARY_SERVER, model("UINT8", [-1, -1, -1]),
                                       {"max_batch_size": 2}), images(3))
    with pytest.raises(ValueError, match="one size"):
        encode(spec_for("UINT8", [-1, -1, -1]), images(1, 4, 4) + images(1, 4, 5))
    with pytest.raises(ValueError, match="uint8"):
        encode(spec_for("UINT8", [-1, -1, -1]), [np.zeros((4, 4), np.float32)])
    with pytest.raises(OipIncompatible, match="256 x 256"):
        encode(spec_for("FP32", [-1, 256, 256, 3]), images(1, 256, 200))
    with pytest.raises(ValueError, match="PNGs"):
        encode(spec_for("BYTES", [-1]), images(2), [b"x"])


# --- answers: every datatype, binary and JSON -----------------------------------------------

def values_for(datatype: str, oil: np.ndarray, seed: int) -> np.ndarray:
    """Values of a datatype whose oil is `oil`: non-zero integers (negative too when signed),
    floats from the threshold up, and below it (negative too)."""
    rng = np.random.default_rng(seed)
    dtype = NP_TYPES[datatype]
    if datatype == "BOOL":
        return oil.copy()
    if datatype.startswith("FP"):
        high = rng.uniform(0.5, 3.0, oil.shape)
        low = rng.uniform(-2.0, 0.49, oil.shape)
        return np.where(oil, high, low).astype(dtype)
    info = np.iinfo(dtype)
    nonzero = rng.integers(1, min(int(info.max), 1000), oil.shape, endpoint=True)
    if info.min < 0:
        nonzero = nonzero * rng.choice([-1, 1], oil.shape)
    return np.where(oil, nonzero, 0).astype(dtype)


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("datatype", ALL_TYPES)
@pytest.mark.parametrize("size", [(5, 7), (64, 80)])  # the second past the fast-JSON size
def test_every_mask_datatype_is_read_as_tritonclient_reads_it(datatype, binary, size):
    oil = np.random.default_rng(1).random(size) < 0.3
    values = values_for(datatype, oil, 2)
    body, headers = answer({"mask": (datatype, values[None])}, binary)
    [got] = decode(spec_for("UINT8", [-1, -1, -1], binary), body, headers, 1, size)
    assert got.mask.dtype == np.uint8 and got.mask.shape == size
    assert np.array_equal(got.mask, np.where(oil, 255, 0))
    assert got.confidence is None
    theirs = triton.InferResult.from_response_body(
        body, header_length=int(headers[HEADER_LENGTH]) if binary else None).as_numpy("mask")
    assert np.array_equal(theirs[0] >= 0.5 if datatype.startswith("FP") else theirs[0] != 0, oil)


@pytest.mark.parametrize("text", [
    "[0, 255, 0, 0, 1, 7]",  # spaces, as Python's json.dumps writes
    "[\n0,\n255,0,0,1,7\n]",
    "[[0, 255, 0], [0, 1, 7]]",  # natural (nested) form
    "[0,-255,0,-0,1,7]",  # negatives (non-zero is oil; -0 is zero)
    "[false,true,false,false,true,true]",
    "[false, true, false, false, true, true]",
    "[0.0,1e3,0.25,-1.5,0.5,7.0]",
])
@pytest.mark.parametrize("pad", [0, 5000])  # a small answer, and one past the fast-JSON size
def test_json_mask_text_in_any_valid_form(text, pad):
    datatype = "FP32" if "." in text else "BOOL" if "true" in text else "INT32"
    body = ('{"model_name":"m","parameters":{"note":"' + "x" * pad + '"},"outputs":[{"name":'
            '"mask","datatype":"' + datatype + '","shape":[2,3],"data":' + text + "}]}").encode()
    [got] = decode(spec_for("UINT8", [-1, -1], False), body, {}, 1, (2, 3))
    assert got.mask.tolist() == [[0, 255, 0], [0, 255, 255]]


def test_float_threshold_is_half_and_nan_is_not_oil():
    values = np.array([[0.5, 0.49999, np.nan, np.inf, -np.inf, -0.7, 1.0]], np.float32)
    for binary in (True, False):
        if not binary:
            values = np.nan_to_num(values, nan=0.0, posinf=9.0, neginf=-9.0)
        body, headers = answer({"mask": ("FP32", values)}, binary)
        [got] = decode(spec_for("UINT8", [-1, -1], binary), body, headers, 1, (1, 7))
        assert got.mask.tolist() == [[255, 0, 0, 255, 0, 0, 255]]


@pytest.mark.parametrize(("shape", "count"), [
    ((6, 5), 1), ((1, 6, 5), 1), ((1, 6, 5, 1), 1), ((1, 1, 6, 5), 1), ((6, 5, 1), 1),
    ((3, 6, 5), 3), ((3, 1, 6, 5), 3), ((3, 6, 5, 1), 3),
])
def test_mask_is_squeezed_to_one_height_by_width_per_image(shape, count):
    rng = np.random.default_rng(3)
    oil = rng.random((count, 6, 5)) < 0.5
    for binary in (True, False):
        body, headers = answer({"mask": ("UINT8", (oil * 255).astype(np.uint8).reshape(shape))},
                               binary)
        got = decode(spec_for("UINT8", [-1, -1, -1], binary), body, headers, count, (6, 5))
        assert [g.mask.tolist() for g in got] == (oil * 255).tolist()


@pytest.mark.parametrize(("shape", "count"), [
    ((2, 6, 5), 3), ((3, 6, 5), 1), ((6, 6), 1), ((1, 6, 5, 2), 1), ((3, 5, 6), 3),
    ((30,), 1), ((3, 30), 3),
])
def test_mask_of_the_wrong_count_or_size_is_a_bad_answer(shape, count):
    values = np.zeros(shape, np.uint8)
    for binary in (True, False):
        body, headers = answer({"mask": ("UINT8", values)}, binary)
        with pytest.raises(OipBadAnswer, match="shape"):
            decode(spec_for("UINT8", [-1, -1, -1], binary), body, headers, count, (6, 5))


@pytest.mark.parametrize("binary", [True, False])
@pytest.mark.parametrize("conf_shape", [(3,), (3, 1), (3, 2)])
def test_batch_of_three_gives_masks_and_confidence_per_image(binary, conf_shape):
    spec = spec_for("FP32", [-1, -1, -1, 1], binary, outputs=[
        {"name": "mask", "datatype": "BOOL", "shape": [-1, -1, -1]},
        {"name": "confidence", "datatype": "FP32", "shape": [-1]}])
    tiles = images(3, 8, 9, seed=4)
    body, headers = encode(spec, tiles)
    sent = read_request_with_triton(body, headers, "image")
    assert sent.shape == (3, 8, 9, 1)
    oil = sent[..., 0] > 128  # a "model": bright is oil
    confidence = np.arange(np.prod(conf_shape), dtype=np.float32).reshape(conf_shape) / 8
    reply, reply_headers = answer({"mask": ("BOOL", oil), "confidence": ("FP32", confidence)},
                                  binary)
    got = decode(spec, reply, reply_headers, 3, (8, 9))
    assert [g.mask.tolist() for g in got] == [np.where(t > 128, 255, 0).tolist() for t in tiles]
    assert [g.confidence for g in got] == confidence.reshape(3, -1).tolist()


def test_mask_is_the_named_output_or_the_first():
    oil = np.eye(4, dtype=bool)
    other = np.zeros((4, 4), np.uint8)
    body, headers = answer({"logits": ("UINT8", other), "mask": ("BOOL", oil)}, True)
    [got] = decode(spec_for("UINT8", [-1, -1], outputs=[]), body, headers, 1, (4, 4))
    assert got.mask.tolist() == (oil * 255).tolist()
    body, headers = answer({"seg": ("BOOL", oil), "aux": ("UINT8", other)}, False)
    [got] = decode(spec_for("UINT8", [-1, -1], False, []), body, headers, 1, (4, 4))
    assert got.mask.tolist() == (oil * 255).tolist()
    spec = spec_for("UINT8", [-1, -1], outputs=[{"name": "probs", "datatype": "FP32",
                                                 "shape": [-1, -1]}])
    with pytest.raises(OipBadAnswer, match="no output 'probs'"):
        decode(spec, body, headers, 1, (4, 4))


def test_binary_and_json_outputs_mixed_in_one_answer():
    oil = np.eye(3, dtype=bool)
    body, headers = answer({"mask": ("BOOL", oil)}, True)
    header, raw = split(body, headers)
    header["outputs"].insert(0, {"name": "confidence", "datatype": "FP64", "shape": [1],
                                 "data": [0.75]})
    text = json.dumps(header).encode()
    lower_case = {HEADER_LENGTH.lower(): str(len(text))}
    [got] = decode(spec_for("UINT8", [-1, -1]), text + raw, lower_case, 1, (3, 3))
    assert got.mask.tolist() == (oil * 255).tolist() and got.confidence == [0.75]


def picture_answer(pictures: list[bytes], binary: bool, shape: list[int] | None = None
                   ) -> tuple[bytes, dict[str, str]]:
    """A BYTES `mask` output of encoded pictures: binary as tritonclient frames it, JSON as
    MLServer's Base64Codec writes it (shape [N, 1], base64 strings)."""
    if binary:
        elements = np.array(pictures, dtype=np.object_).reshape(shape or [len(pictures)])
        return answer({"mask": ("BYTES", elements)}, True)
    return json.dumps({"model_name": "slicks", "outputs": [{
        "name": "mask", "datatype": "BYTES", "shape": shape or [len(pictures), 1],
        "parameters": {"content_type": "base64"},
        "data": [base64.b64encode(p).decode() for p in pictures]}]}).encode(), {}


def encoded(oil: np.ndarray, mode: str, form: str = "PNG") -> bytes:
    out = io.BytesIO()
    grey = Image.fromarray(oil.astype(np.uint8) * np.uint8(255), mode="L")
    (grey.convert(mode) if mode != "L" else grey).save(out, form)
    return out.getvalue()


@pytest.mark.parametrize("binary", [True, False])
def test_a_bytes_mask_is_one_picture_per_image(binary):
    """A mask output of BYTES (the bundled detector on MLServer answers so) holds one picture
    per image, read as a /segment answer is: >= 128 is oil, whatever the picture's mode."""
    spec = spec_for("BYTES", [-1], binary, outputs=[
        {"name": "mask", "datatype": "BYTES", "shape": [-1, 1]}])
    assert spec.mask_output == "mask"
    rng = np.random.default_rng(7)
    oil = rng.random((4, 6, 5)) < 0.4
    pictures = [encoded(oil[0], "L"), encoded(oil[1], "1"), encoded(oil[2], "RGB"),
                encoded(oil[3], "P")]
    for shape in ([4], [4, 1]):
        body, headers = picture_answer(pictures, binary, shape)
        got = decode(spec, body, headers, 4, (6, 5))
        assert [g.mask.tolist() for g in got] == (oil * 255).tolist()
    grey = np.array([[0, 127, 128, 255]], np.uint8)
    body, headers = picture_answer([png(grey)], binary)
    assert decode(spec, body, headers, 1, (1, 4))[0].mask.tolist() == [[0, 0, 255, 255]]


def bad_pictures(binary: bool) -> dict[str, tuple[bytes, dict[str, str]]]:
    good = encoded(np.eye(6, 5, dtype=bool), "L")
    cases = {
        "of another size": picture_answer([encoded(np.eye(5, 6, dtype=bool), "L")] * 2, binary),
        "not a picture": picture_answer([good, b"<html>oops</html>"], binary),
        "not a PNG": picture_answer([good, encoded(np.eye(6, 5, dtype=bool), "L", "BMP")],
                                    binary),
        "a lossy picture": picture_answer([good, encoded(np.eye(6, 5, dtype=bool), "L",
                                                         "JPEG")], binary),
        "cut short": picture_answer([good, good[:len(good) // 2]], binary),
        "one for two images": picture_answer([good], binary),
        "three for two images": picture_answer([good] * 3, binary),
        "not a list of pictures": picture_answer([good] * 2, binary, [1, 2]),
    }
    if binary:
        body, headers = picture_answer([good] * 2, True)
        header, raw = split(body, headers)
        for name, size in (("element cut", len(raw) - 3), ("length cut", len(good) + 6)):
            header["outputs"][0]["parameters"]["binary_data_size"] = size
            text = json.dumps(header).encode()
            cases[name] = text + raw[:size], {HEADER_LENGTH: str(len(text))}
    else:
        body, _ = picture_answer([good] * 2, False)
        doc = json.loads(body)
        for name, data in (("not base64", ["%%%", "%%%"]), ("numbers", [1, 2]),
                           ("not ASCII", ["é", "é"])):
            doc["outputs"][0]["data"] = data
            cases[name] = json.dumps(doc).encode(), {}
    return cases


@pytest.mark.parametrize("binary", [True, False])
def test_a_bytes_mask_that_is_not_one_picture_per_image_is_a_bad_answer(binary):
    spec = spec_for("BYTES", [-1], binary)
    for case, (body, headers) in bad_pictures(binary).items():
        with pytest.raises(OipBadAnswer, match="'mask'") as caught:
            decode(spec, body, headers, 2, (6, 5))
        assert "Traceback" not in str(caught.value), case


# --- malformed answers ----------------------------------------------------------------------

def good_binary() -> tuple[bytes, dict[str, str]]:
    return answer({"mask": ("UINT8", np.zeros((1, 4, 4), np.uint8)),
                   "confidence": ("FP32", np.ones(1, np.float32))}, True)


def edit_header(change: Any) -> tuple[bytes, dict[str, str]]:
    body, headers = good_binary()
    header, raw = split(body, headers)
    change(header)
    text = json.dumps(header).encode()
    return text + raw, {HEADER_LENGTH: str(len(text))}


def json_mask(data: Any) -> tuple[bytes, dict[str, str]]:
    return json.dumps({"outputs": [{"name": "mask", "datatype": "UINT8", "shape": [4, 4],
                                    "data": data}]}).encode(), {}


BAD_ANSWERS = {
    "truncated binary": lambda: (good_binary()[0][:-3], good_binary()[1]),
    "trailing bytes": lambda: (good_binary()[0] + b"\0", good_binary()[1]),
    "header past the body": lambda: (good_binary()[0], {HEADER_LENGTH: "99999"}),
    "header not a number": lambda: (good_binary()[0], {HEADER_LENGTH: "12a"}),
    "header length negative": lambda: (good_binary()[0], {HEADER_LENGTH: "-5"}),
    "header cut": lambda: (good_binary()[0], {HEADER_LENGTH: "20"}),
    "not JSON": lambda: (b"<html>502 Bad Gateway</html>", {}),
    "not UTF-8": lambda: (b'{"outputs": "\xff\xfe"}', {}),
    "not an object": lambda: (b"[1, 2]", {}),
    "no outputs": lambda: (b'{"model_name": "m", "outputs": []}', {}),
    "an error": lambda: (b'{"error": "CUDA out of memory"}', {}),
    "output without name": lambda: edit_header(lambda h: h["outputs"][0].pop("name")),
    "output without shape": lambda: edit_header(lambda h: h["outputs"][0].pop("shape")),
    "negative shape": lambda: edit_header(lambda h: h["outputs"][0].update(shape=[-1, 4, 4])),
    "shape of text": lambda: edit_header(lambda h: h["outputs"][0].update(shape="1,4,4")),
    "wrong byte count": lambda: edit_header(lambda h: h["outputs"][0].update(shape=[1, 4, 3])),
    "size not an int": lambda: edit_header(
        lambda h: h["outputs"][0]["parameters"].update(binary_data_size="16")),
    "unknown datatype": lambda: edit_header(lambda h: h["outputs"][0].update(datatype="BF16")),
    "neither data nor binary": lambda: edit_header(
        lambda h: h["outputs"][1].pop("parameters")),
    "outputs not objects": lambda: (b'{"outputs": [1, 2]}', {}),
    "data too short": lambda: (b'{"outputs": [{"name": "mask", "datatype": "UINT8", '
                               b'"shape": [4, 4], "data": [0, 1]}]}', {}),
    "data of text": lambda: json_mask(["a"] * 16),
    "ragged data": lambda: json_mask([[0] * 4] * 3 + [[0] * 3]),
    "data of objects": lambda: json_mask([{}] * 16),
    "data null": lambda: (b'{"outputs": [{"name": "mask", "datatype": "UINT8", '
                          b'"shape": [4, 4], "data": null}]}', {}),
    "confidence of the wrong count": lambda: answer(
        {"mask": ("UINT8", np.zeros((2, 4, 4), np.uint8)),
         "confidence": ("FP32", np.ones(3, np.float32))}, True),
}


@pytest.mark.parametrize("case", BAD_ANSWERS)
def test_malformed_answer_is_a_bad_answer(case):
    body, headers = BAD_ANSWERS[case]()
    count = 2 if case == "confidence of the wrong count" else 1
    with pytest.raises(OipBadAnswer):
        decode(spec_for("UINT8", [-1, -1, -1]), body, headers, count, (4, 4))


def test_large_json_answer_with_bad_data_is_a_bad_answer():
    def body(data: str) -> bytes:
        return ('{"outputs":[{"name":"mask","datatype":"UINT8","shape":[60,60],"data":['
                + data + "]}]}").encode()
    spec = spec_for("UINT8", [-1, -1], False)
    good = ",".join(["0", "255"] * 1800)
    assert decode(spec, body(good), {}, 1, (60, 60))[0].mask.sum() == 1800 * 255
    for bad in (good + ",", "," + good, good.replace(",", ",,", 1), good[:-4], good[1:],
                good.replace(",0,", ",,", 1), good.replace("255", "-", 1),
                good.replace("255", "2x5", 1), good.replace("0", "tru", 1)):
        with pytest.raises(OipBadAnswer):
            decode(spec, body(bad), {}, 1, (60, 60))


def damaged(data: Any, body: bytes) -> bytes:
    """The body with one byte cut at, flipped at or inserted at a drawn place."""
    at = data.draw(st.integers(0, len(body)))
    damage = data.draw(st.sampled_from(["cut", "flip", "insert"]))
    byte = data.draw(st.binary(min_size=1, max_size=1))
    if damage == "cut":
        return body[:at]
    if damage == "flip" and at < len(body):
        return body[:at] + bytes([body[at] ^ byte[0]]) + body[at + 1:]
    return body[:at] + byte + body[at:]


def bad_or_masks(spec: ModelSpec, body: bytes, headers: dict[str, str],
                 size: tuple[int, int]) -> None:
    """Decoding two images' answer raises OipBadAnswer or gives two 0/255 masks of size."""
    try:
        got = decode(spec, body, headers, 2, size)
    except OipBadAnswer:
        return
    assert len(got) == 2 and all(g.mask.shape == size for g in got)
    assert all(set(np.unique(g.mask)) <= {0, 255} for g in got)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_damage_to_an_answer_is_a_bad_answer_or_a_mask(data):
    binary = data.draw(st.booleans())
    oil = data.draw(hnp.arrays(np.bool_, (2, 40, 30)))  # JSON past the fast-JSON size
    body, headers = answer({"mask": ("BOOL", oil),
                            "confidence": ("FP32", np.array([0.5, 0.25], np.float32))}, binary)
    bad_or_masks(spec_for("UINT8", [-1, -1, -1], binary), damaged(data, body), headers,
                 (40, 30))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_damage_to_a_picture_answer_is_a_bad_answer_or_a_mask(data):
    binary = data.draw(st.booleans())
    oil = data.draw(hnp.arrays(np.bool_, (2, 12, 10)))
    body, headers = picture_answer([encoded(o, "L") for o in oil], binary)
    bad_or_masks(spec_for("BYTES", [-1], binary), damaged(data, body), headers, (12, 10))


# --- properties -----------------------------------------------------------------------------

LAYOUTS = [([-1, -1], "UINT8"), ([-1, -1, -1], "UINT8"), ([-1, -1, -1], "FP32"),
           ([-1, -1, -1, 3], "UINT8"), ([-1, -1, -1, 1], "FP32"), ([-1, 3, -1, -1], "UINT8")]


@settings(max_examples=60, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), binary=st.booleans(), data=st.data())
def test_every_pixel_reaches_the_model_in_its_layout(layout, binary, data):
    shape, datatype = layout
    spec = spec_for(datatype, shape, binary)
    count = 1 if len(shape) == 2 else data.draw(st.integers(1, 3))
    size = data.draw(st.tuples(st.integers(1, 20), st.integers(1, 20)))
    imgs = [data.draw(hnp.arrays(np.uint8, size)) for _ in range(count)]
    body, headers = encode(spec, imgs)
    sent = read_request_with_triton(body, headers, "image")
    assert sent.dtype == NP_TYPES[datatype]
    stack = np.stack(imgs)
    if spec.layout is Layout.HW:
        assert np.array_equal(sent, stack[0])
    elif spec.layout is Layout.NCHW:
        assert sent.shape == (count, 3, *size) and all(
            np.array_equal(sent[:, c], stack) for c in range(3))
    else:
        assert np.array_equal(sent.reshape(count, *size, -1)[..., -1], stack)


@settings(max_examples=80, deadline=None)
@given(oil=hnp.arrays(np.bool_, st.tuples(st.integers(1, 4), st.integers(1, 50),
                                          st.integers(1, 50))),
       datatype=st.sampled_from(ALL_TYPES), binary=st.booleans(), seed=st.integers(0, 99))
def test_decode_recovers_any_mask(oil, datatype, binary, seed):
    count, height, width = oil.shape
    values = values_for(datatype, oil, seed)
    body, headers = answer({"mask": (datatype, values)}, binary)
    got = decode(spec_for("UINT8", [-1, -1, -1], binary), body, headers, count, (height, width))
    assert np.array_equal(np.stack([g.mask for g in got]), oil * np.uint8(255))
