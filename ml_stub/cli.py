"""`oilspill-ml-stub` / `python -m ml_stub`: run the stub ML service."""

from __future__ import annotations

import argparse
import logging

from aiohttp import web

from .app import StubOptions, create_app
from .detector import DetectorOptions


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="oilspill-ml-stub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="extra wait per call, in milliseconds (default 0)")
    parser.add_argument("--mode", choices=("mask", "annotated"), default="mask",
                        help="mask: the contract's PNG mask; annotated: a JPEG picture, "
                             "as the original YOLO service answered")
    parser.add_argument("--k", type=float, default=DetectorOptions.k,
                        help="dark threshold, in standard deviations below the mean")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    options = StubOptions(latency_ms=args.latency_ms, mode=args.mode,
                          detector=DetectorOptions(k=args.k))
    web.run_app(create_app(options), host=args.host, port=args.port, access_log=None,
                handler_cancellation=True,
                print=lambda msg: logging.getLogger("ml_stub").info(msg.strip()))
