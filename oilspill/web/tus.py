"""Resumable uploads over tus 1.0.0 at /api/uploads/: the core protocol and the creation,
creation-with-upload, termination and expiration extensions (https://tus.io/protocols/
resumable-upload).

Only the protocol lives here: `resumable` keeps the bytes, offsets and expiry. An upload
whose last byte arrives goes the way of POST /api/upload/ (`uploads.IncomingUpload`: the
file adopted into a job's folder, then committed): the final PATCH answers 204 with
`Oilspill-Job-Id`, or the very error POST /api/upload/ would give, and a refused upload's
bytes are removed. GET /api/uploads/{id} tells the job (or the refusal) to a client that
lost that answer, until the record expires.

A terminated or expired upload answers 404 (no record is kept); a refused one answers 410
`upload_refused` to HEAD and PATCH until its record expires. `X-HTTP-Method-Override` is
honoured on a POST to an upload's URL.
"""

from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from email.utils import formatdate
from typing import Any

from aiohttp import web
from aiohttp.http import HttpProcessingError

from ..paths import is_id, uploads_dir
from ..resumable import (
    OffsetMismatch,
    PastLength,
    ResumableUpload,
    ResumableUploads,
    UnknownUpload,
    UploadRefused,
    UploadState,
)
from ..uploads import IncomingUpload, UploadTooLarge
from . import keys
from .middlewares import ApiError, domain_error, iso_utc

TUS_VERSION = "1.0.0"
TUS_EXTENSIONS = "creation,creation-with-upload,termination,expiration"
OFFSET_STREAM = "application/offset+octet-stream"
COLLECTION = "/api/uploads/"
ITEM = "/api/uploads/{upload_id}"
CHUNK_BYTES = 256 * 1024
MAX_METADATA_CHARS = 8 * 1024
DEFAULT_NAME = "upload.zip"  # as POST /api/upload/ names a part without a file name
_WHOLE_NUMBER = re.compile(r"^[0-9]{1,19}$")
_MAX_OFFSET = 2**63 - 1
_BASE64 = re.compile(r"^[A-Za-z0-9+/]*={0,2}$")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


async def resumable_uploads(app: web.Application) -> AsyncIterator[None]:
    """cleanup_ctx: the resumable uploads, recovered from disk. After the database: an
    upload that a stopped process was handing to a job is settled by that job's row."""
    settings = app[keys.SETTINGS]
    app[keys.RESUMABLE] = await ResumableUploads.open(
        uploads_dir(settings.data_dir), expiry_s=settings.upload_expiry_s,
        min_free_bytes=settings.min_free_bytes,
        known_job_ids=await app[keys.STORE].job_ids())
    yield


def add_routes(app: web.Application) -> None:
    """The tus routes, and the tus headers on every answer under /api/uploads."""
    app.router.add_post(COLLECTION, create)
    app.router.add_route("OPTIONS", COLLECTION, options)
    app.router.add_get(ITEM, status, allow_head=False)
    app.router.add_head(ITEM, head)
    app.router.add_patch(ITEM, patch)
    app.router.add_delete(ITEM, terminate)
    app.router.add_post(ITEM, method_override)
    app.on_response_prepare.append(_tus_headers)


async def _tus_headers(request: web.Request, response: web.StreamResponse) -> None:
    """Tus-Resumable on every answer under /api/uploads (errors included), and
    Upload-Expires on every answer about a live upload."""
    if request.path != COLLECTION.rstrip("/") and not request.path.startswith(COLLECTION):
        return
    response.headers.setdefault("Tus-Resumable", TUS_VERSION)
    upload_id = request.match_info.get("upload_id")
    if upload_id and "Upload-Expires" not in response.headers:
        resumable = request.app[keys.RESUMABLE]
        upload = resumable.peek(upload_id)
        if upload is not None:
            response.headers["Upload-Expires"] = _http_date(resumable.expires_at(upload))


def _http_date(ts: float) -> str:
    """RFC 9110's IMF-fixdate, as Upload-Expires is written."""
    return formatdate(ts, usegmt=True)


