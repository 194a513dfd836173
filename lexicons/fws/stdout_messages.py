"""filtered_websocket's ``stdout_messages``: print every client message to standard output."""
from __future__ import annotations

import sys
import threading
from typing import Any

from lexicons.fws import WebSocketMessageFilter

_lock = threading.Lock()  # one message's lines together, whichever client sent it


def write(text: str) -> None:
    """Write *text* to standard output at once and flush it."""
    with _lock:
        sys.stdout.write(text)
        sys.stdout.flush()


class BroadcastMessageFilter(WebSocketMessageFilter):
    """Print ``--MESSAGE--`` and ``<socket id> => <message>``."""

    @classmethod
    def filter(cls, web_socket_instance: Any, msg: Any) -> None:
        write(f"--MESSAGE--\n{web_socket_instance.id} => {msg}\n")
