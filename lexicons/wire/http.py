"""HTTP/1.1 request heads and responses: pure, bytes in, a Request or an error out.

The listener reads a request head until its blank line and gives it to
:func:`parse_head`; :func:`check_upgrade` checks the websocket handshake
headers (RFC 6455 section 4.2.1). Every refusal is an :class:`HTTPError`
carrying the status and a reason meant for the client; :func:`response`
renders it (or any reply) with a JSON body and ``Connection: close``.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import json
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from lexicons.errors import ProtocolError
from lexicons.wire.events import Request

#: Longest request line (websockets and most servers use about 8 KiB).
MAX_LINE = 8190
#: Most header lines in one request.
MAX_HEADERS = 128

WEBSOCKET_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

REASONS = {
    101: "Switching Protocols", 200: "OK", 204: "No Content", 304: "Not Modified",
    400: "Bad Request",
    401: "Unauthorized", 403: "Forbidden", 404: "Not Found", 405: "Method Not Allowed",
    408: "Request Timeout", 411: "Length Required", 413: "Content Too Large",
    414: "URI Too Long", 426: "Upgrade Required", 431: "Request Header Fields Too Large",
    500: "Internal Server Error", 501: "Not Implemented", 503: "Service Unavailable",
    505: "HTTP Version Not Supported",
}


class HTTPError(ProtocolError):
    """A request the server refuses, with the status and reason to answer."""

    def __init__(self, status: int, reason: str, headers: tuple[tuple[str, str], ...] = (),
                 body: dict[str, Any] | None = None):
        super().__init__(f"{status} {reason}")
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body or {}   # more keys for the JSON body


def head_end(buf: bytes | bytearray, start: int = 0) -> int:
    """Return the index just past the blank line ending a head in *buf*, or -1."""
    i = buf.find(b"\r\n\r\n", max(0, start - 3))
    return -1 if i < 0 else i + 4


def check_partial(buf: bytes | bytearray, max_head: int) -> None:
    """Refuse a head still incomplete in *buf* that is already too long (414 / 431)."""
    line_end = buf.find(b"\r\n")
    if (line_end < 0 and len(buf) > MAX_LINE) or line_end > MAX_LINE:
        raise HTTPError(414, f"request line longer than {MAX_LINE} bytes")
    if len(buf) > max_head:
        raise HTTPError(431, f"request head larger than {max_head} bytes")


def parse_head(head: bytes) -> Request:
    """Parse a complete request head (request line, headers, blank line).

    Raises HTTPError: 400 for a malformed head, 414 for an over-long request
    line, 431 for too many headers, 505 for a version other than HTTP/1.x.
    """
    try:
        text = head.decode("latin-1")
    except UnicodeDecodeError:  # latin-1 decodes any byte; kept for clarity
        raise HTTPError(400, "request head is not text") from None
    lines = text.split("\r\n")
    if len(lines[0]) > MAX_LINE:
        raise HTTPError(414, f"request line longer than {MAX_LINE} bytes")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not all(parts):
        raise HTTPError(400, "malformed request line (expected: METHOD TARGET HTTP/1.1)")
    method, target, version = parts
    if not version.startswith("HTTP/") or version not in ("HTTP/1.1", "HTTP/1.0"):
        if version.startswith("HTTP/"):
            raise HTTPError(505, f"{version} is not supported: use HTTP/1.1")
        raise HTTPError(400, "malformed request line (expected: METHOD TARGET HTTP/1.1)")
    if not method.isalpha() or not method.isupper():
        raise HTTPError(400, f"malformed method {method[:20]!r}")
    headers = _parse_headers(lines[1:])
    if not target.startswith("/"):
        raise HTTPError(400, "request target must be a path starting with '/'")
    split = urlsplit(target)
    query: dict[str, str] = {}
    for key, value in parse_qsl(split.query, keep_blank_values=True):
        query.setdefault(key, value)
    return Request(method=method, target=target, path=unquote(split.path), query=query,
                   version=version, headers=headers)


def _parse_headers(lines: list[str]) -> tuple[tuple[str, str], ...]:
    headers: list[tuple[str, str]] = []
    for line in lines:
        if not line:
            continue
        if line[0] in " \t":
            raise HTTPError(400, "obsolete folded header line")
        name, sep, value = line.partition(":")
        if not sep or not name or name != name.strip() or " " in name:
            raise HTTPError(400, f"malformed header line {line[:40]!r}")
        headers.append((name.lower(), value.strip(" \t")))
        if len(headers) > MAX_HEADERS:
            raise HTTPError(431, f"more than {MAX_HEADERS} header lines")
    return tuple(headers)


def check_upgrade(request: Request) -> bytes:
    """Check a websocket upgrade request; return its Sec-WebSocket-Key.

    Raises HTTPError: 505 unless HTTP/1.1, 405 unless GET, 426 without an
    ``Upgrade: websocket``/``Connection: Upgrade`` pair, 400 for a missing Host,
    a bad key or a bad version (with ``Sec-WebSocket-Version: 13``).
    """
    if request.version != "HTTP/1.1":
        raise HTTPError(505, f"websocket needs HTTP/1.1, not {request.version}")
    if request.method != "GET":
        raise HTTPError(405, f"websocket handshake must use GET, not {request.method}",
                        (("Allow", "GET"),))
    if not request.wants_upgrade or not any(
            t.lower() == "upgrade" for t in request.header_list("connection")):
        raise HTTPError(426, "this is a websocket endpoint: send Upgrade: websocket "
                             "and Connection: Upgrade", (("Upgrade", "websocket"),))
    if request.header("host") is None:
        raise HTTPError(400, "missing Host header")
    version = request.header("sec-websocket-version")
    if version != "13":
        reason = ("missing Sec-WebSocket-Version header" if version is None
                  else f"unsupported Sec-WebSocket-Version {version[:20]!r}: use 13")
        raise HTTPError(400, reason, (("Sec-WebSocket-Version", "13"),))
    key = request.header("sec-websocket-key")
    if key is None:
        raise HTTPError(400, "missing Sec-WebSocket-Key header")
    try:
        raw = base64.b64decode(key.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raw = b""
    if len(raw) != 16:
        raise HTTPError(400, "bad Sec-WebSocket-Key: must be 16 bytes in base64")
    return key.encode("ascii")


def accept_token(key: bytes) -> str:
    """Return the Sec-WebSocket-Accept value for a client's key."""
    return base64.b64encode(hashlib.sha1(key + WEBSOCKET_GUID).digest()).decode("ascii")


def response(status: int, body: Any = None, headers: tuple[tuple[str, str], ...] = (),
             content_type: str = "application/json") -> bytes:
    """Render a complete response that closes the connection.

    A dict or list *body* is sent as JSON; bytes and str as they are.
    """
    if body is None:
        payload = b""
    elif isinstance(body, bytes):
        payload = body
    elif isinstance(body, str):
        payload = body.encode("utf-8")
    else:
        payload = json.dumps(body, separators=(",", ":")).encode("utf-8")
    lines = [f"HTTP/1.1 {status} {REASONS.get(status, 'Unknown')}"]
    for name, value in headers:
        lines.append(f"{name}: {value}")
    if payload or status not in (101, 204, 304):
        lines.append(f"Content-Type: {content_type}")
        lines.append(f"Content-Length: {len(payload)}")
    lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + payload


def error_response(error: HTTPError) -> bytes:
    """Render an HTTPError as a response with a JSON body saying why."""
    body = {"status": error.status, "error": REASONS.get(error.status, "Error"),
            "reason": error.reason, **error.body}
    return response(error.status, body, error.headers)