def _require_tus(request: web.Request) -> None:
    given = request.headers.get("Tus-Resumable")
    if given != TUS_VERSION:
        shown = "none" if given is None else repr(given[:40])
        raise ApiError(412, "unsupported_tus_version",
                       f"this server speaks tus {TUS_VERSION} (send Tus-Resumable: "
                       f"{TUS_VERSION}); the request said {shown}",
                       {"Tus-Version": TUS_VERSION})


def _refuse_while_draining(request: web.Request) -> None:
    if request.app[keys.DRAINING].is_set():
        raise ApiError(503, "shutting_down", "the server is shutting down; resume the upload "
                                             "shortly (HEAD gives the offset)")


def _whole_number(request: web.Request, name: str) -> int | None:
    raw = request.headers.get(name)
    if raw is None:
        return None
    value = raw.strip()
    if not _WHOLE_NUMBER.match(value) or int(value) > _MAX_OFFSET:
        raise ApiError(400, "bad_header", f"{name} must be a whole number of bytes, not "
                                          f"{raw[:40]!r}")
    return int(value)


def _require_offset_stream(request: web.Request) -> None:
    if request.content_type != OFFSET_STREAM:
        raise ApiError(415, "unsupported_media_type",
                       f"send the bytes with Content-Type: {OFFSET_STREAM}")


def _check_fits(request: web.Request, offset: int, length: int) -> None:
    """Refuse before reading a body whose Content-Length goes past Upload-Length."""
    if request.content_length is not None and offset + request.content_length > length:
        raise PastLength(f"{request.content_length} bytes at offset {offset} go past "
                         f"Upload-Length ({length} bytes)")


def _metadata_name(raw: str) -> str:
    """The upload's name: the `filename` of Upload-Metadata (comma-separated `key
    base64value` pairs), made a safe base name; 400 if the header is not tus metadata."""
    if len(raw) > MAX_METADATA_CHARS:
        raise ApiError(400, "bad_metadata",
                       f"Upload-Metadata is longer than {MAX_METADATA_CHARS} characters")
    name = None
    seen: set[str] = set()
    for pair in raw.split(",") if raw else ():
        key, _, value = pair.strip().partition(" ")
        if not key or key in seen or not (key.isascii() and key.isprintable()) or (
                not _BASE64.match(value)):
            raise ApiError(400, "bad_metadata", "Upload-Metadata must be comma-separated "
                                                "`key base64value` pairs with unique keys")
        seen.add(key)
        try:
            decoded = base64.b64decode(value, validate=True)
            if key == "filename":
                name = decoded.decode("utf-8")
        except (binascii.Error, UnicodeDecodeError):
            raise ApiError(400, "bad_metadata", f"Upload-Metadata {key[:40]!r}: not base64 "
                                                "(of UTF-8, for filename)") from None
    printable = "".join(ch for ch in name or "" if ch.isprintable())
    return os.path.basename(printable.replace("\\", "/"))[:255] or DEFAULT_NAME


def _upload_id(request: web.Request) -> str:
    value = request.match_info["upload_id"]
    if not is_id(value):
        raise UnknownUpload(value)
    return value


def _resumable_upload(request: web.Request) -> ResumableUpload:
    """The live upload the path names; 404, or 410 if it was refused."""
    upload = request.app[keys.RESUMABLE].find(_upload_id(request))
    if upload.state is UploadState.REFUSED and upload.error is not None:
        raise UploadRefused(upload.id, *upload.error)
    return upload


async def _body(request: web.Request) -> AsyncIterator[bytes]:
    """The request's body as it arrives. A client gone mid-body raises ConnectionResetError
    (answered, to nobody, as such by the middleware); a malformed one is a 400."""
    try:
        async for chunk in request.content.iter_chunked(CHUNK_BYTES):
            yield chunk
    except HttpProcessingError as exc:
        raise ApiError(400, "bad_body", f"the body is malformed: {exc.message[:200]}; the "
                                        "bytes before the fault are kept") from None


