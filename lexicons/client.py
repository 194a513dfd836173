"""A Python client of the native protocol, on simple-websocket's Client.

::

    with Client("ws://127.0.0.1:5000/", headers={"Login": {"user": "a", "password": "b"}}) as c:
        c.subscribe("room:lobby")
        print(c.call("Echo", data="hi"))        # waits for the answer to this call
        for message in c:                       # broadcasts and uncorrelated replies
            print(message)                      # e.g. [{"Chat": {...}}]

Headers go on the upgrade request as ``Name: <JSON>`` (or, with
``query=True``, as URL query parameters, as a browser would send them). A
refused connection raises :class:`lexicons.errors.Refused` with the status
and the server's reason (and, in ``messages``, what its headers sent first).
``call`` tags the call with an id (``"#"``) and waits for the answer carrying
it; an error answer raises
:class:`lexicons.errors.CallFailed`. Several threads may call at once.

With ``reconnect=True`` a lost connection is opened again (with a growing
delay, up to ``retry_max`` seconds) and every channel subscribed with
:meth:`Client.subscribe` is subscribed again. For a channel with history the
client remembers the position of the last broadcast it got
(:attr:`Client.positions`) and asks for what it missed, so the broadcasts sent
while it was away arrive, in order, before the new live ones;
:attr:`Client.recovered` says per channel whether that worked (False: the
history no longer reached back, or was lost). Calls in flight when the
connection drops raise ConnectionError.
"""
from __future__ import annotations

import itertools
import json
import queue
import socket
import ssl
import threading
from collections.abc import Iterator, Mapping
from typing import Any
from urllib.parse import urlencode, urlsplit, urlunsplit

import simple_websocket
from wsproto.events import AcceptConnection, RejectConnection, RejectData, Request

from lexicons.data.history import POSITION
from lexicons.errors import CallFailed, Refused
from lexicons.wire.protocol import ERRORS, ID

_CLOSED = object()


class _Socket(simple_websocket.Client):
    """simple-websocket's client, with a handshake that reports the server's refusal."""

    def handshake(self) -> None:
        self.sock.send(self.ws.send(Request(host=self.host, target=self.path,
                                            subprotocols=self.subprotocols,
                                            extra_headers=self.extra_headeers)))
        status = 0
        body = b""
        try:
            while True:
                data = self.sock.recv(self.receive_bytes)
                if not data:
                    raise Refused(status, _reason(body) or "connection closed during the "
                                                          "handshake", _messages(body))
                self.ws.receive_data(data)
                for event in self.ws.events():
                    if isinstance(event, AcceptConnection):
                        self.subprotocol = event.subprotocol
                        self.connected = True
                        # frames that came in the same read as the 101 (what the
                        # server's headers sent) are in wsproto already: take them now
                        self.connected = self._handle_events()
                        return
                    if isinstance(event, RejectConnection):
                        status = event.status_code
                        if not event.has_body:
                            raise Refused(status, "refused")
                    elif isinstance(event, RejectData):
                        body += event.data
                        if event.body_finished:
                            raise Refused(status, _reason(body) or "refused", _messages(body))
        except BaseException:
            self.sock.close()
            raise


def _messages(body: bytes) -> list:
    try:
        messages = json.loads(body).get("messages", [])
    except (ValueError, AttributeError):
        return []
    return messages if isinstance(messages, list) else []


def _reason(body: bytes) -> str:
    try:
        return str(json.loads(body).get("reason", ""))
    except (ValueError, AttributeError):
        return body.decode("utf-8", "replace")[:200]


class _Slot:
    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.value: Any = None


