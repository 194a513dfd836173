"""A test HTTP backend for the high-templar bootstrap, run by http.server in a thread.

Paths (the query string is ignored):

* ``/ok``        200, ``{"allowed_rooms": ROOMS}``
* ``/forbidden`` 403 with a JSON body
* ``/garbage``   200 with a body that is not JSON
* ``/norooms``   200, ``{}``
* ``/badrooms``  200, ``{"allowed_rooms": "everything"}``
* ``/slow``      waits ``slow_delay`` seconds, then answers like ``/ok``
* ``/trickle``   sends its headers, then one byte of body every 0.2 s
* ``/big``       200 with a 2 MB body
* ``/redirect``  302 to ``/ok``
* ``/loop``      302 to itself, for ever
* ``/away?to=U`` 307 to the URL ``U``
* ``/plain``     200 with the body of ``/ok`` as ``text/plain``
* ``/bytoken``   by the ``Authorization: Token T`` header: ``slow`` like ``/slow``,
  ``deny`` like ``/forbidden``, ``garbage`` like ``/garbage``, anything else like ``/ok``

Every request's headers are recorded in ``requests`` as (path, {name: value}).
"""
from __future__ import annotations

import json
import socketserver
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

ROOMS = [{"target": "message", "customer": "1"}, {"target": "user", "id": "*"}]


class Backend:
    """A running test backend; use as a context manager."""

    def __init__(self, rooms: list[dict[str, Any]] | None = None, slow_delay: float = 3.0,
                 unix_path: str | None = None):
        self.rooms = ROOMS if rooms is None else rooms
        self.slow_delay = slow_delay
        self.requests: list[tuple[str, dict[str, str]]] = []
        self.lock = threading.Lock()
        self.release = threading.Event()  # set at stop: slow answers end at once
        backend = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                backend._handle(self)

        if unix_path is not None:  # the backend on a UNIX socket (port: none)
            class UnixServer(socketserver.ThreadingUnixStreamServer):
                def get_request(self):  # type: ignore[no-untyped-def]
                    sock, _ = super().get_request()
                    return sock, ("unix", 0)

            self.server = UnixServer(unix_path, Handler)
            self.port = 0
        else:
            self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
            self.port = self.server.server_address[1]
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True,
                                       name="test-backend")

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def __enter__(self) -> Backend:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(5)

    def headers_of(self, index: int = -1) -> dict[str, str]:
        with self.lock:
            return self.requests[index][1]

    def _handle(self, handler: BaseHTTPRequestHandler) -> None:
        path, _, query = handler.path.partition("?")
        with self.lock:
            self.requests.append((path, {k.lower(): v for k, v in handler.headers.items()}))
        ok = json.dumps({"allowed_rooms": self.rooms}).encode()
        if path == "/bytoken":
            token = handler.headers.get("Authorization", "").removeprefix("Token ")
            path = {"slow": "/slow", "deny": "/forbidden", "garbage": "/garbage"}.get(token,
                                                                                   "/ok")
        if path == "/ok":
            self._send(handler, 200, ok)
        elif path == "/forbidden":
            self._send(handler, 403, b'{"detail": "not logged in"}')
        elif path == "/garbage":
            self._send(handler, 200, b"<html>surprise</html>", "text/html")
        elif path == "/norooms":
            self._send(handler, 200, b"{}")
        elif path == "/badrooms":
            self._send(handler, 200, b'{"allowed_rooms": "everything"}')
        elif path == "/slow":
            if not self.release.wait(self.slow_delay):
                self._send(handler, 200, ok)
        elif path == "/trickle":
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Content-Length", str(len(ok)))
            handler.end_headers()
            for byte in ok:
                if self.release.wait(0.2):
                    return
                try:
                    handler.wfile.write(bytes([byte]))
                    handler.wfile.flush()
                except OSError:
                    return
        elif path == "/big":
            self._send(handler, 200, b"[" + b"0," * (1 << 20) + b"0]")
        elif path in ("/redirect", "/loop", "/away"):
            target = {"/redirect": "/ok", "/loop": "/loop"}.get(path) or \
                urllib.parse.parse_qs(query)["to"][0]
            handler.send_response(302 if path != "/away" else 307)
            handler.send_header("Location", target)
            handler.send_header("Content-Length", "0")
            handler.end_headers()
        elif path == "/plain":
            self._send(handler, 200, ok, "text/plain")
        else:
            self._send(handler, 404, b"{}")

    @staticmethod
    def _send(handler: BaseHTTPRequestHandler, status: int, body: bytes,
              content_type: str = "application/json") -> None:
        try:
            handler.send_response(status)
            handler.send_header("Content-Type", content_type)
            handler.send_header("Content-Length", str(len(body)))
            handler.end_headers()
            handler.wfile.write(body)
        except OSError:
            pass