def _progress_headers(request: web.Request, upload: ResumableUpload) -> dict[str, str]:
    headers = {"Upload-Offset": str(upload.offset),
               "Upload-Expires": _http_date(request.app[keys.RESUMABLE].expires_at(upload))}
    if upload.state is UploadState.DONE and upload.job_id is not None:
        headers["Oilspill-Job-Id"] = upload.job_id
    return headers


async def _receive(request: web.Request, upload_id: str, offset: int) -> ResumableUpload:
    """Append the body at `offset` under the upload's writer slot; once the upload is
    complete, make it a job."""
    resumable = request.app[keys.RESUMABLE]
    async with resumable.writing(upload_id) as upload:
        await resumable.append(upload, offset, _body(request))
        if upload.complete:
            await _make_job(request, upload)
    return upload


async def _make_job(request: web.Request, upload: ResumableUpload) -> None:
    """The last byte is here: the same way as POST /api/upload/. Refused (not a zip, a
    limit, ...): the same error propagates and the bytes go. A full disk before anything
    moved, or a shutdown, keep the upload complete: an empty PATCH at its length retries."""
    app = request.app
    _refuse_while_draining(request)
    resumable = app[keys.RESUMABLE]
    outcomes = app[keys.METRICS].uploads
    async with IncomingUpload(app[keys.STORE], app[keys.SETTINGS],
                              app[keys.ACTIVE_UPLOADS]) as incoming:
        try:
            await incoming.adopt(await resumable.hand_over(upload, incoming.job_id))
            await incoming.commit(upload.name)
        except Exception as exc:
            known = domain_error(exc)
            code, message = (known[1], str(exc)) if known else ("internal_error",
                                                                "internal error")
            await resumable.refuse(upload, code, message)
            outcomes.labels(type(exc).__name__).inc()
            raise
    await resumable.handed_over(upload)
    outcomes.labels("accepted").inc()
    app[keys.METRICS].upload_bytes.inc(incoming.received_bytes)
    await app[keys.POOL].notify()


async def options(request: web.Request) -> web.Response:
    """OPTIONS /api/uploads/: what this tus server supports (no Tus-Resumable needed)."""
    return web.Response(status=204, headers={
        "Tus-Version": TUS_VERSION, "Tus-Extension": TUS_EXTENSIONS,
        "Tus-Max-Size": str(request.app[keys.SETTINGS].max_upload_bytes)})


async def create(request: web.Request) -> web.Response:
    """POST /api/uploads/: a new upload of Upload-Length bytes, with its first bytes when the
    body carries them (creation-with-upload)."""
    _require_tus(request)
    _refuse_while_draining(request)
    limit = request.app[keys.SETTINGS].max_upload_bytes
    length = _whole_number(request, "Upload-Length")
    if length is None:
        raise ApiError(400, "missing_upload_length", "send Upload-Length: the size of the "
                                                     "whole upload in bytes (a deferred "
                                                     "length is not supported)")
    if length > limit:
        raise UploadTooLarge(f"Upload-Length {length} is more than {limit} bytes "
                             "(OILSPILL_MAX_UPLOAD_BYTES)")
    metadata = request.headers.get("Upload-Metadata", "").strip()
    name = _metadata_name(metadata)
    with_body = request.body_exists
    if with_body:
        _require_offset_stream(request)
        _check_fits(request, 0, length)
    upload = await request.app[keys.RESUMABLE].create(length, name, metadata)
    if with_body or upload.complete:  # bytes to keep, or nothing to wait for (length 0)
        upload = await _receive(request, upload.id, 0)
    headers = {"Location": f"{COLLECTION}{upload.id}", **_progress_headers(request, upload)}
    if not with_body:
        del headers["Upload-Offset"]
    return web.Response(status=201, headers=headers)


async def head(request: web.Request) -> web.Response:
    """HEAD /api/uploads/{upload_id}: the offset to resume from (durable bytes only)."""
    _require_tus(request)
    upload = _resumable_upload(request)
    headers = {"Upload-Length": str(upload.length), "Cache-Control": "no-store",
               **_progress_headers(request, upload)}
    if upload.metadata:
        headers["Upload-Metadata"] = upload.metadata
    return web.Response(status=200, headers=headers)


