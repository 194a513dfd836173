"""History, recovery and presence of the channels that ask for them (driver of the rooms service).

Theory of operation
-------------------
Only channels whose class declares ``history_size`` or ``presence`` come
here; the rooms service's fan-out of every other channel never does.

Publishing on a history channel gives the broadcast its position and keeps
it, then delivers it:

* memory backplane: :class:`~lexicons.history.MemoryHistory` stamps it under
  the channel's lock and it is delivered at once;
* Redis backplane: one Lua script ``XADD``\\s it to the channel's stream
  ``<prefix>:hs:<channel>`` (trimmed to ``history_size``, expiring after
  ``history_ttl``; the offset and epoch are in the hash ``<prefix>:hm:<channel>``)
  and ``PUBLISH``\\es it on ``<prefix>:y:<channel>``, both in one step, so
  Redis' order of the publications is their offset order on every node. Every
  node, the publisher too, delivers it when it comes back from Redis (the
  backplane's space ``y``). A hash that Redis lost is made again with a new
  epoch.

Subscribing to a history channel (with or without ``recover``) closes the
subscribe-then-read race this way: the connection is first registered as
*pending* for the channel (live publications for it are buffered, not sent),
the node's Redis subscription is confirmed, then the history is read. Under
the channel's lock the missed publications go out, then the buffered ones
whose offset is past what was read (the others were in the history already),
and only then does the connection become a member. Each publication thus
reaches it once, in order. With Redis one more step: a publication read
from the stream may still be on its way to this node through pub/sub, and
would then arrive after the join, a second time. So the script that reads
the history also publishes a *mark* on the channel, in the same atomic step;
the subscriber waits for its mark to come back, by which time every
publication it read has come through this node's buffer.

Presence: a join records the connection's client id (the node's id and the
connection's number) and ``ws.auth["user"]`` and broadcasts a ``Presence``
event; a leave (or a disconnect) removes it and broadcasts again. With Redis
the entries live in ``<prefix>:ph:<channel>`` (a hash of infos) and
``<prefix>:pz:<channel>`` (a sorted set scored by expiry time); each node
refreshes its own entries every ``PRESENCE_TTL / 3`` seconds and removes the
expired ones of the channels it has members in, broadcasting their leave. A
node that dies is out of every presence within ``PRESENCE_TTL * 4 / 3``
seconds (the last refresh's expiry plus one sweep interval).
"""
from __future__ import annotations

import json
import math
import os
import threading
import time
from typing import Any

from lexicons.channel import Channel
from lexicons.daemon.connection import Connection
from lexicons.data import history as hist
from lexicons.data.presence import PRESENCE, MemoryPresence, event
from lexicons.errors import CallError, ServiceError, SettingsError
from lexicons.wire.events import Position, Recovery
from lexicons.wire.frames import deflate_frame, text_frame
from lexicons.wire.protocol import encode_json

#: The backplane space of history channels.
HISTORY_SPACE = "y"
#: Seconds a recovery waits for this node's Redis subscription to hold.
SYNC_TIMEOUT = 5.0
#: The node field of messages the history script publishes: no node, so every node
#: (the publisher too) delivers them.
NO_NODE = "0" * 16
_STRIPES = 64
#: The start of a recovery's mark (never a broadcast: those are JSON).
MARK = b"\x00mark:"

_PUBLISH = """
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[5]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch, 'o', 0)
end
local offset = redis.call('hincrby', KEYS[2], 'o', 1)
local body = ARGV[1] .. epoch .. '","offset":' .. offset .. '}}]'
redis.call('xadd', KEYS[1], 'MAXLEN', ARGV[2], offset .. '-0', 't', ARGV[6], 'd', body)
redis.call('expire', KEYS[1], ARGV[3])
redis.call('expire', KEYS[2], ARGV[4])
redis.call('publish', ARGV[7], ARGV[8] .. body)
return offset
"""