class Client:
    """A connection to a lexicons server speaking the native protocol (see the module doc)."""

    def __init__(self, url: str, headers: Mapping[str, Any] | None = None, *,
                 query: bool = False, timeout: float = 5.0,
                 ssl_context: ssl.SSLContext | None = None,
                 max_message_size: int | None = None, reconnect: bool = False,
                 retry_max: float = 5.0):
        self.timeout = timeout
        extra: list[tuple[str, str]] = []
        if headers:
            encoded = {name: json.dumps(value) for name, value in headers.items()}
            if query:
                parts = urlsplit(url)
                q = urlencode(encoded)
                url = urlunsplit((parts.scheme, parts.netloc, parts.path or "/",
                                  f"{parts.query}&{q}" if parts.query else q, ""))
            else:
                extra = list(encoded.items())
        self._connect_args = (url, extra, ssl_context, max_message_size)
        self._ws = self._open()
        self.reconnect = reconnect
        self.retry_max = retry_max
        self.reconnects = 0
        #: channel -> {"offset", "epoch"} of the last broadcast seen on it (history channels)
        self.positions: dict[str, dict[str, Any]] = {}
        #: channel -> whether the last resubscription got every missed broadcast
        self.recovered: dict[str, bool] = {}
        self._subscribed: dict[str, None] = {}
        self._closing = threading.Event()
        self._resubscribed = threading.Event()
        self._resubscribed.set()
        self._ids = itertools.count(1)
        self._lock = threading.Lock()
        self._pending: dict[int, _Slot] = {}
        self._incoming: queue.Queue[Any] = queue.Queue()
        self._reader = threading.Thread(target=self._dispatch, name="lexicons-client",
                                        daemon=True)
        self._reader.start()

    # --- calls ----------------------------------------------------------------------------

    def call(self, signal: str, timeout: float | None = None, **kwargs: Any) -> Any:
        """Call *signal* and return its answer; CallFailed if the server answers errors."""
        call_id = next(self._ids)
        slot = _Slot()
        with self._lock:
            self._pending[call_id] = slot
        try:
            self.send_text(json.dumps({signal: kwargs, ID: call_id}))
            if not slot.event.wait(self.timeout if timeout is None else timeout):
                if not self.connected:
                    raise ConnectionError(f"connection closed ({self.close_code}) "
                                          f"before {signal} was answered")
                raise TimeoutError(f"no answer to {signal} within "
                                   f"{self.timeout if timeout is None else timeout:g} s")
        finally:
            with self._lock:
                self._pending.pop(call_id, None)
        if slot.value is _CLOSED:
            raise ConnectionError(f"connection closed ({self.close_code}) before {signal} "
                                  f"was answered")
        answer = slot.value
        if ERRORS in answer:
            raise CallFailed(answer[ERRORS])
        return answer.get(signal)

    def send(self, signal: str, **kwargs: Any) -> None:
        """Call *signal* without waiting (its answer, if any, arrives in :meth:`receive`)."""
        self.send_text(json.dumps({signal: kwargs}))

    def send_text(self, text: str) -> None:
        """Send one raw text message."""
        self._ws.send(text)

    def subscribe(self, channel: str, timeout: float | None = None,
                  recover: Mapping[str, Any] | None = None) -> Any:
        """Join *channel* (built-in Subscribe); CallFailed if not permitted.

        Kept across reconnects. *recover* (``{"offset", "epoch"}``) asks for the
        broadcasts since that position. Returns the server's answer.
        """
        kwargs: dict[str, Any] = {"channel": channel}
        if recover is not None:
            kwargs["recover"] = dict(recover)
        answer = self.call("Subscribe", timeout=timeout, **kwargs)
        self._subscribed[channel] = None
        self._note_answer(channel, answer)
        return answer

    def unsubscribe(self, channel: str, timeout: float | None = None) -> None:
        """Leave *channel*."""
        self._subscribed.pop(channel, None)
        self.positions.pop(channel, None)
        self.call("Unsubscribe", timeout=timeout, channel=channel)

    # --- positions and reconnecting -------------------------------------------------------

    def _open(self) -> _Socket:
        url, extra, ssl_context, max_message_size = self._connect_args
        return _Socket.connect(url, headers=extra, ssl_context=ssl_context,
                               max_message_size=max_message_size)

    def _note_answer(self, channel: str, answer: Any) -> None:
        """Take the position a Subscribe answer gives (a history channel's)."""
        if isinstance(answer, dict) and "epoch" in answer:
            self._advance(channel, answer.get("offset"), answer.get("epoch"))

    def _advance(self, channel: str, offset: Any, epoch: Any) -> None:
        known = self.positions.get(channel)
        if not isinstance(offset, int) or not isinstance(epoch, str):
            return
        if known is None or known["epoch"] != epoch or offset > known["offset"]:
            self.positions[channel] = {"offset": offset, "epoch": epoch}

    def _track(self, message: Any) -> None:
        """Remember the positions a broadcast carries."""
        for item in message:
            where = item.get(POSITION) if isinstance(item, dict) else None
            if isinstance(where, dict):
                self._advance(str(where.get("channel")), where.get("offset"),
                              where.get("epoch"))

    def wait_resubscribed(self, timeout: float | None = None) -> bool:
        """Wait until the channels are subscribed again after a reconnect."""
        return self._resubscribed.wait(self.timeout if timeout is None else timeout)

    def _reopen(self) -> bool:
        """Connect again with a growing delay; False once closing or refused."""
        delay = 0.05
        while not self._closing.wait(delay):
            try:
                ws = self._open()
            except Refused:
                return False
            except OSError:
                delay = min(delay * 2, self.retry_max)
                continue
            self._ws = ws
            self.reconnects += 1
            threading.Thread(target=self._resubscribe, name="lexicons-client-resubscribe",
                             daemon=True).start()
            return True
        return False

    def _resubscribe(self) -> None:
        """Subscribe again to every channel, asking for what was missed."""
        try:
            for channel in list(self._subscribed):
                position = self.positions.get(channel)
                kwargs: dict[str, Any] = {"channel": channel}
                if position is not None:
                    kwargs["recover"] = position
                try:
                    answer = self.call("Subscribe", **kwargs)
                except CallFailed:
                    if position is None:
                        raise
                    answer = self.call("Subscribe", channel=channel)  # a bad position
                    answer = {**answer, "recovered": False} if isinstance(answer, dict) else answer
                if isinstance(answer, dict) and "epoch" in answer:
                    if answer.get("recovered") is False:
                        self.positions.pop(channel, None)  # start again from the new one
                    self._note_answer(channel, answer)
                    self.recovered[channel] = bool(answer.get("recovered", True))
        except (ConnectionError, TimeoutError, CallFailed):
            return  # lost again (the next reconnect tries again), or refused
        self._resubscribed.set()

    # --- incoming -------------------------------------------------------------------------

    def receive(self, timeout: float | None = None) -> Any:
        """Return the next broadcast or uncorrelated answer (decoded JSON).

        Raises TimeoutError when none comes in time, ConnectionError once closed
        and drained.
        """
        try:
            message = self._incoming.get(timeout=self.timeout if timeout is None else timeout)
        except queue.Empty:
            raise TimeoutError("no message") from None
        if message is _CLOSED:
            self._incoming.put(_CLOSED)  # later calls see the end too
            raise ConnectionError(f"connection closed ({self.close_code})")
        return message

    def __iter__(self) -> Iterator[Any]:
        """Yield incoming messages until the connection closes."""
        while True:
            try:
                yield self.receive(timeout=3600)
            except ConnectionError:
                return

    def _dispatch(self) -> None:
        while True:
            self._read(self._ws)
            with self._lock:
                for slot in self._pending.values():
                    slot.value = _CLOSED
                    slot.event.set()
            if not self.reconnect or self._closing.is_set():
                break
            self._resubscribed.clear()
            if not self._reopen():
                break
        self._incoming.put(_CLOSED)

    def _read(self, ws: _Socket) -> None:
        """Hand out what *ws* receives until it closes."""
        while True:
            try:
                data = ws.receive()
            except simple_websocket.ConnectionClosed:
                return
            if data is None:
                return
            try:
                message = json.loads(data)
            except (TypeError, ValueError):
                self._incoming.put(data)
                continue
            if (isinstance(message, list) and len(message) == 1
                    and isinstance(message[0], dict) and ID in message[0]):
                with self._lock:
                    slot = self._pending.get(message[0][ID])
                if slot is not None:
                    slot.value = message[0]
                    slot.event.set()
                    continue
            if isinstance(message, list):
                self._track(message)
            self._incoming.put(message)

    # --- closing --------------------------------------------------------------------------

    @property
    def connected(self) -> bool:
        """Tell whether the connection is open."""
        return bool(self._ws.connected)

    @property
    def close_code(self) -> int | None:
        """Return the close code the server sent (None while open)."""
        return None if self._ws.connected else int(self._ws.close_reason)

    @property
    def close_reason(self) -> str:
        """Return the reason the server gave when closing."""
        return self._ws.close_message or ""

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (idempotent) and wait for the reader threads to end."""
        self._closing.set()
        ws = self._ws
        if ws.connected:
            try:  # send the close frame; the server answers and closes the socket
                simple_websocket.ws.Base.close(ws, code, reason or None)
            except (simple_websocket.ConnectionClosed, OSError):
                pass
        ws.thread.join(self.timeout)
        try:
            ws.sock.shutdown(socket.SHUT_RDWR)  # wakes a reader still blocked in recv
        except OSError:
            pass
        ws.sock.close()
        ws.thread.join(self.timeout)
        self._reader.join(self.timeout)

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
