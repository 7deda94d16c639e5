"""Safe forms of text that comes from outside, each for the one place it goes.

An image's path in the upload and an upload's name are the user's; an ML service's error
text is the service's. The original is kept where it is data (the database, the API,
summary.json); what goes into an HTTP header, a path inside the result zip or a message
users read takes the form made here. Pure functions: no I/O.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Iterable, Sequence
from pathlib import PurePosixPath

# Line breaks, terminal controls and the bidirectional overrides that make text display in
# another order than it is stored ("gnp.exe" shown as "exe.png").
CONTROL_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028\u2029"
                           "\u202a-\u202e\u2066-\u2069]")
# Characters Windows refuses in a file name, besides the controls ('\\' is its separator).
_WINDOWS_FORBIDDEN = frozenset('<>:"|?*\\')
# Device names Windows reserves whatever the extension ("con.png" is the console too).
_DEVICES = frozenset({"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$",
                      *(f"{port}{n}" for port in ("COM", "LPT")
                        for n in (*"123456789", "\u00b9", "\u00b2", "\u00b3"))})
# Room for a clash's "~12" and an extension within the 255 bytes file systems allow.
MAX_PART_BYTES = 200
HEADER_STEM_CHARS = 100
# The extension the ML service sees, from the type the file was recognised as by content.
_EXTENSIONS = {"image/png": (".png",), "image/jpeg": (".jpg", ".jpeg", ".jpe"),
               "image/tiff": (".tif", ".tiff"), "image/bmp": (".bmp",)}
# Object reprs and absolute paths inside an error message: internals, not the user's terms.
_OBJECT_REPR = re.compile(r"\s*<[^<>]*\bat 0x[0-9A-Fa-f]+>")
_ABSOLUTE_PATH = re.compile(r"""\s*(?<![\w.\-~])(?:(['"])(?:[A-Za-z]:)?[\\/][^'"\n]*\1"""
                            r"""|(?:[A-Za-z]:)?[\\/][^\s'"]+)""")


def _portable_part(part: str) -> str:
    """One component of a path, safe as a file or folder name on Windows, macOS and Linux."""
    name = "".join("_" if ch in _WINDOWS_FORBIDDEN or CONTROL_CHARS.match(ch) else ch
                   for ch in part)
    # Windows drops trailing dots and spaces: "a." and "a" would be one file.
    name = name.rstrip(". ")
    if len(name.encode()) > MAX_PART_BYTES:  # cut the stem, keep a short extension
        suffix = PurePosixPath(name).suffix
        suffix = suffix if len(suffix.encode()) <= 16 else ""
        room = MAX_PART_BYTES - len(suffix.encode())
        stem = name[: len(name) - len(suffix)] if suffix else name
        name = stem.encode()[:room].decode(errors="ignore").rstrip(". ") + suffix
    if name.split(".")[0].rstrip(" ").upper() in _DEVICES:
        name = f"_{name}"
    return name or "_"


def portable_parts(path: str) -> list[str]:
    """The folders and file name of a user's path ('/' or '\\' separated), each made safe
    on every desktop: NFC, no control or Windows-forbidden character (each becomes '_'), no
    trailing dot or space, no reserved device name (CON, NUL, COM1 ...: '_' before it), at
    most MAX_PART_BYTES of UTF-8. Empty and '.' parts are dropped; never an empty list."""
    text = unicodedata.normalize("NFC", path).replace("\\", "/")
    parts = [_portable_part(p) for p in text.split("/") if p not in ("", ".")]
    return parts or ["_"]


def fold_key(path: str) -> str:
    """The form under which two names are one file on Windows or macOS: case folded and
    NFC-normalised ("Scene.png" and "scene.png", "café" composed and decomposed)."""
    return unicodedata.normalize("NFC", unicodedata.normalize("NFC", path).casefold())


def zip_names(items: Iterable[tuple[str, str, Sequence[tuple[str, str]]]]) -> dict[str, str]:
    """A name in a zip for each (key, user's path, places), by key: the path made portable
    (portable_parts) without its extension; `places` are the (folder, suffix) of each file
    it names (masks/<name>.png ...). No two files are one under case folding and NFC, as on
    Windows and macOS (the later gets ~2, ~3 ...), and no file is where another has a folder
    (the folder, or the file, gets ~2 ...)."""
    files: set[str] = set()  # fold_key of every file given out
    folders: set[str] = set()  # and of every folder above them
    names: dict[str, str] = {}
    for key, path, places in items:
        parts = portable_parts(path)
        parts[-1] = PurePosixPath(parts[-1]).stem or "_"
        for depth in range(len(parts) - 1):
            base, n = parts[depth], 1
            while any(fold_key(f"{folder}/{'/'.join(parts[:depth + 1])}") in files
                      for folder, _ in places):
                n += 1
                parts[depth] = f"{base}~{n}"
        base, n = parts[-1], 1
        while True:
            taken = [fold_key(f"{folder}/{'/'.join(parts)}{suffix}") for folder, suffix in places]
            if not any(name in files or name in folders for name in taken):
                break
            n += 1
            parts[-1] = f"{base}~{n}"
        files.update(taken)
        for folder, _ in places:
            folders.update(fold_key(f"{folder}/{'/'.join(parts[:depth])}")
                           for depth in range(1, len(parts)))
        names[key] = "/".join(parts)
    return names


def header_filename(name: str, content_type: str) -> str:
    """A file name for a multipart header: ASCII letters, digits, '.', '_' and '-' only
    (accents dropped, anything else '_'), the extension of the type the file really is."""
    leaf = PurePosixPath(name.replace("\\", "/")).name
    stem, dot, extension = leaf.rpartition(".")
    suffix = f".{extension}" if dot and stem and extension else ""
    stem = stem if suffix else leaf
    ascii_stem = unicodedata.normalize("NFKD", stem).encode("ascii", "ignore").decode()
    safe_stem = re.sub(r"[^A-Za-z0-9._-]+", "_", ascii_stem).strip("._-")
    safe_stem = safe_stem[:HEADER_STEM_CHARS] or "image"
    known = _EXTENSIONS.get(content_type.lower())
    if known is not None:
        extension = suffix.lower() if suffix.lower() in known else known[0]
    else:
        extension = re.sub(r"[^A-Za-z0-9]", "", suffix)[:10]
        extension = f".{extension.lower()}" if extension else ""
    return f"{safe_stem}{extension}"


def plain_message(text: str, limit: int = 300) -> str:
    """An outside error message in user's terms: object reprs and absolute paths taken
    out, controls as spaces, whitespace collapsed, at most `limit` characters."""
    text = _OBJECT_REPR.sub("", text)
    text = _ABSOLUTE_PATH.sub("", text)
    text = " ".join(CONTROL_CHARS.sub(" ", text).split())
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return text
