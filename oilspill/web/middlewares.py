"""What wraps every request: the one JSON error shape, the optional token, CORS.

Domain errors carry no HTTP: `_ERRORS` below is the one table that maps them to a status
and an error code. Handlers raise ApiError for what is only about the request itself.
"""

from __future__ import annotations

import hmac
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

from aiohttp import web

from ..geo.errors import SceneError, SceneTooLarge
from ..geo.safe import SafeError
from ..results import JobNotFinished
from ..resumable import OffsetMismatch, PastLength, UnknownUpload, UploadBusy, UploadRefused
from ..store import NotFound
from ..unpack import NotAZip, UnpackLimitExceeded
from ..uploads import DiskFull, NoImages, UploadTooLarge
from . import keys

logger = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

# Domain error -> (HTTP status, error code). A NotFound whose id has a tombstone becomes
# 410 Gone instead.
_ERRORS: dict[type[Exception], tuple[int, str]] = {
    NotFound: (404, "not_found"),
    JobNotFinished: (409, "job_not_finished"),
    NotAZip: (400, "not_a_zip"),
    UploadTooLarge: (413, "upload_too_large"),
    UnpackLimitExceeded: (413, "archive_too_large"),
    NoImages: (422, "no_images"),
    SceneTooLarge: (413, "scene_too_large"),
    SafeError: (422, "bad_sentinel1_product"),
    SceneError: (422, "unreadable_scene"),
    DiskFull: (507, "insufficient_storage"),
    UnknownUpload: (404, "not_found"),
    UploadBusy: (409, "upload_busy"),
    OffsetMismatch: (409, "offset_mismatch"),
    PastLength: (413, "upload_too_large"),
    UploadRefused: (410, "upload_refused"),
}

_STATUS_CODES = {400: "bad_request", 401: "unauthorized", 404: "not_found", 405:
                 "method_not_allowed", 408: "request_timeout", 409: "conflict", 410: "gone",
                 413: "payload_too_large", 414: "uri_too_long", 415: "unsupported_media_type",
                 422: "unprocessable", 431: "headers_too_large", 500: "internal_error",
                 501: "not_implemented", 503: "unavailable", 507: "insufficient_storage"}
# Counted, never sent: the client closed the connection before its answer (nginx's 499).
CLIENT_GONE = 499

_CORS_METHODS = "GET, HEAD, POST, PATCH, DELETE, OPTIONS"
_CORS_HEADERS = ("Authorization, Content-Type, Tus-Resumable, Upload-Length, Upload-Offset, "
                 "Upload-Metadata, Upload-Defer-Length, X-HTTP-Method-Override")
# Answer headers a page on another origin may read.
_CORS_EXPOSE = ("Content-Disposition, Location, Upload-Offset, Upload-Length, Upload-Metadata, "
                "Upload-Expires, Tus-Resumable, Tus-Version, Tus-Extension, Tus-Max-Size, "
                "Oilspill-Job-Id")


def status_code_name(status: int) -> str:
    """The error body's `code` for a bare HTTP status."""
    return _STATUS_CODES.get(status, "http_error")


def domain_error(exc: BaseException) -> tuple[int, str] | None:
    """The HTTP status and error code of a domain error, or None for an unexpected one."""
    for kind, answer in _ERRORS.items():
        if isinstance(exc, kind):
            return answer
    return None


def iso_utc(ts: float | None) -> str | None:
    """An epoch time as ISO 8601 in UTC, as every answer gives times."""
    return datetime.fromtimestamp(ts, UTC).isoformat() if ts is not None else None


class ApiError(Exception):
    """An answer other than success, raised by a handler."""

    def __init__(self, status: int, code: str, message: str,
                 headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_response(status: int, code: str, message: str,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.json_response({"error": {"code": code, "message": message}}, status=status,
                             headers=headers)


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Render every failure in the one JSON error shape; never leak a traceback. An error
    answered before the body was read closes the connection: the rest of a refused (or
    stalled) body is not waited for."""
    response = await _render_errors(request, handler)
    if response.status >= 400 and request.body_exists and not request.content.is_eof():
        response.force_close()
    return response


async def _render_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as exc:
        return error_response(exc.status, exc.code, exc.message, exc.headers)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return error_response(exc.status, status_code_name(exc.status), exc.reason,
                              {k: v for k, v in exc.headers.items() if k == "Allow"})
    except NotFound as exc:
        deleted_at = await request.app[keys.STORE].deleted_at(exc.object_id)
        if deleted_at is not None:
            return error_response(410, "gone", f"{exc.kind} {exc.object_id} was deleted at "
                                               f"{iso_utc(deleted_at)}")
        return error_response(404, "not_found", str(exc))
    except ConnectionResetError:  # aiohttp's "Connection lost" included
        logger.info("%s %s: the client went away before its answer", request.method,
                    request.path[:200].encode("unicode_escape").decode())
        return web.Response(status=CLIENT_GONE)
    except Exception as exc:
        if known := domain_error(exc):
            return error_response(*known, str(exc))
        request_id = uuid.uuid4().hex[:12]
        logger.exception("request %s %s %s failed", request_id, request.method,
                         request.path[:200])
        return error_response(500, "internal_error",
                              f"internal error; quote request id {request_id} to the operator")


@web.middleware
async def metrics_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Count every answer by route (the pattern, not the path: ids would explode the
    label set), method and status."""
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        route = request.match_info.route.resource
        name = route.canonical if route is not None else "unmatched"
        request.app[keys.METRICS].http_requests.labels(name, request.method, str(status)).inc()


def _needs_token(request: web.Request) -> bool:
    settings = request.app[keys.SETTINGS]
    if not settings.api_token or request.method == "OPTIONS":
        return False
    return request.path.startswith("/api/") or (
        request.path == "/metrics" and not settings.metrics_public)


@web.middleware
async def auth_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With OILSPILL_API_TOKEN set, every /api/ call needs `Authorization: Bearer <token>`
    (and /metrics, with OILSPILL_METRICS_PUBLIC=0)."""
    token = request.app[keys.SETTINGS].api_token
    if _needs_token(request):
        scheme, _, given = request.headers.get("Authorization", "").partition(" ")
        # compare_digest: the time taken does not tell how much of the token was right.
        # Headers are decoded with surrogateescape: bytes that are not UTF-8 compare as sent.
        if scheme.lower() != "bearer" or not hmac.compare_digest(
                given.strip().encode("utf-8", "surrogateescape"), token.encode()):
            raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>",
                           {"WWW-Authenticate": 'Bearer realm="oilspill"'})
    return await handler(request)


@web.middleware
async def cors_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """CORS for the allowed origins only (OILSPILL_CORS_ORIGINS, `*` for any); none when it
    is empty."""
    origin = request.headers.get("Origin", "").rstrip("/")
    origins = request.app[keys.SETTINGS].cors_origin_set
    allowed = origin and (origin in origins or "*" in origins)
    if allowed and request.method == "OPTIONS" and "Access-Control-Request-Method" in (
            request.headers):
        response: web.StreamResponse = web.Response(status=204, headers={
            "Access-Control-Allow-Methods": _CORS_METHODS,
            "Access-Control-Allow-Headers": _CORS_HEADERS, "Access-Control-Max-Age": "600"})
    else:
        response = await handler(request)
    if allowed:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
        response.headers["Vary"] = "Origin"
    return response
