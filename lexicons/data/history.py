"""Channel history: a channel's recent publications, each with a position.

Theory of operation
-------------------
A Channel class that declares ``history_size`` keeps its last publications
(at most that many, none older than ``history_ttl`` seconds). Each one gets
the next *offset* of the channel (1, 2, 3, ...) in the channel's *epoch*, a
random word naming one unbroken history: when a history is lost (a restart
without persistence, Redis flushed, the channel evicted) the next one starts
with a new epoch, so an offset is meaningful only with its epoch.

The position travels in the broadcast, under the key ``"@"``, after the
payload::

    [{"Message": {...}, "@": {"channel": "room:lobby", "epoch": "9f2c41d0", "offset": 12}}]

It is made by appending to a *head* (the broadcast encoded once, without its
epoch and offset) so that a store that assigns the offset elsewhere (Redis,
in a script) can finish the bytes there. What the history keeps is that
final text, so a recovery sends the very bytes the live broadcast had.

Recovery (:func:`recover`): a client gives the position of the last
publication it saw. Same epoch and every later publication still kept: it
gets them, in order (``recovered`` true); another epoch, or a gap (trimmed
by size or age): ``recovered`` false, and it must reload what it shows some
other way. An offset past the channel's newest is the client's mistake and a
:class:`~lexicons.errors.CallError`.

This module is pure but for :class:`MemoryHistory`'s file (DATA_DIR), which
it reads at start and writes at stop when a channel asks to be persisted.
"""
from __future__ import annotations

import collections
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

from lexicons.errors import CallError, StorageError
from lexicons.wire.events import Position, Recovery
from lexicons.wire.protocol import encode_json

#: The key of a broadcast's position.
POSITION = "@"
_TAIL = re.compile(rb'"epoch":"([0-9a-f]{1,32})","offset":(\d{1,19})\}\}\]\Z')
_TAIL_BYTES = 80


def new_epoch() -> str:
    """Return a fresh random epoch (8 hex digits)."""
    return os.urandom(4).hex()


def head(name: str, payload: Any, channel: str) -> bytes:
    """Return a broadcast encoded up to its epoch (TypeError if *payload* is not JSON-able)."""
    body = encode_json([{name: payload}])  # [{"name":payload}]
    return (body[:-2] + f',"{POSITION}":{{"channel":' + encode_json(channel)
            + ',"epoch":"').encode("utf-8")


def stamp(head_bytes: bytes, offset: int, epoch: str) -> bytes:
    """Finish a broadcast made by :func:`head` with its position."""
    return b"%s%s\",\"offset\":%d}}]" % (head_bytes, epoch.encode("ascii"), offset)


def position_of(message: bytes) -> Position | None:
    """Return the position a stamped broadcast carries, or None if it carries none."""
    m = _TAIL.search(message, max(0, len(message) - _TAIL_BYTES))
    if m is None:
        return None
    return Position(int(m.group(2)), m.group(1).decode("ascii"))


def offset_of(message: bytes) -> int | None:
    """Return the offset a stamped broadcast carries, or None."""
    position = position_of(message)
    return None if position is None else position.offset


def parse_since(value: Any) -> Position:
    """Check a client's ``recover`` argument, ``{"offset": n, "epoch": "..."}``.

    Raises CallError naming what is wrong with it.
    """
    if not isinstance(value, dict):
        raise CallError('recover must be an object {"offset": n, "epoch": "..."}, not '
                        + type(value).__name__)
    unknown = sorted(set(value) - {"offset", "epoch"})
    if unknown:
        raise CallError(f"recover: unknown key {unknown[0][:40]!r} (it takes offset and epoch)")
    offset, epoch = value.get("offset"), value.get("epoch")
    if isinstance(offset, bool) or not isinstance(offset, int) or offset < 0:
        raise CallError(f"recover.offset must be a whole number >= 0, not {offset!r:.40}")
    if not isinstance(epoch, str) or not epoch or len(epoch) > 64:
        raise CallError(f"recover.epoch must be the epoch string the server gave, "
                        f"not {epoch!r:.40}")
    return Position(offset, epoch)


def recover(since: Position, top: int, epoch: str,
            entries: Iterable[tuple[int, bytes]]) -> Recovery:
    """Decide a recovery from the kept *entries* (offset, message), oldest first.

    Raises CallError when *since* is past the channel's newest offset *top*.
    """
    position = Position(top, epoch)
    if since.epoch != epoch:
        return Recovery(position, False, (), "the channel's history was lost since "
                        "(another epoch)")
    if since.offset > top:
        raise CallError(f"recover.offset {since.offset} is in the future: the channel is "
                        f"at offset {top}")
    missed = [(offset, message) for offset, message in entries if offset > since.offset]
    if len(missed) != top - since.offset or (missed and missed[0][0] != since.offset + 1):
        return Recovery(position, False, (), f"the history no longer reaches back to "
                        f"offset {since.offset}")
    return Recovery(position, True, tuple(message for _, message in missed))


