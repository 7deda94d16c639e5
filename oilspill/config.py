"""Settings: every knob of the service, read once from the environment into a frozen dataclass.

Each setting is declared once, with its variable name, default, bounds and help text; the
README table is generated from these declarations (`oilspill settings`). No other module
reads `os.environ`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB

DEFAULT_ML_SERVICE_URL = "http://localhost:8002"


class ConfigError(ValueError):
    """A setting has a bad value; the message names the variable."""


def _setting(env: str, default: Any, help: str, lo: float | None = None,
             hi: float | None = None) -> Any:
    return field(default=default, metadata={"env": env, "help": help, "lo": lo, "hi": hi})


@dataclass(frozen=True)
class MLEndpoint:
    """One endpoint of ML_SERVICE_URL: `url` without its fragment (credentials kept, for
    the calls), `limit` its own calls in flight (None: OILSPILL_CONCURRENCY)."""

    url: str
    limit: int | None = None

    @property
    def spelled(self) -> str:
        """As it is written in ML_SERVICE_URL (normalised)."""
        return self.url if self.limit is None else f"{self.url}#limit={self.limit}"


_ENDPOINT = re.compile(r"^https?://[^/\s#?]+(/[^\s#?]*)?$", re.IGNORECASE)
_OIP_PATH = re.compile(r"/v2/models(/|$)")
_OIP_MODEL = re.compile(r"/v2/models/[^/]+(/versions/[^/]+)?(/infer)?$")
_LIMIT = re.compile(r"^limit=(\d+)$")
_USERINFO = re.compile(r"//[^/@\s]*@")
MAX_ENDPOINT_LIMIT = 1024


def ml_endpoints(raw: str) -> tuple[MLEndpoint, ...]:
    """Parse ML_SERVICE_URL: comma-separated `http(s)://host[:port][/path][#limit=N]`; a
    path holding `/v2/models/` must name a model (`/v2/models/<name>[/versions/<v>]`).
    Raises ConfigError naming the variable and the bad part."""
    endpoints: list[MLEndpoint] = []
    for part in raw.split(","):
        url, _, fragment = part.strip().partition("#")
        spelled = _USERINFO.sub("//***@", part.strip())  # as shown in an error: no password
        url = url.rstrip("/")
        if not _ENDPOINT.match(url):
            raise ConfigError(f"ML_SERVICE_URL: {spelled!r} is not http(s)://host[:port] or "
                              "http(s)://host[:port]/v2/models/<name> (a list is "
                              "comma-separated)")
        if _OIP_PATH.search(url) and not _OIP_MODEL.search(url):
            raise ConfigError(f"ML_SERVICE_URL: {spelled!r}: an Open Inference Protocol URL "
                              "is http(s)://host[:port]/v2/models/<name>[/versions/<v>]")
        limit = None
        if fragment:
            match = _LIMIT.match(fragment)
            if match is None or not 1 <= int(match.group(1)) <= MAX_ENDPOINT_LIMIT:
                raise ConfigError(f"ML_SERVICE_URL: {spelled!r}: the only fragment is "
                                  f"#limit=N, N from 1 to {MAX_ENDPOINT_LIMIT}")
            limit = int(match.group(1))
        endpoints.append(MLEndpoint(url, limit))
    urls = [e.url for e in endpoints]
    if duplicate := next((u for u in urls if urls.count(u) > 1), None):
        raise ConfigError(f"ML_SERVICE_URL lists {_USERINFO.sub('//***@', duplicate)!r} "
                          "twice: raise its #limit=N instead")
    return tuple(endpoints)


@dataclass(frozen=True)
class Settings:
    """The service's configuration. Sizes are bytes, durations seconds."""

    host: str = _setting("OILSPILL_HOST", "127.0.0.1", "Address the API listens on.")
    port: int = _setting("OILSPILL_PORT", 8000, "Port the API listens on.", 0, 65535)
    data_dir: Path = _setting(
        "OILSPILL_DATA_DIR", Path("./data"),
        "Folder for the database and every job's files; nothing is written elsewhere.")
    ml_service_url: str = _setting(
        "ML_SERVICE_URL", DEFAULT_ML_SERVICE_URL,
        "The ML service: one URL or a comma-separated list of endpoints, each "
        "`http(s)://host:port` (the /segment contract) or `http(s)://host:port/v2/models/"
        "<name>[/versions/<v>]` (Open Inference Protocol v2), optionally ending in "
        "`#limit=N` (its own OILSPILL_CONCURRENCY). When unset, `oilspill serve` also runs "
        "the bundled ML stub on 127.0.0.1:8002.")
    concurrency: int = _setting(
        "OILSPILL_CONCURRENCY", 4,
        "Calls in flight at once per ML endpoint (a URL's `#limit=N` overrides it).", 1, 1024)
    ml_batch: int = _setting(
        "OILSPILL_ML_BATCH", 8,
        "Most images of one size sent in one request to an OIP v2 endpoint whose model takes "
        "a batch dimension (only those already waiting: no wait for more); 1: no batching.",
        1, 256)
    max_upload_bytes: int = _setting(
        "OILSPILL_MAX_UPLOAD_BYTES", 1 * GIB,
        "Largest accepted upload (the zip, image or scene as sent); larger gets 413.", 1)
    upload_idle_s: float = _setting(
        "OILSPILL_UPLOAD_IDLE_S", 60.0,
        "An upload whose body sends nothing for this long is refused (408) and what it left "
        "is removed.", 0.1, 86400)
    ml_timeout_s: float = _setting(
        "OILSPILL_ML_TIMEOUT_S", 60.0, "Total time allowed for one call to the ML service.",
        0.01, 86400)
    ml_connect_timeout_s: float = _setting(
        "OILSPILL_ML_CONNECT_TIMEOUT_S", 10.0,
        "Time allowed to connect to the ML service.", 0.01, 3600)
    max_ml_response_bytes: int = _setting(
        "OILSPILL_MAX_ML_RESPONSE_BYTES", 256 * MIB,
        "Largest answer accepted from the ML service for one image.", 1)
    min_free_bytes: int = _setting(
        "OILSPILL_MIN_FREE_BYTES", 512 * MIB,
        "Uploads get 507 when the data folder's file system has less free space than this "
        "(or would have, after the upload's announced size).", 0)
    max_image_pixels: int = _setting(
        "OILSPILL_MAX_IMAGE_PIXELS", 100_000_000,
        "Largest plain image (PNG, JPEG, BMP), in pixels (width x height); larger images "
        "become failed tasks. Pillow's decompression-bomb guard is set to match. TIFF "
        "scenes have OILSPILL_MAX_SCENE_PIXELS.", 1)
    tile_px: int = _setting(
        "OILSPILL_TILE_PX", 1024,
        "A TIFF scene is cut into tiles of this many pixels a side, each one unit of work "
        "sent to the ML service.", 64, 16384)
    tile_overlap_px: int = _setting(
        "OILSPILL_TILE_OVERLAP_PX", 128,
        "Overlap between neighbouring tiles; in the overlap the tile whose centre is nearer "
        "wins. Must be under half of OILSPILL_TILE_PX.", 0, 8192)
    max_scene_pixels: int = _setting(
        "OILSPILL_MAX_SCENE_PIXELS", 1_000_000_000,
        "Largest scene (TIFF or Sentinel-1 product), in pixels, checked from its header "
        "before any pixel is read.", 1)
    scene_band: int = _setting(
        "OILSPILL_SCENE_BAND", 1, "The band of a multi-band TIFF scene that is analysed.",
        1, 1_000_000)
    s1_polarisation: str = _setting(
        "OILSPILL_S1_POLARISATION", "vv",
        "The polarisation of a Sentinel-1 product that is analysed: vv, vh, hh or hv.")
    overlay_max_px: int = _setting(
        "OILSPILL_OVERLAY_MAX_PX", 1024,
        "Longest side of the overlay pictures (the input in grey with the oil tinted).",
        16, 16384)
    max_slicks: int = _setting(
        "OILSPILL_MAX_SLICKS", 2000,
        "Most slicks of one image or scene outlined in its GeoJSON and overlay: the largest. "
        "Every slick is still counted; a mask of noise costs a labelling per block instead "
        "of a polygon per speck.", 0, 10_000_000)
    max_zip_entries: int = _setting(
        "OILSPILL_MAX_ZIP_ENTRIES", 10_000, "Most entries an uploaded zip may have.", 1)
    max_unpacked_bytes: int = _setting(
        "OILSPILL_MAX_UNPACKED_BYTES", 8 * GIB,
        "Most bytes an upload may unpack to, counted as they are decompressed.", 1)
    max_compression_ratio: float = _setting(
        "OILSPILL_MAX_COMPRESSION_RATIO", 200.0,
        "Highest uncompressed:compressed ratio of one zip entry.", 1)
    ml_max_attempts: int = _setting(
        "OILSPILL_ML_MAX_ATTEMPTS", 5,
        "Calls per image at most when the ML service has trouble (429, 5xx, timeouts, "
        "connection errors); then the task fails with the last reason.", 1, 1000)
    ml_retry_base_s: float = _setting(
        "OILSPILL_ML_RETRY_BASE_S", 0.5,
        "First retry back-off ceiling; doubles per attempt, with full jitter.", 0, 3600)
    ml_retry_max_s: float = _setting(
        "OILSPILL_ML_RETRY_MAX_S", 60.0,
        "Longest back-off between two attempts (Retry-After is honoured up to this).", 0, 86400)
    ml_pause_after: int = _setting(
        "OILSPILL_ML_PAUSE_AFTER", 3,
        "Consecutive connection failures after which the pool pauses and probes the ML "
        "service's /health until it answers; with several endpoints, failures in a row (5xx, "
        "timeouts) after which one is taken out of rotation while another is in it (one that "
        "cannot be reached is at once).", 1, 1000)
    shutdown_grace_s: float = _setting(
        "OILSPILL_SHUTDOWN_GRACE_S", 20.0,
        "On SIGTERM/SIGINT, how long calls in flight may finish; the rest are re-queued.",
        0, 3600)
    cleanup_interval_s: float = _setting(
        "OILSPILL_CLEANUP_INTERVAL_S", 600.0, "How often the retention job runs.", 0.1, 86400)
    retention_s: float = _setting(
        "OILSPILL_RETENTION_S", 86400.0,
        "Finished jobs older than this are deleted with their files (their URLs then "
        "answer 410).", 0, 10 * 365 * 86400)
    orphan_age_s: float = _setting(
        "OILSPILL_ORPHAN_AGE_S", 3600.0,
        "Job folders with no job row (a partial upload) untouched this long are removed.",
        60, 10 * 365 * 86400)
    tombstone_s: float = _setting(
        "OILSPILL_TOMBSTONE_S", 30 * 86400.0,
        "How long a deleted job's ids answer 410 Gone before they answer 404.", 0,
        10 * 365 * 86400)
    upload_expiry_s: float = _setting(
        "OILSPILL_UPLOAD_EXPIRY_S", 86400.0,
        "A resumable upload (tus, /api/uploads/) is removed this long after the last bytes it "
        "received; a finished one's record (its job id, or why it was refused) is kept this "
        "long after it finished.", 1, 10 * 365 * 86400)
    api_token: str = _setting(
        "OILSPILL_API_TOKEN", "",
        "When set, every /api/ call needs `Authorization: Bearer <token>`; /healthz stays "
        "open. Empty: no authentication (a warning is logged when listening beyond loopback).")
    cors_origins: str = _setting(
        "OILSPILL_CORS_ORIGINS", "",
        "Comma-separated origins allowed to call the API from a browser on another origin, "
        "e.g. `http://localhost:3000` for the original web front end; `*`: any origin; "
        "empty: no CORS headers.")
    metrics_public: bool = _setting(
        "OILSPILL_METRICS_PUBLIC", True,
        "1: GET /metrics is open (for a Prometheus on the same network); 0: it needs the "
        "token like /api/.")
    log_json: bool = _setting(
        "OILSPILL_LOG_JSON", False, "1: log one JSON object a line; 0: plain text lines.")
    log_level: str = _setting(
        "OILSPILL_LOG_LEVEL", "INFO", "Logging level: DEBUG, INFO, WARNING or ERROR.")
    bundled_ml_stub: bool = field(default=False, metadata={"env": None})
    """Derived: `oilspill serve` starts the bundled stub (ML_SERVICE_URL was not set)."""

    @property
    def cors_origin_set(self) -> frozenset[str]:
        return frozenset(o.strip().rstrip("/") for o in self.cors_origins.split(",") if o.strip())

    @property
    def ml_endpoint_list(self) -> tuple[MLEndpoint, ...]:
        """The ML endpoints ML_SERVICE_URL lists (ConfigError for a bad one)."""
        return ml_endpoints(self.ml_service_url)

    @property
    def db_path(self) -> Path:
        return self.data_dir / "oilspill.sqlite3"

    @property
    def jobs_dir(self) -> Path:
        return self.data_dir / "jobs"

    def with_changes(self, **changes: Any) -> Settings:
        """A copy with some fields replaced (for tests and the demo)."""
        return replace(self, **changes)


