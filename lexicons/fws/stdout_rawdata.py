"""filtered_websocket's ``stdout_rawdata``: print what each client sends to standard output.

filtered_websocket printed the raw TCP bytes; lexicons prints each message.
"""
from __future__ import annotations

from typing import Any

from lexicons.fws import WebSocketDataFilter
from lexicons.fws.stdout_messages import write


class StdoutRawDataFilter(WebSocketDataFilter):
    """Print ``--RAWDATA--`` and the message."""

    @classmethod
    def filter(cls, web_socket_instance: Any, data: Any) -> None:
        write(f"--RAWDATA--\n{data}\n")
