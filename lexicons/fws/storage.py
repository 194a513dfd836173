"""Storage objects: where filtered_websocket's filters keep session data (``storage_object``).

A storage object maps keys to sets of strings: ``get(key)`` (also
``storage_object[key]``), ``add(key, value)`` and ``remove(key, value)``. The
``FWS_STORAGE`` setting names it:

``"memory"`` (the default)
    :class:`MemoryStorage`, a dict of sets in this process.
``"redis"``
    :class:`RedisStorage`: each key is a Redis set ``<FWS_REDIS_KEY>:<key>`` on
    ``FWS_REDIS``, so several nodes share it and any other application reads
    it (``SMEMBERS fws:<key>``); values are strings.
``"module.path/ClassName"``
    your own class, built with the settings; subclass :class:`BaseStorageObject`.

filtered_websocket kept the Redis data as one pickled ``redis_collections``
dict; lexicons keeps plain sets, which other programs can read.
"""
from __future__ import annotations

import collections
import threading
from typing import Any

from lexicons.daemon.entries import import_entry


class BaseStorageObject:
    """The interface filters use; ``options`` are the daemon's settings."""

    def __init__(self, options: Any, *args: Any, **kwargs: Any):
        self.options = options
        self.storage: Any = None

    def get(self, item: str) -> set[str]:
        raise NotImplementedError

    def __getitem__(self, item: str) -> set[str]:
        return self.get(item)

    def add(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def remove(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def close(self) -> None:
        """Release connections (the daemon calls it when it stops)."""


class MemoryStorage(BaseStorageObject):
    """Sets in this process's memory."""

    def __init__(self, options: Any, *args: Any, **kwargs: Any):
        super().__init__(options)
        self.storage: collections.defaultdict[str, set[str]] = collections.defaultdict(set)
        self._lock = threading.Lock()

    def get(self, item: str) -> set[str]:
        with self._lock:
            return set(self.storage.get(item, ()))

    def add(self, key: str, value: Any) -> None:
        with self._lock:
            self.storage[key].add(str(value))

    def remove(self, key: str, value: Any) -> None:
        with self._lock:
            members = self.storage.get(key)
            if members is not None:
                members.discard(str(value))
                if not members:
                    del self.storage[key]


class RedisStorage(BaseStorageObject):
    """Redis sets ``<FWS_REDIS_KEY>:<key>``, shared with other nodes and applications."""

    def __init__(self, options: Any, *args: Any, **kwargs: Any):
        super().__init__(options)
        import redis

        self.prefix = options.FWS_REDIS_KEY
        self.redis = redis.Redis.from_url(options.FWS_REDIS, socket_connect_timeout=2.0,
                                          socket_timeout=5.0, decode_responses=True)
        self.redis.ping()  # a Redis that cannot be reached stops the start, by name
        self.storage = self.redis

    def key(self, item: str) -> str:
        """Return the Redis key of *item*."""
        return f"{self.prefix}:{item}"

    def get_client(self) -> Any:
        """Return the Redis client (filtered_websocket's name)."""
        return self.redis

    def get(self, item: str) -> set[str]:
        return set(self.redis.smembers(self.key(item)))

    def add(self, key: str, value: Any) -> None:
        self.redis.sadd(self.key(key), str(value))

    def remove(self, key: str, value: Any) -> None:
        self.redis.srem(self.key(key), str(value))

    def publish(self, channel: str, data: Any) -> None:
        """Publish *data* on the Redis channel *channel*."""
        self.redis.publish(channel, data)

    def close(self) -> None:
        self.redis.close()


def build(settings: Any) -> BaseStorageObject:
    """Return the storage object ``FWS_STORAGE`` names, built with *settings*."""
    name = settings.FWS_STORAGE
    if name == "memory":
        return MemoryStorage(settings)
    if name == "redis":
        return RedisStorage(settings)
    cls = import_entry(name, BaseStorageObject, "FWS_STORAGE")
    return cls(settings)