_SIZE = re.compile(r"^\s*(\d+)\s*([kmgt]i?b?)?\s*$", re.IGNORECASE)
_UNITS = {"k": KIB, "m": MIB, "g": GIB, "t": 1024 * GIB}
_LOG_LEVELS = {"DEBUG", "INFO", "WARNING", "ERROR"}


def _parse(name: str, kind: Any, raw: str) -> Any:
    if kind in ("int", int):
        match = _SIZE.match(raw)
        if not match:
            raise ConfigError(f"{name}={raw!r}: expected a whole number (sizes may end in K, M, G)")
        unit = match.group(2)
        return int(match.group(1)) * (_UNITS[unit[0].lower()] if unit else 1)
    if kind in ("float", float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"{name}={raw!r}: expected a number") from None
    if kind in ("bool", bool):
        if raw.strip().lower() in ("1", "true", "yes", "on"):
            return True
        if raw.strip().lower() in ("0", "false", "no", "off", ""):
            return False
        raise ConfigError(f"{name}={raw!r}: expected 1 or 0")
    if kind in ("Path", Path):
        if not raw.strip():
            raise ConfigError(f"{name} is empty: expected a folder path")
        return Path(raw)
    return raw.strip()


def _check(name: str, value: Any, lo: float | None, hi: float | None) -> None:
    if lo is not None and value < lo:
        raise ConfigError(f"{name}={value}: must be at least {lo:g}")
    if hi is not None and value > hi:
        raise ConfigError(f"{name}={value}: must be at most {hi:g}")


