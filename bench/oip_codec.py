"""The backend's CPU per ML call for one 256 x 256 image: the OIP v2 codec's paths against
today's /segment multipart.

    python -m bench.oip_codec                  # about a minute
    python -m bench.oip_codec --quick          # seconds (the tests)

Two measures, both CPU time of this process only:

- codec: encode the request and decode a canned answer (oilspill/oip.py), nothing else;
  the PNG path includes encoding the PNG (as the backend does for a scene's tile), the
  /segment row builds today's multipart form (ml_client.py's FormData, written out) and
  reads the mask PNG it answers.
- call: the same plus the HTTP round trip through aiohttp to a server in another process
  that answers at once with the canned answer (its CPU is not counted): what the backend
  spends per call.

Paths: binary (Triton/KServe: pixels and mask as raw tensors), JSON pixels (MLServer: pixels
and mask as JSON numbers), JSON base64 PNG (MLServer: the PNG in as BYTES, the mask as JSON
numbers), JSON base64 PNG both ways (deploy/mlserver's model: the mask answered as a PNG in
a BYTES output too), binary PNG (Triton with a BYTES input; and with a BYTES mask), binary
batch of 8 (per image). MLServer compresses its JSON answers with gzip when the client
accepts it (its `gzip_enabled`, on by default; aiohttp asks for it): the JSON paths are
measured so, and once more with the answer uncompressed. Targets: JSON within 1.5 x binary
(deploy/mlserver's PNGs both ways against the cheapest binary path, raw pixels both ways; and
against the same model over the binary extension); binary under 1 ms per image. Prints a
table and writes <out>/oip_codec.json.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import gzip
import io
import json
import multiprocessing
import os
import statistics
import struct
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import numpy as np
from aiohttp import web
from PIL import Image

from oilspill import oip
from oilspill.geo.scale import grey_png

DEFAULT_OUT = Path("bench-out")
SERVER: dict[str, dict[str, Any]] = {"binary": {"extensions": ["binary_tensor_data"]},
                                    "json": {"extensions": []}}


def picture(size: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A speckled grey sea and its mask (a slick: an ellipse, about 10% of the tile)."""
    rng = np.random.default_rng(seed)
    image = rng.gamma(4.0, 30.0, (size, size)).clip(0, 255).astype(np.uint8)
    yy, xx = np.mgrid[:size, :size]
    slick = ((yy - size * 0.5) / (size * 0.3)) ** 2 + ((xx - size * 0.4) / (size * 0.12)) ** 2
    return image, np.where(slick < 1, 255, 0).astype(np.uint8)


def model(datatype: str, shape: list[int], mask: str = "UINT8") -> dict[str, Any]:
    return {"name": "slicks", "inputs": [{"name": "image", "datatype": datatype,
                                          "shape": shape}],
            "outputs": [{"name": "mask", "datatype": mask,
                         "shape": [-1, -1, -1] if mask != "BYTES" else [-1, 1]}]}


def png_answers(mask_png: bytes) -> dict[str, tuple[bytes, dict[str, str]]]:
    """What Triton (binary BYTES) and MLServer (Base64Codec, gzip) answer with a mask PNG."""
    header = json.dumps({"model_name": "slicks", "model_version": "1", "outputs": [
        {"name": "mask", "datatype": "BYTES", "shape": [1, 1],
         "parameters": {"binary_data_size": len(mask_png) + 4}}]}).encode()
    text = json.dumps({"model_name": "slicks", "id": "1", "parameters": {}, "outputs": [
        {"name": "mask", "datatype": "BYTES", "shape": [1, 1],
         "parameters": {"content_type": "base64"},
         "data": [base64.b64encode(mask_png).decode()]}]}, separators=(",", ":")).encode()
    return {"binary_png": (header + struct.pack("<I", len(mask_png)) + mask_png,
                           {"Content-Type": "application/octet-stream",
                            oip.HEADER_LENGTH: str(len(header))}),
            "json_png": (gzip.compress(text), {"Content-Type": "application/json",
                                               "Content-Encoding": "gzip"})}


def answers(masks: np.ndarray) -> dict[str, tuple[bytes, dict[str, str]]]:
    """What Triton (binary) and MLServer (JSON, compact) answer with these masks."""
    header = json.dumps({"model_name": "slicks", "model_version": "1", "outputs": [
        {"name": "mask", "datatype": "UINT8", "shape": list(masks.shape),
         "parameters": {"binary_data_size": masks.size}}]}).encode()
    text = json.dumps({"model_name": "slicks", "id": "1", "parameters": {}, "outputs": [
        {"name": "mask", "datatype": "UINT8", "shape": list(masks.shape),
         "data": masks.ravel().tolist()}]}, separators=(",", ":")).encode()
    return {"binary": (header + masks.tobytes(),
                       {"Content-Type": "application/octet-stream",
                        oip.HEADER_LENGTH: str(len(header))}),
            "json": (gzip.compress(text), {"Content-Type": "application/json",
                                           "Content-Encoding": "gzip"}),
            "json_plain": (text, {"Content-Type": "application/json"})}


