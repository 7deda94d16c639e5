"""Serving the application: `serve_forever(app, ...)` until SIGINT or SIGTERM.

aiohttp answers requests it cannot parse (a 100 KB URL, too many headers, a NUL in a
header, an unknown method) itself, before any middleware: as `text/plain`, logged at ERROR
with a traceback. Here they get the one JSON error shape and one warning line, like every
other refusal. The hook for that is aiohttp's per-connection protocol class, reached by a
runner whose server makes ours.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.web_protocol import RequestHandler
from aiohttp.web_request import BaseRequest

from .middlewares import error_response, status_code_name

logger = logging.getLogger(__name__)


def _reason(exc: BaseException | None, message: str | None) -> str:
    text = exc.message if isinstance(exc, HttpProcessingError) else (message or str(exc or ""))
    first = (text or "malformed request").strip().splitlines()[0] if text else ""
    # The parser quotes what it choked on: keep it short and printable for log and client.
    return first.encode("ascii", "backslashreplace").decode()[:200] or "malformed request"


class _Protocol(RequestHandler):
    """One connection; its protocol-level refusals answered in the JSON error shape."""

    def handle_error(self, request: BaseRequest, status: int = 500,
                     exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500:
            return super().handle_error(request, status, exc, message)
        reason = _reason(exc, message)
        logger.warning("refused a malformed request from %s: %d %s", request.remote, status,
                       reason)
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already under way")
        response = error_response(status, status_code_name(status),
                                  f"the request is malformed: {reason}")
        response.force_close()
        return response


class _Server(web.Server):
    def __call__(self) -> RequestHandler:
        return _Protocol(self, loop=self._loop, **self._kwargs)


class Runner(web.AppRunner):
    """An AppRunner whose connections answer protocol errors in JSON."""

    async def _make_server(self) -> web.Server:
        made = await super()._make_server()  # starts the application
        return _Server(made.request_handler, request_factory=made.request_factory,
                       handler_cancellation=made.handler_cancellation,
                       loop=asyncio.get_running_loop(), **made._kwargs)


async def serve_forever(app: web.Application, host: str, port: int, shutdown_timeout: float,
                        started: Callable[[], None]) -> None:
    """Serve until SIGINT or SIGTERM, then shut down gracefully."""
    runner = Runner(app, access_log=None, shutdown_timeout=shutdown_timeout)
    await runner.setup()
    try:
        await web.TCPSite(runner, host, port).start()
        started()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
    finally:
        await runner.cleanup()