class _Log:
    """One channel's history in memory."""

    __slots__ = ("epoch", "top", "entries")

    def __init__(self, epoch: str, top: int = 0):
        self.epoch = epoch
        self.top = top
        self.entries: collections.deque[tuple[int, float, bytes]] = collections.deque()

    def trim(self, size: int, ttl: float, now: float) -> None:
        entries = self.entries
        while len(entries) > size:
            entries.popleft()
        oldest = now - ttl
        while entries and entries[0][1] < oldest:
            entries.popleft()


class MemoryHistory:
    """The histories of one node's channels, in memory.

    At most *max_channels* are kept: the one least recently published or read
    is dropped first (its next use starts a new epoch). Thread-safe.
    """

    def __init__(self, max_channels: int, clock: Callable[[], float] = time.time):
        self.max_channels = max_channels
        self.clock = clock
        self._lock = threading.Lock()
        self._logs: collections.OrderedDict[str, _Log] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._logs)

    def _log(self, channel: str) -> _Log:
        """Return *channel*'s log, made if new. Needs self._lock."""
        log = self._logs.get(channel)
        if log is None:
            log = self._logs[channel] = _Log(new_epoch())
            if len(self._logs) > self.max_channels:
                self._logs.popitem(last=False)
        else:
            self._logs.move_to_end(channel)
        return log

    def publish(self, channel: str, head_bytes: bytes, size: int, ttl: float) -> bytes:
        """Give a broadcast the channel's next position, keep it, and return its bytes."""
        now = self.clock()
        with self._lock:
            log = self._log(channel)
            log.top += 1
            message = stamp(head_bytes, log.top, log.epoch)
            log.entries.append((log.top, now, message))
            log.trim(size, ttl, now)
        return message

    def position(self, channel: str) -> Position:
        """Return *channel*'s position now (its newest offset and its epoch)."""
        with self._lock:
            log = self._log(channel)
            return Position(log.top, log.epoch)

    def recover(self, channel: str, since: Position, size: int, ttl: float) -> Recovery:
        """Return what a client at *since* missed (see :func:`recover`)."""
        now = self.clock()
        with self._lock:
            log = self._log(channel)
            log.trim(size, ttl, now)
            entries = [(offset, message) for offset, _, message in log.entries]
            top, epoch = log.top, log.epoch
        return recover(since, top, epoch, entries)

    def read(self, channel: str, limit: int, size: int,
             ttl: float) -> tuple[Position, list[bytes]]:
        """Return the position and the newest *limit* publications kept, oldest first."""
        now = self.clock()
        with self._lock:
            log = self._log(channel)
            log.trim(size, ttl, now)
            entries = list(log.entries)[-limit:] if limit > 0 else []
            return Position(log.top, log.epoch), [message for _, _, message in entries]

    # --- persistence ---------------------------------------------------------------------

    def save(self, path: str, keep: Callable[[str], bool]) -> int:
        """Write the histories of the channels *keep* accepts to *path*; return how many."""
        with self._lock:
            data = {channel: {"epoch": log.epoch, "top": log.top,
                              "entries": [[o, t, m.decode("utf-8")] for o, t, m in log.entries]}
                    for channel, log in self._logs.items() if keep(channel)}
        if not data:
            return 0
        directory = os.path.dirname(path) or "."
        os.makedirs(directory, exist_ok=True)
        fd, temporary = tempfile.mkstemp(prefix=".history.", dir=directory)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as out:
                json.dump(data, out, separators=(",", ":"))
                out.flush()
                os.fsync(out.fileno())
            os.replace(temporary, path)
        except OSError as exc:
            try:
                os.unlink(temporary)
            except OSError:
                pass
            raise StorageError(f"cannot write the channel history to {path}: {exc}") from exc
        return len(data)

    def load(self, path: str) -> int:
        """Read histories saved by :meth:`save`, then remove the file; return how many.

        Removing it means a daemon that dies without saving starts the next time
        with new epochs, never with offsets it may have handed out again.
        """
        try:
            with open(path, encoding="utf-8") as source:
                data = json.load(source)
        except FileNotFoundError:
            return 0
        except (OSError, ValueError) as exc:
            raise StorageError(f"cannot read the channel history in {path}: {exc}") from exc
        if not isinstance(data, dict):
            raise StorageError(f"{path} is not a saved channel history")
        with self._lock:
            for channel, saved in data.items():
                log = _Log(str(saved["epoch"]), int(saved["top"]))
                log.entries.extend((int(o), float(t), str(m).encode("utf-8"))
                                   for o, t, m in saved["entries"])
                self._logs[channel] = log
                if len(self._logs) > self.max_channels:
                    self._logs.popitem(last=False)
        os.unlink(path)
        return len(data)