_READ = """
local epoch = redis.call('hget', KEYS[2], 'e')
if not epoch then
  epoch = ARGV[1]
  redis.call('del', KEYS[1])
  redis.call('hset', KEYS[2], 'e', epoch, 'o', 0)
  redis.call('expire', KEYS[2], ARGV[2])
end
local top = redis.call('hget', KEYS[2], 'o')
local entries
if ARGV[3] == 'last' then
  entries = redis.call('xrevrange', KEYS[1], '+', '-', 'COUNT', ARGV[4])
else
  entries = redis.call('xrange', KEYS[1], ARGV[4], '+')
end
if ARGV[6] ~= '' then
  redis.call('publish', ARGV[5], ARGV[6])
end
return {epoch, top, entries}
"""

_PRESENCE_REMOVE = """
if redis.call('zrem', KEYS[2], ARGV[1]) == 1 then
  local info = redis.call('hget', KEYS[1], ARGV[1])
  redis.call('hdel', KEYS[1], ARGV[1])
  return info
end
return false
"""


def check_channel_class(cls: type[Channel], settings: Any) -> None:
    """Refuse a Channel class whose history or presence options are out of bounds."""
    size, ttl = cls.history_size, cls.history_ttl
    name = cls.__name__
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise SettingsError(f"channel {name}: history_size must be a whole number >= 0")
    if size > settings.HISTORY_MAX_SIZE:
        raise SettingsError(f"channel {name}: history_size {size} is over HISTORY_MAX_SIZE "
                            f"({settings.HISTORY_MAX_SIZE})")
    if isinstance(ttl, bool) or not isinstance(ttl, (int, float)) or not ttl > 0:
        raise SettingsError(f"channel {name}: history_ttl must be a number of seconds > 0")
    if ttl > settings.HISTORY_MAX_TTL:
        raise SettingsError(f"channel {name}: history_ttl {ttl} is over HISTORY_MAX_TTL "
                            f"({settings.HISTORY_MAX_TTL})")


class RedisHistory:
    """The histories of the channels, in Redis (shared by every node of the backplane)."""

    def __init__(self, client: Any, prefix: str, meta_ttl: float):
        self.client = client
        self.prefix = prefix
        self.meta_ttl = meta_ttl
        self._publish = client.register_script(_PUBLISH)
        self._read = client.register_script(_READ)
        self.envelope = hist_envelope()

    def _keys(self, channel: str) -> list[str]:
        return [f"{self.prefix}:hs:{channel}", f"{self.prefix}:hm:{channel}"]

    def publish(self, channel: str, head_bytes: bytes, size: int, ttl: float) -> int:
        """Keep and publish one broadcast; return its offset (its delivery comes from Redis)."""
        seconds = max(1, math.ceil(ttl))
        return int(self._publish(keys=self._keys(channel), args=[
            head_bytes, size, seconds, max(seconds, math.ceil(self.meta_ttl)), hist.new_epoch(),
            int(time.time() * 1000), f"{self.prefix}:{HISTORY_SPACE}:{channel}",
            self.envelope]))

    def _entries(self, channel: str, mode: str, arg: str | int, ttl: float,
                 mark: bytes = b"") -> tuple[str, int, list[tuple[int, bytes]]]:
        """Read the channel's position and entries; publish *mark* right after, atomically."""
        epoch, top, raw = self._read(keys=self._keys(channel), args=[
            hist.new_epoch(), max(1, math.ceil(self.meta_ttl)), mode, arg,
            f"{self.prefix}:{HISTORY_SPACE}:{channel}", self.envelope + mark if mark else b""])
        oldest = (time.time() - ttl) * 1000
        entries = []
        for entry_id, fields in raw:
            values = dict(zip(fields[::2], fields[1::2], strict=True))
            if float(values[b"t"]) >= oldest:
                entries.append((int(entry_id.split(b"-")[0]), values[b"d"]))
        return epoch.decode("ascii"), int(top), entries

    def position(self, channel: str, mark: bytes = b"") -> Position:
        """Return *channel*'s position now (publishing *mark* right after reading it)."""
        epoch, top, _ = self._entries(channel, "last", 0, 1.0, mark)
        return Position(top, epoch)

    def recover(self, channel: str, since: Position, size: int, ttl: float,
                mark: bytes = b"") -> Recovery:
        """Return what a client at *since* missed (see :func:`lexicons.history.recover`)."""
        epoch, top, entries = self._entries(channel, "since", f"{since.offset + 1}-0", ttl,
                                            mark)
        return hist.recover(since, top, epoch, entries)

    def read(self, channel: str, limit: int, size: int,
             ttl: float) -> tuple[Position, list[bytes]]:
        """Return the position and the newest *limit* publications kept, oldest first."""
        epoch, top, entries = self._entries(channel, "last", max(0, limit), ttl)
        return Position(top, epoch), [m for _, m in reversed(entries)] if limit > 0 else []


