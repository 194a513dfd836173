"""The high-templar service: the ``/ws/`` endpoint and ``POST /trigger/``.

Theory of operation
-------------------
A thin driver over the pure :mod:`lexicons.hightemplar` protocol. It is
inert unless ``BOOTSTRAP_URL`` is set; then, in ``setup()``, it registers
with the listener the websocket path ``/ws/`` and the plain HTTP route
``/trigger/``.

Connecting. The listener hands each checked upgrade request to
:meth:`HighTemplarService.admit`, which completes the upgrade at once. The
backend is asked on the new connection's own first thread (``on_open``),
so a slow or failing backend holds up that client alone: never the
acceptor, never another client. The client then gets ``{"is_authorized":
true, "allowed_rooms": [...]}``, or ``{"is_authorized": false}`` and a
close 1000. Messages it sent meanwhile wait in TCP and are read after.

Messages. Each connection's messages run on the reader serving it, in order,
through its :class:`~lexicons.hightemplar.Session`. Subscriptions are
indexed by room key; fan-out reads an immutable snapshot of a room's
subscriptions (rebuilt after a change) without a lock. A publish encodes
the data once, splices it with each subscription's pre-encoded requestId,
and appends the frames to the connections' outbound buffers, which the
hub's flusher writes.

Publishing. An HTTP trigger reaches one node, so it goes through the
backplane (space ``"h"``, channel = room key) to every node with
subscriptions of the room; the backplane delivers locally at once. A
trigger's room with a ``"*"`` value is a pattern: it goes on the channel
``"*"``, which every node with a subscription joins, and each node delivers
it to the subscriptions of its rooms that the pattern matches. An AMQP
trigger is consumed by every node already (each has its own queue), so it
is delivered locally only: through the backplane each node would deliver it
once per node.

Idle connections (no message from the client for ``IDLE_TIMEOUT`` seconds)
are closed (1000) by ``main()``, which looks every second at most.
"""
from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

from lexicons.daemon import backend
from lexicons.daemon.service import Service
from lexicons.daemon.trust import TrustList
from lexicons.errors import BadTrigger, ServiceError, SettingsError
from lexicons.wire import hightemplar as ht
from lexicons.wire.frames import CLOSE_NORMAL, text_frame
from services.listener import HTTPResponse

PATH = "/ws/"
TRIGGER_PATH = "/trigger/"
#: The backplane space of high-templar rooms.
SPACE = "h"
#: The backplane channel (in SPACE) of triggers to room patterns: every node with a
#: subscription joins it and matches the pattern against its own rooms. Room keys
#: are JSON objects, so no room is named this.
PATTERNS = "*"

_EMPTY: tuple[tuple[Any, bytes], ...] = ()


class _Client:
    """One authorized connection: its protocol session and when it last spoke."""

    __slots__ = ("conn", "session", "last_seen")

    def __init__(self, conn: Any, session: ht.Session, now: float):
        self.conn = conn
        self.session = session
        self.last_seen = now


def _client_headers(request: Any) -> dict[str, str]:
    """Return the request's headers by lower-case name (repeated cookies joined)."""
    headers: dict[str, str] = {}
    for name, value in request.headers:
        if name == "cookie" and name in headers:
            headers[name] += "; " + value
        else:
            headers.setdefault(name, value)
    return headers


