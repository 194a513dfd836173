"""The control protocol: JSON lines over the daemon's UNIX socket, and a client for it.

A request is one line holding a JSON object with a ``command`` and its
arguments; the reply is one line::

    -> {"command": "restart", "service": "rooms"}
    <- {"ok": true, "result": {...}}
    <- {"ok": false, "error": "no service named 'room' (running: control, rooms)"}

Lines longer than :data:`MAX_LINE` bytes are refused. An operator can speak it
by hand: ``echo '{"command":"status"}' | socat - UNIX-CONNECT:lexiconsd.sock``.
"""
from __future__ import annotations

import errno
import json
import socket
from typing import Any

from lexicons.errors import ControlError, ProtocolError
from lexicons.wire.protocol import parse_json

MAX_LINE = 64 * 1024


def encode(message: dict[str, Any]) -> bytes:
    """Frame one message as a JSON line."""
    return json.dumps(message, separators=(",", ":"), default=str).encode() + b"\n"


def decode_request(line: bytes) -> dict[str, Any]:
    """Parse one request line; ProtocolError says what is wrong with it."""
    try:
        message = parse_json(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise ProtocolError("request is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ProtocolError(f"request is not JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(message, dict):
        raise ProtocolError(f"request must be a JSON object, not {type(message).__name__}")
    command = message.get("command")
    if not isinstance(command, str) or not command:
        raise ProtocolError("request has no 'command' string")
    return message


def reply_ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def reply_error(message: str) -> dict[str, Any]:
    return {"ok": False, "error": message}


def request(path: str, command: str, timeout: float = 10.0, **args: Any) -> Any:
    """Send one command to the daemon at *path* and return its result.

    Raises ControlError when no daemon answers there, or with the daemon's own
    error message when it refuses the command.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(path)
        except FileNotFoundError:
            raise ControlError(f"no daemon is listening: {path} does not exist") from None
        except ConnectionRefusedError:
            raise ControlError(f"no daemon is listening on {path}") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path} (owned by another user)") from None
        except OSError as exc:
            raise ControlError(f"cannot connect to {path}: {exc.strerror or exc}") from exc
        try:
            sock.sendall(encode({"command": command, **args}))
            data = b""
            while not data.endswith(b"\n"):
                chunk = sock.recv(65536)
                if not chunk:
                    break
                data += chunk
                if len(data) > 64 * MAX_LINE:
                    raise ControlError("reply too long")
        except TimeoutError:
            raise ControlError(f"the daemon did not answer within {timeout:g} s") from None
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise ControlError("the daemon closed the connection") from None
            raise ControlError(f"control socket error: {exc}") from exc
    finally:
        sock.close()
    if not data:
        raise ControlError("the daemon closed the connection without answering")
    try:
        reply = json.loads(data)
    except json.JSONDecodeError:
        raise ControlError("the daemon answered something that is not JSON") from None
    if not reply.get("ok"):
        raise ControlError(reply.get("error") or "the daemon refused the command")
    return reply.get("result")
