"""The backend's bootstrap call: which rooms may a high-templar client join?

When a client connects to ``/ws/``, lexicons asks the application's HTTP
backend (Django and the like) ``GET BOOTSTRAP_URL`` on the client's behalf,
forwarding what identifies the client:

* its ``Cookie``, ``User-Agent`` and ``X-Real-IP`` headers (``X-Real-IP``
  falls back to the client's address when no proxy set it);
* the ``csrftoken`` cookie again as ``X-CSRFToken``;
* a ``?token=T`` query parameter as ``Authorization: Token T``;
* the extra headers of ``BACKEND_HEADERS`` (they win over the above): a fixed
  value, or one taken from the client's request, as high-templar's
  ``CONNECTION_HEADERS`` (``header.Param``, ``header.Key``, ``header.Cookie``,
  ``.map(...)``): ``{"param": "session_token"}``, ``{"header": "X-Foo"}``,
  ``{"cookie": "name"}``, each with an optional ``"format": "Token {}"``. A
  source without a value sends no header (not even the default it replaces).

``BOOTSTRAP_SOCKET`` reaches the backend over a UNIX socket instead of the
network, as high-templar's ``API_SOCKET`` (``BOOTSTRAP_URL`` still gives the
path and the ``Host`` header).

As in high-templar 3.1.0, redirects are followed, and a 200 answer of a
JSON content type whose body is a JSON object authorizes the client for its
``allowed_rooms`` (a list of objects; missing means none); anything else
(another status, another content type, a body that is not a JSON object, bad
``allowed_rooms``, a refused connection, no answer within
``BACKEND_TIMEOUT`` seconds in all) does not, and the reason is kept for the
log. The call blocks its caller: run it off any shared thread.
"""
from __future__ import annotations

import http.client
import json
import re
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lexicons.errors import SettingsError
from lexicons.wire.hightemplar import allowed_rooms_of

#: The largest bootstrap answer read; a longer one is refused.
MAX_BODY = 1 << 20


@dataclass(frozen=True)
class Authorization:
    """The backend's verdict on one client."""

    authorized: bool
    allowed_rooms: list[dict[str, Any]] = field(default_factory=list)
    #: Why the client is not authorized (for the log; never sent to the client).
    reason: str = ""


def cookie_value(cookie_header: str, name: str) -> str | None:
    """Return the value of cookie *name* in a ``Cookie`` header, or None."""
    for part in cookie_header.split(";"):
        key, sep, value = part.strip().partition("=")
        if sep and key.strip() == name:
            value = value.strip()
            if len(value) >= 2 and value[0] == value[-1] == '"':
                value = value[1:-1]
            return value
    return None


_SOURCES = ("param", "header", "cookie")


def check_header_spec(name: str, spec: Any) -> None:
    """Raise SettingsError unless *spec* is a BACKEND_HEADERS value (see the module doc)."""
    if isinstance(spec, str):
        return
    if not isinstance(spec, dict):
        raise SettingsError(f"header {name!r}: expected a string or a mapping, got {spec!r}")
    sources = [key for key in _SOURCES if key in spec]
    unknown = set(spec) - {*_SOURCES, "format"}
    if len(sources) != 1 or unknown or not isinstance(spec[sources[0]], str):
        raise SettingsError(f"header {name!r}: expected one of 'param', 'header' or 'cookie' "
                            "naming where the value comes from, and optionally 'format'")
    pattern = spec.get("format", "{}")
    try:
        if not isinstance(pattern, str) or pattern.format("x") == pattern:
            raise ValueError
    except (ValueError, IndexError, KeyError):
        raise SettingsError(f"header {name!r}: format must be a string with one {{}}, "
                            f"got {pattern!r}") from None


def header_value(spec: str | dict[str, str], client_headers: Mapping[str, str],
                 query: Mapping[str, str]) -> str | None:
    """Return the value of one BACKEND_HEADERS entry for a client; None when it has none."""
    if isinstance(spec, str):
        return spec
    if "param" in spec:
        value = query.get(spec["param"])
    elif "header" in spec:
        value = client_headers.get(spec["header"].lower())
    else:
        value = cookie_value(client_headers.get("cookie") or "", spec["cookie"])
    if not value:
        return None
    return spec.get("format", "{}").format(value)


def bootstrap_headers(client_headers: Mapping[str, str], query: Mapping[str, str],
                      extra: Mapping[str, Any], client_address: str | None = None
                      ) -> dict[str, str]:
    """Return the headers of the bootstrap request made for one client.

    *client_headers* are the client's upgrade request headers with lower-case
    names; *query* its query parameters.
    """
    headers: dict[str, str] = {"Accept": "*/*"}
    cookie = client_headers.get("cookie")
    if cookie:
        headers["Cookie"] = cookie
        csrf = cookie_value(cookie, "csrftoken")
        if csrf is not None:  # even empty, as high-templar forwards it
            headers["X-CSRFToken"] = csrf
    agent = client_headers.get("user-agent")
    if agent:
        headers["User-Agent"] = agent
    real_ip = client_headers.get("x-real-ip") or client_address
    if real_ip:
        headers["X-Real-IP"] = real_ip
    token = query.get("token")
    if token:
        headers["Authorization"] = f"Token {token}"
    for name, spec in extra.items():
        for existing in [k for k in headers if k.lower() == str(name).lower()]:
            del headers[existing]  # replaced, even when the new source has no value
        value = header_value(spec, client_headers, query)
        if value is not None:
            headers[str(name)] = value
    return headers


