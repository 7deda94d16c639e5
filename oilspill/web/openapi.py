"""The API's OpenAPI 3 description, served at /api/openapi.json.

A test compares its paths and methods with the app's routes, so the two cannot drift.
"""

from __future__ import annotations

from typing import Any

from .. import __version__
from .tus import OPENAPI_PATHS as TUS_PATHS

_UUID = {"type": "string", "format": "uuid"}
_TIME = {"type": ["string", "null"], "format": "date-time"}
_USER_HASH = {"type": "string", "pattern": "^[0-9a-f]{32}$",
              "description": "the job's handle for the original front end's routes: 128 "
                             "random bits of its own, not derived from the job id"}
_COUNT = {"type": "integer", "minimum": 0}


_MEASURE = {"type": ["number", "null"], "minimum": 0}
_LON = {"type": "number", "minimum": -180, "maximum": 180}
_LAT = {"type": "number", "minimum": -90, "maximum": 90}
_BOUNDS = {"type": ["array", "null"], "prefixItems": [_LON, _LAT, _LON, _LAT],
           "minItems": 4, "maxItems": 4,
           "description": "the footprint in degrees: [west, south, east, north] (west > east "
                          "across the antimeridian); null without a georeference"}
_LATLON = {"type": ["array", "null"], "prefixItems": [_LAT, _LON], "minItems": 2,
           "maxItems": 2, "description": "the largest slick's centroid: [latitude, "
                                         "longitude] in degrees; null without a "
                                         "georeference"}
# A GeoJSON polygon's rings: closed, of [x, y] positions (lon/lat, or pixels).
_RING = {"type": "array", "minItems": 4, "items": {
    "type": "array", "minItems": 2, "maxItems": 3, "items": {"type": "number"}}}
_POLYGON = {"type": "array", "minItems": 1, "items": _RING}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


_REASONS = {400: "Bad request", 401: "Missing or wrong token", 404: "Not found",
            409: "Not finished yet", 410: "Deleted", 413: "Too large",
            415: "Not multipart", 422: "No usable image", 503: "Shutting down",
            507: "Not enough disk space"}

# What an upload's refusals mean, by the `code` of the error body.
_UPLOAD_REASONS = {
    400: "Bad request: `bad_multipart`, `missing_file`, `too_many_files`, or `not_a_zip` "
         "(the upload is neither a zip nor an image, or is a corrupt zip)",
    413: "Too large: `upload_too_large` (OILSPILL_MAX_UPLOAD_BYTES), `archive_too_large` "
         "(a zip past an unpacking limit) or `scene_too_large` (a scene of more pixels than "
         "OILSPILL_MAX_SCENE_PIXELS, read from its header)",
    422: "Nothing usable: `no_images` (a zip without an image), `unreadable_scene` (a bare "
         "TIFF that is not a usable scene: unreadable, truncated, of an unsupported data "
         "type, or without the band OILSPILL_SCENE_BAND) or `bad_sentinel1_product` (a zip "
         "holding a Sentinel-1 SAFE product that cannot be used: not GRD, more than one, "
         "or without one measurement of OILSPILL_S1_POLARISATION)",
}


def _geojson(description: str) -> dict[str, Any]:
    return {"description": description,
            "content": {"application/geo+json": {"schema": _ref("SpillCollection")}}}


def _errors(*statuses: int, reasons: dict[int, str] | None = None) -> dict[str, Any]:
    return {str(s): _json(_ref("Error"), (reasons or {}).get(s, _REASONS[s]))
            for s in statuses}


def _id_param(name: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "schema": _UUID}


def _event(name: str, schema: str) -> dict[str, Any]:
    """An event named `name` whose data is the JSON of `schema`."""
    return {"type": "object", "required": ["event", "data"],
            "properties": {"event": {"const": name},
                           "data": {"type": "string", "contentMediaType": "application/json",
                                    "contentSchema": _ref(schema)}}}