def from_env(env: Mapping[str, str]) -> Settings:
    """Parse and range-check every setting; raise ConfigError naming the first bad variable."""
    known = {f.metadata["env"] for f in fields(Settings) if f.metadata.get("env")}
    unknown = sorted(k for k in env if k.startswith("OILSPILL_") and k not in known)
    if unknown:
        raise ConfigError(f"{unknown[0]}: unknown setting (see `oilspill settings`)")
    values: dict[str, Any] = {}
    for f in fields(Settings):
        name = f.metadata.get("env")
        if not name or name not in env:
            continue
        value = _parse(name, f.type, env[name])
        _check(name, value, f.metadata["lo"], f.metadata["hi"])
        values[f.name] = value
    if "log_level" in values:
        values["log_level"] = values["log_level"].upper()
        if values["log_level"] not in _LOG_LEVELS:
            raise ConfigError(f"OILSPILL_LOG_LEVEL={env['OILSPILL_LOG_LEVEL']!r}: "
                              f"expected one of {', '.join(sorted(_LOG_LEVELS))}")
    if "s1_polarisation" in values:
        values["s1_polarisation"] = values["s1_polarisation"].lower()
        if values["s1_polarisation"] not in {"vv", "vh", "hh", "hv"}:
            raise ConfigError(f"OILSPILL_S1_POLARISATION={env['OILSPILL_S1_POLARISATION']!r}: "
                              "expected vv, vh, hh or hv")
    tile_px = values.get("tile_px", Settings.tile_px)
    if 2 * values.get("tile_overlap_px", Settings.tile_overlap_px) >= tile_px:
        raise ConfigError(f"OILSPILL_TILE_OVERLAP_PX must be under half of OILSPILL_TILE_PX "
                          f"({tile_px})")
    if "ml_service_url" in values:
        endpoints = ml_endpoints(values["ml_service_url"])  # ConfigError naming the URL
        values["ml_service_url"] = ",".join(e.spelled for e in endpoints)
    values["bundled_ml_stub"] = "ML_SERVICE_URL" not in env
    return Settings(**values)