_JSON_TYPE = re.compile(r"(?:application/|[\w.-]+/[\w.+-]+?\+)json$", re.IGNORECASE)
#: Redirects followed before the client is refused, as many as high-templar's HTTP client.
MAX_REDIRECTS = 10
_REDIRECTS = (301, 302, 303, 307, 308)


def verdict(status: int, body: bytes, content_type: str = "application/json"
            ) -> Authorization:
    """Turn the backend's answer into an authorization (pure), as high-templar 3.1.0 does.

    A 200 answer of a JSON content type whose body is a JSON object authorizes
    the client; its ``allowed_rooms`` (missing: none) are the rooms it may join.
    """
    if status != 200:
        return Authorization(False, reason=f"backend answered {status}")
    mimetype = content_type.partition(";")[0].strip()
    if not _JSON_TYPE.match(mimetype):
        return Authorization(False, reason=f"backend answer is {mimetype or 'untyped'}, "
                                           "not application/json")
    try:
        reply = json.loads(body) if body.strip() else None
    except (ValueError, UnicodeDecodeError, RecursionError):
        return Authorization(False, reason="backend answer is not JSON")
    if not isinstance(reply, dict):
        return Authorization(False, reason="backend answer is not a JSON object")
    rooms = allowed_rooms_of(reply)
    if rooms is None:
        return Authorization(False, reason="backend's allowed_rooms is not a list of objects")
    return Authorization(True, rooms)


def bootstrap(url: str, headers: Mapping[str, str], timeout: float, unix_socket: str = ""
              ) -> Authorization:
    """Ask the backend at *url* whom *headers* identify; never raises for backend failures.

    Redirects are followed (at most MAX_REDIRECTS; ``Authorization`` is not sent
    to another origin). *timeout* bounds the whole call (connect, request,
    redirects, answer), not each read.
    """
    deadline = time.monotonic() + timeout
    headers = dict(headers)
    for _ in range(MAX_REDIRECTS + 1):
        parts = urllib.parse.urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            return Authorization(False, reason=f"BOOTSTRAP_URL {url!r} is not an http(s) URL")
        try:
            status, location, content_type, body = _get(parts, headers, deadline,
                                                        unix_socket)
        except TimeoutError:
            return Authorization(False, reason=f"backend did not answer within {timeout:g} s")
        except (OSError, http.client.HTTPException) as exc:
            return Authorization(False,
                                 reason=f"backend unreachable: {type(exc).__name__}: {exc}")
        if status not in _REDIRECTS or not location:
            return verdict(status, body, content_type)
        target = urllib.parse.urljoin(url, location)
        if _origin(target) != _origin(url):
            headers = {k: v for k, v in headers.items() if k.lower() != "authorization"}
        url = target
    return Authorization(False, reason=f"backend redirected more than {MAX_REDIRECTS} times")


def _origin(url: str) -> tuple[str, str | None, int | None]:
    parts = urllib.parse.urlsplit(url)
    port = parts.port or {"http": 80, "https": 443}.get(parts.scheme)
    return parts.scheme, parts.hostname, port


class _UnixConnection(http.client.HTTPConnection):
    """HTTP to the host of a URL, through a UNIX socket."""

    def __init__(self, path: str, host: str, port: int | None, timeout: float):
        super().__init__(host, port, timeout=timeout)
        self.unix_path = path

    def connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.settimeout(self.timeout)
            sock.connect(self.unix_path)
        except BaseException:
            sock.close()
            raise
        self.sock = sock


def _get(parts: urllib.parse.SplitResult, headers: Mapping[str, str], deadline: float,
         unix_socket: str = "") -> tuple[int, str, str, bytes]:
    """GET one URL; return its status, Location, Content-Type and body (within *deadline*)."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    conn: http.client.HTTPConnection
    if unix_socket:
        conn = _UnixConnection(unix_socket, parts.hostname or "localhost", parts.port, left)
    elif parts.scheme == "https":
        conn = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=left)
    else:
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=left)
    response: http.client.HTTPResponse | None = None
    try:
        conn.request("GET", target, headers=dict(headers))
        sock = conn.sock  # kept: the response reads through it even after conn lets go
        _restrict(sock, deadline)
        response = conn.getresponse()
        body = _read(response, sock, deadline)
        return (response.status, response.getheader("Location", ""),
                response.getheader("Content-Type", ""), body)
    finally:
        if response is not None:
            response.close()
        conn.close()


def _restrict(sock: socket.socket | None, deadline: float) -> None:
    """Shorten the socket's timeout to what is left before *deadline*."""
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    if sock is not None:
        sock.settimeout(left)


def _read(response: http.client.HTTPResponse, sock: socket.socket | None,
          deadline: float) -> bytes:
    """Read the body in pieces, each bounded by what is left before *deadline*."""
    chunks: list[bytes] = []
    size = 0
    while True:
        _restrict(sock, deadline)
        chunk = response.read1(65536)
        if not chunk:
            return b"".join(chunks)
        size += len(chunk)
        if size > MAX_BODY:
            raise http.client.HTTPException(f"answer longer than {MAX_BODY} bytes")
        chunks.append(chunk)
