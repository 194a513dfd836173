"""The backend's bootstrap call: which rooms may a high-templar client join?

When a client connects to ``/ws/``, lexicons asks the application's HTTP
backend (Django and the like) ``GET BOOTSTRAP_URL`` on the client's behalf,
forwarding what identifies the client:

* its ``Cookie``, ``User-Agent`` and ``X-Real-IP`` headers (``X-Real-IP``
  falls back to the client's address when no proxy set it);
* the ``csrftoken`` cookie again as ``X-CSRFToken``;
* a ``?token=T`` query parameter as ``Authorization: Token T``;
* the extra headers of ``BACKEND_HEADERS`` (they win over the above).

A 200 answer whose JSON object has ``allowed_rooms``, a list of objects,
authorizes the client for those rooms; anything else (another status, a body
that is not JSON, no or bad ``allowed_rooms``, a refused connection, no answer
within ``BACKEND_TIMEOUT`` seconds in all) does not, and the reason is kept
for the log. The call blocks its caller: run it off any shared thread.
"""
from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .hightemplar import valid_allowed_rooms

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


def bootstrap_headers(client_headers: Mapping[str, str], query: Mapping[str, str],
                      extra: Mapping[str, str], client_address: str | None = None
                      ) -> dict[str, str]:
    """Return the headers of the bootstrap request made for one client.

    *client_headers* are the client's upgrade request headers with lower-case
    names; *query* its query parameters.
    """
    headers: dict[str, str] = {"Accept": "application/json"}
    cookie = client_headers.get("cookie")
    if cookie:
        headers["Cookie"] = cookie
        csrf = cookie_value(cookie, "csrftoken")
        if csrf:
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
    for name, value in extra.items():
        headers[str(name)] = str(value)
    return headers


def verdict(status: int, body: bytes) -> Authorization:
    """Turn the backend's answer into an authorization (pure)."""
    if status != 200:
        return Authorization(False, reason=f"backend answered {status}")
    try:
        reply = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return Authorization(False, reason="backend answer is not JSON")
    if not isinstance(reply, dict) or "allowed_rooms" not in reply:
        return Authorization(False, reason="backend answer has no allowed_rooms")
    rooms = reply["allowed_rooms"]
    if not valid_allowed_rooms(rooms):
        return Authorization(False, reason="backend's allowed_rooms is not a list of objects")
    return Authorization(True, rooms)


def bootstrap(url: str, headers: Mapping[str, str], timeout: float) -> Authorization:
    """Ask the backend at *url* whom *headers* identify; never raises for backend failures.

    *timeout* bounds the whole call (connect, request, answer), not each read.
    """
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return Authorization(False, reason=f"BOOTSTRAP_URL {url!r} is not an http(s) URL")
    deadline = time.monotonic() + timeout
    target = parts.path or "/"
    if parts.query:
        target += "?" + parts.query
    cls = http.client.HTTPSConnection if parts.scheme == "https" else http.client.HTTPConnection
    conn = cls(parts.hostname, parts.port, timeout=timeout)
    response: http.client.HTTPResponse | None = None
    try:
        conn.request("GET", target, headers=dict(headers))
        sock = conn.sock  # kept: the response reads through it even after conn lets go
        _restrict(sock, deadline)
        response = conn.getresponse()
        body = _read(response, sock, deadline)
    except TimeoutError:
        return Authorization(False, reason=f"backend did not answer within {timeout:g} s")
    except (OSError, http.client.HTTPException) as exc:
        return Authorization(False, reason=f"backend unreachable: {type(exc).__name__}: {exc}")
    finally:
        if response is not None:
            response.close()
        conn.close()
    return verdict(response.status, body)


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
