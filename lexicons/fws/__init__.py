"""filtered_websocket's filter chains, run by lexicons.

Theory of operation
-------------------
filtered_websocket built a websocket server from filter modules named on its
command line (``-f module ...``): importing a module put each filter class it
defines on the chain of its kind, and every server event ran the chain, as
in ``cat event | filter_a | filter_b``. A filter is a class with a
classmethod ``filter(cls, web_socket_instance, data)``; its kind is the base
class it extends:

``WebSocketDataFilter``, ``WebSocketMessageFilter``
    each message a client sends (data filters first), with that client's
    socket. filtered_websocket gave data filters the raw TCP bytes; lexicons
    gives them the message, like message filters.
``WebSocketDisconnectFilter``
    a client that went away (``data`` is None).
``WebSocketConsumerFilter``
    each message consumed from the Redis pub/sub channels
    (``FWS_REDIS_CHANNELS``), with the *server* (``users``,
    ``storage_object``) and redis-py's message dict (``type``, ``channel``,
    ``data``; plus ``sender``, the id of the local socket that published
    it, or None).
``WebSocketOutgoingFilter``
    the per-socket consumer stage: each message the filters send to one
    socket (``sendMessage``, broadcasts, the pub/sub relay), with that
    socket. It returns the message to send instead, or False to drop it;
    returning nothing sends it unchanged.

The socket (``web_socket_instance``) has filtered_websocket's names: ``id``,
``users`` (every socket of this node by id), ``sendMessage(msg)``,
``storage_object``, ``token`` and ``queue``; lexicons adds ``connection``
(the :class:`lexicons.connection.Connection`), ``server`` and
``publish(data, channel=None)``. Messages are ``str`` for text frames and
``bytes`` for binary ones (filtered_websocket gave bytes).

:class:`Chain` is the lexicons :class:`~lexicons.daemon.filters.Filter` that runs
the chains on the native protocol's connections; the ``fws`` service
(:mod:`services.fws`) owns the server, the storage object and the pub/sub
relay. ``FWS_FILTERS`` names the modules (``lexicons serve -f``); code
written for filtered_websocket imports its base classes from here instead of
``filtered_websocket.filters.base``.
"""
from __future__ import annotations

import importlib
import logging
import queue
import threading
import uuid
from typing import Any

from lexicons.daemon.connection import fan_out
from lexicons.daemon.filters import Filter
from lexicons.errors import EntryError, ServiceError
from lexicons.wire.frames import OP_BINARY, frame, text_frame

log = logging.getLogger("lexicons.fws")

#: The filter modules lexicons ships, by their filtered_websocket names.
SHIPPED = ("broadcast_messages", "broadcast_messages_by_token", "broadcast_pubsub",
           "stdout_messages", "stdout_pubsub", "stdout_rawdata")


class FilterBase:
    """A filter of filtered_websocket: ``filter(cls, web_socket_instance, data)``."""

    @classmethod
    def filter(cls, web_socket_instance: Any, data: Any = None) -> Any:
        raise NotImplementedError


class WebSocketDataFilter(FilterBase):
    """Runs on each message a client sends, before the message filters."""


class WebSocketMessageFilter(FilterBase):
    """Runs on each message a client sends."""


class WebSocketDisconnectFilter(FilterBase):
    """Runs when a client went away."""


class WebSocketConsumerFilter(FilterBase):
    """Runs on each message consumed from the Redis pub/sub channels, with the server."""


class WebSocketOutgoingFilter(FilterBase):
    """Runs on each message about to be sent to one socket (the per-socket consumer stage)."""


KINDS: tuple[type[FilterBase], ...] = (WebSocketDataFilter, WebSocketMessageFilter,
                                       WebSocketDisconnectFilter, WebSocketConsumerFilter,
                                       WebSocketOutgoingFilter)


def module_name(name: str) -> str:
    """Return the module a ``-f`` name means: a shipped filter by its name, or *name*."""
    short = name.removeprefix("filtered_websocket.filters.")
    return f"lexicons.fws.{short}" if short in SHIPPED else name


