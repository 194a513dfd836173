"""The backplane: broadcasts and cluster events between the nodes of one deployment.

Theory of operation
-------------------
The rooms service hands every broadcast to :meth:`BackplaneService.publish`
(the channel name and the encoded, unframed payload), or to
:meth:`~BackplaneService.publish_many` when it names several channels, and tells
the backplane
when this node gains its first (:meth:`~BackplaneService.join`) or loses its
last (:meth:`~BackplaneService.leave`) local member of a channel. The
backplane calls the receiver set by :meth:`~BackplaneService.set_receiver`
for every broadcast local members must get.

``BACKPLANE = "memory"`` (the default): one process; ``publish`` calls the
receiver at once, in the caller's thread.

``BACKPLANE = "redis://..."``: every node still delivers its own broadcasts
locally at once, in the caller's thread, so local clients never wait for (or
depend on) Redis. Each broadcast is also queued for Redis and PUBLISHed on
``<prefix>:c:<channel>`` by one publisher thread, in queue order, pipelined
in batches; one connection and one queue per node keep each node's order.
A reader thread SUBSCRIBEs only to the channels this node has members in
and hands what other nodes published to the receiver. Every message carries
the publishing node's id, so a node skips its own broadcasts coming back and
each broadcast reaches each subscriber exactly once.

Outages: when Redis cannot be reached the node keeps serving its own
clients; broadcasts made meanwhile reach local members only, are *dropped*
for other nodes (never replayed later, which would deliver them late and out
of order) and counted in ``info()["dropped"]``. Both threads reconnect with
an exponential backoff (up to ``BACKPLANE_RETRY_MAX``); the reader
subscribes again to every channel it needs. Until both are connected the
backplane reports itself degraded (``info()``, ``status``, ``/health``).
Delivery through Redis is thus exactly once while connected and at most
once across an outage.

A broadcast on several channels must reach a member of several once. Locally
it goes to the many-receiver (:meth:`~BackplaneService.set_many_receiver`) in one
call; on Redis each channel's copy carries a broadcast id and the channel list,
and the first copy to reach a node is delivered there to its members of any of
those channels, the later copies skipped (recent ids are remembered).

Spaces: channel names live in a *space*, ``"c"`` (the rooms service's channels)
unless the caller names another (the high-templar endpoint's rooms use
``"h"``); each space has its own receiver and its own Redis channels
``<prefix>:<space>:<name>``, so the same name in two spaces never mixes.

Cluster events (``say`` / ``subscribe`` / ``unsubscribe``) carry JSON data
on ``<prefix>:e:<event>``; handlers run on one event thread of their own, in
the order the events arrived, never in the caller's thread nor in the reader
thread (a slow handler must not hold up broadcasts).

The reader blocks in redis-py's ``get_message``; to apply a join or leave at
once it is woken by a message on its own node channel ``<prefix>:n:<node>``.
"""
from __future__ import annotations

import collections
import json
import os
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from lexicons.daemon.service import Service
from lexicons.errors import ServiceError

Receiver = Callable[[str, bytes], None]
ManyReceiver = Callable[[tuple[str, ...], bytes], None]
EventHandler = Callable[[str, Any], None]

#: The first byte of every message this backplane puts on Redis (format version);
#: MAGIC_MANY marks a broadcast made on several channels at once.
MAGIC = b"\x01"
MAGIC_MANY = b"\x02"
#: Multi-channel broadcasts remembered, so that one reaching a node on several of its
#: channels is delivered there once.
RECENT = 4096
NODE_LEN = 16
#: Seconds of silence on the subscriber connection before a PING; 3 of them: reconnect.
KEEPALIVE = 5.0
#: Longest wait of the reader for a message before it looks at joins and leaves again.
READ_TICK = 0.5
#: Broadcasts sent to Redis in one pipeline at most.
BATCH = 512
#: Events waiting for their handlers; past that new ones are dropped (and counted).
EVENT_QUEUE = 10000
#: The space of the rooms service's channels; EVENTS and NODE are the backplane's own.
CHANNELS = "c"
EVENTS = "e"
NODE = "n"
RESERVED = frozenset({EVENTS, NODE})


