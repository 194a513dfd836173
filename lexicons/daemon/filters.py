"""Filters: pipelines that see, change or drop what flows through the daemon.

Theory of operation
-------------------
In the spirit of filtered_websocket (``cat event | filter_a | filter_b``), a
*filter* is a class with one method per *stage* it runs on; the ``FILTERS``
setting lists, per stage, the filters to run in order::

    FILTERS = {
        "data": ["lexicons.daemon.filters/RateLimit", "myapp.filters/Decompress"],
        "message": ["lexicons.daemon.filters/TrafficLog"],
        "disconnect": ["lexicons.daemon.filters/TrafficLog"],
    }

The stages, and what each method gets and returns (each filter's result is
the next one's input; returning None stops the pipeline: the thing is
dropped):

``connect(conn) -> bool | None``
    a native-protocol connection has opened. False refuses it: the
    connection is closed (1008). Every connect filter runs.
``data(conn, data) -> str | bytes | None``
    the text (or bytes) of each message a native-protocol connection sends,
    before it is decoded as JSON; on the reader serving that connection (one at
    a time), in the order sent.
``message(conn, call) -> Call | None``
    each call of a message, decoded and its arguments checked, before its
    signal runs (:class:`lexicons.events.Call`: ``signal``, ``kwargs``,
    ``id``). A filter may return another Call (``dataclasses.replace``); the
    signal it names must exist, and arguments it changes are not checked
    again.
``disconnect(conn) -> None``
    a native-protocol connection has closed (``conn.close_reason`` holds
    the code). Every disconnect filter runs, before the connection leaves
    its channels.
``backplane(channels, message) -> bytes | None``
    each broadcast about to be delivered to this node's connections: the
    channel names and the encoded JSON text (``[{"Name": payload}]``).
    With a backplane service it is each message as consumed from the
    backplane; without one, each local broadcast.

A filter answers a client through the connection: raising
:class:`~lexicons.errors.CallError` in ``data`` or ``message`` drops what it
got and sends the client ``[{"Errors": [message]}]`` (with the call's id in
``message``); :meth:`Filter.reply_error` sends an error without dropping.
A call with an id that a filter drops silently is still answered (``"Name:
refused"``), since a call with an id always gets one answer. A filter that
raises anything else is logged; what it got is dropped (the client hears
``"the server could not handle this message"``).

Each class is built once per daemon, with the service manager, and the same
instance serves every stage it is listed on. Filters are loaded when the
first service that uses them sets up (rooms or router), so a bad entry stops
start-up with a message naming it. A stage without filters costs nothing:
the router and rooms keep their unfiltered methods; the filtered ones are
installed only for configured stages.

The connection stages (connect, data, message, disconnect) run on the native
protocol's connections (path ``/``); the backplane stage runs on every
broadcast, whichever endpoint its members came from.
"""
from __future__ import annotations

import logging
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from lexicons.daemon.entries import import_entry
from lexicons.errors import CallError, ServiceError, SettingsError
from lexicons.wire import frames, protocol
from lexicons.wire.events import Call

if TYPE_CHECKING:
    from lexicons.daemon.connection import Connection

log = logging.getLogger("lexicons.filters")

#: The stages a filter can run on, in the order a message meets them.
STAGES = ("connect", "data", "message", "disconnect", "backplane")

#: What a client hears when a filter fails (the log has the traceback).
FAILED = "the server could not handle this message"


class Filter:
    """Base class of filters: override the method of each stage the filter runs on.

    Built once per daemon with the service manager (``self.manager``,
    ``self.settings``). Methods of the connection stages run on the
    reader serving the connection, several connections at once: state shared
    between connections needs a lock; state of one connection does not.
    """

    def __init__(self, manager: Any):
        self.manager = manager

    @property
    def settings(self) -> Any:
        """Return the daemon's settings (live: reloads show here)."""
        return self.manager.settings

    def connect(self, conn: Connection) -> bool | None:
        """See a connection open; return False to close it (1008)."""
        return True

    def data(self, conn: Connection, data: str | bytes) -> str | bytes | None:
        """Return a message's text (changed or not) to pass on, or None to drop it."""
        return data

    def message(self, conn: Connection, call: Call) -> Call | None:
        """Return a call (changed or not) to run, or None to drop it."""
        return call

    def disconnect(self, conn: Connection) -> None:
        """See a connection close."""

    def backplane(self, channels: tuple[str, ...], message: bytes) -> bytes | None:
        """Return a broadcast's encoded text (changed or not) to deliver, or None to drop it."""
        return message

    @staticmethod
    def reply_error(conn: Connection, *messages: str, call_id: Any = None) -> None:
        """Send the client ``[{"Errors": [messages...]}]`` (with *call_id* as ``"#"``)."""
        conn.send_frame(frames.text_frame(protocol.errors(messages, call_id).encode("utf-8")))


