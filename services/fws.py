"""The fws service: filtered_websocket's filter chains, storage object and pub/sub relay.

Theory of operation
-------------------
With ``FWS_FILTERS`` naming filter modules, ``setup`` imports them
(:func:`lexicons.fws.load_filters`), builds the storage object
(``FWS_STORAGE``) and the :class:`lexicons.fws.Server` that the
:class:`lexicons.fws.Chain` filter runs every native-protocol connection
through. Without ``FWS_FILTERS`` the service does nothing.

The pub/sub relay runs when ``FWS_REDIS_CHANNELS`` names channels, or a
consumer filter is loaded (then on ``global``, as filtered_websocket did):
``main`` subscribes to them on ``FWS_REDIS`` and runs the consumer filters on
every message, in the order Redis delivers them; a lost connection is
reopened with a backoff (up to ``BACKPLANE_RETRY_MAX``), and what was
published meanwhile is not seen. Clients publish through :meth:`publish`
(``socket.publish``); each publication is remembered until it comes back, so
that the relay can tell the consumer filters which local socket sent it
(``data["sender"]``) and broadcast_pubsub does not echo a client's message to
that client.
"""
from __future__ import annotations

import collections
import threading
import time
from typing import Any

from lexicons import fws
from lexicons.daemon.service import Service
from lexicons.errors import ServiceError
from lexicons.fws import storage

#: Own publications remembered until they come back from Redis (oldest forgotten first).
PENDING = 10000