@dataclass(frozen=True)
class Way:
    """One way of calling: how to build the request and read the answer (`route`: which
    canned answer the server gives)."""

    name: str
    count: int
    encode: Callable[[], tuple[bytes | aiohttp.FormData, dict[str, str]]]
    decode: Callable[[bytes, dict[str, str]], object]
    route: str
    gzipped: bool = False  # the answer comes compressed (aiohttp inflates it on a call)


def segment_form(png: bytes) -> tuple[aiohttp.FormData, dict[str, str]]:
    """Today's /segment request as ml_client.py builds it (FormData, one part `file`)."""
    form = aiohttp.FormData()
    form.add_field("file", png, filename="tile.png", content_type="image/png")
    return form, {}


def paths(size: int) -> tuple[list[Way], dict[str, tuple[bytes, dict[str, str]]]]:
    image, mask = picture(size)
    specs = {kind: oip.ModelSpec.from_metadata(SERVER[kind], model("UINT8", [-1, -1, -1]))
             for kind in SERVER}
    png_specs = {kind: oip.ModelSpec.from_metadata(SERVER[kind], model("BYTES", [-1]))
                 for kind in SERVER}
    both_specs = {kind: oip.ModelSpec.from_metadata(SERVER[kind], model("BYTES", [-1], "BYTES"))
                  for kind in SERVER}
    one, eight = answers(mask[None]), answers(np.stack([mask] * 8))
    mask_png = io.BytesIO()
    Image.fromarray(mask).save(mask_png, "PNG", compress_level=1)  # as the stub and runtime
    canned = {"binary": one["binary"], "json": one["json"], "json_plain": one["json_plain"],
              "binary8": eight["binary"], **png_answers(mask_png.getvalue()),
              "segment": (mask_png.getvalue(), {"Content-Type": "image/png"})}

    def reader(kind: str, count: int, model_specs: dict[str, oip.ModelSpec] = specs
               ) -> Callable[[bytes, dict[str, str]], object]:
        return lambda body, headers: oip.decode(model_specs[kind], body, headers, count,
                                                (size, size))

    def read_png(body: bytes, headers: dict[str, str]) -> object:
        return np.asarray(Image.open(io.BytesIO(body))) >= 128

    return [
        Way("binary", 1, lambda: oip.encode(specs["binary"], [image]), reader("binary", 1),
              "binary"),
        Way("JSON pixels (gzip)", 1, lambda: oip.encode(specs["json"], [image]), reader("json", 1),
              "json", gzipped=True),
        Way("JSON base64 PNG (gzip)", 1, lambda: oip.encode(png_specs["json"], [image],
                                                       [grey_png(image)]),
              reader("json", 1), "json", gzipped=True),
        Way("JSON base64 PNG both ways", 1, lambda: oip.encode(both_specs["json"], [image],
                                                                [grey_png(image)]),
            reader("json", 1, both_specs), "json_png", gzipped=True),
        Way("JSON pixels (plain)", 1, lambda: oip.encode(specs["json"], [image]),
              reader("json", 1), "json_plain"),
        Way("binary PNG", 1, lambda: oip.encode(png_specs["binary"], [image],
                                                  [grey_png(image)]),
              reader("binary", 1), "binary"),
        Way("binary PNG both ways", 1, lambda: oip.encode(both_specs["binary"], [image],
                                                           [grey_png(image)]),
            reader("binary", 1, both_specs), "binary_png"),
        Way("binary batch of 8", 8, lambda: oip.encode(specs["binary"], [image] * 8),
              reader("binary", 8), "binary8"),
        Way("/segment multipart", 1, lambda: segment_form(grey_png(image)), read_png,
              "segment"),
    ], canned


async def body_bytes(body: bytes | aiohttp.FormData) -> bytes:
    """The request body as aiohttp writes it to the socket."""
    return body if isinstance(body, bytes) else await body().as_bytes()


async def cpu_ms(work: Callable[[], Awaitable[object]], calls: int, rounds: int) -> float:
    """Median over rounds of the CPU time per call, in ms."""
    await work()
    per_call = []
    for _ in range(rounds):
        start = time.process_time_ns()
        for _ in range(calls):
            await work()
        per_call.append((time.process_time_ns() - start) / calls / 1e6)
    return statistics.median(per_call)


def serve(canned: dict[str, tuple[bytes, dict[str, str]]], ports: Any) -> None:
    """The answering server (another process): reads each request whole, answers at once."""
    async def handle(request: web.Request) -> web.Response:
        await request.read()
        body, headers = canned[request.match_info["route"]]
        return web.Response(body=body, headers=headers)

    async def main() -> None:
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_post("/{route}", handle)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        ports.put(runner.addresses[0][1])
        await asyncio.Event().wait()

    asyncio.run(main())


