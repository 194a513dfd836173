"""Helpers for tests that talk to a real server over real sockets.

``serving(app, **settings)`` runs the core services (rooms, router, gate,
listener) on port 0 with a real ServiceManager and stops them afterwards.
``RawClient`` speaks websocket by hand, for tests that must send what a
well-behaved client library never would.
"""
from __future__ import annotations

import base64
import contextlib
import json
import os
import resource
import socket
import struct
import time
from collections.abc import Iterator
from typing import Any

from lexicons.client import Client
from lexicons.daemon import settings as settings_mod
from lexicons.daemon.application import Application
from lexicons.daemon.manager import ServiceManager
from lexicons.daemon.service import Service
from lexicons.wire import frames

CORE = ["services.rooms/RoomsService", "services.router/RouterService",
        "services.gate/GateService", "services.listener/ListenerService"]


class Running:
    """A running set of services and how to reach them."""

    def __init__(self, manager: ServiceManager):
        self.manager = manager
        self.port = manager.get_service("listener").port
        self.url = f"ws://127.0.0.1:{self.port}/"

    def service(self, name: str) -> Any:
        return self.manager.get_service(name)

    def client(self, **kwargs: Any) -> Client:
        kwargs.setdefault("timeout", 5.0)
        return Client(self.url, **kwargs)

    def raw(self, path: str = "/", headers: dict[str, str] | None = None) -> RawClient:
        return RawClient.connect(self.port, path, headers)

    def connections(self) -> int:
        return len(self.service("listener").hub)

    def wait_connections(self, count: int, timeout: float = 5.0) -> None:
        """Wait until the server holds exactly *count* connections."""
        deadline = time.monotonic() + timeout
        while self.connections() != count:
            if time.monotonic() > deadline:
                raise AssertionError(f"server holds {self.connections()} connections, "
                                     f"expected {count}")
            time.sleep(0.01)


def make_settings(**overrides: Any) -> settings_mod.Settings:
    values: dict[str, Any] = {"SERVICE_LIST": CORE, "HOST": "127.0.0.1", "PORT": 0,
                              "PING_INTERVAL": 0.0, "CLOSE_TIMEOUT": 0.5,
                              "HANDSHAKE_TIMEOUT": 5.0}
    values.update(overrides)
    return settings_mod.load(env={}, overrides=values)


@contextlib.contextmanager
def serving(app: Application | None = None, extra: list[Service] | None = None,
            **overrides: Any) -> Iterator[Running]:
    """Run the core services for *app*; *extra* services are added before them."""
    manager = ServiceManager(make_settings(**overrides), app or Application())
    for service_factory in extra or ():
        manager.add(service_factory(manager, manager.settings))
    manager.build()
    manager.start()
    try:
        yield Running(manager)
    finally:
        manager.stop()


def need_descriptors(count: int) -> None:
    """Raise this process's open-file limit to at least *count* (up to the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        if hard != resource.RLIM_INFINITY and hard < count:
            raise RuntimeError(f"this test needs {count} open files; the hard limit is {hard}")
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


def open_fds() -> int:
    """Return how many file descriptors this process has open."""
    return len(os.listdir("/proc/self/fd"))


HANDSHAKE = ("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
             "Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
             "Sec-WebSocket-Version: 13\r\n{extra}\r\n")


def http_exchange(port: int, request: bytes, timeout: float = 5.0) -> tuple[int, dict, bytes]:
    """Send raw request bytes; return (status, headers, body) of the answer."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while True:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                break
            if not chunk:
                break
            data += chunk
    return parse_response(data)


def parse_response(data: bytes) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ")[1]) if lines and lines[0] else 0
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


class RawClient:
    """A websocket client written by hand: masked frames, no checks, full control."""

    def __init__(self, sock: socket.socket, leftover: bytes):
        self.sock = sock
        self.buf = leftover

    @classmethod
    def connect(cls, port: int, path: str = "/", headers: dict[str, str] | None = None,
                timeout: float = 5.0) -> RawClient:
        sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        key = base64.b64encode(os.urandom(16)).decode()
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        sock.sendall(HANDSHAKE.format(path=path, key=key, extra=extra).encode())
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(4096)
            if not chunk:
                sock.close()
                raise ConnectionError(f"closed during handshake: {data!r}")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        if not head.startswith(b"HTTP/1.1 101"):
            sock.close()
            raise ConnectionError(head.decode("latin-1"))
        return cls(sock, rest)

    def send_frame(self, opcode: int, payload: bytes, fin: bool = True) -> None:
        self.sock.sendall(frames.client_frame(opcode, payload, fin=fin))

    def send_text(self, text: str) -> None:
        self.send_frame(frames.OP_TEXT, text.encode())

    def call(self, message: Any) -> None:
        self.send_text(json.dumps(message))

    def _read(self, n: int) -> bytes:
        while len(self.buf) < n:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("closed")
            self.buf += chunk
        data, self.buf = self.buf[:n], self.buf[n:]
        return data

    def recv_frame(self, timeout: float = 5.0) -> tuple[int, bytes]:
        """Return the next (opcode, payload) the server sends."""
        self.sock.settimeout(timeout)
        b0, b1 = self._read(2)
        n = b1 & 0x7F
        if n == 126:
            n = struct.unpack("!H", self._read(2))[0]
        elif n == 127:
            n = struct.unpack("!Q", self._read(8))[0]
        return b0 & 0x0F, self._read(n)

    def recv_json(self, timeout: float = 5.0) -> Any:
        """Return the next text message, decoded (skipping pings)."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == frames.OP_TEXT:
                return json.loads(payload)
            if opcode == frames.OP_CLOSE:
                raise ConnectionError(f"closed by the server: {close_info(payload)}")

    def expect_close(self, timeout: float = 5.0) -> tuple[int, str]:
        """Read until the server's close frame; return its (code, reason)."""
        while True:
            opcode, payload = self.recv_frame(timeout)
            if opcode == frames.OP_CLOSE:
                return close_info(payload)

    def closed_by_server(self, timeout: float = 5.0) -> bool:
        """Tell whether the server closes the TCP connection within *timeout*."""
        self.sock.settimeout(timeout)
        try:
            while self.sock.recv(65536):
                pass
        except (ConnectionResetError, BrokenPipeError):
            return True
        except TimeoutError:
            return False
        return True

    def close(self) -> None:
        self.sock.close()


def close_info(payload: bytes) -> tuple[int, str]:
    if len(payload) < 2:
        return 1005, ""
    return struct.unpack("!H", payload[:2])[0], payload[2:].decode("utf-8", "replace")


def upgrade_request(path: str = "/", key: str = "dGhlIHNhbXBsZSBub25jZQ==", extra: str = "",
                    method: str = "GET", version: str = "HTTP/1.1") -> bytes:
    """Return the bytes of an upgrade request, with *extra* header lines ("Name: v\\r\\n")."""
    text = HANDSHAKE.format(path=path, key=key, extra=extra)
    return text.replace("GET ", f"{method} ", 1).replace("HTTP/1.1", version, 1).encode()