class HighTemplarService(Service):
    """Serve high-templar 3.x clients on ``/ws/`` and triggers on ``/trigger/``."""

    name = "hightemplar"

    def __init__(self, *args: Any, clock: Callable[[], float] = time.monotonic,
                 **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.clock = clock
        self.enabled = bool(self.settings.BOOTSTRAP_URL)
        self.backplane: Any = None
        self.online_since = ""
        self._lock = threading.Lock()
        self._clients: dict[Any, _Client] = {}
        # room key -> {(connection, request id key): request id JSON}
        self._rooms: dict[str, dict[tuple[Any, str], bytes]] = {}
        self._room_of: dict[str, dict[str, Any]] = {}   # room key -> the room, to match
        self._snapshots: dict[str, tuple[tuple[Any, bytes], ...]] = {}
        self._counts_lock = threading.Lock()
        self.received = 0
        self.sent = 0
        self.failed = 0
        self.published = 0        # publishes only: high-templar's ws_messages_send
        self.publish_failed = 0
        self.authorized = 0
        self.refused = 0
        self.idle_closed = 0
        self.triggers = 0
        self.bad_triggers = 0
        self._trust: tuple[list[str], TrustList] | None = None

    # --- lifecycle ------------------------------------------------------------------

    def setup(self) -> None:
        self.online_since = datetime.datetime.now().isoformat()  # local time, as 3.1.0 says it
        if not self.enabled:
            self.log.info("high-templar endpoint off (BOOTSTRAP_URL is not set)")
            return
        try:
            self._trigger_trust()
        except SettingsError as exc:  # name the setting: TrustList speaks of TRUST
            raise SettingsError(f"TRIGGER_TRUST: {str(exc).removeprefix('TRUST: ')}") from None
        if not self.manager.has_service("listener"):
            raise ServiceError("the high-templar endpoint needs the listener service")
        listener = self.manager.get_service("listener")
        listener.websocket(PATH, self)
        listener.route(TRIGGER_PATH, self.trigger_route)
        if self.manager.has_service("backplane"):
            self.backplane = self.manager.get_service("backplane")
            self.backplane.set_receiver(self.deliver, space=SPACE)
        self.log.info("high-templar endpoint on %s (backend %s)", PATH,
                      self.settings.BOOTSTRAP_URL)

    def main(self) -> None:
        while not self.stopping.wait(self._tick()):
            self.close_idle()

    def _tick(self) -> float:
        timeout = self.settings.IDLE_TIMEOUT
        return min(1.0, timeout / 4) if timeout > 0 else 1.0

    def teardown(self) -> None:
        if self.backplane is not None:
            self.backplane.set_receiver(None, space=SPACE)

    def info(self) -> dict[str, Any]:
        status = self.status()
        with self._counts_lock:
            return {"enabled": self.enabled, "connections": status.open_connections,
                    "rooms": status.num_rooms, "received": self.received, "sent": self.sent,
                    "failed": self.failed, "authorized": self.authorized,
                    "refused": self.refused, "idle_closed": self.idle_closed,
                    "triggers": self.triggers, "bad_triggers": self.bad_triggers}

    def _count(self, name: str, n: int = 1) -> None:
        with self._counts_lock:
            setattr(self, name, getattr(self, name) + n)

    # --- admission and the connection handler -------------------------------------------

    def admit(self, admission: Any) -> bool:
        """Complete the upgrade at once: the backend is asked on the connection's thread."""
        admission.upgrade(self)
        return True

    def on_open(self, conn: Any) -> None:
        """Ask the backend about the new client; welcome it or refuse it (close 1000)."""
        headers = backend.bootstrap_headers(_client_headers(conn.request), conn.request.query,
                                            self.settings.BACKEND_HEADERS, _ip(conn.address))
        auth = backend.bootstrap(self.settings.BOOTSTRAP_URL, headers,
                                 self.settings.BACKEND_TIMEOUT, self.settings.BOOTSTRAP_SOCKET)
        if not auth.authorized:
            self._count("refused")
            self.log.info("refused %s: %s", _ip(conn.address), auth.reason)
            self._send(conn, ht.refusal())
            conn.close(CLOSE_NORMAL, "")  # no reason, as high-templar 3.1.0
            return
        session = ht.Session(str(uuid.uuid4()), auth.allowed_rooms)
        with self._lock:
            self._clients[conn] = _Client(conn, session, self.clock())
        self._count("authorized")
        self.log.debug("authorized %s for %d rooms", _ip(conn.address), len(auth.allowed_rooms))
        self._send(conn, ht.welcome(auth.allowed_rooms))

    def on_message(self, conn: Any, data: str | bytes) -> None:
        """Run one client message through the protocol; act on what it asks."""
        client = self._clients.get(conn)
        if client is None:
            return  # refused and closing
        client.last_seen = self.clock()
        self._count("received")
        session = client.session
        actions = session.receive(data) if isinstance(data, str) else session.receive_binary(data)
        for action in actions:
            kind = type(action)
            if kind is ht.Reply:
                self._send(conn, action.text)
            elif kind is ht.Joined:
                self._join(conn, action.key, action.request_id, action.room)
            elif kind is ht.Left:
                self._leave(conn, action.key, action.request_id)
            elif kind is ht.StatusAsked:
                self._send(conn, ht.status_reply(self.status()))

    def on_close(self, conn: Any) -> None:
        """Forget a connection and every subscription it held."""
        with self._lock:
            client = self._clients.pop(conn, None)
        if client is None:
            return
        for left in client.session.close():
            self._leave(conn, left.key, left.request_id)

    def _send(self, conn: Any, text: str) -> None:
        # counted before sending: a status asked right after this reply arrived counts it
        self._count("sent")
        if not conn.send_frame(text_frame(text.encode("utf-8"))):
            with self._counts_lock:
                self.sent -= 1
                self.failed += 1

    # --- subscriptions ------------------------------------------------------------------

    def _join(self, conn: Any, key: str, request_id: Any, room: dict[str, Any]) -> None:
        with self._lock:
            if conn not in self._clients:
                return  # closed meanwhile: on_close may have run, do not resurrect it
            members = self._rooms.get(key)
            first = members is None
            if first:
                if not self._rooms and self.backplane is not None:
                    self.backplane.join(PATTERNS, space=SPACE)
                members = self._rooms[key] = {}
                self._room_of[key] = room
            members[(conn, ht.id_key(request_id))] = ht.id_json(request_id)
            self._snapshots.pop(key, None)
            if first and self.backplane is not None:
                self.backplane.join(key, space=SPACE)

    def _leave(self, conn: Any, key: str, request_id: Any) -> None:
        with self._lock:
            members = self._rooms.get(key)
            if members is None or members.pop((conn, ht.id_key(request_id)), None) is None:
                return
            self._snapshots.pop(key, None)
            if not members:
                del self._rooms[key]
                del self._room_of[key]
                if self.backplane is not None:
                    self.backplane.leave(key, space=SPACE)
                    if not self._rooms:
                        self.backplane.leave(PATTERNS, space=SPACE)

    def _members(self, key: str) -> tuple[tuple[Any, bytes], ...]:
        snapshot = self._snapshots.get(key)
        if snapshot is None:
            with self._lock:
                members = self._rooms.get(key)
                snapshot = tuple((conn, rid) for (conn, _), rid in members.items()) \
                    if members else _EMPTY
                self._snapshots[key] = snapshot
        return snapshot

    def status(self) -> ht.Status:
        """Return the counters of a status reply (closed connections no longer count)."""
        with self._lock:
            open_connections = sum(1 for conn in self._clients if conn.open)
            num_rooms = sum(1 for members in self._rooms.values()
                            if any(conn.open for conn, _ in members))
        amqp = self.manager.get_service("amqp") if self.manager.has_service("amqp") else None
        amqp_received = amqp.consumed + amqp.bad if amqp is not None else 0
        with self._counts_lock:
            return ht.Status(open_connections, num_rooms, self.online_since, amqp_received,
                             self.received, self.published, self.publish_failed)

    # --- publishing ---------------------------------------------------------------------

    def publish(self, trigger: ht.Trigger, cluster: bool = True) -> int:
        """Publish a trigger to its rooms; through the backplane to every node if *cluster*.

        Returns the number of distinct rooms published to.
        """
        data = trigger.data_json
        # a room named twice is published twice, as high-templar 3.1.0 does
        rooms = [(ht.room_key(room), room) for room in trigger.rooms]
        self._count("triggers")
        for key, room in rooms:
            if ht.is_pattern(room):   # to every room it matches, on every node
                key, message = PATTERNS, ht.pattern_message(room, data)
            else:
                message = data
            if cluster and self.backplane is not None:
                self.backplane.publish(key, message, space=SPACE)
            else:
                self.deliver(key, message)
        return len({key for key, _ in rooms})

    def deliver(self, key: str, data_json: bytes) -> None:
        """Send encoded data to this node's subscriptions of room *key* (backplane receiver).

        For the key :data:`PATTERNS`, the message names a room pattern: it goes to
        the subscriptions of every room here that the pattern matches.
        """
        if key == PATTERNS:
            pattern, data_json = ht.parse_pattern_message(data_json)
            with self._lock:
                keys = [k for k, room in self._room_of.items() if ht.matches(pattern, room)]
            for matched in keys:
                self._deliver_room(matched, data_json)
            return
        self._deliver_room(key, data_json)

    def _deliver_room(self, key: str, data_json: bytes) -> None:
        members = self._members(key)
        if not members:
            return
        hubs: list[Any] = []
        sent = failed = 0
        for conn, rid in members:
            if not conn.open:
                failed += 1
                continue
            conn.push(text_frame(ht.publish_payload(data_json, rid)))
            sent += 1
            hub = conn.hub
            if hub not in hubs:
                hubs.append(hub)
        for hub in hubs:
            hub.wake()
        with self._counts_lock:
            self.sent += sent
            self.failed += failed
            self.published += sent
            self.publish_failed += failed

    def trigger_route(self, request: Any) -> Any:
        """Answer ``POST /trigger/``: 400 saying what is missing, 200 once published."""
        if request.method != "POST":
            return HTTPResponse(405, {"code": "error", "message": "use POST"},
                                headers=(("Allow", "POST"),))
        if not self._trigger_trust().allows(request.peer):
            self._count("bad_triggers")
            self.log.warning("refused a trigger from %s (not in TRIGGER_TRUST)", request.peer)
            return HTTPResponse(403, {"code": "error",
                                      "message": "this address may not publish (TRIGGER_TRUST)"})
        try:
            trigger = ht.parse_trigger(request.body)
        except BadTrigger as exc:
            self._count("bad_triggers")
            return HTTPResponse(400, {"code": "error", "message": str(exc)})
        rooms = self.publish(trigger)
        return HTTPResponse(200, {"code": "success", "rooms": rooms})

    def _trigger_trust(self) -> TrustList:
        """Return the parsed TRIGGER_TRUST (parsed again when a reload changes it)."""
        entries = self.settings.TRIGGER_TRUST
        if self._trust is None or self._trust[0] is not entries:
            self._trust = (entries, TrustList(entries))
        return self._trust[1]

    # --- idle connections ---------------------------------------------------------------

    def close_idle(self) -> int:
        """Close the connections silent for IDLE_TIMEOUT seconds; return how many."""
        timeout = self.settings.IDLE_TIMEOUT
        if timeout <= 0:
            return 0
        limit = self.clock() - timeout
        with self._lock:
            idle = [c.conn for c in self._clients.values() if c.last_seen < limit]
        for conn in idle:
            if conn.open:
                conn.close(CLOSE_NORMAL, "")  # no reason, as high-templar 3.1.0
                self._count("idle_closed")
        return len(idle)


def _ip(address: Any) -> str:
    return address[0] if isinstance(address, tuple) else str(address)