def settings_table() -> str:
    """The settings as a Markdown table, for the README."""
    rows = ["| variable | default | meaning |", "| --- | --- | --- |"]
    for f in fields(Settings):
        name = f.metadata.get("env")
        if name:
            default = f.default
            if isinstance(default, bool):
                shown = "1" if default else "0"
            elif isinstance(default, int) and default >= MIB and default % MIB == 0:
                shown = f"{default} ({default // MIB} MiB)" if default < GIB else (
                    f"{default} ({default // GIB} GiB)")
            else:
                shown = str(default)
            shown = f"`{shown}`" if shown else "*(empty)*"
            rows.append(f"| `{name}` | {shown} | {f.metadata['help']} |")
    return "\n".join(rows)


@dataclass(frozen=True)
class SceneSettings:
    """The settings a scene's work depends on (see scenes.py), from the service's."""

    tile_px: int
    overlap_px: int
    band: int
    max_pixels: int
    overlay_max_px: int
    max_slicks: int

    @classmethod
    def of(cls, settings: Settings) -> SceneSettings:
        return cls(tile_px=settings.tile_px, overlap_px=settings.tile_overlap_px,
                   band=settings.scene_band, max_pixels=settings.max_scene_pixels,
                   overlay_max_px=settings.overlay_max_px, max_slicks=settings.max_slicks)
