"""Entry points: `oilspill serve`, `demo`, `settings`, and the client's `submit`,
`status` and `fetch` (see commands.py for their exit codes)."""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import logging
import os
import socket
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlsplit

from aiohttp import web

from .config import ConfigError, Settings, from_env, ml_endpoints, settings_table
from .logs import configure as configure_logging

logger = logging.getLogger("oilspill")


def _bundled_stub(settings: Settings
                  ) -> Callable[[web.Application], AsyncIterator[None]]:
    """A cleanup_ctx running the bundled ML stub where ML_SERVICE_URL points by default."""
    from ml_stub.app import running

    url = urlsplit(settings.ml_service_url)

    async def ctx(app: web.Application) -> AsyncIterator[None]:
        async with running("127.0.0.1", url.port or 8002):
            yield

    return ctx


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(socket.gethostbyname(host)).is_loopback
    except (OSError, ValueError):
        return False


def serve(settings: Settings) -> None:
    # Imported here: the client commands must start without the server's imports.
    from .ml_tier import public_url
    from .web.app import create_app
    from .web.server import serve_forever

    if not settings.api_token and not _is_loopback(settings.host):
        logger.warning("OILSPILL_API_TOKEN is not set and the API listens on %s: anyone who "
                       "can reach it can upload and read results", settings.host)
    app = create_app(settings)
    if settings.bundled_ml_stub:
        # First in, last out: the stub is up before the worker pool calls it.
        app.cleanup_ctx.insert(0, _bundled_stub(settings))
    # Shown without any user name or password a URL carries.
    ml = ", ".join(public_url(e.url) for e in ml_endpoints(settings.ml_service_url)) + (
        " (bundled ML stub)" if settings.bundled_ml_stub else "")
    asyncio.run(serve_forever(
        app, settings.host, settings.port, settings.shutdown_grace_s,
        started=lambda: logger.info("oilspill listening on http://%s:%d (the page: http://%s:"
                                    "%d/), ML service %s", settings.host, settings.port,
                                    settings.host, settings.port, ml)))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="oilspill", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("serve", help="run the API (settings from the environment)")
    demo = sub.add_parser("demo", help="run one job end to end on generated sea scenes")
    demo.add_argument("--out", type=Path, default=Path("oilspill-demo"),
                      help="folder for the demo's zip, data and results (default ./oilspill-demo)")
    demo.add_argument("--images", type=int, default=6, help="how many scenes (default 6)")
    sub.add_parser("settings", help="print every setting as a Markdown table")
    submit = sub.add_parser("submit", help="upload a zip, a folder of images, or one image or "
                                           "scene; wait; download the results")
    submit.add_argument("path", type=Path,
                        help="a zip of images, a folder of them, or one image or GeoTIFF scene")
    submit.add_argument("--no-wait", action="store_true",
                        help="print the job id and exit once the upload is accepted")
    submit.add_argument("--chunk-mb", type=float, default=8.0,
                        help="size of each piece of a resumable upload, in MiB (default 8)")
    status = sub.add_parser("status", help="a job's progress")
    status.add_argument("job_id")
    fetch = sub.add_parser("fetch", help="wait for a job and download its results")
    fetch.add_argument("job_id")
    fetch.add_argument("--geojson", type=Path, default=None, metavar="FILE",
                       help="save only the job's slicks as GeoJSON to FILE (a few "
                            "kilobytes; no zip is downloaded)")
    fetch.add_argument("--parts", default=None, metavar="PART,...",
                       help="download a zip of only these parts of the results, e.g. "
                            "summary,spills")
    for client_parser in (submit, status, fetch):
        client_parser.add_argument("--server", default="http://127.0.0.1:8000",
                                   help="the oilspill server (default http://127.0.0.1:8000)")
        client_parser.add_argument("--token", default=None,
                                   help="the server's API token, if it has one")
        client_parser.add_argument("--json", action="store_true",
                                   help="machine-readable output on stdout, no bars")
        client_parser.add_argument("--give-up-s", type=float, default=600.0,
                                   help="how long to keep retrying an unreachable server "
                                        "(default 600)")
    for client_parser in (submit, fetch):
        client_parser.add_argument("--out", type=Path, default=None,
                                   help="where to save the result zip (default: its name "
                                        "in the current folder)")
    args = parser.parse_args(argv)
    if getattr(args, "geojson", None) is not None and args.out is not None:
        parser.error("fetch: --geojson and --out are exclusive (--geojson downloads no zip)")
    parts = [p.strip() for p in (getattr(args, "parts", None) or "").split(",") if p.strip()]
    if getattr(args, "parts", None) is not None and not parts:
        parser.error("fetch: --parts needs at least one part, e.g. summary,spills")
    if parts and args.geojson is not None:
        parser.error("fetch: --geojson and --parts are exclusive (--geojson downloads no zip)")
    chunk_mb = getattr(args, "chunk_mb", 8.0)
    if not 1 / 16 <= chunk_mb <= 4096:
        parser.error("submit: --chunk-mb must be between 0.0625 and 4096")

    if args.command in ("submit", "status", "fetch"):
        from .client.cache import cache_dir
        from .client.commands import ClientOptions, run

        options = ClientOptions(args.server, args.token, args.json, args.give_up_s,
                                int(chunk_mb * 1024 * 1024), cache_dir(os.environ))
        target = str(args.path) if args.command == "submit" else args.job_id
        raise SystemExit(run(options, args.command, target, getattr(args, "out", None),
                             not getattr(args, "no_wait", False),
                             getattr(args, "geojson", None), parts))

    if args.command == "settings":
        print(settings_table())
        return
    try:
        settings = from_env(os.environ)
    except ConfigError as exc:
        print(f"oilspill: bad setting: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(settings.log_level, settings.log_json)
    if args.command == "serve":
        serve(settings)
    elif args.command == "demo":
        from .demo import run_demo

        logging.getLogger().setLevel(logging.WARNING)
        asyncio.run(run_demo(args.out, args.images, settings))
