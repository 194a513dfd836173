"""filtered_websocket's ``broadcast_messages_by_token``: broadcast groups keyed by a token.

A client registers with a group by sending ``token:<key>``; it is answered
``Successfully registered with broadcast group: <key>``. From then on each
message it sends reaches the other clients registered under the same key
(the group is kept in the storage object, so with ``FWS_STORAGE = "redis"``
other applications can read who is in it). A client that sends before
registering is told ``Error: No token has been set``.

(lexicons also has :class:`lexicons.daemon.filters.TokenGroups`, where the token
comes with the upgrade request instead.)
"""
from __future__ import annotations

import logging
import re
from typing import Any

from lexicons.fws import WebSocketDisconnectFilter, WebSocketMessageFilter

log = logging.getLogger("lexicons.fws.token")
TOKEN = re.compile(r"token:(\S*)")


class TokenMessageFilter(WebSocketMessageFilter):
    """Register a client's token group, or relay its message to its group."""

    @classmethod
    def filter(cls, web_socket_instance: Any, msg: Any) -> None:
        text = msg.decode("utf-8", "replace") if isinstance(msg, (bytes, bytearray)) else msg
        token = TOKEN.search(text)
        if token is not None:
            if web_socket_instance.token not in (None, token.group(1)):
                web_socket_instance.storage_object.remove(web_socket_instance.token,
                                                          web_socket_instance.id)
            web_socket_instance.token = token.group(1)
            log.debug("registering %s with broadcast group: %s", web_socket_instance.id,
                      web_socket_instance.token)
            web_socket_instance.storage_object.add(web_socket_instance.token,
                                                   web_socket_instance.id)
            web_socket_instance.sendMessage(
                f"Successfully registered with broadcast group: {web_socket_instance.token}")
        elif web_socket_instance.token is not None:
            group = web_socket_instance.storage_object[web_socket_instance.token] or set()
            web_socket_instance.server.broadcast(msg, exclude=web_socket_instance.id,
                                                 only=group)
        else:
            log.debug("unable to broadcast message, no token is set for %s",
                      web_socket_instance.id)
            web_socket_instance.sendMessage("Error: No token has been set")


class TokenDisconnectFilter(WebSocketDisconnectFilter):
    """Remove the ids of clients no longer connected from their group."""

    @classmethod
    def filter(cls, web_socket_instance: Any, data: Any) -> None:
        if web_socket_instance.token:
            web_socket_instance.storage_object.remove(web_socket_instance.token,
                                                      web_socket_instance.id)
