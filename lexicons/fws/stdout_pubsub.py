"""filtered_websocket's ``stdout_pubsub``: print every pub/sub message to standard output."""
from __future__ import annotations

from typing import Any

from lexicons.fws import WebSocketConsumerFilter
from lexicons.fws.stdout_messages import write


class BroadcastMessageFilter(WebSocketConsumerFilter):
    """Print ``--PUBSUB--`` and the message."""

    @classmethod
    def filter(cls, web_socket_instance: Any, data: Any) -> None:
        write(f"--PUBSUB--\n{data}\n")