_PAGE_PARAMS = [
    {"name": "offset", "in": "query", "required": False,
     "schema": {"type": "integer", "format": "int64", "minimum": 0, "maximum": 2**63 - 1,
                "default": 0}},
    {"name": "limit", "in": "query", "required": False,
     "schema": {"type": "integer", "minimum": 1, "maximum": 1000, "default": 500}}]

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
        "type": "object", "required": ["job_id", "user_hash", "task_ids", "status", "skipped",
                                       "skipped_total", "skipped_url"],
        "properties": {"job_id": _UUID, "user_hash": _USER_HASH,
                       "task_ids": {"type": "array", "items": _UUID},
                       "status": {"const": "queued"},
                       "skipped": {"type": "array", "maxItems": 100, "items": _ref("Skipped"),
                                   "description": "the first 100 entries the upload skipped"},
                       "skipped_total": {"type": "integer", "minimum": 0,
                                         "description": "how many entries it skipped in all"},
                       "skipped_url": {"type": "string",
                                       "description": "all of them, a page at a time"},},
    },
    "CeleryStatus": {
        "type": "object",
        "required": ["status", "result", "job_id", "total", "queued", "running", "done",
                     "failed", "tiles_total", "tiles_done"],
        "properties": {
            "status": {"enum": ["PENDING", "STARTED", "SUCCESS", "FAILURE"]},
            "result": {"type": ["object", "null"],
                       "required": ["archive", "processed_files", "errors"],
                       "properties": {
                           "archive": {"type": "string",
                                       "description": "where the result zip downloads"},
                           "processed_files": {"type": "array", "items": {"type": "string"}},
                           "errors": {"type": "array", "items": {
                               "type": "object", "required": ["file", "error"],
                               "properties": {"file": {"type": "string"},
                                              "error": {"type": "string"}}}}}},
            "job_id": _UUID, "total": _COUNT, "queued": _COUNT, "running": _COUNT,
            "done": _COUNT, "failed": _COUNT, "tiles_total": _COUNT, "tiles_done": _COUNT},
    },
    "TaskResult": {
        "type": ["object", "null"],
        "required": ["oil_fraction", "oil_pixels", "slick_count", "largest_slick_px", "width",
                     "height", "mask_url", "overlay_url", "picture_url", "crs",
                     "bounds_lonlat", "total_area_km2", "spills_url"],
        "properties": {
            "oil_fraction": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
            "oil_pixels": {"type": ["integer", "null"], "minimum": 0},
            "slick_count": {"type": ["integer", "null"], "minimum": 0},
            "largest_slick_px": {"type": ["integer", "null"], "minimum": 0},
            "overlay_url": {"type": ["string", "null"]},
            "width": {"type": "integer"}, "height": {"type": "integer"},
            "mask_url": {"type": ["string", "null"],
                         "description": "a PNG; for a scene, a GeoTIFF (COG) with its "
                                        "georeference: 0 sea, 255 oil, 127 no data"},
            "picture_url": {"type": ["string", "null"]},
            "crs": {"type": ["string", "null"],
                    "description": "a scene's CRS (as result.scene.crs); null for a picture"},
            "bounds_lonlat": _BOUNDS,
            "total_area_km2": {**_MEASURE, "description": "the geodesic area of its slicks in "
                                                     "its GeoJSON (all of them, or the "
                                                     "largest OILSPILL_MAX_SLICKS) in km²; "
                                                     "null without a georeference"},
            "spills_url": {"type": ["string", "null"],
                           "description": "its slicks as GeoJSON (/api/task/{task_id}/"
                                          "spills.geojson), for every mask; null for a "
                                          "picture"},
            "scene": _ref("Scene")},
    },
    "Scene": {
        "type": "object",
        "description": "Only in a done scene's result (a TIFF, GeoTIFF, BigTIFF or Sentinel-1 "
                       "product cut into tiles); oil_fraction & co count its valid area",
        "required": ["georeference", "crs", "band", "dtype", "calibrated", "valid_pixels",
                     "tiles", "scale"],
        "properties": {
            "georeference": {"enum": ["affine", "gcps", None],
                             "description": "a CRS and transform, ground control points "
                                            "(radar geometry), or none"},
            "crs": {"type": ["string", "null"],
                    "description": "\"EPSG:<code>\" when it has one, else its WKT"},
            "band": {"type": "integer", "minimum": 1,
                     "description": "the band analysed (OILSPILL_SCENE_BAND)"},
            "dtype": {"enum": ["uint8", "uint16", "int16", "float32"]},
            "calibrated": {"type": "boolean",
                           "description": "sigma0 from a Sentinel-1 calibration table"},
            "valid_pixels": {"type": "integer", "minimum": 0,
                             "description": "pixels inside the scene's valid area"},
            "tiles": {"type": "integer", "minimum": 1,
                      "description": "tiles it was cut into (the overview not counted)"},
            "scale": _ref("SceneScale"),
            "slick_polygons": {"type": "integer", "minimum": 0,
                               "description": "slicks in its GeoJSON: all of them, or the "
                                              "largest OILSPILL_MAX_SLICKS (slick_count "
                                              "counts them all)"},
            "total_area_km2": {**_MEASURE, "description": "the geodesic area of the slicks in "
                                                     "its GeoJSON in km² (0 without any); "
                                                     "null without a georeference"},
            "largest_slick_km2": {**_MEASURE, "description": "the largest slick's area in km²"},
            "largest_slick_centroid": _LATLON,
            "bounds_lonlat": _BOUNDS},
    },
    "SceneScale": {
        "type": "object",
        "description": "The one grey scale all the scene's tiles were sent on: dB from "
                       "low_db (black) to high_db (white), the low_pct and high_pct "
                       "percentiles of its valid pixels; sea_db (the median) fills the area "
                       "outside its valid area",
        "required": ["db_kind", "low_pct", "high_pct", "low_db", "high_db", "sea_db",
                     "percentiles_db"],
        "properties": {
            "db_kind": {"enum": ["sigma0", "amplitude", "intensity", "db"]},
            "low_pct": {"type": "number", "minimum": 0, "maximum": 100},
            "high_pct": {"type": "number", "minimum": 0, "maximum": 100},
            "low_db": {"type": "number"}, "high_db": {"type": "number"},
            "sea_db": {"type": "number"},
            "percentiles_db": {"type": "object", "additionalProperties": {"type": "number"},
                               "description": "dB by percentile, e.g. {\"50\": 62.9}"}},
    },
    "Task": {
        "type": "object",
        "required": ["task_id", "job_id", "filename", "status", "attempts", "result", "error",
                     "tiles_total", "tiles_done"],
        "properties": {
            "task_id": _UUID, "job_id": _UUID, "filename": {"type": "string"},
            "status": {"enum": ["queued", "running", "done", "failed"]},
            "attempts": {"type": "integer", "minimum": 0}, "result": _ref("TaskResult"),
            "error": {"type": ["string", "null"]},
            "tiles_total": {"type": "integer", "minimum": 1,
                            "description": "units of work sent to the ML service: 1 for a "
                                           "plain image; for a scene, its tiles plus one "
                                           "overview (a scene of one tile: 1)"},
            "tiles_done": {"type": "integer", "minimum": 0,
                           "description": "of tiles_total, those done; equal to it once the "
                                          "task is finished, done or failed (a scene is "
                                          "stitched after its last tile, so a running scene "
                                          "may have every tile done)"}},
    },
    "Job": {
        "type": "object",
        "required": ["job_id", "status", "total", "queued", "running", "done", "failed",
                     "created_at", "finished_at", "upload_name", "tiles_total",
                     "tiles_done", "skipped", "skipped_total", "skipped_url",
                     "waiting_for_ml_service", "archive_url"],
        "properties": {
            "job_id": _UUID, "status": {"enum": ["queued", "running", "done", "failed"]},
            **{k: {"type": "integer", "minimum": 0}
               for k in ("total", "queued", "running", "done", "failed")},
            "created_at": _TIME, "finished_at": _TIME, "upload_name": {"type": "string"},
            "tiles_total": {"type": "integer", "minimum": 0,
                            "description": "the tiles_total of all its tasks: the units of "
                                           "work to count progress by"},
            "tiles_done": {"type": "integer", "minimum": 0,
                           "description": "the tiles_done of all its tasks"},
            "skipped": {"type": "array", "maxItems": 100, "items": _ref("Skipped"),
                        "description": "the first 100 entries the upload skipped"},
            "skipped_total": {"type": "integer", "minimum": 0,
                              "description": "how many entries it skipped in all"},
            "skipped_url": {"type": "string",
                            "description": "all of them, a page at a time"},
            "waiting_for_ml_service": {"type": "boolean"},
            "archive_url": {"type": ["string", "null"]}},
    },
    "Event": {
        "description": "One server-sent event; its data is JSON",
        "oneOf": [_event("progress", "Job"), _event("end", "Job"), _event("task", "Task"),
                  _event("gone", "Gone")],
    },
    "Gone": {
        "type": "object", "required": ["job_id"], "properties": {"job_id": _UUID},
    },
    "SkippedPage": {
        "type": "object", "required": ["job_id", "total", "offset", "limit", "skipped"],
        "properties": {"job_id": _UUID, "total": {"type": "integer", "minimum": 0},
                       "offset": {"type": "integer", "minimum": 0},
                       "limit": {"type": "integer", "minimum": 1},
                       "skipped": {"type": "array", "items": _ref("Skipped")}},
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
    "SpillCollection": {
        "type": "object", "required": ["type", "features"],
        "description": "RFC 7946 GeoJSON: the slicks of a task (or of a job's tasks; at "
                       "most OILSPILL_MAX_SLICKS an image, the largest), largest first. "
                       "Lon/lat (WGS84) without a `crs` member, exterior rings "
                       "counter-clockwise, holes clockwise, 7 decimals; a slick across the "
                       "antimeridian is cut there into a MultiPolygon. A picture without "
                       "georeference gives pixel coordinates (x = column, y = row of pixel "
                       "corners), marked by `\"properties\": {\"coordinates\": \"pixel\"}`, "
                       "its area, length and centroid null. A job's file holds its "
                       "georeferenced images' slicks, or, when none is georeferenced, every "
                       "picture's in pixels.",
        "properties": {
            "type": {"const": "FeatureCollection"},
            "features": {"type": "array", "items": _ref("Spill")},
            "properties": {"type": "object", "required": ["coordinates"],
                           "properties": {"coordinates": {"const": "pixel"}}}},
    },
    "Spill": {
        "type": "object", "required": ["type", "geometry", "properties"],
        "description": "One slick: an 8-connected area of oil in the mask, outlined",
        "properties": {
            "type": {"const": "Feature"},
            "geometry": {"oneOf": [_ref("Polygon"), _ref("MultiPolygon")]},
            "properties": _ref("SpillProperties")},
    },
    "SpillProperties": {
        "type": "object",
        "required": ["slick_id", "image", "area_km2", "perimeter_km", "length_km",
                     "centroid_lon", "centroid_lat", "pixels", "mean_contrast_db",
                     "confidence"],
        "properties": {
            "slick_id": {"type": "integer", "minimum": 1,
                         "description": "1..n within its image, largest first"},
            "image": {"type": ["string", "null"],
                      "description": "the image's path in the upload"},
            "area_km2": {**_MEASURE, "description": "geodesic area (WGS84), holes excluded"},
            "perimeter_km": {**_MEASURE, "description": "geodesic perimeter, holes included"},
            "length_km": {**_MEASURE, "description": "geodesic length along its minimum "
                                                 "rotated rectangle"},
            "centroid_lon": {"type": ["number", "null"], "minimum": -180, "maximum": 180},
            "centroid_lat": {"type": ["number", "null"], "minimum": -90, "maximum": 90},
            "pixels": {"type": "integer", "minimum": 1, "description": "its oil pixels"},
            "mean_contrast_db": {"type": ["number", "null"],
                                 "description": "its mean level against the scene's sea, "
                                                "in dB (negative: darker); null for a "
                                                "picture"},
            "confidence": {"type": ["number", "null"], "minimum": 0, "maximum": 1,
                           "description": "the ML service's, when it gives one"}},
    },
    "Polygon": {
        "type": "object", "required": ["type", "coordinates"],
        "properties": {"type": {"const": "Polygon"}, "coordinates": _POLYGON},
    },
    "MultiPolygon": {
        "type": "object", "required": ["type", "coordinates"],
        "properties": {"type": {"const": "MultiPolygon"},
                       "coordinates": {"type": "array", "minItems": 1, "items": _POLYGON}},
    },
    "MLEndpoint": {
        "type": "object",
        "required": ["url", "protocol", "reachable", "in_rotation", "in_flight", "limit",
                     "calls", "requests", "errors", "mean_latency_ms", "model", "binary",
                     "batch"],
        "properties": {
            "url": {"type": "string", "description": "the endpoint, without credentials"},
            "protocol": {"enum": ["segment", "oip"],
                         "description": "POST /segment, or the Open Inference Protocol v2"},
            "reachable": {"type": "boolean",
                          "description": "false from a failed request until an answer"},
            "in_rotation": {"type": "boolean",
                            "description": "calls are sent to it (false while it is probed)"},
            "in_flight": {"type": "integer", "minimum": 0, "description": "requests now"},
            "limit": {"type": "integer", "minimum": 1,
                      "description": "requests it may have in flight"},
            "calls": {"type": "integer", "minimum": 0, "description": "images answered"},
            "requests": {"type": "integer", "minimum": 0,
                         "description": "HTTP requests (a batch is one)"},
            "errors": {"type": "integer", "minimum": 0, "description": "failed requests"},
            "mean_latency_ms": {"type": ["number", "null"], "minimum": 0,
                                "description": "mean time of an answered request"},
            "model": {"type": ["string", "null"], "description": "the OIP model's name"},
            "binary": {"type": ["boolean", "null"],
                       "description": "OIP: binary tensor data (else JSON); null before "
                                      "its metadata is read"},
            "batch": {"type": "integer", "minimum": 1,
                      "description": "images one request may carry now"}},
    },
    "Health": {
        "type": "object", "required": ["status", "database", "ml_service", "ml_service_url",
                                       "ml_endpoints", "loop_lag_max_ms"],
        "properties": {"status": {"const": "ok"}, "database": {"const": "ok"},
                       "ml_service": {"enum": ["reachable", "unreachable"]},
                       "ml_service_url": {"type": "string",
                                          "description": "every endpoint, comma-separated, "
                                                         "without credentials"},
                       "ml_endpoints": {"type": "array", "items": _ref("MLEndpoint")},
                       "loop_lag_max_ms": {"type": "number", "minimum": 0,
                                           "description": "largest event-loop stall since "
                                                          "start, in milliseconds"}},
    },
}


