"""The API's OpenAPI 3 description, served at /api/openapi.json.

A test compares its paths and methods with the app's routes, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from .. import __version__

_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": ["string", "null"], "format": "date-time"}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*statuses: int) -> dict[str, Any]:
    reasons = {400: "Bad request", 401: "Missing or wrong token", 404: "Not found",
               409: "Not finished yet", 410: "Deleted", 413: "Too large",
               415: "Not multipart", 422: "No usable image", 503: "Shutting down",
               507: "Not enough disk space"}
    return {str(s): _json(_ref("Error"), reasons[s]) for s in statuses}


def _id_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _UUID}


# Empty first: the token is optional (only when OILSPILL_API_TOKEN is set).
_SECURED: list[dict[str, list[str]]] = [{}, {"bearer": []}]
_COMMON = (401, 404)  # every /api/ call may answer these

_SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {
            "type": "object", "required": ["code", "message"], "additionalProperties": False,
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}}}},
    },
    "Skipped": {
        "type": "object", "required": ["filename", "reason"],
        "properties": {"filename": {"type": "string"}, "reason": {"type": "string"}},
    },
    "Accepted": {
        "type": "object", "required": ["job_id", "task_ids", "status", "skipped"],
        "properties": {"job_id": _UUID, "task_ids": {"type": "array", "items": _UUID},
                       "status": {"const": "queued"},
                       "skipped": {"type": "array", "items": _ref("Skipped")}},
    },
    "TaskResult": {
        "type": ["object", "null"],
        "required": ["oil_fraction", "oil_pixels", "slick_count", "largest_slick_px", "width",
                     "height", "mask_url", "overlay_url", "picture_url"],
        "properties": {
            "oil_fraction": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "oil_pixels": {"type": ["integer", "null"], "minimum": 0},
            "slick_count": {"type": ["integer", "null"], "minimum": 0},
            "largest_slick_px": {"type": ["integer", "null"], "minimum": 0},
            "overlay_url": {"type": ["string", "null"]},
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "mask_url": {"type": ["string", "null"]},
            "picture_url": {"type": ["string", "null"]}},
    },
    "Task": {
        "type": "object",
        "required": ["task_id", "job_id", "filename", "status", "attempts", "result", "error"],
        "properties": {
            "task_id": _UUID, "job_id": _UUID, "filename": {"type": "string"},
            "status": {"enum": ["queued", "running", "done", "failed"]},
            "attempts": {"type": "integer", "minimum": 0}, "result": _ref("TaskResult"),
            "error": {"type": ["string", "null"]}},
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "status", "total", "queued", "running", "done", "failed",
                     "created_at", "finished_at", "upload_name", "skipped",
                     "waiting_for_ml_service", "archive_url"],
        "properties": {
            "job_id": _UUID, "status": {"enum": ["queued", "running", "done", "failed"]},
            **{k: {"type": "integer", "minimum": 0}
               for k in ("total", "queued", "running", "done", "failed")},
            "created_at": _TIME, "finished_at": _TIME, "upload_name": {"type": "string"},
            "skipped": {"type": "array", "items": _ref("Skipped")},
            "waiting_for_ml_service": {"type": "boolean"},
            "archive_url": {"type": ["string", "null"]}},
    },
    "TaskPage": {
        "type": "object", "required": ["job_id", "total", "offset", "limit", "tasks"],
        "properties": {"job_id": _UUID, "total": {"type": "integer", "minimum": 0},
                       "offset": {"type": "integer", "minimum": 0},
                       "limit": {"type": "integer", "minimum": 1},
                       "tasks": {"type": "array", "items": _ref("Task")}},
    },
    "Deleted": {
        "type": "object", "required": ["job_id", "status", "tasks"],
        "properties": {"job_id": _UUID, "status": {"const": "deleted"},
                       "tasks": {"type": "integer", "minimum": 0}},
    },
    "ArchiveLink": {
        "type": "object", "required": ["archive_url"],
        "properties": {"archive_url": {"type": "string"}},
    },
    "Health": {
        "type": "object", "required": ["status", "database", "ml_service", "ml_service_url",
                                       "loop_lag_max_ms"],
        "properties": {"status": {"const": "ok"}, "database": {"const": "ok"},
                       "ml_service": {"enum": ["reachable", "unreachable"]},
                       "ml_service_url": {"type": "string"},
                       "loop_lag_max_ms": {"type": "number", "minimum": 0,
                                           "description": "largest event-loop stall since "
                                                          "start, in milliseconds"}},
    },
}


def _paths() -> dict[str, Any]:
    upload = {
        "summary": "Upload a zip of images; one task per image is queued",
        "security": _SECURED,
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {"type": "string", "format": "binary",
                                    "description": "a zip of PNG, JPEG, TIFF or BMP images"}},
        }}}},
        "responses": {"202": _json(_ref("Accepted"), "Accepted: the job is queued"),
                      **_errors(400, 401, 413, 415, 422, 503, 507)},
    }
    task_file = {
        "security": _SECURED,
        "parameters": [_id_param("task_id")],
        "responses": {"200": {"description": "The file",
                              "content": {"image/*": {"schema": {"type": "string",
                                                                 "format": "binary"}}}},
                      **_errors(*_COMMON, 410)},
    }
    return {
        "/api/upload/": {"post": upload},
        "/api/upload": {"post": {**upload, "summary": "The same, without the final slash"}},
        "/api/task/{task_id}": {"get": {
            "summary": "A task's status and result", "security": _SECURED,
            "parameters": [_id_param("task_id")],
            "responses": {"200": _json(_ref("Task"), "The task"), **_errors(*_COMMON, 410)}}},
        "/api/task/{task_id}/mask": {"get": {"summary": "A done task's mask (PNG)",
                                             **task_file}},
        "/api/task/{task_id}/overlay": {"get": {
            "summary": "A done task's overlay: the input in grey, the oil tinted (PNG)",
            **task_file}},
        "/api/task/{task_id}/picture": {"get": {
            "summary": "A done task's picture, when the ML service answered with one",
            **task_file}},
        "/api/job/{job_id}": {
            "get": {"summary": "A job's progress", "security": _SECURED,
                    "parameters": [_id_param("job_id")],
                    "responses": {"200": _json(_ref("Job"), "The job"),
                                  **_errors(*_COMMON, 410)}},
            "delete": {"summary": "Cancel a job and delete its files", "security": _SECURED,
                       "parameters": [_id_param("job_id")],
                       "responses": {"200": _json(_ref("Deleted"), "Deleted"),
                                     **_errors(*_COMMON, 410)}},
        },
        "/api/job/{job_id}/tasks": {"get": {
            "summary": "A job's tasks in upload order, a page at a time",
            "security": _SECURED,
            "parameters": [_id_param("job_id"),
                           {"name": "offset", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 0, "default": 0}},
                           {"name": "limit", "in": "query", "required": False,
                            "schema": {"type": "integer", "minimum": 1, "maximum": 1000,
                                       "default": 500}}],
            "responses": {"200": _json(_ref("TaskPage"), "The page"),
                          **_errors(400, *_COMMON, 410)}}},
        "/api/job/{job_id}/events": {"get": {
            "summary": "Live progress: server-sent events `progress`, `task`, `end`, `gone`",
            "security": _SECURED, "parameters": [_id_param("job_id")],
            "responses": {"200": {"description": "An event stream", "content": {
                "text/event-stream": {"schema": {"type": "string"}}}},
                **_errors(*_COMMON, 410)}}},
        "/api/archive/{job_id}": {"get": {
            "summary": "Build (once) a finished job's result zip and link to it",
            "security": _SECURED, "parameters": [_id_param("job_id")],
            "responses": {"200": _json(_ref("ArchiveLink"), "The link"),
                          **_errors(*_COMMON, 409, 410)}}},
        "/api/download/{filename}": {"get": {
            "summary": "Download a result zip", "security": _SECURED,
            "parameters": [{"name": "filename", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The zip", "content": {"application/zip": {
                "schema": {"type": "string", "format": "binary"}}}},
                **_errors(*_COMMON, 410)}}},
        "/api/openapi.json": {"get": {
            "summary": "This document", "security": _SECURED,
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document"),
                          **_errors(401)}}},
        "/": {"get": {"summary": "The web page: upload a zip, follow it, see the results",
                      "responses": {"200": {"description": "HTML", "content": {
                          "text/html": {"schema": {"type": "string"}}}}}}},
        "/static/{name}": {"get": {
            "summary": "The page's script, style and icon",
            "parameters": [{"name": "name", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The file", "content": {
                "text/javascript": {"schema": {"type": "string"}},
                "text/css": {"schema": {"type": "string"}},
                "image/svg+xml": {"schema": {"type": "string"}}}},
                **_errors(404)}}},
        "/metrics": {"get": {
            "summary": "Prometheus metrics (behind the token when OILSPILL_METRICS_PUBLIC=0)",
            "security": [{}, {"bearer": []}],
            "responses": {"200": {"description": "Prometheus text format", "content": {
                "text/plain": {"schema": {"type": "string"}}}}, **_errors(401)}}},
        "/healthz": {"get": {
            "summary": "Liveness: the database answers",
            "responses": {"200": _json(_ref("Health"), "Healthy"),
                          "503": _json(_ref("Error"), "The database does not answer")}}},
    }


def document() -> dict[str, Any]:
    """The OpenAPI 3.1 document of this service."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "oilspill", "version": __version__,
                 "description": "Turns a zip of sea images into oil-spill masks."},
        "paths": _paths(),
        "components": {"schemas": _SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "Only when OILSPILL_API_TOKEN is set"}}},
    }