def _check_space(space: str) -> None:
    if not space or ":" in space or space in RESERVED:
        raise ValueError(f"a backplane space is a word without ':', other than "
                         f"{sorted(RESERVED)}; got {space!r}")


def new_node_id() -> str:
    """Return a fresh random node id (16 hex digits)."""
    return os.urandom(NODE_LEN // 2).hex()


@dataclass(frozen=True)
class Envelope:
    """A message as carried by Redis: who published it and, for a broadcast on several
    channels, its id and every channel it was published on."""

    node: str
    payload: bytes
    broadcast: str | None = None
    channels: tuple[str, ...] = ()


def pack(node: str, payload: bytes, broadcast: str | None = None,
         channels: tuple[str, ...] = ()) -> bytes:
    """Wrap *payload* for Redis with the publishing node (and a multi-channel header)."""
    if broadcast is None:
        return MAGIC + node.encode("ascii") + payload
    names = json.dumps(channels, separators=(",", ":")).encode("utf-8")
    return (MAGIC_MANY + node.encode("ascii") + broadcast.encode("ascii")
            + len(names).to_bytes(4, "big") + names + payload)


def unpack(data: bytes) -> Envelope | None:
    """Return the envelope of a message packed by :func:`pack`, or None if foreign."""
    if len(data) < 1 + NODE_LEN or data[:1] not in (MAGIC, MAGIC_MANY):
        return None
    try:
        node = data[1:1 + NODE_LEN].decode("ascii")
        if data[:1] == MAGIC:
            return Envelope(node, data[1 + NODE_LEN:])
        at = 1 + NODE_LEN
        broadcast = data[at:at + NODE_LEN].decode("ascii")
        size = int.from_bytes(data[at + NODE_LEN:at + NODE_LEN + 4], "big")
        at += NODE_LEN + 4
        channels = json.loads(data[at:at + size])
        if len(broadcast) != NODE_LEN or not isinstance(channels, list) or not all(
                isinstance(c, str) for c in channels):
            return None
        return Envelope(node, data[at + size:], broadcast, tuple(channels))
    except (UnicodeDecodeError, ValueError):
        return None


class _Counters:
    """The backplane's counters, shown by ``info()``; changed under one lock."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published = 0        # broadcasts handed to publish()
        self.sent = 0             # broadcasts PUBLISHed to Redis
        self.received = 0         # broadcasts from other nodes delivered here
        self.dropped = 0          # broadcasts other nodes never got (outage, full queue)
        self.events_said = 0
        self.events_received = 0
        self.events_dropped = 0
        self.handler_errors = 0
        self.foreign = 0          # messages on our channels not packed by a backplane
        self.reconnects = 0

    def add(self, name: str, n: int = 1) -> None:
        with self.lock:
            setattr(self, name, getattr(self, name) + n)

    def as_dict(self) -> dict[str, int]:
        with self.lock:
            return {k: v for k, v in vars(self).items() if k != "lock"}


class BackplaneService(Service):
    """Deliver broadcasts and cluster events across the nodes sharing a backplane."""

    name = "backplane"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.url: str = self.settings.BACKPLANE
        self.kind = "memory" if self.url == "memory" else "redis"
        self.node = new_node_id()
        self.prefix: str = self.settings.BACKPLANE_PREFIX
        self._queue_limit: int = self.settings.BACKPLANE_QUEUE
        self.counters = _Counters()
        self._receivers: dict[str, Receiver] = {}
        self._many_receivers: dict[str, ManyReceiver] = {}
        self._recent: collections.deque[str] = collections.deque()
        self._recent_set: set[str] = set()
        self._order = threading.RLock()   # one order for local delivery and the Redis queue
        self._lock = threading.Lock()     # channels, handlers, link state
        self._channels: set[tuple[str, str]] = set()  # (space, channel) with local members
        self._handlers: dict[str, list[EventHandler]] = {}
        # Redis side
        # (Redis channel, message, 1 for the first Redis message of a broadcast or event)
        self._outbox: collections.deque[tuple[str, bytes, int]] = collections.deque()
        self._outbox_ready = threading.Event()
        self._wanted_changed = threading.Event()
        self._subscribed: set[str] = set()  # Redis channels the reader asked for (reader only)
        self._unconfirmed = 0  # PINGs sent after SUBSCRIBEs whose PONG has not come back
        self._reader_up = False
        self._publisher_up = False
        self._connected_once = False
        self.last_error: str | None = None
        # events
        self._events: collections.deque[tuple[str, Any]] = collections.deque()
        self._events_ready = threading.Event()
        self._threads: list[threading.Thread] = []
        self._pubsub: Any = None
        self._pubsub_client: Any = None
        self._publisher: Any = None

    # --- the interface of the rooms service -----------------------------------------

    def set_receiver(self, fn: Receiver | None, space: str = CHANNELS) -> None:
        """Set the function that delivers a broadcast of *space* to this node's members."""
        _check_space(space)
        if fn is None:
            self._receivers.pop(space, None)
        else:
            self._receivers[space] = fn

    def set_many_receiver(self, fn: ManyReceiver | None, space: str = CHANNELS) -> None:
        """Set ``fn(channels, message)``: deliver once to the members of any of *channels*.

        Used for broadcasts made with :meth:`publish_many`; without it they are handed
        to the receiver of :meth:`set_receiver` once per channel.
        """
        _check_space(space)
        if fn is None:
            self._many_receivers.pop(space, None)
        else:
            self._many_receivers[space] = fn

    def publish(self, channel: str, message: bytes, space: str = CHANNELS) -> None:
        """Deliver *message* to the members of *channel* here at once, and to other nodes.

        Never blocks on Redis: the message is queued for the publisher thread, or
        dropped for other nodes (and counted) when Redis is unreachable or the queue
        is full.
        """
        with self._order:
            self._deliver(space, channel, message)
            self._forward([(self._redis_channel(space, channel),
                            pack(self.node, message), 1)])

    def publish_many(self, channels: Iterable[str], message: bytes,
                     space: str = CHANNELS) -> None:
        """Publish *message* on several channels; a member of several gets it once.

        On other nodes too: each copy carries the broadcast's id and channel list,
        and the first copy to reach a node is delivered there to the members of any
        of the channels, the others skipped.
        """
        channels = tuple(dict.fromkeys(channels))
        if len(channels) == 1:
            self.publish(channels[0], message, space)
            return
        if not channels:
            return
        with self._order:
            self._deliver_many(space, channels, message)
            if self.kind == "memory":
                self._forward([])
                return
            body = pack(self.node, message, new_node_id(), channels)
            self._forward([(self._redis_channel(space, c), body, int(i == 0))
                           for i, c in enumerate(channels)])

    def _forward(self, items: list[tuple[str, bytes, int]]) -> None:
        """Queue one broadcast's Redis messages, or count it dropped. Needs self._order."""
        self.counters.add("published")
        if self.kind == "memory":
            return
        if not self._publisher_up or len(self._outbox) >= self._queue_limit:
            self.counters.add("dropped")
            return
        self._outbox.extend(items)
        self._outbox_ready.set()

    def join(self, channel: str, space: str = CHANNELS) -> None:
        """Receive broadcasts of *channel* from other nodes: this node has a member now."""
        with self._lock:
            if (space, channel) in self._channels:
                return
            self._channels.add((space, channel))
        self._wake_reader()

    def leave(self, channel: str, space: str = CHANNELS) -> None:
        """Stop receiving *channel* from other nodes: its last local member left."""
        with self._lock:
            if (space, channel) not in self._channels:
                return
            self._channels.discard((space, channel))
        self._wake_reader()

    def channels(self, space: str = CHANNELS) -> set[str]:
        """Return the channels of *space* this node has members in (as told by join/leave)."""
        with self._lock:
            return {c for s, c in self._channels if s == space}

    # --- cluster events --------------------------------------------------------------

    def say(self, event: str, data: Any = None) -> None:
        """Send *event* with JSON-serialisable *data* to its handlers on every node.

        Raises TypeError or ValueError at once if *data* is not JSON-serialisable.
        """
        if not isinstance(event, str) or not event:
            raise ValueError("an event name must be a non-empty string")
        body = json.dumps(data, separators=(",", ":"), allow_nan=False)
        self.counters.add("events_said")
        self._queue_event(event, json.loads(body))  # handlers here see what others see
        if self.kind == "redis":
            with self._order:
                if not self._publisher_up or len(self._outbox) >= self._queue_limit:
                    self.counters.add("events_dropped")
                    return
                self._outbox.append((self._redis_channel(EVENTS, event),
                                     pack(self.node, body.encode()), 1))
            self._outbox_ready.set()

    def subscribe(self, event: str, fn: EventHandler) -> None:
        """Call ``fn(event, data)`` for every *event* said on any node (this one too)."""
        if not callable(fn):
            raise TypeError("an event handler must be callable")
        with self._lock:
            handlers = self._handlers.setdefault(event, [])
            if fn in handlers:
                return
            handlers.append(fn)
        self._wake_reader()

    def unsubscribe(self, event: str, fn: EventHandler) -> None:
        """Stop calling *fn* for *event*; unknown pairs are ignored."""
        with self._lock:
            handlers = self._handlers.get(event, [])
            if fn in handlers:
                handlers.remove(fn)
            if not handlers:
                self._handlers.pop(event, None)
        self._wake_reader()

    # --- state -----------------------------------------------------------------------

    @property
    def degraded(self) -> bool:
        """Tell whether other nodes are out of reach (Redis down or not yet reached)."""
        return self.kind == "redis" and not (self._reader_up and self._publisher_up)

    def synced(self) -> bool:
        """Tell whether Redis is reached and holds every subscription this node needs."""
        if self.kind == "memory":
            return True
        return (not self.degraded and not self._wanted_changed.is_set()
                and self._unconfirmed == 0 and self._subscribed == self._wanted())

    def wait_synced(self, timeout: float) -> bool:
        """Wait until :meth:`synced`; False if *timeout* seconds passed first."""
        deadline = time.monotonic() + timeout
        while not self.synced():
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    def info(self) -> dict[str, Any]:
        info: dict[str, Any] = {
            "kind": self.kind,
            "node": self.node,
            "channels": len(self.channels()),
            "events": len(self._handlers),
        }
        if self.kind == "redis":
            info.update({
                "state": ("up" if not self.degraded
                          else "degraded" if self._connected_once else "connecting"),
                "degraded": self.degraded,
                "queued": len(self._outbox),
                "last_error": self.last_error,
            })
        info.update(self.counters.as_dict())
        return info

    # --- lifecycle -------------------------------------------------------------------

    def setup(self) -> None:
        if self.kind == "redis":
            try:
                import redis  # noqa: F401  (redis-py: needed only with a Redis backplane)
            except ImportError as exc:
                raise ServiceError("BACKPLANE is a Redis URL but redis-py is not "
                                   "installed (pip install redis)") from exc
            self.log.info("backplane on %s as node %s", _safe_url(self.url), self.node)
        else:
            self.log.info("backplane in memory (one node)")

    def main(self) -> None:
        self._threads = [threading.Thread(target=self._run_events, daemon=True,
                                          name="lexicons-backplane-events")]
        if self.kind == "redis":
            self._threads.append(threading.Thread(target=self._run_publisher, daemon=True,
                                                  name="lexicons-backplane-publisher"))
        for thread in self._threads:
            thread.start()
        try:
            if self.kind == "redis":
                self._run_reader()
            else:
                self.stopping.wait()
        finally:
            self.stopping.set()
            self._events_ready.set()
            self._outbox_ready.set()
            for thread in self._threads:
                thread.join(5.0)
            self._threads = []

    def interrupt(self) -> None:
        self._events_ready.set()
        self._outbox_ready.set()
        self._wanted_changed.set()

    def teardown(self) -> None:
        self._close_pubsub()
        self._close_publisher()

    # --- local delivery --------------------------------------------------------------

    def _deliver_many(self, space: str, channels: tuple[str, ...], message: bytes) -> None:
        receiver = self._many_receivers.get(space)
        if receiver is None:
            for channel in channels:
                self._deliver(space, channel, message)
            return
        try:
            receiver(channels, message)
        except Exception:  # a failing receiver must not stop the backplane
            self.counters.add("handler_errors")
            self.log.exception("delivering a broadcast on %r failed", channels)

    def _deliver(self, space: str, channel: str, message: bytes) -> None:
        receiver = self._receivers.get(space)
        if receiver is None:
            return
        try:
            receiver(channel, message)
        except Exception:  # a failing receiver must not stop the backplane
            self.counters.add("handler_errors")
            self.log.exception("delivering a broadcast on %r failed", channel)

    def _queue_event(self, event: str, data: Any) -> None:
        with self._lock:
            if event not in self._handlers:
                return
        if len(self._events) >= EVENT_QUEUE:
            self.counters.add("events_dropped")
            return
        self._events.append((event, data))
        self._events_ready.set()

    def _run_events(self) -> None:
        """Event thread: call the handlers of each event in arrival order."""
        while not self.stopping.is_set():
            self._events_ready.wait()
            self._events_ready.clear()
            while self._events and not self.stopping.is_set():
                event, data = self._events.popleft()
                with self._lock:
                    handlers = list(self._handlers.get(event, ()))
                for fn in handlers:
                    try:
                        fn(event, data)
                    except Exception:  # user code: log and go on with the next handler
                        self.counters.add("handler_errors")
                        self.log.exception("handler of event %r failed", event)

    # --- Redis -----------------------------------------------------------------------

    def _redis_channel(self, kind: str, name: str) -> str:
        return f"{self.prefix}:{kind}:{name}"

    def _node_channel(self) -> str:
        return self._redis_channel(NODE, self.node)

    def _wanted(self) -> set[str]:
        """Return the Redis channels the reader must hold now."""
        with self._lock:
            wanted = {self._redis_channel(s, c) for s, c in self._channels}
            wanted.update(self._redis_channel(EVENTS, e) for e in self._handlers)
        wanted.add(self._node_channel())
        return wanted

    def _wake_reader(self) -> None:
        if self.kind != "redis":
            return
        self._wanted_changed.set()
        if self._publisher_up:
            self._outbox.append((self._node_channel(), b"", 0))
            self._outbox_ready.set()

    def _client(self) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries inside redis-py: a failure must reach our loop, which backs off,
        # reconnects and resubscribes (redis-py's own resubscription is bypassed).
        return redis.Redis.from_url(self.url, socket_connect_timeout=2.0, socket_timeout=10.0,
                                    socket_keepalive=True, retry=Retry(NoBackoff(), 0))

    def _failed(self, what: str, exc: BaseException, delay: float) -> float:
        """Record a Redis failure; return the next backoff delay."""
        message = f"{what}: {type(exc).__name__}: {exc}"
        if message != self.last_error:
            self.log.warning("redis %s; retrying in %.2g s", message, delay)
        self.last_error = message
        return min(delay * 2, self.settings.BACKPLANE_RETRY_MAX)

    def _became_up(self, side: str) -> None:
        with self._lock:
            was_degraded = self.degraded
            if side == "reader":
                self._reader_up = True
            else:
                self._publisher_up = True
            now_up = not self.degraded
        if was_degraded and now_up:
            if self._connected_once:
                self.counters.add("reconnects")
                self.log.info("redis reached again; backplane up")
            else:
                self.log.info("redis reached; backplane up")
            self._connected_once = True
            self.last_error = None

    def _became_down(self, side: str) -> None:
        with self._lock:
            was_up = not self.degraded
            if side == "reader":
                self._reader_up = False
            else:
                self._publisher_up = False
        if was_up and not self.stopping.is_set():
            self.log.warning("redis lost; backplane degraded (local delivery goes on)")

    # reader

    def _run_reader(self) -> None:
        """Subscribe to what this node needs and deliver what others publish."""
        delay = 0.05
        while not self.stopping.is_set():
            try:
                self._open_pubsub()
                delay = 0.05
                self._read_loop()
            except Exception as exc:  # connection errors and anything redis-py raises
                self._became_down("reader")
                self._close_pubsub()
                delay = self._failed("subscriber", exc, delay)
                self.stopping.wait(delay)
        self._became_down("reader")
        self._close_pubsub()

    def _open_pubsub(self) -> None:
        self._close_pubsub()
        # The client is kept as long as its pubsub: a dropped redis.Redis closes its
        # pool when collected, which cut the pubsub connection just subscribed; redis-py
        # then reconnected and resubscribed behind our back, and what was published
        # meanwhile was lost while synced() already said yes.
        self._pubsub_client = client = self._client()
        pubsub = client.pubsub(ignore_subscribe_messages=True)
        self._pubsub = pubsub
        self._subscribed = set()
        self._unconfirmed = 0
        self._wanted_changed.clear()
        self._sync_subscriptions()
        # Block until Redis confirmed the subscriptions (or fail): "up" means subscribed.
        deadline = time.monotonic() + 10.0
        while self._unconfirmed:
            message = pubsub.get_message(timeout=1.0)
            if message is not None:
                self._handle(message)
            if time.monotonic() > deadline:
                raise TimeoutError("redis did not answer the subscriptions in 10 s")
        self._became_up("reader")

    def _sync_subscriptions(self) -> None:
        """Subscribe to the channels newly needed and unsubscribe from the others."""
        wanted = self._wanted()
        new = wanted - self._subscribed
        old = self._subscribed - wanted
        if not new and not old and self._subscribed:
            return
        # Counted first: synced() must not say yes between the SUBSCRIBE and its PONG.
        # Redis answers in order: once this PING's PONG is back, the subscriptions hold.
        self._unconfirmed += 1
        if new:
            self._pubsub.subscribe(*sorted(new))
        if old:
            self._pubsub.unsubscribe(*sorted(old))
        self._subscribed = wanted
        self._pubsub.ping()

    def _read_loop(self) -> None:
        pubsub = self._pubsub
        last_read = time.monotonic()
        pinged = False
        while not self.stopping.is_set():
            if self._wanted_changed.is_set():
                self._wanted_changed.clear()
                self._sync_subscriptions()
            message = pubsub.get_message(timeout=READ_TICK)
            now = time.monotonic()
            if message is not None:
                last_read, pinged = now, False
                self._handle(message)
                continue
            silent = now - last_read
            if silent > 3 * KEEPALIVE:
                raise TimeoutError(f"no answer from redis for {silent:.0f} s")
            if silent > KEEPALIVE and not pinged:
                pubsub.ping()
                self._unconfirmed += 1
                pinged = True

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message.get("type")
        if kind == "pong":
            self._unconfirmed = max(0, self._unconfirmed - 1)
            return
        if kind != "message":
            return
        channel = message["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        data = message["data"]
        kind_name = channel[len(self.prefix) + 1:]
        kind, _, name = kind_name.partition(":")
        if kind == NODE:
            return  # a wake-up of this reader
        envelope = unpack(data) if isinstance(data, bytes) else None
        if envelope is None:
            self.counters.add("foreign")
            return
        node, payload = envelope.node, envelope.payload
        if node == self.node:
            return  # our own broadcast coming back: local members have it already
        if envelope.broadcast is not None and kind not in RESERVED:
            self._handle_many(kind, envelope)
        elif kind == EVENTS:
            try:
                body = json.loads(payload)
            except ValueError:
                self.counters.add("foreign")
                return
            self.counters.add("events_received")
            self._queue_event(name, body)
        else:
            self.counters.add("received")
            self._deliver(kind, name, payload)

    def _handle_many(self, space: str, envelope: Envelope) -> None:
        """Deliver a multi-channel broadcast once, on the first of its copies to arrive."""
        broadcast = envelope.broadcast
        if broadcast in self._recent_set:
            return
        self._recent_set.add(broadcast)
        self._recent.append(broadcast)
        if len(self._recent) > RECENT:
            self._recent_set.discard(self._recent.popleft())
        with self._lock:
            local = tuple(c for c in envelope.channels if (space, c) in self._channels)
        self.counters.add("received")
        if local:
            self._deliver_many(space, local, envelope.payload)

    def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        client, self._pubsub_client = self._pubsub_client, None
        for part in (pubsub, client):
            if part is not None:
                try:
                    part.close()
                except Exception:  # closing a broken connection may fail; it is gone anyway
                    pass

    # publisher

    def _run_publisher(self) -> None:
        """Send queued broadcasts to Redis in order, in pipelined batches."""
        delay = 0.05
        while not self.stopping.is_set():
            try:
                self._open_publisher()
                delay = 0.05
                self._publish_loop()
            except Exception as exc:  # connection errors and anything redis-py raises
                self._became_down("publisher")
                self._close_publisher()
                self._drop_outbox()
                delay = self._failed("publisher", exc, delay)
                self.stopping.wait(delay)
        self._became_down("publisher")
        self._close_publisher()

    def _open_publisher(self) -> None:
        self._close_publisher()
        client = self._client()
        client.ping()
        self._publisher = client
        self._became_up("publisher")
        self._wanted_changed.set()

    def _publish_loop(self) -> None:
        client = self._publisher
        outbox = self._outbox
        while not self.stopping.is_set():
            self._outbox_ready.wait(KEEPALIVE)
            self._outbox_ready.clear()
            if not outbox:
                client.ping()  # notice a dead connection even when idle
                continue
            while outbox:
                batch = []
                while outbox and len(batch) < BATCH:
                    batch.append(outbox.popleft())
                pipe = client.pipeline(transaction=False)
                for channel, body, _ in batch:
                    pipe.publish(channel, body)
                try:
                    pipe.execute()
                except Exception:
                    # A failed batch is not retried: part of it may have gone out, and a
                    # retry could deliver twice. It counts as dropped for other nodes.
                    self._count(batch, "dropped", "events_dropped")
                    raise
                self._count(batch, "sent", None)

    def _count(self, batch: list[tuple[str, bytes, int]], broadcasts: str,
               events: str | None) -> None:
        """Add the broadcasts (and events) of *batch* to the named counters."""
        start = len(self.prefix) + 1
        kinds = [(c[start:].partition(":")[0], first) for c, _, first in batch]
        self.counters.add(broadcasts, sum(first for k, first in kinds if k not in RESERVED))
        if events is not None:
            self.counters.add(events, sum(first for k, first in kinds if k == EVENTS))

    def _drop_outbox(self) -> None:
        batch = []
        while self._outbox:
            try:
                batch.append(self._outbox.popleft())
            except IndexError:
                break
        self._count(batch, "dropped", "events_dropped")

    def _close_publisher(self) -> None:
        client, self._publisher = self._publisher, None
        if client is not None:
            try:
                client.close()
            except Exception:  # closing a broken connection may fail; it is gone anyway
                pass


def _safe_url(url: str) -> str:
    """Return *url* without its password, for the log."""
    scheme, sep, rest = url.partition("://")
    if "@" in rest:
        rest = "***@" + rest.split("@", 1)[1]
    return scheme + sep + rest
