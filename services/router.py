"""The router service: decode calls, run signals, answer the caller, hand broadcasts on.

Theory of operation
-------------------
The router is the message handler of every native-protocol connection. A
message is decoded by the pure :class:`lexicons.protocol.Protocol`; each call
runs *on the connection's own reader thread* while holding one of
``WORKERS`` execution slots:

* calls from one connection run in the order they were sent, for free: the
  reader handles one message after another;
* different connections run in parallel, at most ``WORKERS`` signals at once;
* there is no hand-off to a worker thread and back per call (measured with 50
  clients: about 44,000 calls/s run this way against 25,000 through a pool of
  worker threads), and a client that floods is slowed by TCP backpressure
  instead of filling a queue.

``execute`` gets its checked arguments plus ``db``, ``ws`` and ``sv`` (as it
names them) and runs in one database transaction: when it returns its writes
are journaled and committed, then the caller is answered and the response's
broadcast goes to the rooms service. A signal that raises leaves no write
behind (the transaction is undone) and gives its caller an error (its message
for a ``CallError``, ``"Name failed"`` otherwise, the traceback only in the
log); the connection stays usable.
"""
from __future__ import annotations

import queue
import threading
from types import CoroutineType
from typing import Any

from lexicons.channel import Presence, Subscribe, Unsubscribe
from lexicons.daemon import aio, filters
from lexicons.daemon.connection import Connection
from lexicons.daemon.metrics import ERROR, FAILED, OK, CallStats, clock
from lexicons.daemon.service import Service
from lexicons.errors import CallError, NotPermitted, ServiceError, Unavailable
from lexicons.signal import NOTHING, Response, Signal, channel_names
from lexicons.wire import protocol
from lexicons.wire.events import Rejected
from lexicons.wire.frames import text_frame
from lexicons.wire.protocol import Protocol

BUILT_IN: tuple[type[Signal], ...] = (Subscribe, Unsubscribe, Presence)


class Facade:
    """The ``sv`` argument of signals and headers: what the server offers them."""

    def __init__(self, router: RouterService):
        self._router = router

    @property
    def settings(self) -> Any:
        """Return the daemon's settings."""
        return self._router.settings

    def service(self, name: str) -> Any:
        """Return one of the daemon's services by name."""
        return self._router.manager.get_service(name)

    def publish(self, channels: Any, name: str, payload: Any) -> None:
        """Broadcast ``[{name: payload}]`` to every connection in *channels*."""
        self._router.rooms_service().publish(channel_names(channels), name, payload)

    def subscribe(self, ws: Connection, channel: Any, check: bool = False,
                  recover: Any = None) -> Any:
        """Put connection *ws* in *channel* (check=True asks the channel's permit hook).

        For a channel with history, answers its position and, given *recover*
        (``{"offset", "epoch"}``), first sends *ws* what it missed since then.
        ``subscribe(event, fn)`` (a name and a callable) instead calls ``fn(event, data)``
        for every cluster event *event* said on any node (see :meth:`say`).
        """
        if isinstance(ws, str) and callable(channel):
            self._backplane().subscribe(ws, channel)
            return None
        return self._router.rooms_service().subscribe(ws, str(channel), recover, check=check)

    def history(self, channel: Any, limit: int = 100) -> dict[str, Any]:
        """Return a history channel's ``{channel, offset, epoch, publications}``.

        The newest *limit* publications kept, oldest first, each
        ``{"offset", "name", "data"}``.
        """
        return self._router.rooms_service().history(str(channel), limit)

    def presence(self, channel: Any) -> dict[str, Any]:
        """Return who is in a presence channel: ``{channel, count, members}``."""
        return self._router.rooms_service().presence(str(channel))

    def unsubscribe(self, ws: Connection, channel: Any) -> None:
        """Take connection *ws* out of *channel*; ``unsubscribe(event, fn)`` drops a handler."""
        if isinstance(ws, str) and callable(channel):
            self._backplane().unsubscribe(ws, channel)
            return
        self._router.rooms_service().leave(ws, str(channel))

    def say(self, event: str, data: Any = None) -> None:
        """Send cluster event *event* with JSON data to its handlers on every node."""
        self._backplane().say(event, data)

    def _backplane(self) -> Any:
        return self._router.manager.events()  # a static cluster, else the backplane

    def send(self, ws: Connection, name: str, payload: Any) -> None:
        """Send ``[{name: payload}]`` to connection *ws* alone."""
        ws.send_frame(text_frame(protocol.reply(name, payload).encode("utf-8")))