def _operation_ref(path: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/get"


# An upload's first task, and its slicks (once it is done; 404 before).
_FIRST_TASK_LINKS = {
    name: {"operationRef": _operation_ref(path),
           "parameters": {"task_id": "$response.body#/task_ids/0"}}
    for name, path in (("FirstTask", "/api/task/{task_id}"),
                       ("FirstTaskSpills", "/api/task/{task_id}/spills.geojson"))}


def _paths() -> dict[str, Any]:
    upload = {
        "summary": "Upload a zip of images, or one image or scene; one task per image is "
                   "queued",
        "description": "The part `file` is recognised by its first bytes, whatever its name "
                       "or content type: a zip, or one bare image. A TIFF (GeoTIFF, "
                       "BigTIFF), bare or in the zip, is a scene: it is cut into tiles of "
                       "OILSPILL_TILE_PX, each sent to the ML service, and their masks are "
                       "stitched into one GeoTIFF mask (see the job's and tasks' tiles_total "
                       "and tiles_done). A Sentinel-1 GRD product (its .SAFE folder, zipped) "
                       "is one scene, calibrated to sigma0.",
        "security": _SECURED,
        "requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
            "type": "object", "required": ["file"],
            "properties": {"file": {
                "type": "string", "format": "binary",
                "description": "a zip of PNG, JPEG, TIFF or BMP images (or of one Sentinel-1 "
                               ".SAFE product), or one bare PNG, JPEG, BMP or TIFF/GeoTIFF/"
                               "BigTIFF file"}},
        }}}},
        "responses": {"202": {**_json(_ref("Accepted"), "Accepted: the job is queued"),
                              "links": _FIRST_TASK_LINKS},
                      **_errors(400, 401, 413, 415, 422, 503, 507,
                                reasons=_UPLOAD_REASONS)},
    }

    def task_file(summary: str, *media_types: str) -> dict[str, Any]:
        binary = {"schema": {"type": "string", "format": "binary"}}
        return {"get": {
            "summary": summary, "security": _SECURED, "parameters": [_id_param("task_id")],
            "responses": {"200": {"description": "The file",
                                  "content": {t: binary for t in media_types}},
                          **_errors(*_COMMON, 410)}}}
    return {
        **TUS_PATHS,
        "/api/upload/": {"post": upload},
        "/api/upload": {"post": {**upload, "summary": "The same, without the final slash"}},
        "/api/task/{task_id}": {"get": {
            "summary": "A task's status and result", "security": _SECURED,
            "parameters": [_id_param("task_id")],
            "responses": {"200": _json(_ref("Task"), "The task"), **_errors(*_COMMON, 410)}}},
        "/api/task/{task_id}/mask": task_file(
            "A done task's mask: a PNG, or for a scene a GeoTIFF (COG) with the scene's "
            "georeference", "image/png", "image/tiff"),
        "/api/task/{task_id}/overlay": task_file(
            "A done task's overlay: the input in grey, the oil tinted (PNG; for a scene, a "
            "quick-look of at most OILSPILL_OVERLAY_MAX_PX a side)", "image/png"),
        "/api/task/{task_id}/picture": task_file(
            "A done task's picture, when the ML service answered with one", "image/*"),
        "/api/task/{task_id}/spills.geojson": {"get": {
            "summary": "A done task's slicks as RFC 7946 GeoJSON",
            "description": "A scene's in lon/lat (written when it was stitched), a picture's "
                           "in pixel coordinates (made on first use). 404 when the task has "
                           "no mask (not done yet, failed, or a picture from a YOLO-style "
                           "service).",
            "security": _SECURED, "parameters": [_id_param("task_id")],
            "responses": {"200": _geojson("The slicks"),
                          **_errors(*_COMMON, 410)}}},
        "/api/job/{job_id}/spills.geojson": {"get": {
            "summary": "Every slick of a finished job in one GeoJSON file (a download)",
            "description": "Built once when first asked for, then kept; a few kilobytes "
                           "where the result zip may be gigabytes. 409 `job_not_finished` "
                           "while the job still has queued or running images.",
            "security": _SECURED, "parameters": [_id_param("job_id")],
            "responses": {"200": {**_geojson("The job's slicks"), "headers": {
                "Content-Disposition": {
                    "required": True, "schema": {"type": "string"},
                    "description": "attachment; filename=\"oilspill-spills-<job_id>."
                                   "geojson\""}}},
                **_errors(*_COMMON, 409, 410)}}},
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
            "parameters": [_id_param("job_id"), *_PAGE_PARAMS],
            "responses": {"200": _json(_ref("TaskPage"), "The page"),
                          **_errors(400, *_COMMON, 410)}}},
        "/api/job/{job_id}/skipped": {"get": {
            "summary": "What the upload skipped (not an image, unsafe, ...) and why, a page at "
                       "a time",
            "security": _SECURED,
            "parameters": [_id_param("job_id"), *_PAGE_PARAMS],
            "responses": {"200": _json(_ref("SkippedPage"), "The page"),
                          **_errors(400, *_COMMON, 410)}}},
        "/api/job/{job_id}/events": {"get": {
            "summary": "Live progress: server-sent events `progress`, `task`, `end`, `gone`",
            "description": "`progress`: the job (as GET /api/job/{job_id}) whenever its counts "
                           "change, tiles_done included; `task`: a task (as GET "
                           "/api/task/{task_id}) as it finishes; `end`: the job, finished, "
                           "and the stream closes; `gone`: the job was deleted. A comment "
                           "line now and then keeps a quiet stream open.",
            "security": _SECURED, "parameters": [_id_param("job_id")],
            "responses": {"200": {"description": "An event stream", "content": {
                "text/event-stream": {"schema": _ref("Event")}}},
                **_errors(*_COMMON, 410)}}},
        "/api/archive/{job_id}": {"get": {
            "summary": "Build (once) a finished job's result zip and link to it",
            "description": "`parts` (comma-separated: summary, spills, masks, overlays; "
                           "default all) builds a smaller zip of only those parts, each "
                           "choice once: `summary,spills` is a few kilobytes where the whole "
                           "zip may be gigabytes.",
            "security": _SECURED,
            "parameters": [_id_param("job_id"), {
                "name": "parts", "in": "query", "required": False,
                "schema": {"type": "string",
                           "pattern": "^(summary|spills|masks|overlays)"
                                      "(,(summary|spills|masks|overlays))*$"}}],
            "responses": {"200": _json(_ref("ArchiveLink"), "The link"),
                          **_errors(400, *_COMMON, 409, 410)}}},
        "/api/download/{filename}": {"get": {
            "summary": "Download a result zip, by its name or by the job's user hash",
            "description": "`filename` is either the name GET /api/archive/{job_id} linked "
                           "to (it ends in .zip), or a job's `user_hash` (32 hex digits, "
                           "for the original front end): then the zip is built on this "
                           "first request and named result_<user_hash>.zip; 409 "
                           "`job_not_finished` while the job runs.",
            "security": _SECURED,
            "parameters": [{"name": "filename", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": {"description": "The zip", "content": {"application/zip": {
                "schema": {"type": "string", "format": "binary"}}}, "headers": {
                    "Content-Disposition": {"required": True, "schema": {"type": "string"},
                                            "description": "attachment; filename=..."}}},
                **_errors(*_COMMON, 409, 410)}}},
        "/api/status/{job_id}": {"get": {
            "summary": "A job as the original backend answered: a Celery state",
            "description": "PENDING (queued), STARTED (running), SUCCESS (finished, at least "
                           "one image done), FAILURE (every image failed); `result` once "
                           "finished, in the original's shape; oilspill's counts beside.",
            "security": _SECURED, "parameters": [_id_param("job_id")],
            "responses": {"200": _json(_ref("CeleryStatus"), "The job"),
                          **_errors(*_COMMON, 410)}}},
        "/api/archive_time_left/{user_hash}": {"get": {
            "summary": "Seconds until retention removes a job's results (by user hash)",
            "description": "The whole OILSPILL_RETENTION_S while the job runs; 0 for an "
                           "unknown, deleted or expired job (never 404, as the original).",
            "security": _SECURED,
            "parameters": [{"name": "user_hash", "in": "path", "required": True,
                            "schema": {"type": "string"}}],
            "responses": {"200": _json({
                "type": "object", "required": ["seconds_left"],
                "properties": {"seconds_left": _COUNT}}, "Seconds left"), **_errors(401)}}},
        "/api/openapi.json": {"get": {
            "summary": "This document", "security": _SECURED,
            "responses": {"200": _json({"type": "object"}, "The OpenAPI document"),
                          **_errors(401)}}},
        "/": {"get": {"summary": "The web page: upload a zip or a scene, follow it, see the "
                                 "results",
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
                 "description": "Turns sea images (a zip of them, or one image or "
                                "GeoTIFF scene, cut into tiles) into oil-spill masks, and "
                                "their slicks into places: RFC 7946 GeoJSON."},
        "paths": _paths(),
        "components": {"schemas": _SCHEMAS, "securitySchemes": {
            "bearer": {"type": "http", "scheme": "bearer",
                       "description": "Only when OILSPILL_API_TOKEN is set"}}},
    }