def hist_envelope() -> bytes:
    """Return the backplane header of messages the history script publishes."""
    from services.backplane import pack

    return pack(NO_NODE, b"")


class RedisPresence:
    """Presence shared through Redis: each node's entries expire unless it refreshes them."""

    def __init__(self, client: Any, prefix: str, ttl: float):
        self.client = client
        self.prefix = prefix
        self.ttl = ttl
        self._remove = client.register_script(_PRESENCE_REMOVE)
        self._lock = threading.Lock()
        self._local: dict[str, dict[str, None]] = {}  # this node's entries: channel -> ids

    def _keys(self, channel: str) -> list[str]:
        return [f"{self.prefix}:ph:{channel}", f"{self.prefix}:pz:{channel}"]

    def add(self, channel: str, client: str, info: dict[str, Any]) -> bool:
        """Record *client* in *channel*."""
        infos, expiries = self._keys(channel)
        pipe = self.client.pipeline(transaction=True)
        pipe.hset(infos, client, json.dumps(info, separators=(",", ":")))
        pipe.zadd(expiries, {client: time.time() + self.ttl})
        pipe.expire(infos, math.ceil(self.ttl * 2))
        pipe.expire(expiries, math.ceil(self.ttl * 2))
        pipe.execute()
        with self._lock:
            self._local.setdefault(channel, {})[client] = None
        return True

    def remove(self, channel: str, client: str) -> dict[str, Any] | None:
        """Forget *client* in *channel*; return its info if this call removed it."""
        with self._lock:
            mine = self._local.get(channel)
            if mine is not None:
                mine.pop(client, None)
                if not mine:
                    del self._local[channel]
        info = self._remove(keys=self._keys(channel), args=[client])
        return None if info is None else json.loads(info)

    def members(self, channel: str) -> list[dict[str, Any]]:
        """Return the infos of *channel*'s live clients."""
        infos, expiries = self._keys(channel)
        clients = self.client.zrangebyscore(expiries, time.time(), "+inf")
        if not clients:
            return []
        return [json.loads(v) for v in self.client.hmget(infos, clients) if v is not None]

    def count(self, channel: str) -> int:
        """Return how many live clients *channel* has."""
        return int(self.client.zcount(self._keys(channel)[1], time.time(), "+inf"))

    def heartbeat(self) -> None:
        """Push the expiry of this node's entries forward."""
        with self._lock:
            local = {channel: list(ids) for channel, ids in self._local.items()}
        if not local:
            return
        expiry = time.time() + self.ttl
        pipe = self.client.pipeline(transaction=False)
        for channel, ids in local.items():
            infos, expiries = self._keys(channel)
            pipe.zadd(expiries, dict.fromkeys(ids, expiry), xx=True)
            pipe.expire(infos, math.ceil(self.ttl * 2))
            pipe.expire(expiries, math.ceil(self.ttl * 2))
        pipe.execute()

    def sweep(self) -> list[tuple[str, dict[str, Any]]]:
        """Remove expired entries of the channels this node is in; return those it removed."""
        with self._lock:
            channels = list(self._local)
        gone = []
        now = time.time()
        for channel in channels:
            for client in self.client.zrangebyscore(self._keys(channel)[1], "-inf", now):
                info = self._remove(keys=self._keys(channel), args=[client])
                if info is not None:
                    gone.append((channel, json.loads(info)))
        return gone


