"""filtered_websocket's ``broadcast_messages``: every message to every other client."""
from __future__ import annotations

from typing import Any

from lexicons.fws import WebSocketMessageFilter


class BroadcastMessagesFilter(WebSocketMessageFilter):
    """Broadcast each message to all connected clients but its sender (framed once)."""

    @classmethod
    def filter(cls, web_socket_instance: Any, msg: Any) -> None:
        web_socket_instance.server.broadcast(msg, exclude=web_socket_instance.id)
