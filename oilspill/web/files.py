"""Result files served for links that drop: `Range` (206), `Accept-Ranges`, a strong `ETag`
(the file's modification time and size, the same after a restart), and `If-Range` with an
entity tag as well as a date (aiohttp's FileResponse reads it only as a date: a resumed
download of a file that has changed since must get the whole new file, not a piece of it)."""

from __future__ import annotations

import asyncio

from aiohttp import hdrs, web
from aiohttp.abc import AbstractStreamWriter
from aiohttp.web_request import BaseRequest
from multidict import CIMultiDict


class ResultFile(web.FileResponse):
    """A FileResponse that honours an entity tag in If-Range."""

    async def prepare(self, request: BaseRequest) -> AbstractStreamWriter | None:
        if_range = request.headers.get(hdrs.IF_RANGE, "")
        if hdrs.RANGE in request.headers and if_range.startswith(('"', "W/")):
            st = await asyncio.to_thread(self._path.stat)
            # A weak tag never matches for ranges (RFC 9110 13.1.5).
            if if_range != f'"{st.st_mtime_ns:x}-{st.st_size:x}"':
                headers = CIMultiDict(request.headers)
                del headers[hdrs.RANGE]
                request = request.clone(headers=headers)
        return await super().prepare(request)
