"""Static files: an application's web page, served over plain HTTP by the listener.

The directory is the ``STATIC_DIR`` setting, else the application's
``static_dir``. A request path maps to a file below it (``/`` and directories
to their ``index.html``); nothing outside the directory, and no hidden file
(a path part starting with ``.``), is ever served. Answers carry an ``ETag``
and ``Cache-Control: no-cache``, so a browser revalidates each time and gets
``304 Not Modified`` while the file is unchanged.
"""
from __future__ import annotations

import mimetypes
import os
from dataclasses import dataclass

#: Content types a browser needs exactly (mimetypes guesses vary across systems).
TYPES = {".html": "text/html", ".js": "text/javascript", ".mjs": "text/javascript",
         ".css": "text/css", ".json": "application/json", ".svg": "image/svg+xml",
         ".png": "image/png", ".ico": "image/x-icon", ".txt": "text/plain",
         ".webmanifest": "application/manifest+json", ".wasm": "application/wasm"}
#: The largest file served, in bytes (static files are read whole into memory).
MAX_FILE = 32 << 20


@dataclass(frozen=True)
class StaticFile:
    """A file found for a request path: where it is and how to describe it."""

    path: str
    size: int
    etag: str
    content_type: str


class StaticFiles:
    """Find the files of one directory for request paths (see the module doc)."""

    def __init__(self, root: str):
        self.root = os.path.realpath(root)

    def find(self, path: str) -> StaticFile | None:
        """Return the file that request *path* names, or None if there is none to serve."""
        if "\0" in path or "\\" in path:
            return None
        parts = [p for p in path.split("/") if p]
        if any(p.startswith(".") for p in parts):
            return None   # hidden files, and '..' with them
        full = os.path.realpath(os.path.join(self.root, *parts))
        if full != self.root and not full.startswith(self.root + os.sep):
            return None   # a symbolic link out of the directory
        if os.path.isdir(full):
            full = os.path.join(full, "index.html")
        try:
            st = os.stat(full)
        except OSError:
            return None
        if not os.path.isfile(full) or st.st_size > MAX_FILE:
            return None
        return StaticFile(full, st.st_size, f'"{st.st_mtime_ns:x}-{st.st_size:x}"',
                          content_type(full))


def content_type(path: str) -> str:
    """Return the Content-Type of a file by its extension (text in UTF-8)."""
    ext = os.path.splitext(path)[1].lower()
    kind = TYPES.get(ext) or mimetypes.guess_type(path)[0] or "application/octet-stream"
    if kind.startswith("text/") or kind in ("application/json", "image/svg+xml"):
        kind += "; charset=utf-8"
    return kind
