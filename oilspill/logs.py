"""Logging set-up for the command line: one line per event, plain or JSON.

Messages carry text from outside (upload names, paths inside a zip, an ML service's
answers). Whatever it holds, a record stays one line that nobody can forge: in plain lines
control characters are written as escapes (`\\n`, `\\x1b`, `\\u202e`) and a traceback's
lines are indented under their record; in JSON lines the text is kept exactly, inside one
JSON string with every such character escaped.
"""

from __future__ import annotations

import json
import logging
import re
import time
from types import TracebackType

from .names import CONTROL_CHARS

PLAIN_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"
CONTINUATION = "  "  # before each further line of a record (its traceback)
ExcInfo = (tuple[type[BaseException], BaseException, TracebackType | None]
           | tuple[None, None, None])
_SHORT_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    char = match.group()
    if char in _SHORT_ESCAPES:
        return _SHORT_ESCAPES[char]
    code = ord(char)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def escape_controls(text: str) -> str:
    """`text` on one line: control, line-breaking and bidi characters as escapes."""
    return CONTROL_CHARS.sub(_escape, text)


def _continued(text: str) -> str:
    """Further lines of a record (a traceback), each escaped and indented under it."""
    return "\n".join(CONTINUATION + escape_controls(line) for line in text.split("\n"))


class PlainFormatter(logging.Formatter):
    """`time level logger message`, the message on one line; a traceback follows indented."""

    def __init__(self) -> None:
        super().__init__(PLAIN_FORMAT)

    def format(self, record: logging.LogRecord) -> str:
        # A copy: other handlers (a test's capture) see the record as it was.
        safe = logging.makeLogRecord(record.__dict__)
        safe.msg, safe.args = escape_controls(record.getMessage()), None
        # Made again from exc_info by formatException below, never a cached plain one.
        safe.exc_text = None if record.exc_info else (
            _continued(record.exc_text) if record.exc_text else None)
        return super().format(safe)

    def formatException(self, ei: ExcInfo) -> str:
        return _continued(super().formatException(ei))

    def formatStack(self, stack_info: str) -> str:
        return _continued(super().formatStack(stack_info))


def _json_escape(match: re.Match[str]) -> str:
    return f"\\u{ord(match.group()):04x}"


class JsonFormatter(logging.Formatter):
    """One JSON object a line: time, level, logger, message (and the error, if any)."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname, "logger": record.name, "message": record.getMessage(),
        }
        if record.exc_info:
            entry["error"] = self.formatException(record.exc_info)
        # json escapes C0 controls itself; with ensure_ascii=False it leaves C1 controls,
        # U+2028/2029 (line breaks to many readers) and bidi overrides as they are.
        return CONTROL_CHARS.sub(_json_escape, json.dumps(entry, ensure_ascii=False))


def configure(level: str, as_json: bool) -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if as_json else PlainFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # The access log repeats every request; the metrics count them instead.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