# --- loading ----------------------------------------------------------------------------


def check_setting(value: dict[str, Any]) -> None:
    """Check the shape of a FILTERS value (stages known, entries 'module.path/ClassName')."""
    for stage, entries in value.items():
        if stage not in STAGES:
            raise SettingsError(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
        if isinstance(entries, (str, bytes)) or not isinstance(entries, (list, tuple)):
            raise SettingsError(f"stage {stage!r}: expected a list of "
                                f"'module.path/ClassName' strings, got {entries!r}")
        for entry in entries:
            module, sep, name = entry.partition("/") if isinstance(entry, str) else ("", "", "")
            if not sep or not module or not name:
                raise SettingsError(f"stage {stage!r}: {entry!r} is not of the form "
                                    f"'module.path/ClassName'")


def import_filter(entry: str) -> type[Filter]:
    """Return the Filter class named by ``'module.path/ClassName'`` (ServiceError if none)."""
    return import_entry(entry, Filter, "FILTERS")


class Filters:
    """The loaded filters of one daemon, per stage, and the wrappers that run them."""

    def __init__(self, stages: dict[str, tuple[Filter, ...]] | None = None):
        self.stages: dict[str, tuple[Filter, ...]] = {s: () for s in STAGES}
        self.stages.update(stages or {})
        #: what each stage dropped, and how often a filter raised (read by /metrics)
        self.dropped = dict.fromkeys(STAGES, 0)
        self.failed = dict.fromkeys(STAGES, 0)

    @classmethod
    def load(cls, spec: dict[str, list[str]], manager: Any) -> Filters:
        """Import and build the filters *spec* names (one instance per class)."""
        check_setting(spec)
        built: dict[str, Filter] = {}
        stages: dict[str, tuple[Filter, ...]] = {}
        for stage, entries in spec.items():
            chain = []
            for entry in entries:
                instance = built.get(entry)
                if instance is None:
                    filter_class = import_filter(entry)
                    try:
                        instance = filter_class(manager)
                    except Exception as exc:
                        raise ServiceError(f"FILTERS: {entry!r} failed to build: "
                                           f"{type(exc).__name__}: {exc}") from exc
                    built[entry] = instance
                if getattr(type(instance), stage) is getattr(Filter, stage):
                    raise ServiceError(f"FILTERS[{stage!r}]: {entry!r} has no {stage}() "
                                       f"method of its own")
                chain.append(instance)
            stages[stage] = tuple(chain)
        loaded = cls(stages)
        if built:
            log.info("filters: %s", "; ".join(f"{stage}: {', '.join(spec[stage])}"
                                             for stage in STAGES if spec.get(stage)))
        return loaded

    def __bool__(self) -> bool:
        return any(self.stages.values())

    def info(self) -> dict[str, Any]:
        """Return the filters per stage and what they dropped."""
        return {stage: {"filters": [type(f).__name__ for f in chain],
                        "dropped": self.dropped[stage], "failed": self.failed[stage]}
                for stage, chain in self.stages.items() if chain}

    # --- installing the pipelines ---------------------------------------------------------

    def install_handler(self, handler: Any) -> None:
        """Put filtered versions of the router's handler methods on *handler*.

        Sets instance attributes (``on_open``, ``on_message``, ``run``,
        ``on_close``) only for the stages that have filters, so a stage
        without filters keeps the plain method and costs nothing.
        """
        if self.stages["connect"]:
            handler.on_open = self._connect_stage(_plain(handler, "on_open"))
        if self.stages["data"]:
            handler.on_message = self._data_stage(_plain(handler, "on_message"))
        if self.stages["message"]:
            handler.run = self._message_stage(_plain(handler, "run"), handler)
        if self.stages["disconnect"]:
            handler.on_close = self._disconnect_stage(_plain(handler, "on_close"))

    def install_rooms(self, rooms: Any) -> None:
        """Put a filtered ``deliver`` on the rooms service when the backplane stage has filters.

        Call it before ``deliver`` is handed to the backplane as a receiver.
        """
        if self.stages["backplane"]:
            rooms.deliver = self._backplane_stage(_plain(rooms, "deliver"))

    def _connect_stage(self, on_open: Callable[[Any], None]) -> Callable[[Any], None]:
        chain = self.stages["connect"]

        def on_open_filtered(conn: Any) -> None:
            on_open(conn)
            for item in chain:
                try:
                    keep = item.connect(conn)
                    reason = "connection refused"
                except CallError as exc:
                    keep, reason = False, str(exc) or "connection refused"
                except Exception:
                    self.failed["connect"] += 1
                    log.exception("filter %s failed on connect (connection %s)",
                                  type(item).__name__, conn.id)
                    keep, reason = False, "the server could not accept this connection"
                if keep is False:
                    self.dropped["connect"] += 1
                    conn.close(frames.CLOSE_POLICY, reason)
                    return
        return on_open_filtered

    def _data_stage(self, on_message: Callable[[Any, Any], None]) -> Callable[[Any, Any], None]:
        chain = self.stages["data"]
        dropped, failed = self.dropped, self.failed

        def on_message_filtered(conn: Any, data: str | bytes) -> None:
            for item in chain:
                try:
                    data = item.data(conn, data)
                except CallError as exc:
                    dropped["data"] += 1
                    Filter.reply_error(conn, str(exc) or "message refused")
                    return
                except Exception:
                    failed["data"] += 1
                    log.exception("filter %s failed on data (connection %s)",
                                  type(item).__name__, conn.id)
                    Filter.reply_error(conn, FAILED)
                    return
                if data is None:
                    dropped["data"] += 1
                    return
            on_message(conn, data)
        return on_message_filtered

    def _message_stage(self, run: Callable[..., None], router: Any) -> Callable[..., None]:
        chain = self.stages["message"]
        dropped, failed = self.dropped, self.failed

        def run_filtered(conn: Any, name: str, kwargs: dict[str, Any], call_id: Any) -> None:
            call: Call | None = Call(name, kwargs, call_id)
            for item in chain:
                try:
                    call = item.message(conn, call)
                except CallError as exc:
                    dropped["message"] += 1
                    Filter.reply_error(conn, str(exc) or f"{name}: refused", call_id=call_id)
                    return
                except Exception:
                    failed["message"] += 1
                    log.exception("filter %s failed on a call of %s (connection %s)",
                                  type(item).__name__, name, conn.id)
                    Filter.reply_error(conn, FAILED, call_id=call_id)
                    return
                if call is None:
                    dropped["message"] += 1
                    if call_id is not None:  # a call with an id always gets one answer
                        Filter.reply_error(conn, f"{name}: refused", call_id=call_id)
                    return
            if call.signal not in router.signals:
                Filter.reply_error(conn, router.protocol.unknown(call.signal), call_id=call.id)
                return
            run(conn, call.signal, call.kwargs, call.id)
        return run_filtered

    def _disconnect_stage(self, on_close: Callable[[Any], None]) -> Callable[[Any], None]:
        chain = self.stages["disconnect"]

        def on_close_filtered(conn: Any) -> None:
            for item in chain:
                try:
                    item.disconnect(conn)
                except Exception:
                    self.failed["disconnect"] += 1
                    log.exception("filter %s failed on disconnect (connection %s)",
                                  type(item).__name__, conn.id)
            on_close(conn)
        return on_close_filtered

    def _backplane_stage(self, deliver: Callable[[tuple[str, ...], bytes], None]
                         ) -> Callable[[tuple[str, ...], bytes], None]:
        chain = self.stages["backplane"]
        dropped, failed = self.dropped, self.failed

        def deliver_filtered(channels: tuple[str, ...], message: bytes) -> None:
            channels = tuple(channels)
            for item in chain:
                try:
                    message = item.backplane(channels, message)
                except Exception:
                    failed["backplane"] += 1
                    log.exception("filter %s failed on a broadcast on %s",
                                  type(item).__name__, ", ".join(channels))
                    return
                if message is None:
                    dropped["backplane"] += 1
                    return
            deliver(channels, message)
        return deliver_filtered


def _plain(obj: Any, name: str) -> Callable[..., Any]:
    """Return *obj*'s own method *name*, not a filtered one installed before (a re-setup)."""
    return getattr(type(obj), name).__get__(obj)


def daemon_spec(settings: Any) -> dict[str, list[str]]:
    """Return ``FILTERS`` plus the filters other settings imply.

    ``TASKS_PATH`` adds :class:`lexicons.zephserver.TaskMessages` to the data
    stage, ``FWS_FILTERS`` adds :class:`lexicons.fws.Chain` to the connect, data
    and disconnect stages, each after the filters ``FILTERS`` lists.
    """
    spec = {stage: list(entries) for stage, entries in settings.FILTERS.items()}
    if settings.TASKS_PATH:
        spec.setdefault("data", []).append("lexicons.daemon.zephserver/TaskMessages")
    if settings.FWS_FILTERS:
        for stage in ("connect", "data", "disconnect"):
            spec.setdefault(stage, []).append("lexicons.fws/Chain")
    return spec


_daemons: weakref.WeakKeyDictionary[Any, Filters] = weakref.WeakKeyDictionary()
_daemons_lock = threading.Lock()


def for_daemon(manager: Any) -> Filters:
    """Return the daemon's filters, loading ``FILTERS`` on the first call.

    The router and the rooms service both call this in their setup; whichever
    comes first loads, so each filter class is built once per daemon.
    Raises ServiceError naming a bad entry.
    """
    with _daemons_lock:
        found = _daemons.get(manager)
        if found is None:
            found = Filters.load(daemon_spec(manager.settings), manager)
            _daemons[manager] = found
        return found


# --- the shipped filters ----------------------------------------------------------------


def _preview(data: str | bytes, limit: int = 200) -> str:
    text = repr(data[:limit])
    return text + (f" ... ({len(data)} in all)" if len(data) > limit else "")


class TrafficLog(Filter):
    """Log a DEBUG line for everything it sees, and pass it on unchanged (any stage).

    The lines go to the logger ``lexicons.filters.traffic``; messages are
    shown up to 200 characters. Costs one level check when DEBUG is off.
    """

    log = logging.getLogger("lexicons.filters.traffic")

    def connect(self, conn: Connection) -> bool:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("connection %s from %s: open", conn.id, conn.address)
        return True

    def data(self, conn: Connection, data: str | bytes) -> str | bytes:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("connection %s: message %s", conn.id, _preview(data))
        return data

    def message(self, conn: Connection, call: Call) -> Call:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("connection %s: call %s%s %s", conn.id, call.signal,
                           "" if call.id is None else f" #{call.id!r}",
                           _preview(repr(call.kwargs)))
        return call

    def disconnect(self, conn: Connection) -> None:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("connection %s: closed (code %s)", conn.id,
                           getattr(conn, "close_reason", None))

    def backplane(self, channels: tuple[str, ...], message: bytes) -> bytes:
        if self.log.isEnabledFor(logging.DEBUG):
            self.log.debug("broadcast on %s: %s", ", ".join(channels), _preview(message))
        return message


class _Bucket:
    """One connection's token bucket and its recent drops."""

    __slots__ = ("tokens", "last", "drops", "window")

    def __init__(self, tokens: float, now: float):
        self.tokens = tokens
        self.last = now
        self.drops = 0
        self.window = now


class RateLimit(Filter):
    """Limit each connection to ``RATE_LIMIT`` messages a second (stage data or message).

    A token bucket per connection: it holds up to ``RATE_LIMIT_BURST``
    tokens, refills at ``RATE_LIMIT`` a second, and each message (listed
    under ``data``) or each call (listed under ``message``) takes one. Over
    the limit, the message is dropped and the client told::

        [{"Errors": ["rate limit: more than 20 messages a second (burst 40); message dropped"]}]

    (with the call's id under ``message``). A client that has more than
    ``RATE_LIMIT_CLOSE`` messages dropped within ``WINDOW`` seconds is
    abusing: its connection is closed with 1008 ``"rate limit exceeded"``.
    Other connections are not affected: each has its own bucket.
    """

    #: Seconds over which dropped messages are counted towards a close.
    WINDOW = 10.0
    clock: Callable[[], float] = staticmethod(time.monotonic)

    def __init__(self, manager: Any):
        super().__init__(manager)
        self._seen: Any = None  # the settings object the limits below were read from
        self._limits = (0.0, 0, 0)

    def _take(self, conn: Connection) -> str | None:
        """Take a token for one message; return the error to send when there is none."""
        now = self.clock()
        settings = self.manager.settings
        if settings is not self._seen:  # read once per settings object (reload: a new one)
            self._limits = (settings.RATE_LIMIT, settings.RATE_LIMIT_BURST,
                            settings.RATE_LIMIT_CLOSE)
            self._seen = settings
        rate, burst, close_after = self._limits
        bucket = getattr(conn, "_rate_bucket", None)
        if bucket is None:
            bucket = conn._rate_bucket = _Bucket(burst, now)  # one reader at a time: no lock
        tokens = min(burst, bucket.tokens + (now - bucket.last) * rate)
        bucket.last = now
        if tokens >= 1.0:
            bucket.tokens = tokens - 1.0
            return None
        bucket.tokens = tokens
        if now - bucket.window > self.WINDOW:
            bucket.window, bucket.drops = now, 0
        bucket.drops += 1
        if bucket.drops > close_after:
            log.info("connection %s: more than %d messages dropped within %g s, closing "
                     "(rate limit)", conn.id, close_after, self.WINDOW)
            conn.close(frames.CLOSE_POLICY, "rate limit exceeded")
        return (f"rate limit: more than {rate:g} messages a second (burst {burst}); "
                f"message dropped")

    def data(self, conn: Connection, data: str | bytes) -> str | bytes:
        error = self._take(conn)
        if error is not None:
            raise CallError(error)
        return data

    def message(self, conn: Connection, call: Call) -> Call:
        error = self._take(conn)
        if error is not None:
            raise CallError(error)
        return call


class TokenGroups(Filter):
    """Relay messages between the connections that present the same token.

    As filtered_websocket's token filter: a client joins the group of a
    token by presenting it, in the ``X-Token`` header of the upgrade request
    or the ``token`` query parameter (browsers cannot set headers:
    ``ws://host/?token=T``). Each message it sends is relayed verbatim (text
    as text, bytes as bytes) to every *other* connection of its group on
    this node, and is not run as calls; connections without a token are not
    affected. Set ``run_calls = True`` on a subclass to relay a message and
    also run it as calls. Lists: connect, data and disconnect::

        FILTERS = {"connect": ["lexicons.daemon.filters/TokenGroups"],
                   "data": ["lexicons.daemon.filters/TokenGroups"],
                   "disconnect": ["lexicons.daemon.filters/TokenGroups"]}

    Groups are per node; to reach clients on every node use channels.
    """

    header = "X-Token"
    query = "token"
    run_calls = False

    def __init__(self, manager: Any):
        super().__init__(manager)
        self._lock = threading.Lock()
        self._groups: dict[str, dict[Any, None]] = {}

    def token_of(self, conn: Connection) -> str | None:
        """Return the token *conn* presented at connect time, or None."""
        request = conn.request
        token = request.header(self.header) or request.query.get(self.query)
        return token or None

    def members(self, token: str) -> tuple[Any, ...]:
        """Return the connections of the group of *token*."""
        with self._lock:
            return tuple(self._groups.get(token, ()))

    def connect(self, conn: Connection) -> bool:
        token = self.token_of(conn)
        conn.group_token = token
        if token is not None:
            with self._lock:
                self._groups.setdefault(token, {})[conn] = None
        return True

    def data(self, conn: Connection, data: str | bytes) -> str | bytes | None:
        token = getattr(conn, "group_token", None)
        if token is None:
            return data
        if isinstance(data, str):
            frame = frames.text_frame(data.encode("utf-8"))
        else:
            frame = frames.frame(frames.OP_BINARY, bytes(data))
        for other in self.members(token):
            if other is not conn:
                other.send_frame(frame)
        return data if self.run_calls else None

    def disconnect(self, conn: Connection) -> None:
        token = getattr(conn, "group_token", None)
        if token is None:
            return
        with self._lock:
            group = self._groups.get(token)
            if group is not None:
                group.pop(conn, None)
                if not group:
                    del self._groups[token]
