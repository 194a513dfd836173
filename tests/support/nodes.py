"""Run lexicons nodes in-process (a service manager each, listener on port 0) for tests."""
from __future__ import annotations

import http.client
import inspect
import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from websockets.sync.client import ClientConnection, connect

from lexicons.daemon.application import Application
from lexicons.daemon.manager import ServiceManager
from tests.support.daemon import make_settings

_LEGACY = "legacy" in inspect.signature(connect).parameters

NATIVE_SERVICES = [
    "services.backplane/BackplaneService",
    "services.rooms/RoomsService",
    "services.router/RouterService",
    "services.gate/GateService",
    "services.listener/ListenerService",
]

HIGHTEMPLAR_SERVICES = [
    "services.backplane/BackplaneService",
    "services.hightemplar/HighTemplarService",
    "services.listener/ListenerService",
]


class Nodes:
    """Nodes started by a test; :meth:`stop_all` stops every one of them."""

    def __init__(self, tmp_path: Path):
        self.tmp_path = tmp_path
        self.managers: list[ServiceManager] = []

    def start(self, services: list[str] | None = None, app: Application | None = None,
              **overrides: Any) -> ServiceManager:
        """Start a node with *services* (default: backplane, hightemplar, listener)."""
        directory = self.tmp_path / f"node{len(self.managers)}"
        directory.mkdir()
        overrides.setdefault("HOST", "127.0.0.1")
        settings = make_settings(directory, SERVICE_LIST=services or HIGHTEMPLAR_SERVICES,
                                 **overrides)
        manager = ServiceManager(settings, app or Application())
        manager.start()
        self.managers.append(manager)
        return manager

    def stop_all(self) -> None:
        for manager in reversed(self.managers):
            manager.stop()
        self.managers.clear()


@contextmanager
def nodes_of(tmp_path: Path) -> Iterator[Nodes]:
    """Yield a :class:`Nodes` whose nodes are all stopped at the end."""
    nodes = Nodes(tmp_path)
    try:
        yield nodes
    finally:
        nodes.stop_all()


def port_of(manager: ServiceManager) -> int:
    return manager.get_service("listener").port


def ws_client(manager: ServiceManager, query: str = "", path: str = "/ws/",
              **kwargs: Any) -> ClientConnection:
    """Open a websocket client to the node's ``/ws/`` endpoint (or *path*)."""
    kwargs.setdefault("open_timeout", 5)
    kwargs.setdefault("close_timeout", 2)
    kwargs.setdefault("ping_interval", None)
    kwargs.setdefault("compression", None)
    if _LEGACY:
        kwargs.setdefault("legacy", True)  # a plain connection, not a context manager
    return connect(f"ws://127.0.0.1:{port_of(manager)}{path}{query}", **kwargs)


def http_request(manager: ServiceManager, method: str, path: str, body: Any = None,
                 raw: bytes | None = None, timeout: float = 5.0) -> tuple[int, Any]:
    """Make one HTTP request to the node; return (status, decoded JSON body or text)."""
    conn = http.client.HTTPConnection("127.0.0.1", port_of(manager), timeout=timeout)
    try:
        payload = raw if raw is not None else (
            json.dumps(body).encode() if body is not None else None)
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        response = conn.getresponse()
        data = response.read()
    finally:
        conn.close()
    try:
        return response.status, json.loads(data)
    except ValueError:
        return response.status, data.decode("utf-8", "replace")


def trigger(manager: ServiceManager, rooms: list[dict[str, Any]], data: Any) -> tuple[int, Any]:
    """POST a trigger to the node."""
    return http_request(manager, "POST", "/trigger/", {"rooms": rooms, "data": data})