async def patch(request: web.Request) -> web.Response:
    """PATCH /api/uploads/{upload_id}: append the body at Upload-Offset."""
    _require_tus(request)
    _refuse_while_draining(request)
    _require_offset_stream(request)
    offset = _whole_number(request, "Upload-Offset")
    if offset is None:
        raise ApiError(400, "missing_upload_offset", "send Upload-Offset: the offset HEAD "
                                                     "gives")
    upload = _resumable_upload(request)
    if offset != upload.offset:  # checked again under the writer slot
        raise OffsetMismatch(upload.offset, offset)
    _check_fits(request, offset, upload.length)
    if upload.state is UploadState.DONE:  # a client repeating the final PATCH
        if await request.content.read(1):
            raise PastLength(f"the upload is complete ({upload.length} bytes)")
    else:
        upload = await _receive(request, upload.id, offset)
    return web.Response(status=204, headers=_progress_headers(request, upload))


async def terminate(request: web.Request) -> web.Response:
    """DELETE /api/uploads/{upload_id}: remove the upload and its bytes now."""
    _require_tus(request)
    await request.app[keys.RESUMABLE].terminate(_upload_id(request))
    return web.Response(status=204)


async def status(request: web.Request) -> web.Response:
    """GET /api/uploads/{upload_id}: the upload as JSON, with its job once it has one."""
    resumable = request.app[keys.RESUMABLE]
    upload = resumable.find(_upload_id(request))
    error = {"code": upload.error[0], "message": upload.error[1]} if upload.error else None
    return web.json_response({
        "upload_id": upload.id, "offset": upload.offset, "length": upload.length,
        "expires_at": iso_utc(resumable.expires_at(upload)),
        "job_id": upload.job_id if upload.state is UploadState.DONE else None,
        "error": error}, headers={"Cache-Control": "no-store"})


_OVERRIDABLE: dict[str, Handler] = {"PATCH": patch, "DELETE": terminate, "HEAD": head,
                                    "GET": status}


async def method_override(request: web.Request) -> web.StreamResponse:
    """POST /api/uploads/{upload_id} with X-HTTP-Method-Override: that method, for clients
    that can only send GET and POST."""
    method = request.headers.get("X-HTTP-Method-Override", "").strip().upper()
    handler = _OVERRIDABLE.get(method)
    if handler is None:
        raise ApiError(405, "method_not_allowed",
                       "a POST to an upload needs X-HTTP-Method-Override: PATCH, DELETE, HEAD "
                       "or GET", {"Allow": "GET, HEAD, PATCH, DELETE, POST"})
    return await handler(request)


# The routes above in OpenAPI 3.1 form, merged into web/openapi.py's paths.
_SECURED: list[dict[str, list[str]]] = [{}, {"bearer": []}]


def _error(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {
        "schema": {"$ref": "#/components/schemas/Error"}}}}


def _header(description: str, schema: dict[str, Any] | None = None,
            required: bool = True) -> dict[str, Any]:
    return {"description": description, "required": required,
            "schema": schema or {"type": "string"}}


_BYTES = {"type": "integer", "minimum": 0, "maximum": _MAX_OFFSET}
_TUS_RESUMABLE_PARAM = {"name": "Tus-Resumable", "in": "header", "required": True,
                        "schema": {"type": "string", "enum": [TUS_VERSION]},
                        "description": "the protocol version; any other value: 412"}
_UPLOAD_ID_PARAM = {"name": "upload_id", "in": "path", "required": True,
                    "schema": {"type": "string", "format": "uuid"}}
_TUS_HEADER = _header(f"always {TUS_VERSION}", {"type": "string", "enum": [TUS_VERSION]})
_EXPIRES = _header("when the upload (or a finished one's record) expires, RFC 9110 date")
_JOB_ID = _header("the job the upload became (once complete)", {"type": "string",
                                                                "format": "uuid"},
                  required=False)
_OFFSET = _header("bytes durably received: resume from here", _BYTES)
_PRECONDITION = {**_error("Tus-Resumable missing or not 1.0.0"), "headers": {
    "Tus-Version": _header(f"the versions this server speaks: {TUS_VERSION}")}}