class RouterService(Service):
    """Run the signals clients call (see the module doc)."""

    name = "router"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.signals: dict[str, type[Signal]] = {}
        self.inject: dict[str, tuple[str, ...]] = {}
        self.protocol = Protocol({})
        self.facade = Facade(self)
        self.db: Any = None
        self.rooms: Any = None
        self.connections = 0
        self._count_lock = threading.Lock()
        # statistics: bumped without a lock on the hot path, so approximate under load
        self.calls = 0
        self.failures = 0
        self.stats = CallStats(())
        self.filters = filters.Filters()
        self._slots: queue.SimpleQueue[int] = queue.SimpleQueue()
        self._guarded: set[str] = set()  # signals that define their own permit()

    def setup(self) -> None:
        specs = {}
        for cls in (*BUILT_IN, *self.manager.app.signals):
            if not (isinstance(cls, type) and issubclass(cls, Signal)):
                raise ServiceError(f"signals: {cls!r} is not a Signal subclass")
            name = cls.signal_name()
            if name in (protocol.ERRORS, protocol.ID):
                raise ServiceError(f"signals: {name!r} is reserved by the protocol")
            self.signals[name] = cls  # an application's signal replaces a built-in
            specs[name] = cls.arguments()
            self.inject[name] = specs[name].inject
            if cls.permit is not Signal.permit:
                self._guarded.add(name)
            else:
                self._guarded.discard(name)
        self.protocol = Protocol(specs)
        self.stats = CallStats(self.signals)
        self.filters = filters.for_daemon(self.manager)
        self.filters.install_handler(self)  # only the stages that have filters
        for slot in range(self.settings.WORKERS):
            self._slots.put(slot)
        if self.manager.has_service("persister"):
            self.db = getattr(self.manager.get_service("persister"), "db", None)
        if self.manager.has_service("rooms"):
            self.rooms = self.manager.get_service("rooms")

    def info(self) -> dict[str, Any]:
        return {"signals": sorted(self.signals), "connections": self.connections,
                "calls": self.calls, "failures": self.failures,
                "workers": self.settings.WORKERS, "filters": self.filters.info()}

    def rooms_service(self) -> Any:
        """Return the rooms service; ServiceError if the daemon runs none."""
        if self.rooms is None:
            raise ServiceError("no rooms service runs: broadcasts are not possible")
        return self.rooms

    # --- the connection handler ---------------------------------------------------------

    def on_open(self, conn: Connection) -> None:
        """Count a new connection."""
        with self._count_lock:
            self.connections += 1

    def on_close(self, conn: Connection) -> None:
        """Forget a connection: leave its channels."""
        with self._count_lock:
            self.connections -= 1
        if self.rooms is not None and conn.channels:
            self.rooms.drop(conn)

    def on_message(self, conn: Connection, data: str | bytes) -> None:
        """Decode a message and run its calls in order (on the connection's reader thread)."""
        self.stats.received += 1
        if type(data) is not str:
            self.stats.rejected += 1
            self._error(conn, ("binary messages are not understood: send JSON text",), None)
            return
        for item in self.protocol.decode(data):
            if type(item) is Rejected:
                self.stats.rejected += 1
                self._error(conn, item.errors, item.id)
            else:
                self.run(conn, item.signal, item.kwargs, item.id)

    def run(self, conn: Connection, name: str, kwargs: dict[str, Any], call_id: Any) -> None:
        """Run one checked call and answer it."""
        started = clock()
        self.calls += 1
        signal = self.signals[name]()
        error: str | None = None
        outcome = OK
        result = None
        slot = self._slots.get()
        try:
            if name in self._guarded and not signal.permit(conn, **kwargs):
                raise NotPermitted(f"not permitted: {name}")
            for key in self.inject[name]:
                kwargs[key] = conn if key == "ws" else self.db if key == "db" else self.facade
            result = self._execute(signal, kwargs)
        except CallError as exc:
            error = str(exc) or f"{name} refused"
            outcome = ERROR
        except Unavailable as exc:   # a replicated database without its stream
            self.log.warning("signal %s: %s", name, exc)
            error = f"{name} failed: {exc}"
            outcome = ERROR
        except Exception:
            self.failures += 1
            self.log.exception("signal %s failed (connection %s)", name, conn.id)
            error = f"{name} failed"
            outcome = FAILED
        finally:
            self._slots.put(slot)
        if self.db is not None:  # durable before anyone hears of it
            try:
                self.db.commit()
            except Exception:
                self.failures += 1
                self.log.exception("commit after %s failed", name)
                error = f"{name} failed: its changes could not be saved"
                outcome = FAILED
        if error is not None:
            self._error(conn, (error,), call_id)
        else:
            self._answer(conn, name, result, call_id)
        self.stats.record(name, outcome, clock() - started)

    def _execute(self, signal: Signal, kwargs: dict[str, Any]) -> Any:
        """Run *signal* in one transaction: all its writes are kept, or none if it raises.

        An ``async def`` execute is awaited here, on the connection's thread.
        """
        db = self.db
        if db is None:
            result = signal.execute(**kwargs)
            return aio.resolve(result) if result.__class__ is CoroutineType else result
        with db.transaction():
            result = signal.execute(**kwargs)
            if result.__class__ is CoroutineType:
                result = aio.resolve(result)
        return result

    def _answer(self, conn: Connection, name: str, result: Any, call_id: Any) -> None:
        reply = result
        try:
            if isinstance(result, Response):
                if result.channels:
                    self.rooms_service().publish(result.channels, result.name or name,
                                                 result.payload)
                    reply = result.reply
                else:
                    reply = result.payload
            if reply is None or reply is NOTHING:
                if call_id is None:
                    return
                reply = None
            text = protocol.reply(name, reply, call_id)
        except (TypeError, ValueError, RecursionError) as exc:
            self.failures += 1
            self.log.error("signal %s: its answer cannot be sent: %s", name, exc)
            self._error(conn, (f"{name} failed: its answer cannot be sent as JSON",), call_id)
            return
        except ServiceError as exc:
            self.failures += 1
            self.log.error("signal %s: %s", name, exc)
            self._error(conn, (f"{name} failed",), call_id)
            return
        self.stats.sent += 1
        conn.send_frame(text_frame(text.encode("utf-8")))

    def _error(self, conn: Connection, messages: tuple[str, ...], call_id: Any) -> None:
        self.stats.sent += 1
        conn.send_frame(text_frame(protocol.errors(messages, call_id).encode("utf-8")))
