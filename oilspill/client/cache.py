"""What the client keeps between runs in the user's cache folder ($XDG_CACHE_HOME/oilspill,
by default ~/.cache/oilspill): the URL of each unfinished resumable upload, so a new run of
the same command resumes it (`uploads.json`), and folders zipped for such an upload
(`zips/`), so a new run sends the very same bytes.

An upload is known by its key: the server, and the file's absolute path, size and
modification time (a folder's: its path and a fingerprint of its files' names, sizes and
modification times). A changed file is a new upload. Entries and zips not used for
KEEP_S are removed. Several runs may share the folder: the JSON file is changed under a lock
and replaced whole.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from ..paths import PARTIAL_SUFFIX

BOOK_NAME = "uploads.json"
ZIPS_NAME = "zips"
KEEP_S = 7 * 24 * 3600


def cache_dir(environ: Mapping[str, str]) -> Path:
    """The client's folder in the user's cache: $XDG_CACHE_HOME/oilspill (an absolute
    XDG_CACHE_HOME only, as the XDG spec says), else ~/.cache/oilspill."""
    xdg = environ.get("XDG_CACHE_HOME", "")
    root = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return root / "oilspill"


def file_key(server: str, path: Path) -> str:
    """The key of a file's upload to `server`: its absolute path, size and mtime."""
    st = path.stat()
    return json.dumps([server, "file", str(path.resolve()), st.st_size, st.st_mtime_ns])


def folder_key(server: str, folder: Path, files: Sequence[Path]) -> str:
    """The key of a folder's upload to `server`: its absolute path and a fingerprint of the
    names, sizes and mtimes of the files its zip holds."""
    digest = hashlib.sha256()
    for path in files:
        st = path.stat()
        digest.update(json.dumps([path.relative_to(folder).as_posix(), st.st_size,
                                  st.st_mtime_ns]).encode())
    return json.dumps([server, "folder", str(folder.resolve()), digest.hexdigest()])


def zip_path(cache: Path, key: str) -> Path:
    """Where the zip of a folder's upload is kept until the upload is a job."""
    return cache / ZIPS_NAME / f"{hashlib.sha256(key.encode()).hexdigest()[:32]}.zip"


def _lock(fh: IO[bytes]) -> None:
    if sys.platform != "win32":  # elsewhere, one run at a time is assumed
        import fcntl

        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)


class UploadBook:
    """The upload URLs of unfinished uploads, by key, in `<cache>/uploads.json`. Blocking:
    call from a thread."""

    def __init__(self, cache: Path) -> None:
        self.cache = cache
        self._path = cache / BOOK_NAME

    @contextlib.contextmanager
    def _changing(self) -> Iterator[dict[str, dict[str, Any]]]:
        """The entries, under the lock; written back (atomically) when the block ends."""
        self.cache.mkdir(parents=True, exist_ok=True)
        with open(self._path.with_name(f".{BOOK_NAME}.lock"), "ab") as lock:
            _lock(lock)
            entries = self._read()
            yield entries
            now = time.time()
            for key in [k for k, e in entries.items() if e.get("touched_at", 0) < now - KEEP_S]:
                del entries[key]
            self._sweep_zips(entries, now)
            partial = self._path.with_name(f".{BOOK_NAME}{PARTIAL_SUFFIX}")
            partial.write_text(json.dumps({"uploads": entries}, indent=1), encoding="utf-8")
            os.replace(partial, self._path)

    def _read(self) -> dict[str, dict[str, Any]]:
        try:
            raw = json.loads(self._path.read_text(encoding="utf-8"))
            entries = raw["uploads"]
        except (OSError, ValueError, KeyError, TypeError):
            return {}  # none yet, or unreadable: nothing to resume
        if not isinstance(entries, dict):
            return {}
        return {k: v for k, v in entries.items()
                if isinstance(v, dict) and isinstance(v.get("url"), str)}

    def _sweep_zips(self, entries: Mapping[str, Mapping[str, Any]], now: float) -> None:
        """Remove zips of folders that no entry names and that were not used for KEEP_S."""
        folder = self.cache / ZIPS_NAME
        named = {zip_path(self.cache, key).name for key in entries}
        for path in folder.glob("*") if folder.is_dir() else ():
            with contextlib.suppress(OSError):
                if path.name.removesuffix(PARTIAL_SUFFIX) not in named and (
                        path.stat().st_mtime < now - KEEP_S):
                    path.unlink()

    def find(self, key: str) -> str | None:
        """The URL of the unfinished upload of `key`, or None."""
        entry = self._read().get(key)
        return None if entry is None else str(entry["url"])

    def remember(self, key: str, url: str) -> None:
        with self._changing() as entries:
            entries[key] = {"url": url, "touched_at": time.time()}

    def forget(self, key: str) -> None:
        with self._changing() as entries:
            entries.pop(key, None)
