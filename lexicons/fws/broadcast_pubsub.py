"""filtered_websocket's ``broadcast_pubsub``: relay Redis pub/sub channels to clients and back.

Every message published on the channels of ``FWS_REDIS_CHANNELS`` (``global``
when none is named) goes to every client of this node; every message a client
sends is published on the first of those channels, so that other nodes and
other applications get it. A client does not get its own message back.
"""
from __future__ import annotations

from typing import Any

from lexicons.fws import WebSocketConsumerFilter, WebSocketMessageFilter


class BroadcastMessageFilter(WebSocketConsumerFilter):
    """Broadcast every pub/sub message to the connected clients."""

    @classmethod
    def filter(cls, web_socket_instance: Any, data: Any) -> None:
        web_socket_instance.broadcast(data.get("data"), exclude=data.get("sender"))


class PublishMessageFilter(WebSocketMessageFilter):
    """Publish every client message on the first relayed channel."""

    @classmethod
    def filter(cls, web_socket_instance: Any, msg: Any) -> None:
        web_socket_instance.publish(msg)