_FINAL_REFUSALS = ("the final PATCH: the same refusals as POST /api/upload/ (the upload is "
                   "removed)")
_BINARY_BODY = {"required": False, "content": {OFFSET_STREAM: {
    "schema": {"type": "string", "format": "binary"}}}}

OPENAPI_PATHS: dict[str, Any] = {
    COLLECTION: {
        "post": {
            "summary": "Create a resumable upload (tus 1.0.0 creation, creation-with-upload)",
            "description": "Upload-Length is the whole file's size; Upload-Metadata's "
                           "`filename` becomes the job's upload name. A body (Content-Type "
                           "application/offset+octet-stream) is the first bytes. When the "
                           "last byte arrives the upload becomes a job exactly as with POST "
                           "/api/upload/. Unfinished uploads expire OILSPILL_UPLOAD_EXPIRY_S "
                           "after their last bytes.",
            "security": _SECURED,
            "parameters": [
                _TUS_RESUMABLE_PARAM,
                {"name": "Upload-Length", "in": "header", "required": True,
                 "schema": _BYTES, "description": "the whole upload's size in bytes"},
                {"name": "Upload-Metadata", "in": "header", "required": False,
                 "schema": {"type": "string"},
                 "description": "comma-separated `key base64value` pairs; `filename` is "
                                "kept"}],
            "requestBody": _BINARY_BODY,
            "responses": {
                "201": {"description": "Created", "headers": {
                    "Location": _header("the upload's URL: /api/uploads/{upload_id}"),
                    "Tus-Resumable": _TUS_HEADER, "Upload-Expires": _EXPIRES,
                    "Upload-Offset": {**_OFFSET, "required": False,
                                      "description": "when a body came: the bytes kept"},
                    "Oilspill-Job-Id": _JOB_ID}},
                "400": _error("A bad header or metadata, or (the whole upload in the body) "
                              "a refusal as POST /api/upload/ gives"),
                "401": _error("Missing or wrong token"),
                "412": _PRECONDITION,
                "413": _error("Upload-Length above OILSPILL_MAX_UPLOAD_BYTES, a body past "
                              "Upload-Length, or a limit of POST /api/upload/"),
                "415": _error("A body without Content-Type application/offset+octet-stream"),
                "422": _error("The whole upload in the body, refused as POST /api/upload/ "
                              "refuses it"),
                "503": _error("Shutting down"),
                "507": _error("Not enough disk space for this and the unfinished uploads")}},
        "options": {
            "summary": "What this tus server supports",
            "security": [{}],
            "responses": {"204": {"description": "The server's tus configuration",
                                  "headers": {
                "Tus-Version": _header(TUS_VERSION),
                "Tus-Extension": _header(TUS_EXTENSIONS),
                "Tus-Max-Size": _header("OILSPILL_MAX_UPLOAD_BYTES", _BYTES),
                "Tus-Resumable": _TUS_HEADER}}}},
    },
    ITEM: {
        "head": {
            "summary": "The offset to resume an upload from",
            "security": _SECURED,
            "parameters": [_UPLOAD_ID_PARAM, _TUS_RESUMABLE_PARAM],
            "responses": {
                "200": {"description": "The upload", "headers": {
                    "Upload-Offset": _OFFSET, "Upload-Length": _header("its size", _BYTES),
                    "Upload-Metadata": _header("as sent at creation", required=False),
                    "Cache-Control": _header("no-store"), "Upload-Expires": _EXPIRES,
                    "Tus-Resumable": _TUS_HEADER, "Oilspill-Job-Id": _JOB_ID}},
                "401": _error("Missing or wrong token"),
                "404": _error("Unknown, terminated or expired"),
                "410": _error("Refused when complete (`upload_refused`)"),
                "412": _PRECONDITION}},
        "patch": {
            "summary": "Append bytes at Upload-Offset",
            "description": "Answered once the bytes are durable. The PATCH that brings the "
                           "last byte makes the job (204 with Oilspill-Job-Id) or answers the "
                           "refusal POST /api/upload/ would give. One writer at a time.",
            "security": _SECURED,
            "parameters": [_UPLOAD_ID_PARAM, _TUS_RESUMABLE_PARAM,
                           {"name": "Upload-Offset", "in": "header", "required": True,
                            "schema": _BYTES,
                            "description": "must equal the upload's offset"}],
            "requestBody": {**_BINARY_BODY, "required": True},
            "responses": {
                "204": {"description": "Appended", "headers": {
                    "Upload-Offset": _OFFSET, "Upload-Expires": _EXPIRES,
                    "Tus-Resumable": _TUS_HEADER, "Oilspill-Job-Id": _JOB_ID}},
                "400": _error(f"A bad header or body; or {_FINAL_REFUSALS}"),
                "401": _error("Missing or wrong token"),
                "404": _error("Unknown, terminated or expired"),
                "409": _error("`offset_mismatch` (Upload-Offset is not the upload's) or "
                              "`upload_busy` (another request is writing to it)"),
                "410": _error("Refused when complete (`upload_refused`)"),
                "412": _PRECONDITION,
                "413": _error(f"A body past Upload-Length; or {_FINAL_REFUSALS}"),
                "415": _error("Content-Type is not application/offset+octet-stream"),
                "422": _error(_FINAL_REFUSALS),
                "503": _error("Shutting down: resume shortly"),
                "507": _error("The disk is full: the bytes kept are durable; resume later")}},
        "delete": {
            "summary": "Terminate an upload: its bytes are removed",
            "security": _SECURED,
            "parameters": [_UPLOAD_ID_PARAM, _TUS_RESUMABLE_PARAM],
            "responses": {
                "204": {"description": "Terminated", "headers": {
                    "Tus-Resumable": _TUS_HEADER}},
                "401": _error("Missing or wrong token"),
                "404": _error("Unknown, terminated or expired"),
                "409": _error("`upload_busy`: a request is writing to it"),
                "412": _PRECONDITION}},
        "get": {
            "summary": "An upload as JSON: its offset, and its job once complete",
            "description": "For a client that lost the final PATCH's answer: `job_id` once "
                           "the upload became a job, `error` if it was refused; kept until "
                           "the record expires. No Tus-Resumable needed.",
            "security": _SECURED,
            "parameters": [_UPLOAD_ID_PARAM],
            "responses": {
                "200": {"description": "The upload", "content": {"application/json": {
                    "schema": {
                        "type": "object", "additionalProperties": False,
                        "required": ["upload_id", "offset", "length", "expires_at", "job_id",
                                     "error"],
                        "properties": {
                            "upload_id": {"type": "string", "format": "uuid"},
                            "offset": _BYTES, "length": _BYTES,
                            "expires_at": {"type": "string", "format": "date-time"},
                            "job_id": {"type": ["string", "null"], "format": "uuid"},
                            "error": {"oneOf": [
                                {"type": "null"},
                                {"type": "object", "required": ["code", "message"],
                                 "additionalProperties": False,
                                 "properties": {"code": {"type": "string"},
                                                "message": {"type": "string"}}}]}}}}}},
                "401": _error("Missing or wrong token"),
                "404": _error("Unknown, terminated or expired")}},
        "post": {
            "summary": "The method named by X-HTTP-Method-Override (PATCH, DELETE, HEAD, GET)",
            "description": "For clients that can only send GET and POST: answered as that "
                           "method would be, with that method's headers (Upload-Offset for "
                           "PATCH).",
            "security": _SECURED,
            "parameters": [_UPLOAD_ID_PARAM,
                           {"name": "X-HTTP-Method-Override", "in": "header",
                            "required": True,
                            "schema": {"type": "string",
                                       "enum": ["PATCH", "DELETE", "HEAD", "GET"]}},
                           _TUS_RESUMABLE_PARAM],
            "requestBody": _BINARY_BODY,
            "responses": {
                "200": {"description": "As GET or HEAD"},
                "204": {"description": "As PATCH or DELETE"},
                **{str(s): _error(f"As the method named ({s})")
                   for s in (400, 401, 404, 405, 409, 410, 412, 413, 415, 422, 503, 507)}}},
    },
}
