"""`oilspill-ml-stub` / `python -m ml_stub`: run the stub ML service."""

from __future__ import annotations

import argparse
import logging
from dataclasses import fields

from aiohttp import web

from .app import StubOptions, create_app
from .detector import DetectorOptions


def _probability(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"{text} is not a probability between 0 and 1")
    return value


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="oilspill-ml-stub", description=__doc__)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--latency-ms", type=float, default=0.0,
                        help="extra wait per call, in milliseconds (default 0)")
    parser.add_argument("--mode", choices=("mask", "annotated", "ready"), default="mask",
                        help="mask: the contract's PNG mask; annotated: a JPEG picture, "
                             "as the original YOLO service answered; ready: a fixed mask "
                             "of the input's size, no computing (benchmarks)")
    parser.add_argument("--confidence", action="store_true",
                        help="the OIP model gets a second output, 'confidence' (FP32, per "
                             "pixel: the fraction of oil in its 5 x 5 neighbourhood)")
    for f in fields(DetectorOptions):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default),
                            default=f.default,
                            help=f"{f.metadata['help']} (default {f.default})")
    for name, what in (("fail", "answer 503"), ("hang", "never answer"),
                       ("drop", "close the connection without an answer")):
        parser.add_argument(f"--{name}-rate", type=_probability, default=0.0,
                            help=f"probability per call to {what} (default 0)")
    parser.add_argument("--seed", type=int, default=None, help="seed for the fault draws")
    args = parser.parse_args(argv)
    if args.fail_rate + args.hang_rate + args.drop_rate > 1:
        parser.error("--fail-rate, --hang-rate and --drop-rate add up to more than 1")
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    options = StubOptions(latency_ms=args.latency_ms, mode=args.mode,
                          fail_rate=args.fail_rate, hang_rate=args.hang_rate,
                          drop_rate=args.drop_rate, seed=args.seed, confidence=args.confidence,
                          detector=DetectorOptions(**{
                              f.name: getattr(args, f.name) for f in fields(DetectorOptions)}))
    web.run_app(create_app(options), host=args.host, port=args.port, access_log=None,
                handler_cancellation=True,
                print=lambda msg: logging.getLogger("ml_stub").info(msg.strip()))
