"""The web page: one HTML file, its scripts and a style sheet shipped in the package.

No build step, no CDN: it works offline at a field station. `tus.min.js` is tus-js-client,
vendored as published (static/VENDORED.md).
"""

from __future__ import annotations

from pathlib import Path

from aiohttp import web

from .middlewares import ApiError

STATIC_DIR = Path(__file__).with_name("static")
# Only these names are ever served: nothing else under the folder, no path in a name.
_STATIC = {"app.js": "text/javascript", "upload.js": "text/javascript",
           "tus.min.js": "text/javascript", "style.css": "text/css",
           "favicon.svg": "image/svg+xml"}


async def index(request: web.Request) -> web.FileResponse:
    """GET /: the page."""
    return web.FileResponse(STATIC_DIR / "index.html",
                            headers={"Content-Type": "text/html; charset=utf-8"})


async def static_file(request: web.Request) -> web.FileResponse:
    """GET /static/{name}: the page's scripts and style."""
    name = request.match_info["name"]
    if name not in _STATIC:
        raise ApiError(404, "not_found", "no such file")
    return web.FileResponse(STATIC_DIR / name, headers={"Content-Type": _STATIC[name]})