def load_filters(names: list[str]) -> dict[type[FilterBase], list[type[FilterBase]]]:
    """Import the filter modules *names* and return their filter classes by kind.

    Within a kind, modules run in the order named and the classes of one module
    in the order it defines them. Raises ServiceError naming a module that
    cannot be imported or defines no filter.
    """
    from lexicons.daemon.aliases import install

    install()  # filters written for filtered_websocket import filtered_websocket.* names
    chains: dict[type[FilterBase], list[type[FilterBase]]] = {kind: [] for kind in KINDS}
    for name in names:
        path = module_name(name)
        try:
            module = importlib.import_module(path)
        except ModuleNotFoundError as exc:
            missing = exc.name or ""
            error = EntryError if path == missing or path.startswith(missing + ".") \
                else ServiceError  # else: the module is there, its import is not
            raise error(f"FWS_FILTERS: cannot import {name!r}: "
                        f"{type(exc).__name__}: {exc}") from exc
        except Exception as exc:  # user code: any failure to import is reported by name
            raise ServiceError(f"FWS_FILTERS: cannot import {name!r}: "
                               f"{type(exc).__name__}: {exc}") from exc
        found = 0
        for value in vars(module).values():
            if (isinstance(value, type) and issubclass(value, FilterBase)
                    and value.__module__ == module.__name__ and value not in KINDS):
                for kind in KINDS:
                    if issubclass(value, kind) and value not in chains[kind]:
                        chains[kind].append(value)
                        found += 1
        if not found:
            raise EntryError(f"FWS_FILTERS: module {name!r} defines no filter (a subclass of "
                               f"lexicons.fws.WebSocketMessageFilter or another kind)")
    return chains


class Users(dict):
    """Every socket of this node by id; iterating gives a snapshot (sockets come and go).

    ``list(dict.items(self))`` copies in one step under the GIL (no Python code
    runs while it iterates), so a socket closing meanwhile cannot break the loop
    of a filter.
    """

    def items(self) -> list[tuple[str, Socket]]:  # type: ignore[override]
        return list(dict.items(self))

    def values(self) -> list[Socket]:  # type: ignore[override]
        return list(dict.values(self))

    def keys(self) -> list[str]:  # type: ignore[override]
        return list(dict.keys(self))

    def __iter__(self) -> Any:
        return iter(list(dict.keys(self)))


def _frame(message: Any) -> bytes:
    if isinstance(message, str):
        return text_frame(message.encode("utf-8"))
    if isinstance(message, (bytes, bytearray, memoryview)):
        return frame(OP_BINARY, bytes(message))
    return text_frame(str(message).encode("utf-8"))


class Socket:
    """A client, as filtered_websocket's filters know it (``web_socket_instance``)."""

    def __init__(self, server: Server, connection: Any):
        self.id = uuid.uuid4().hex
        self.server = server
        self.connection = connection
        self.users = server.users
        self.storage_object = server.storage_object
        self.token: Any = None
        self.queue: queue.Queue[Any] = queue.Queue()

    def sendMessage(self, msg: Any) -> None:  # noqa: N802 - filtered_websocket's name
        """Send *msg* to this client (str: a text frame; bytes: binary), through the
        outgoing filters."""
        for item in self.server.chains[WebSocketOutgoingFilter]:
            try:
                result = item.filter(self, msg)
            except Exception:  # user code: log it; this message is not sent
                log.exception("outgoing filter %s failed (socket %s)", item.__name__, self.id)
                return
            if result is False:
                return
            if result is not None:
                msg = result
        self.connection.send_frame(_frame(msg))

    def publish(self, data: Any, channel: str | None = None) -> None:
        """Publish *data* on a Redis pub/sub channel (default: the first relayed one)."""
        self.server.publish(data, channel, sender=self.id)

    def loseConnection(self) -> None:  # noqa: N802 - filtered_websocket's name
        """Close this client's connection."""
        self.connection.close(1000, "")


