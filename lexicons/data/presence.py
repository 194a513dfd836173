"""Presence: who is connected to a channel, for channels that ask for it.

A Channel class with ``presence = True`` records each connection that joins
it: a *client id* (unique across the nodes of a backplane) and the identity
the gate gave the connection (``ws.auth["user"]``, when the headers set one).
Joins and leaves are broadcast on the channel itself as
``[{"Presence": {"channel": ..., "event": "join" | "leave", "client": ..., "user": ...}}]``.

:class:`MemoryPresence` holds one node's view, exact because that node sees
every join and leave. With a Redis backplane the rooms service uses the
shared store of :mod:`services.channelstate` instead, where each node keeps
its entries alive by a heartbeat and the entries of a node that died expire.
"""
from __future__ import annotations

import threading
from typing import Any

#: The name of presence broadcasts.
PRESENCE = "Presence"


def event(channel: str, kind: str, info: dict[str, Any]) -> dict[str, Any]:
    """Return the payload of a join or leave broadcast."""
    return {"channel": channel, "event": kind, **info}


class MemoryPresence:
    """Who is in each presence channel of one node: channel -> {client id: info}."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, dict[str, dict[str, Any]]] = {}

    def add(self, channel: str, client: str, info: dict[str, Any]) -> bool:
        """Record *client* in *channel*; False if it was there already."""
        with self._lock:
            members = self._channels.setdefault(channel, {})
            if client in members:
                return False
            members[client] = info
            return True

    def remove(self, channel: str, client: str) -> dict[str, Any] | None:
        """Forget *client* in *channel*; return its info, or None if it was not there."""
        with self._lock:
            members = self._channels.get(channel)
            if not members or client not in members:
                return None
            info = members.pop(client)
            if not members:
                del self._channels[channel]
            return info

    def members(self, channel: str) -> list[dict[str, Any]]:
        """Return the infos of *channel*'s clients, in the order they came."""
        with self._lock:
            return list(self._channels.get(channel, {}).values())

    def count(self, channel: str) -> int:
        """Return how many clients are in *channel*."""
        with self._lock:
            return len(self._channels.get(channel, ()))

    def sweep(self) -> list[tuple[str, dict[str, Any]]]:
        """Return members gone without a leave (none in memory: one node sees every leave)."""
        return []

    def heartbeat(self) -> None:
        """Keep this node's members alive (nothing to do in memory)."""
