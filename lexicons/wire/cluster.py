"""The static cluster's pure parts: the server list and the wire format of its events.

A static cluster is zephserver's: ``CLUSTER_SERVER_LIST`` names every node
(``{"hostname": ..., "address": ..., "port": ...}``, or ``"address:port"``)
and each event said on one node is sent straight to every other node, no
broker in between. Fewer than two entries means no cluster.

On the wire an event is one line of JSON, ``{"event": ..., "source": ...,
"data": ...}`` ending with ``\\n``, on a TCP connection a node keeps open to
each other node.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from lexicons.errors import SettingsError

#: Longest event line accepted, in bytes (a longer one closes the connection).
MAX_LINE = 1 << 20


@dataclass(frozen=True)
class Node:
    """One entry of ``CLUSTER_SERVER_LIST``."""

    hostname: str
    address: str
    port: int

    @property
    def label(self) -> str:
        """Return ``address:port``, how the log and ``status`` name the node."""
        return f"{self.address}:{self.port}"


def parse_server(entry: Any) -> Node:
    """Return the Node of one ``CLUSTER_SERVER_LIST`` entry; SettingsError naming it if bad."""
    if isinstance(entry, str):
        address, sep, port = entry.rpartition(":")
        if not sep or not address or not port.isdigit():
            raise SettingsError(f"server {entry!r}: expected 'address:port'")
        entry = {"address": address.strip("[]"), "port": int(port)}
    if not isinstance(entry, dict):
        raise SettingsError(f"server {entry!r}: expected {{'hostname', 'address', 'port'}} "
                            f"or 'address:port'")
    address, port = entry.get("address"), entry.get("port")
    hostname = entry.get("hostname", "")
    if not isinstance(address, str) or not address:
        raise SettingsError(f"server {entry!r}: 'address' must be a host name or IP address")
    if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
        raise SettingsError(f"server {entry!r}: 'port' must be an integer from 1 to 65535")
    if not isinstance(hostname, str):
        raise SettingsError(f"server {entry!r}: 'hostname' must be a string")
    return Node(hostname, address, port)


def parse_servers(entries: list[Any]) -> list[Node]:
    """Return the Nodes of a ``CLUSTER_SERVER_LIST``; SettingsError for a bad or repeated one."""
    nodes = [parse_server(entry) for entry in entries]
    labels = [n.label for n in nodes]
    for label in labels:
        if labels.count(label) > 1:
            raise SettingsError(f"server {label} is listed twice")
    return nodes


def find_self(nodes: list[Node], wanted: str = "", hostname: str = "") -> Node:
    """Return this node's entry: the one *wanted* names, else the one named *hostname*.

    The caller passes this machine's name (``socket.gethostname()``).
    """
    if wanted:
        for node in nodes:
            if wanted in (node.label, node.hostname):
                return node
        raise SettingsError(f"CLUSTER_SELF: {wanted!r} names no entry of CLUSTER_SERVER_LIST "
                            f"({', '.join(n.label for n in nodes)})")
    found = [n for n in nodes if n.hostname == hostname]
    if len(found) != 1:
        raise SettingsError(
            f"CLUSTER_SERVER_LIST: {'no' if not found else 'more than one'} entry has this "
            f"machine's hostname {hostname!r}; set CLUSTER_SELF to this node's 'address:port'")
    return found[0]


def encode(event: str, source: str, data: Any) -> bytes:
    """Return the line carrying *event*; TypeError or ValueError if *data* is not JSON."""
    return json.dumps({"event": event, "source": source, "data": data},
                      separators=(",", ":"), allow_nan=False).encode("utf-8") + b"\n"


def decode(line: bytes) -> tuple[str, str, Any] | None:
    """Return ``(event, source, data)`` of one line, or None when it is not an event."""
    try:
        message = json.loads(line)
    except ValueError:
        return None
    if not isinstance(message, dict) or not isinstance(message.get("event"), str):
        return None
    return message["event"], str(message.get("source", "")), message.get("data")