async def measure(port: int, ways: list[Way], canned: dict[str, tuple[bytes, dict[str, str]]],
                  calls: int, rounds: int) -> dict[str, dict[str, Any]]:
    """Per way: CPU per codec use and per HTTP call, and the sizes sent and received."""
    rows: dict[str, dict[str, Any]] = {}
    async with aiohttp.ClientSession() as session:
        for way in ways:
            url = f"http://127.0.0.1:{port}/{way.route}"

            async def codec(way: Way = way) -> None:
                body, _ = way.encode()
                await body_bytes(body)
                answer, headers = canned[way.route]
                way.decode(gzip.decompress(answer) if way.gzipped else answer, headers)

            async def call(way: Way = way, url: str = url) -> None:
                body, headers = way.encode()
                async with session.post(url, data=body, headers=headers) as resp:
                    way.decode(await resp.read(), dict(resp.headers))

            codec_ms = await cpu_ms(codec, calls, rounds)
            call_ms = await cpu_ms(call, calls, rounds)
            rows[way.name] = {
                "images": way.count, "codec_ms": codec_ms,
                "codec_ms_per_image": codec_ms / way.count, "call_ms": call_ms,
                "call_ms_per_image": call_ms / way.count,
                "request_bytes": len(await body_bytes(way.encode()[0])),
                "answer_bytes": len(canned[way.route][0])}
    return rows


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.oip_codec",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--calls", type=int, default=50, help="calls per round")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--quick", action="store_true", help="3 rounds of 5 calls")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args(argv)
    if args.quick:
        args.calls, args.rounds = 5, 3
    ways, canned = paths(args.size)
    ports: Any = multiprocessing.get_context("spawn").Queue()
    server = multiprocessing.get_context("spawn").Process(target=serve, args=(canned, ports),
                                                          daemon=True)
    server.start()
    try:
        rows = asyncio.run(measure(ports.get(timeout=60), ways, canned, args.calls,
                                   args.rounds))
    finally:
        server.terminate()
        server.join()
    binary, text = rows["binary"], rows["JSON pixels (gzip)"]
    png_binary, png_text = rows["binary PNG"], rows["JSON base64 PNG (gzip)"]
    both_binary, both_text = rows["binary PNG both ways"], rows["JSON base64 PNG both ways"]
    summary = {
        "json_png_both_over_binary_call": both_text["call_ms"] / binary["call_ms"],
        "json_png_both_over_binary_png_both_call": both_text["call_ms"] / both_binary["call_ms"],
        "json_over_binary_codec": text["codec_ms"] / binary["codec_ms"],
        "json_over_binary_call": text["call_ms"] / binary["call_ms"],
        "json_png_over_binary_png_call": png_text["call_ms"] / png_binary["call_ms"],
        "binary_call_ms_per_image": binary["call_ms_per_image"],
        "binary_batch8_call_ms_per_image": rows["binary batch of 8"]["call_ms_per_image"],
    }
    print(f"CPU per call of this process, {args.size} x {args.size} uint8, median of "
          f"{args.rounds} rounds of {args.calls} calls (pid {os.getpid()})")
    print(f"{'path':<27}{'codec ms/img':>14}{'call ms/img':>13}{'request B':>12}"
          f"{'answer B':>11}")
    for name, row in rows.items():
        print(f"{name:<27}{row['codec_ms_per_image']:>14.3f}{row['call_ms_per_image']:>13.3f}"
              f"{row['request_bytes'] // row['images']:>12}"
              f"{row['answer_bytes'] // row['images']:>11}")
    print(f"deploy/mlserver's model (PNGs both ways) over JSON: per call "
          f"{summary['json_png_both_over_binary_call']:.2f} x the binary pixels path, "
          f"{summary['json_png_both_over_binary_png_both_call']:.2f} x the same model over "
          "the binary extension (target <= 1.5)")
    print(f"a model taking PNGs and answering numbers, JSON base64 / binary extension: per "
          f"call {summary['json_png_over_binary_png_call']:.2f} x")
    print(f"a UINT8 model (pixels in), JSON numbers / binary: codec "
          f"{summary['json_over_binary_codec']:.2f} x, per call "
          f"{summary['json_over_binary_call']:.2f} x (4 x the bytes out)")
    print(f"binary per image: {summary['binary_call_ms_per_image']:.3f} ms per call, "
          f"{summary['binary_batch8_call_ms_per_image']:.3f} ms in batches of 8 "
          "(target <= 1 ms)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "oip_codec.json").write_text(json.dumps(
        {"size": args.size, "calls": args.calls, "rounds": args.rounds, "paths": rows,
         "summary": summary}, indent=1))


if __name__ == "__main__":
    main()