class Server:
    """The filter chains of one daemon and the sockets they run on.

    ``users`` and ``storage_object`` are what filtered_websocket's factory held;
    consumer filters get this object as their ``web_socket_instance``.
    """

    def __init__(self, chains: dict[type[FilterBase], list[type[FilterBase]]],
                 storage_object: Any, options: Any = None, publisher: Any = None):
        self.chains = chains
        self.storage_object = storage_object
        self.options = options
        self.users = Users()
        self.token: Any = None
        self.queue: queue.Queue[Any] = queue.Queue()
        self._publisher = publisher
        self._lock = threading.Lock()
        self.failures = 0

    # the socket's life

    def open(self, connection: Any) -> Socket:
        socket = Socket(self, connection)
        with self._lock:
            self.users[socket.id] = socket
        return socket

    def message(self, socket: Socket, msg: Any) -> None:
        """Run the data filters, then the message filters, on one message of *socket*."""
        self._run(WebSocketDataFilter, socket, msg)
        self._run(WebSocketMessageFilter, socket, msg)

    def close(self, socket: Socket) -> None:
        with self._lock:
            self.users.pop(socket.id, None)
        self._run(WebSocketDisconnectFilter, socket, None)

    def consume(self, message: dict[str, Any]) -> None:
        """Run the consumer filters on one message from the pub/sub channels."""
        self._run(WebSocketConsumerFilter, self, message)

    def _run(self, kind: type[FilterBase], target: Any, data: Any) -> None:
        for item in self.chains[kind]:
            try:
                item.filter(target, data)
            except Exception:  # user code: log it and go on with the next filter
                self.failures += 1
                log.exception("filter %s failed (%s)", item.__name__,
                              getattr(target, "id", "consumer"))

    # sending

    def broadcast(self, msg: Any, exclude: Any = None, only: Any = None) -> int:
        """Send *msg* to every socket but *exclude* (and, given *only*, in it); framed once.

        Returns how many sockets it was sent to.
        """
        targets = [s for i, s in self.users.items()
                   if i != exclude and (only is None or i in only)]
        if self.chains[WebSocketOutgoingFilter]:
            for socket in targets:
                socket.sendMessage(msg)
        elif isinstance(msg, str):  # the broadcast hot path: framed once, writes coalesced
            payload = msg.encode("utf-8")
            fan_out([socket.connection for socket in targets], text_frame(payload), payload)
        else:
            data = _frame(msg)
            for socket in targets:
                socket.connection.send_frame(data)
        return len(targets)

    def publish(self, data: Any, channel: str | None = None, sender: Any = None) -> None:
        """Publish *data* on a Redis channel through the relay; ServiceError without one."""
        if self._publisher is None:
            raise ServiceError("no pub/sub relay runs: set FWS_REDIS_CHANNELS")
        self._publisher(data, channel, sender)


class Chain(Filter):
    """Run the ``FWS_FILTERS`` chains on every native-protocol connection.

    Installed on the connect, data and disconnect stages when ``FWS_FILTERS``
    names modules. A message goes to the filters and no further, unless an
    application (``APP``) runs too: then it is also decoded as calls.
    """

    def __init__(self, manager: Any):
        super().__init__(manager)
        if not manager.has_service("fws"):
            raise ServiceError("FWS_FILTERS needs the service "
                               "'services.fws/FilteredWebSocketService' in SERVICE_LIST")
        self.pass_on = bool(manager.settings.APP)

    def _server(self) -> Server:
        return self.manager.services["fws"].server

    def connect(self, conn: Any) -> bool:
        conn.fws_socket = self._server().open(conn)
        return True

    def data(self, conn: Any, data: str | bytes) -> str | bytes | None:
        socket = getattr(conn, "fws_socket", None)
        if socket is not None:
            socket.server.message(socket, data)
        return data if self.pass_on else None

    def disconnect(self, conn: Any) -> None:
        socket = getattr(conn, "fws_socket", None)
        if socket is not None:
            socket.server.close(socket)