class ChannelState:
    """History, recovery and presence for the rooms service (see the module doc)."""

    def __init__(self, rooms: Any, classes: list[type[Channel]]):
        self.rooms = rooms
        settings = rooms.settings
        for cls in classes:
            check_channel_class(cls, settings)
        self.settings = settings
        backplane = rooms.backplane
        self.redis = backplane is not None and backplane.kind == "redis"
        self.node = backplane.node if backplane is not None else hist.new_epoch() * 2
        self.keeps_history = any(cls.history_size for cls in classes)
        self.persisted = any(cls.history_size and cls.history_persist for cls in classes)
        self.has_presence = any(cls.presence for cls in classes)
        self.history: Any = None
        self.presence: Any = None
        client = self._client(backplane) if self.redis else None
        if self.keeps_history:
            self.history = (RedisHistory(client, backplane.prefix, settings.HISTORY_META_TTL)
                            if client is not None
                            else hist.MemoryHistory(settings.HISTORY_MAX_CHANNELS))
        if self.has_presence:
            self.presence = (RedisPresence(client, backplane.prefix, settings.PRESENCE_TTL)
                             if client is not None else MemoryPresence())
        self._locks = [threading.RLock() for _ in range(_STRIPES)]
        self._pending: dict[str, dict[Connection, list[bytes]]] = {}
        self._marks: dict[bytes, threading.Event] = {}  # recoveries waiting for their mark
        self._classes: dict[str, type[Channel] | None] = {}

    @staticmethod
    def _client(backplane: Any) -> Any:
        import redis

        return redis.Redis.from_url(backplane.url, socket_connect_timeout=2.0,
                                    socket_timeout=5.0)

    @property
    def history_path(self) -> str:
        """Return the file of the persisted memory histories."""
        return os.path.join(self.settings.DATA_DIR, "history.json")

    def load(self) -> None:
        """Load persisted memory histories (at start)."""
        if self.persisted and isinstance(self.history, hist.MemoryHistory):
            count = self.history.load(self.history_path)
            if count:
                self.rooms.log.info("loaded the history of %d channel(s)", count)

    def save(self) -> None:
        """Save the memory histories of the channels that ask to be persisted (at stop)."""
        if self.persisted and isinstance(self.history, hist.MemoryHistory):
            def keep(channel: str) -> bool:
                cls = self.channel_class(channel)
                return cls is not None and bool(cls.history_persist)
            count = self.history.save(self.history_path, keep)
            self.rooms.log.info("saved the history of %d channel(s)", count)

    def info(self) -> dict[str, Any]:
        """Return what ``status`` shows: where history and presence live, and their size."""
        store = "redis" if self.redis else "memory"
        info: dict[str, Any] = {"history": store if self.history is not None else None,
                                "presence": store if self.presence is not None else None,
                                "recovering": len(self._pending)}
        if isinstance(self.history, hist.MemoryHistory):
            info["history_channels"] = len(self.history)
        return info

    # --- which channels -------------------------------------------------------------------

    def channel_class(self, channel: str) -> type[Channel] | None:
        """Return the Channel class of *channel*, or None if none declares it."""
        try:
            return self._classes[channel]
        except KeyError:
            pass
        try:
            cls: type[Channel] | None = type(self.rooms.channels.resolve(channel))
        except CallError:
            cls = None
        if len(self._classes) >= 10000:
            self._classes.clear()  # a bound: names are resolved again, that is all
        self._classes[channel] = cls
        return cls

    def keeps(self, channel: str) -> int:
        """Return the history size of *channel* (0: it keeps none)."""
        if self.history is None:
            return 0
        cls = self.channel_class(channel)
        return cls.history_size if cls is not None else 0

    def takes(self, channels: tuple[str, ...]) -> bool:
        """Tell whether a broadcast on *channels* must be published here."""
        return any(self.keeps(c) for c in channels)

    def space(self, channel: str) -> str:
        """Return the backplane space of *channel*."""
        return HISTORY_SPACE if self.redis and self.keeps(channel) else "c"

    def _lock(self, channel: str) -> threading.RLock:
        return self._locks[hash(channel) % _STRIPES]

    # --- publishing -----------------------------------------------------------------------

    def publish(self, channels: tuple[str, ...], name: str, payload: Any) -> None:
        """Publish on history channels with a position each; the others as usual."""
        plain = tuple(c for c in channels if not self.keeps(c))
        if plain:
            self.rooms.publish(plain, name, payload)
        for channel in channels:
            if channel in plain:
                continue
            cls = self.channel_class(channel)
            head = hist.head(name, payload, channel)
            self.rooms.published += 1
            if self.redis:
                try:
                    self.history.publish(channel, head, cls.history_size, cls.history_ttl)
                except Exception as exc:  # Redis errors: the caller must hear it failed
                    raise ServiceError(f"the history of {channel!r} is out of reach: {exc}"
                                       ) from exc
                continue
            with self._lock(channel):
                message = self.history.publish(channel, head, cls.history_size,
                                               cls.history_ttl)
                self.deliver(channel, message)

    def publish_plain(self, channel: str, name: str, payload: Any) -> None:
        """Broadcast without a position (presence events) on *channel*."""
        if not self.keeps(channel):
            self.rooms.publish((channel,), name, payload)
            return
        message = encode_json([{name: payload}]).encode("utf-8")
        if self.rooms.backplane is not None:
            self.rooms.backplane.publish(channel, message, HISTORY_SPACE)
        else:
            self.deliver(channel, message)

    def deliver(self, channel: str, message: bytes) -> None:
        """Deliver a broadcast of a history channel here: buffered for pending subscribers."""
        if message.startswith(MARK):
            arrived = self._marks.get(message[len(MARK):])
            if arrived is not None:  # another node's marks are not ours
                arrived.set()
            return
        with self._lock(channel):
            pending = self._pending.get(channel)
            if pending:
                for buffered in pending.values():
                    buffered.append(message)
            self.rooms.deliver((channel,), message)

    # --- subscribing and recovering --------------------------------------------------------

    def subscribe(self, conn: Connection, channel: str, recover: Any) -> dict[str, Any]:
        """Join a history channel, sending what the client missed since *recover*."""
        since = None if recover is None else hist.parse_since(recover)
        cls = self.channel_class(channel)
        assert cls is not None
        size, ttl = cls.history_size, cls.history_ttl
        lock = self._lock(channel)
        if channel in conn.channels:  # already in: nothing was missed
            position = self.history.position(channel)
            return self._answer(channel, position, since, True, 0)
        with lock:
            self._pending.setdefault(channel, {})[conn] = []
        try:
            if self.redis:
                backplane = self.rooms.backplane
                backplane.join(channel, HISTORY_SPACE)
                if not backplane.wait_synced(SYNC_TIMEOUT):
                    raise ServiceError("the other nodes are out of reach: cannot subscribe "
                                       f"to {channel!r} now")
            recovery = self._read_marked(channel, since, size, ttl)
        except BaseException:
            with lock:
                self._forget_pending(conn, channel)
            self._release(channel)
            raise
        with lock:
            buffered = self._forget_pending(conn, channel) or []
            out = list(recovery.publications)
            top = recovery.position.offset
            for message in buffered:
                position = hist.position_of(message)
                if position is None or (position.epoch == recovery.position.epoch
                                        and position.offset > top):
                    out.append(message)
                    top = position.offset if position is not None else top
                elif position.epoch != recovery.position.epoch:
                    out.append(message)  # the history began anew meanwhile
            self._send(conn, out)
            self.rooms.join(conn, channel, check=False, announce=False)
        # outside the channel's lock: announcing takes the backplane's, which a publisher
        # holds while it delivers (under the channel's lock)
        if self.tracks(channel) and channel in conn.channels:
            self.joined(conn, channel)
        self._release(channel)
        position = Position(top, recovery.position.epoch)
        return self._answer(channel, position, since, recovery.recovered,
                            len(recovery.publications), recovery.reason)

    def _read_marked(self, channel: str, since: Position | None, size: int,
                     ttl: float) -> Recovery:
        """Read the history; with Redis, wait until what was read has come through here."""
        if not self.redis:
            if since is None:
                return Recovery(self.history.position(channel), True)
            return self.history.recover(channel, since, size, ttl)
        token = os.urandom(8).hex().encode("ascii")
        arrived = self._marks[token] = threading.Event()
        try:
            if since is None:
                recovery = Recovery(self.history.position(channel, MARK + token), True)
            else:
                recovery = self.history.recover(channel, since, size, ttl, MARK + token)
            if not arrived.wait(SYNC_TIMEOUT):
                raise ServiceError(f"the other nodes are out of reach: cannot subscribe to "
                                   f"{channel!r} now")
        finally:
            self._marks.pop(token, None)
        return recovery

    def holds(self, channel: str) -> bool:
        """Tell whether a subscriber of *channel* is still recovering."""
        return channel in self._pending

    def _forget_pending(self, conn: Connection, channel: str) -> list[bytes] | None:
        """Needs the channel's lock."""
        pending = self._pending.get(channel)
        if pending is None:
            return None
        buffered = pending.pop(conn, None)
        if not pending:
            del self._pending[channel]
        return buffered

    def _release(self, channel: str) -> None:
        """Drop the Redis subscription taken for a recovery if nobody here needs it."""
        if self.redis and not self.rooms.members(channel) and channel not in self._pending:
            self.rooms.backplane.leave(channel, HISTORY_SPACE)

    @staticmethod
    def _answer(channel: str, position: Position, since: Position | None, recovered: bool,
                missed: int, reason: str = "") -> dict[str, Any]:
        answer: dict[str, Any] = {"channel": channel, "offset": position.offset,
                                  "epoch": position.epoch}
        if since is not None:
            answer["recovered"] = recovered
            answer["missed"] = missed
            if reason:
                answer["reason"] = reason
        return answer

    @staticmethod
    def _send(conn: Connection, messages: list[bytes]) -> None:
        """Send *messages* to *conn* as one write (framed, compressed if it negotiated it)."""
        if not messages:
            return
        bits = conn.deflate_bits
        data = b"".join(deflate_frame(m, bits) if bits else text_frame(m) for m in messages)
        conn.send_frame(data)

    def read(self, channel: str, limit: int) -> dict[str, Any]:
        """Return ``{channel, offset, epoch, publications}`` (the newest *limit*, oldest first)."""
        cls = self.channel_class(channel)
        if not self.keeps(channel) or cls is None:
            raise CallError(f"channel {channel[:100]!r} keeps no history")
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 0:
            raise CallError("limit must be a whole number >= 0")
        position, messages = self.history.read(channel, min(limit, cls.history_size),
                                               cls.history_size, cls.history_ttl)
        publications = []
        for message in messages:
            (item,) = json.loads(message)
            where = item.pop(hist.POSITION)
            ((name, data),) = item.items()
            publications.append({"offset": where["offset"], "name": name, "data": data})
        return {"channel": channel, "offset": position.offset, "epoch": position.epoch,
                "publications": publications}

    # --- presence -------------------------------------------------------------------------

    def tracks(self, channel: str) -> bool:
        """Tell whether *channel* keeps presence."""
        if self.presence is None:
            return False
        cls = self.channel_class(channel)
        return cls is not None and bool(cls.presence)

    def client_id(self, conn: Connection) -> str:
        """Return *conn*'s id, unique across the nodes of the backplane."""
        return f"{self.node[:8]}-{conn.id}"

    def joined(self, conn: Connection, channel: str) -> None:
        """Record a member of a presence channel and tell the channel."""
        auth = getattr(conn, "auth", None) or {}
        info = {"client": self.client_id(conn), "user": auth.get("user")}
        if self.presence.add(channel, info["client"], info):
            self.publish_plain(channel, PRESENCE, event(channel, "join", info))

    def left(self, conn: Connection, channel: str) -> None:
        """Forget a member of a presence channel and tell the channel."""
        info = self.presence.remove(channel, self.client_id(conn))
        if info is not None:
            self.publish_plain(channel, PRESENCE, event(channel, "leave", info))

    def members(self, channel: str) -> dict[str, Any]:
        """Return ``{channel, count, members}`` of a presence channel."""
        if not self.tracks(channel):
            raise CallError(f"channel {channel[:100]!r} keeps no presence")
        members = self.presence.members(channel)
        return {"channel": channel, "count": len(members), "members": members}

    def tick(self) -> None:
        """Refresh this node's presence entries; announce the expired ones' leave."""
        if self.presence is None:
            return
        self.presence.heartbeat()
        for channel, info in self.presence.sweep():
            self.publish_plain(channel, PRESENCE, event(channel, "leave", info))