class FilteredWebSocketService(Service):
    """Run filtered_websocket filters named in ``FWS_FILTERS`` (see the module doc)."""

    name = "fws"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.names: list[str] = list(self.settings.FWS_FILTERS)
        self.server: fws.Server | None = None
        self.storage: Any = None
        self.channels: list[str] = []
        self._client: Any = None
        self._pubsub: Any = None
        self._pending: collections.OrderedDict[tuple[str, bytes], collections.deque[Any]] = (
            collections.OrderedDict())
        self._pending_lock = threading.Lock()
        self.relay_up = False
        self.relayed = 0
        self.published = 0
        self.dropped = 0
        self.last_error: str | None = None

    def setup(self) -> None:
        if not self.names:
            return
        chains = fws.load_filters(self.names)
        try:
            self.storage = storage.build(self.settings)
        except ServiceError:
            raise
        except Exception as exc:
            raise ServiceError(f"FWS_STORAGE {self.settings.FWS_STORAGE!r} cannot start: "
                               f"{type(exc).__name__}: {exc}") from exc
        self.channels = list(self.settings.FWS_REDIS_CHANNELS) or (
            ["global"] if chains[fws.WebSocketConsumerFilter] else [])
        if self.channels:
            try:
                import redis
            except ImportError as exc:
                raise ServiceError("the pub/sub relay needs redis-py (pip install redis)"
                                   ) from exc
            self._client = redis.Redis.from_url(self.settings.FWS_REDIS,
                                                socket_connect_timeout=2.0, socket_timeout=5.0)
        self.server = fws.Server(chains, self.storage, self.settings,
                                 publisher=self.publish if self.channels else None)
        self.log.info("filtered_websocket filters: %s%s", ", ".join(self.names),
                      f"; relaying redis channels {', '.join(self.channels)}"
                      if self.channels else "")

    def main(self) -> None:
        if not self.channels:
            self.stopping.wait()
            return
        delay = 0.05
        while not self.stopping.is_set():
            try:
                self._subscribe()
                delay = 0.05
                self._relay()
            except Exception as exc:  # connection errors and anything redis-py raises
                self._relay_down(exc, delay)
                self.stopping.wait(delay)
                delay = min(delay * 2, self.settings.BACKPLANE_RETRY_MAX)
        self._close_pubsub()

    def teardown(self) -> None:
        self._close_pubsub()
        for closable in (self._client, self.storage):
            if closable is not None and hasattr(closable, "close"):
                try:
                    closable.close()
                except Exception:  # closing a broken connection may fail; it is gone anyway
                    pass

    def info(self) -> dict[str, Any]:
        if self.server is None:
            return {"filters": []}
        info: dict[str, Any] = {"filters": self.names, "sockets": len(self.server.users),
                                "storage": type(self.storage).__name__,
                                "failures": self.server.failures}
        if self.channels:
            info.update({"channels": self.channels, "relay": "up" if self.relay_up else "down",
                         "relayed": self.relayed, "published": self.published,
                         "dropped": self.dropped, "last_error": self.last_error})
        return info

    # --- the relay -------------------------------------------------------------------------

    def publish(self, data: Any, channel: str | None = None, sender: Any = None) -> None:
        """Publish *data* on *channel* (default: the first relayed one) for every subscriber.

        A publication that cannot reach Redis is dropped, counted and logged.
        """
        channel = channel or self.channels[0]
        body = data.encode("utf-8") if isinstance(data, str) else bytes(data)
        if sender is not None and channel in self.channels:
            with self._pending_lock:  # before publishing: it may come back at once
                self._pending.setdefault((channel, body), collections.deque()).append(sender)
                self._pending.move_to_end((channel, body))
                while len(self._pending) > PENDING:
                    self._pending.popitem(last=False)
        try:
            self._client.publish(channel, body)
            self.published += 1
        except Exception as exc:  # Redis down: the message is lost for the others
            self.dropped += 1
            self._forget(channel, body)
            self.log.warning("publishing on redis channel %r failed: %s: %s", channel,
                             type(exc).__name__, exc)

    def _forget(self, channel: str, body: bytes) -> Any:
        """Return (and forget) the local sender of *body* on *channel*, or None."""
        with self._pending_lock:
            senders = self._pending.get((channel, body))
            if not senders:
                return None
            sender = senders.popleft()
            if not senders:
                del self._pending[(channel, body)]
            return sender

    def _subscribe(self) -> None:
        self._close_pubsub()
        pubsub = self._client.pubsub()
        pubsub.subscribe(*self.channels)
        self._pubsub = pubsub
        # "up" once Redis confirmed every subscription (messages before that are kept)
        confirmed, deadline = 0, time.monotonic() + 10.0
        while confirmed < len(self.channels):
            message = pubsub.get_message(timeout=1.0)
            if message is not None and message.get("type") == "subscribe":
                confirmed += 1
            elif message is not None:
                self._handle(message)
            if time.monotonic() > deadline:
                raise TimeoutError("redis did not confirm the subscriptions in 10 s")
        if not self.relay_up:
            self.log.info("relaying redis channels %s", ", ".join(self.channels))
        self.relay_up, self.last_error = True, None

    def _relay(self) -> None:
        pubsub = self._pubsub
        while not self.stopping.is_set():
            message = pubsub.get_message(timeout=0.5)
            if message is not None:
                self._handle(message)

    def _handle(self, message: dict[str, Any]) -> None:
        """Run the consumer filters on one message from Redis (others are ignored)."""
        if message.get("type") != "message":
            return
        channel = message["channel"]
        if isinstance(channel, bytes):
            channel = channel.decode("utf-8", "replace")
        body = message["data"]
        try:
            data: Any = body.decode("utf-8")
        except UnicodeDecodeError:
            data = body
        self.relayed += 1
        self.server.consume({"type": "message", "pattern": message.get("pattern"),
                             "channel": channel, "data": data,
                             "sender": self._forget(channel, body)})

    def _relay_down(self, exc: BaseException, delay: float) -> None:
        message = f"{type(exc).__name__}: {exc}"
        if message != self.last_error and not self.stopping.is_set():
            self.log.warning("redis relay: %s; retrying in %.2g s", message, delay)
        self.relay_up, self.last_error = False, message
        self._close_pubsub()

    def _close_pubsub(self) -> None:
        pubsub, self._pubsub = self._pubsub, None
        if pubsub is not None:
            try:
                pubsub.close()
            except Exception:  # closing a broken connection may fail; it is gone anyway
                pass
