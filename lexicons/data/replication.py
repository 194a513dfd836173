"""One data set for a cluster: a Database replicated through one Redis Stream.

Theory of operation
-------------------
With ``DATABASE = "redis://..."`` every write op of a :class:`~lexicons.database.Database`
(create, update, drop, get_or_create; see ``Database._write``) becomes one entry of
the Redis Stream ``DATABASE_STREAM``, and every node applies every entry, in stream
order, to its own in-memory tables: a replicated state machine. Reads stay local.

* **Writing** (:meth:`StreamLog.submit`, in the caller's thread): the op is checked
  and encoded, a waiter is registered under a request number, and the entry
  ``{n: node, r: request, w: op}`` is added with ``XADD``. The caller then waits
  until this node's reader has applied that entry and returns what applying
  decided (the pk, the row, "found, not created"). So the caller's answer comes
  after the write is in the stream and in the local tables (read-your-writes).
* **Applying** (the reader thread): ``XREAD BLOCK`` from the last applied position;
  each batch is applied under the database lock in stream order by
  ``Database._apply``, which is deterministic: the same ops in the same order on
  the same tables decide the same (a taken made-up pk is replaced by one derived
  from the entry id; get_or_create finds or inserts). An op that cannot be made
  (a duplicate pk, a missing row) changes nothing on any node; its caller gets
  the error. The position of the last applied entry is kept with the tables, so a
  snapshot copies the tables and the position that goes with them together.
* **Starting** (:class:`StreamStorage`): a node loads its newest complete snapshot
  (the tables plus the stream position they hold), or the shared snapshot in
  Redis when that is newer or the stream no longer reaches back to its own, and
  replays the stream from there before it serves.
* **Trimming**: each node tells Redis, about once a second, the position it has
  applied; a snapshot also goes to Redis (the *shared snapshot*). The stream is
  trimmed below the oldest of: the shared snapshot's position and the applied
  position of every node seen in the last ``DATABASE_NODE_TIMEOUT`` seconds. A
  node that comes back later than that restarts from the shared snapshot.
* **Redis down**: ``XADD`` fails, the write is refused with :class:`Unavailable`
  (nothing is queued); reads go on from the local tables; the log reports itself
  degraded. The reader reconnects with backoff and catches up from its position.
"""
from __future__ import annotations

import itertools
import json
import logging
import os
import threading
import time
from collections.abc import Iterable
from typing import Any

from lexicons.data.database import Database
from lexicons.data.model import to_json
from lexicons.errors import DatabaseError, Unavailable

log = logging.getLogger("lexicons.replication")

#: Entries read and applied under one hold of the database lock.
BATCH = 1000
#: Seconds the reader lets entries gather when no write of this node waits for it.
GATHER = 0.002
#: Writes sent as one stream entry at most.
MAX_OPS = 1000
#: Sends under way at once, each on a connection of its own: while one waits for
#: Redis to answer (and, with appendfsync always, to fsync), another sends what
#: queued meanwhile. Entries of different callers may so reach the stream in
#: another order than they were submitted: they were concurrent writes.
SENDERS = 4
#: Milliseconds one XREAD waits for new entries before it asks again.
BLOCK_MS = 1000
START = "0-0"


def position_key(position: str) -> tuple[int, int]:
    """Return a stream id as a pair of ints, to compare positions."""
    ms, _, seq = position.partition("-")
    return int(ms), int(seq or 0)


def safe_url(url: str) -> str:
    """Return *url* without its password."""
    head, sep, tail = url.rpartition("@")
    if not sep:
        return url
    scheme, _, _ = head.partition("://")
    return f"{scheme}://***@{tail}"


# --- ops as stream entries ----------------------------------------------------------------


def encode_op(db: Database, op: tuple) -> bytes:
    """Return a write op as JSON bytes (sets as sorted lists)."""
    kind, name = op[0], op[1]
    if kind == "c":
        data: list = ["c", name, op[2], [to_json(v) for v in op[3]], op[4]]
    elif kind == "u":
        data = ["u", name, op[2], {k: to_json(v) for k, v in op[3].items()}]
    elif kind == "d":
        data = ["d", name, op[2], op[3]]
    else:
        data = ["g", name, {k: to_json(v) for k, v in op[2].items()}, op[3],
                [to_json(v) for v in op[4]], op[5]]
    return json.dumps(data, separators=(",", ":"), allow_nan=True).encode("utf-8",
                                                                           "surrogatepass")


def decode_op(db: Database, data: Any) -> tuple:
    """Return the write op of an entry's JSON data; DatabaseError when it does not fit
    the models."""
    try:
        if isinstance(data, bytes):
            data = json.loads(data.decode("utf-8", "surrogatepass"))
        kind, name = data[0], data[1]
        table = db.table(name)
        readers = _readers(table)

        def row(values: list) -> tuple:
            if len(values) != len(readers):
                raise DatabaseError(f"a {name} row of {len(values)} values, the model has "
                                    f"{len(readers)} fields")
            return tuple([read(v) for read, v in zip(readers, values)])  # noqa: B905

        def named(values: dict) -> dict:
            return {k: (v if k == "pk" else table.field(k).from_json(v))
                    for k, v in values.items()}

        if kind == "c":
            return ("c", name, data[2], row(data[3]), bool(data[4]))
        if kind == "u":
            return ("u", name, data[2], named(data[3]))
        if kind == "d":
            return ("d", name, data[2], bool(data[3]))
        if kind == "g":
            return ("g", name, named(data[2]), data[3], row(data[4]), bool(data[5]))
    except DatabaseError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, AttributeError) as exc:
        raise DatabaseError(f"not a write record: {type(exc).__name__}: {exc}") from None
    raise DatabaseError(f"not a write record: unknown op {kind!r}")


def _readers(table: Any) -> list[Any]:
    """Return, per field of *table*, the function turning JSON data into its value.

    A value of exactly the field's type is taken as it is (the writer checked
    it); anything else goes through ``from_json``, which checks it.
    """
    readers = table.__dict__.get("_json_readers")
    if readers is None:
        readers = []
        for name in table.schema.names:
            field = table.fields[name]
            exact = {"str": str, "int": int, "bool": bool, "float": float,
                     "ref": str}.get(field.kind)
            if exact is None or field.nullable or field.kind == "int":
                readers.append(field.from_json)   # ints: the range check
            else:
                readers.append(_exact_reader(exact, field.from_json))
        table._json_readers = readers
    return readers


def _exact_reader(exact: type, slow: Any) -> Any:
    def read(value: Any) -> Any:
        return value if value.__class__ is exact else slow(value)
    return read


# --- the log ------------------------------------------------------------------------------


class _Waiter:
    """A caller waiting for its entry to be applied here (or for its turn to send).

    ``done``, ``lead`` and ``signalled`` change under ``StreamLog._mu``. The
    waiter's thread sleeps on ``lock``, held while nobody woke it; waking it
    releases the lock once (``signalled`` keeps it from being released twice).
    So only the threads that have something to do wake up.
    """

    __slots__ = ("done", "lead", "signalled", "lock", "result", "error", "position")

    def __init__(self) -> None:
        self.done = False
        self.lead = False
        self.signalled = False
        self.lock = threading.Lock()
        self.lock.acquire()
        self.result: Any = None
        self.error: BaseException | None = None
        self.position = ""

    def wake(self) -> None:
        """Let the waiter's thread run (StreamLog._mu held)."""
        if not self.signalled:
            self.signalled = True
            self.lock.release()


class StreamLog:
    """Record a database's writes in a Redis Stream and apply the stream to it.

    Attach with :meth:`start`: from then on ``db``'s writes go through
    :meth:`submit`. *position* is the stream id the tables already hold (a
    snapshot's); the reader applies what comes after it.
    """

    def __init__(self, db: Database, url: str, stream: str, node: str, *,
                 position: str = START, timeout: float = 10.0, retry_max: float = 5.0,
                 node_timeout: float = 60.0, adopt: Any = None):
        self.db = db
        #: Called with the shared snapshot's files when the stream no longer holds
        #: what this node needs next; loads them and returns their position.
        self.adopt = adopt
        self.node_timeout = node_timeout
        self.nodes_key = f"{stream}:nodes"
        self.snapshot_key = f"{stream}:snapshot"
        self.trimmed_key = f"{stream}:trimmed"
        self.url = url
        self.stream = stream
        self.node = node
        self.timeout = timeout
        self.retry_max = retry_max
        self.position = position     # the last applied entry; changed under db.lock
        #: The position this node would restart from (its snapshot's): the stream is
        #: kept from there for it. None: from the applied position.
        self.keep_from: str | None = position if position != START else None
        # Entries this process sent carry its node name and a token of this run, so
        # that its request numbers (which start again at 1) never match the entries
        # of an earlier run of the node, replayed after a restart.
        self._node_bytes = f"{node}/{os.urandom(4).hex()}".encode()
        self._batch_ids = itertools.count(1)
        self._batches: dict[int, list[tuple[int, tuple]]] = {}
        self._requests = itertools.count(1)
        self._waiting: dict[int, _Waiter] = {}
        self._stopping = threading.Event()
        self._closed = False
        self._thread: threading.Thread | None = None
        self._reader_up = False
        self._caught_up = threading.Event()
        self._target = START          # the stream's last id when the reader connected
        self.last_error: str | None = None
        self.lost: str | None = None   # set when the stream lost entries applied here
        self.written = 0
        self.refused = 0              # writes that could not be recorded
        self.applied = 0
        self.entries = 0
        self.reconnects = 0
        # _mu guards _outbox, _sending and the waiters' flags; _applied is notified
        # after each applied batch when sync() waits on it
        self._mu = threading.Lock()
        self._applied = threading.Condition()
        self._syncing = 0
        self._outbox: list[tuple[int, bytes, tuple]] = []
        self._sending = 0
        self._connected_once = False
        self._writer = self._client(socket_timeout=5.0)

    # --- Redis ----------------------------------------------------------------------------

    def _client(self, socket_timeout: float) -> Any:
        import redis
        from redis.backoff import NoBackoff
        from redis.retry import Retry

        # No retries inside redis-py: a refused write must be refused at once (the
        # caller decides), and the reader's loop does its own backoff.
        return redis.Redis.from_url(self.url, socket_connect_timeout=2.0,
                                    socket_timeout=socket_timeout, socket_keepalive=True,
                                    retry=Retry(NoBackoff(), 0))

    @property
    def degraded(self) -> bool:
        """Tell whether this node cannot reach the stream (writes are refused)."""
        return not self._reader_up

    # --- writing --------------------------------------------------------------------------

    def submit(self, op: tuple) -> Any:
        """Record *op* in the stream, wait until it is applied here, return the result.

        Raises Unavailable when the stream cannot be reached (the write is not
        made, or not confirmed) or when the entry is not applied here within the
        timeout (it is in the stream: every node applies it when it can);
        otherwise whatever applying raised (DoesNotExist, IntegrityError, ...).

        Group commit: a caller that finds fewer than ``SENDERS`` sends under way
        takes every queued write (its own and others') and sends them as one
        entry, with a read of what follows this node's position in the same round
        trip, and applies it all; the others wait, and one of them sends what
        queued meanwhile. So a write needs no hand-off to another thread.
        """
        if self._closed:
            raise Unavailable("the database is stopped: it takes no more writes")
        payload = encode_op(self.db, op)
        request = next(self._requests)
        waiter = self._waiting[request] = _Waiter()
        deadline = time.monotonic() + self.timeout
        mu = self._mu
        with mu:
            self._outbox.append((request, payload, op))
            lead = self._sending < SENDERS
            if lead:
                self._sending += 1
        while True:
            if lead:
                self._lead()
            with mu:
                if waiter.done:
                    break
                lead, waiter.lead = waiter.lead, False
            if lead:
                continue
            left = deadline - time.monotonic()
            if left <= 0 or not waiter.lock.acquire(timeout=left):
                with mu:
                    if waiter.done:
                        break
                    if waiter.lead:   # woken to send just now: do it
                        waiter.lead = False
                        lead = True
                        continue
                    self._waiting.pop(request, None)
                    self._outbox = [item for item in self._outbox if item[0] != request]
                raise self._late(waiter)
            with mu:
                waiter.signalled = False
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _lead(self) -> None:
        """Send what is queued (one send slot is ours); then pass the slot on."""
        if self._sending > 1:
            # Another send is under way: Redis is busy with it (with appendfsync always,
            # fsyncing), so this entry joins its next round at best. The writers the last
            # answer woke are waiting for the GIL this thread holds: let them queue their
            # writes first, so they go in this entry and not a round trip (and an fsync)
            # later. Without this, 16 threads wrote 3-5 ops an entry; with it, about 12.
            time.sleep(0)
        with self._mu:
            batch, self._outbox = self._outbox[:MAX_OPS], self._outbox[MAX_OPS:]
        try:
            if batch:
                self._send(batch)
        finally:
            with self._mu:
                self._sending -= 1
                for request, _, _ in self._outbox:   # the first queued write's caller
                    heir = self._waiting.get(request)
                    if heir is not None and not heir.done and not heir.lead:
                        self._sending += 1
                        heir.lead = True
                        heir.wake()
                        break

    def _late(self, waiter: _Waiter) -> Unavailable:
        if waiter.position:
            return Unavailable(f"the write is recorded (stream entry {waiter.position}) but "
                               f"this node has not applied it within {self.timeout:g} s; "
                               "it will be applied once the node catches up")
        return Unavailable(f"the database cannot take writes now: Redis at "
                           f"{safe_url(self.url)} has not answered within "
                           f"{self.timeout:g} s; the write is not confirmed")

    def _send(self, batch: list[tuple[int, bytes, tuple]]) -> None:
        """Add *batch* as one entry, read what follows this node's position, apply it."""
        import redis

        body = b"[" + b",".join([b"[%d,%s]" % (r, p) for r, p, _ in batch]) + b"]"
        # This node applies its own entries from the ops it holds, not from the JSON.
        batch_id = next(self._batch_ids)
        self._batches[batch_id] = [(r, op) for r, _, op in batch]
        try:
            pipe = self._writer.pipeline(transaction=False)
            pipe.xadd(self.stream, {"n": self._node_bytes, "b": str(batch_id), "w": body})
            pipe.xrange(self.stream, min="(" + self.position, count=BATCH)
            position, entries = pipe.execute()
        except redis.RedisError as exc:
            self._batches.pop(batch_id, None)
            self.last_error = f"write: {type(exc).__name__}: {exc}"
            self._refuse(batch, f"the database cannot take writes now: Redis at "
                                f"{safe_url(self.url)} does not answer ({exc}); the write "
                                "is not confirmed (reads still work)")
            return
        except Exception as exc:   # a bug: the callers hear of it, the log has it
            self._batches.pop(batch_id, None)
            log.exception("cannot send %d write(s) to the stream", len(batch))
            self._refuse(batch, f"the write was not made ({type(exc).__name__})")
            return
        self.written += len(batch)
        self.entries += 1
        text = position.decode()
        for request, _, _ in batch:
            waiter = self._waiting.get(request)
            if waiter is not None and not waiter.position:
                waiter.position = text
        if entries and entries[-1][0] == position:   # else the reader gets to it
            self.apply(entries)

    def _refuse(self, batch: list[tuple[int, bytes, tuple]], message: str) -> None:
        self.refused += len(batch)
        for request, _, _ in batch:
            waiter = self._waiting.pop(request, None)
            if waiter is not None:
                with self._mu:
                    waiter.error = Unavailable(message)
                    waiter.done = True
                    waiter.wake()

    def sync(self) -> None:
        """Wait until this node has applied every entry the stream holds now."""
        import redis

        try:
            last = self._writer.xrevrange(self.stream, count=1)
        except redis.RedisError as exc:
            raise Unavailable(f"the database cannot reach Redis at {safe_url(self.url)} to "
                              f"catch up ({exc}); reads show this node's tables") from None
        if not last:
            return
        target = position_key(last[0][0].decode())
        deadline = time.monotonic() + self.timeout
        with self._applied:
            self._syncing += 1
            try:
                while position_key(self.position) < target:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise Unavailable(f"this node has not caught up with the stream "
                                          f"within {self.timeout:g} s")
                    self._applied.wait(left)
            finally:
                self._syncing -= 1

    # --- applying --------------------------------------------------------------------------

    def apply(self, entries: Iterable[tuple[bytes, dict[bytes, bytes]]]) -> int:
        """Apply stream entries in order (the reader's step, and a sender's); return how
        many were new here."""
        db = self.db
        answered = []
        new = 0
        with db.lock:
            for raw_id, fields in entries:
                position = raw_id.decode()
                if position_key(position) <= position_key(self.position):
                    continue   # already in the tables (a snapshot's, or read twice)
                new += 1
                mine = fields.get(b"n") == self._node_bytes
                local = self._batches.pop(int(fields.get(b"b", 0)), None) if mine else None
                if local is not None:
                    for index, (request, op) in enumerate(local):
                        waiter = self._waiting.pop(request, None)
                        self._apply_op(op, f"{position}/{index}", waiter)
                        if waiter is not None:
                            answered.append(waiter)
                    requests: list = local
                else:
                    requests = self._requests_of(position, fields)
                    for index, request in enumerate(requests):
                        waiter = self._apply_one(request, f"{position}/{index}", mine)
                        if waiter is not None:
                            answered.append(waiter)
                self.position = position
                self.applied += len(requests)
            if not self._caught_up.is_set() and (position_key(self.position)
                                                 >= position_key(self._target)):
                self._caught_up.set()
        with self._mu:
            for waiter in answered:
                waiter.done = True
                waiter.wake()
        if self._syncing:
            with self._applied:
                self._applied.notify_all()
        return new

    @staticmethod
    def _requests_of(position: str, fields: dict[bytes, bytes]) -> list:
        """Return the ``[request, op]`` pairs of an entry another node sent."""
        try:
            requests = json.loads(fields.get(b"w", b"[]").decode("utf-8", "surrogatepass"))
            if not isinstance(requests, list):
                raise ValueError("not a list")
        except ValueError as exc:
            log.error("skipping stream entry %s: not a list of writes (%s)", position, exc)
            return []
        return requests

    def _apply_one(self, request: Any, where: str, mine: bool) -> _Waiter | None:
        """Apply one ``[request, op]`` of an entry; return its waiter here, if any
        (db.lock held)."""
        waiter = None
        if mine and isinstance(request, list) and request and isinstance(request[0], int):
            waiter = self._waiting.pop(request[0], None)
        try:
            if not isinstance(request, list) or len(request) != 2:
                raise DatabaseError("not a write record")
            op = decode_op(self.db, request[1])
        except DatabaseError as exc:
            log.error("skipping the write %s: %s", where, exc)
            if waiter is not None:
                waiter.error = exc
            return waiter
        self._apply_op(op, where, waiter)
        return waiter

    def _apply_op(self, op: tuple, where: str, waiter: _Waiter | None) -> None:
        """Apply one op; give its waiter the result or the error (db.lock held)."""
        result = error = None
        try:
            result = self.db._apply(op, where, waiter is not None)
        except DatabaseError as exc:   # refused alike on every node
            error = exc
        except Exception as exc:       # a bug: the same on every node, logged
            log.exception("cannot apply the write %s", where)
            error = DatabaseError(f"the write could not be applied ({type(exc).__name__})")
        if waiter is not None:
            waiter.result, waiter.error = result, error

    # --- the reader thread -----------------------------------------------------------------

    def start(self) -> None:
        """Attach to the database and start applying the stream (idempotent)."""
        self.db.replica = self
        if self._thread is None:
            self._closed = False
            self._stopping.clear()
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name="lexicons-replication")
            self._thread.start()

    def catch_up(self, timeout: float) -> bool:
        """Wait until the stream is applied as far as it went when Redis was reached."""
        return self._caught_up.wait(timeout)

    def stop(self) -> None:
        """Refuse new writes, let the reader apply those under way (a few seconds at
        most), then stop the reader (idempotent)."""
        self._closed = True
        deadline = time.monotonic() + min(self.timeout, 5.0)
        while self._waiting and self._reader_up and time.monotonic() < deadline:
            time.sleep(0.01)
        self._stopping.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(BLOCK_MS / 1000 * 5 + 5)
        self._reader_up = False
        try:
            self._writer.close()
        except Exception:   # closing a broken connection: nothing to save
            pass

    def _run(self) -> None:
        delay = 0.05
        while not self._stopping.is_set():
            client = None
            try:
                client = self._client(socket_timeout=BLOCK_MS / 1000 + 10)
                last = client.xrevrange(self.stream, count=1)
                self._target = last[0][0].decode() if last else START
                self._check_lost(client)
                self._up()
                delay = 0.05
                self._follow(client)
            except Exception as exc:   # connection errors and anything redis-py raises
                self._down(exc, delay)
                self._stopping.wait(delay)
                delay = min(delay * 2, self.retry_max)
            finally:
                if client is not None:
                    try:
                        client.close()
                    except Exception:   # the connection is gone already
                        pass

    def _follow(self, client: Any) -> None:
        self._register(client)
        if self._missing(client):
            self._resync(client)
        if position_key(self.position) >= position_key(self._target):
            self._caught_up.set()
        while not self._stopping.is_set():
            got = client.xread({self.stream: self.position}, count=BATCH, block=BLOCK_MS)
            if got:
                entries = got[0][1]
                new = self.apply(entries)
                # Only other nodes' writes and none of this node's waiting, or only
                # entries a sender applied already: let more gather before the next
                # read (fewer, larger reads cost less CPU; senders read what follows
                # their own entries themselves).
                if len(entries) < BATCH and (not new or not self._waiting):
                    self._stopping.wait(GATHER)

    def _check_lost(self, client: Any) -> None:
        """Say loudly when the stream lost entries this node applied (Redis restarted
        without its data): nodes that start from it now would miss those writes."""
        try:
            stream = client.xinfo_stream(self.stream)
            last = stream.get("last-generated-id", b"0-0")
            last = last.decode() if isinstance(last, bytes) else str(last)
        except Exception as exc:   # no such key: the stream is gone
            if "no such key" not in str(exc).lower():
                raise
            last = START
        if position_key(last) < position_key(self.position):
            self.lost = (f"stream {self.stream} ends at {last}, before this node's position "
                         f"{self.position}: Redis lost writes (restarted without its AOF?)")
            log.error("%s; nodes starting from it now miss them", self.lost)

    def _up(self) -> None:
        if not self._reader_up:
            if self._connected_once:
                self.reconnects += 1
                log.info("redis reached again; replicated database up, catching up from %s",
                         self.position)
            else:
                log.info("redis reached; replicated database on stream %s as node %s",
                         self.stream, self.node)
            self._connected_once = True
        self._reader_up = True
        self.last_error = None

    def _down(self, exc: BaseException, delay: float) -> None:
        message = f"read: {type(exc).__name__}: {exc}"
        if self._reader_up and not self._stopping.is_set():
            log.warning("redis lost; replicated database degraded (writes refused, reads go "
                        "on): %s", message)
        elif message != self.last_error:
            log.warning("redis %s; retrying in %.2g s", message, delay)
        self._reader_up = False
        self.last_error = message

    # --- what the stream holds ---------------------------------------------------------

    def _register(self, client: Any) -> None:
        """Tell the other nodes (and trimming) the position this node has applied."""
        keep = self.keep_from if self.keep_from is not None else self.position
        entry = json.dumps({"position": keep, "applied": self.position, "seen": time.time()})
        client.hset(self.nodes_key, self.node, entry)

    def heartbeat(self) -> None:
        """Register this node's position again (about once a second); quiet when down."""
        if not self._reader_up:
            return
        try:
            self._register(self._writer)
        except Exception as exc:   # the reader notices and reports the outage
            log.debug("cannot register the node's position: %s", exc)

    def _missing(self, client: Any) -> bool:
        """Tell whether entries after this node's position may have been trimmed away.

        Needs :meth:`_register` done first: trimming (one script) either saw this
        node's position, or recorded its floor before this check reads it.
        """
        floor = client.get(self.trimmed_key)
        return floor is not None and position_key(floor.decode()) > position_key(self.position)

    def _resync(self, client: Any) -> None:
        """Load the shared snapshot: the stream lost entries this node has not applied."""
        files = client.hgetall(self.snapshot_key)
        if not files or self.adopt is None:
            raise DatabaseError(f"stream {self.stream} was trimmed past this node's position "
                                f"{self.position} and there is no shared snapshot to load")
        files = {k.decode(): v for k, v in files.items()}
        log.warning("stream %s no longer holds what follows position %s; loading the shared "
                    "snapshot", self.stream, self.position)
        # Only this thread applies entries, so the tables stand still meanwhile; adopt()
        # sets self.position with the tables it loaded, under the database lock.
        self.adopt(files)
        self._register(client)

    def share(self, files: dict[str, bytes]) -> bool:
        """Store a snapshot's files as the shared snapshot, unless Redis has a newer one."""
        if not files:
            return False
        args: list[Any] = []
        for name, data in files.items():
            args += [name, data]
        return bool(self._writer.eval(_SHARE, 1, self.snapshot_key,
                                      files["POSITION"].strip(), *args))

    def trim(self) -> str | None:
        """Trim the stream below what the shared snapshot and live nodes still need.

        Returns the new floor (entries before it are gone), or None when nothing
        may go yet (no shared snapshot). Nodes not seen for ``node_timeout`` seconds
        are forgotten: when they come back they load the shared snapshot.
        """
        floor = self._writer.eval(_TRIM, 4, self.stream, self.snapshot_key, self.nodes_key,
                                  self.trimmed_key, repr(time.time()), repr(self.node_timeout))
        return floor.decode() if floor else None

    # --- reporting -----------------------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Return the state, the position and the counters."""
        return {
            "url": safe_url(self.url), "stream": self.stream, "node": self.node,
            "state": "up" if self._reader_up else (
                "degraded" if self._connected_once else "connecting"),
            "degraded": self.degraded, "position": self.position,
            "caught_up": self._caught_up.is_set(), "written": self.written,
            "refused": self.refused, "applied": self.applied,
            "reconnects": self.reconnects, "last_error": self.last_error, "lost": self.lost,
        }


_LESS = """
local function less(a, b)
  local ams, aseq = string.match(a, "^(%d+)-(%d+)")
  local bms, bseq = string.match(b, "^(%d+)-(%d+)")
  ams, aseq, bms, bseq = tonumber(ams), tonumber(aseq), tonumber(bms), tonumber(bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
"""

#: Replace the shared snapshot with the files in ARGV[2..] unless it is as new as
#: ARGV[1] or newer (stream ids compared as numbers): snapshots come from every node.
_SHARE = _LESS + """
local current = redis.call('HGET', KEYS[1], 'POSITION')
if current and not less(current, ARGV[1]) then return 0 end
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV, 2))
return 1
"""

#: Trim stream KEYS[1] below the oldest of: the shared snapshot's position (hash
#: KEYS[2]) and the position of each node of hash KEYS[3] seen in the last ARGV[2]
#: seconds (ARGV[1]: now); forget the others; keep the floor in KEYS[4]. One script,
#: so a node that registers and then reads KEYS[4] never misses a trim past it.
_TRIM = _LESS + """
local shared = redis.call('HGET', KEYS[2], 'POSITION')
if not shared then return false end
local floor = string.match(shared, "^%d+-%d+")
if not floor then return false end
local now, timeout = tonumber(ARGV[1]), tonumber(ARGV[2])
local nodes = redis.call('HGETALL', KEYS[3])
for i = 1, #nodes, 2 do
  local ok, entry = pcall(cjson.decode, nodes[i + 1])
  local position = ok and type(entry) == 'table' and type(entry.position) == 'string'
                   and string.match(entry.position, "^%d+-%d+$")
  local seen = ok and type(entry) == 'table' and tonumber(entry.seen)
  if (not position) or (not seen) or now - seen > timeout then
    redis.call('HDEL', KEYS[3], nodes[i])
  elseif less(position, floor) then
    floor = position
  end
end
if floor == '0-0' then return false end
local current = redis.call('GET', KEYS[4])
if current and not less(current, floor) then return false end
redis.call('SET', KEYS[4], floor)
redis.call('XTRIM', KEYS[1], 'MINID', floor)
return floor
"""


def node_name(data_dir: str) -> str:
    """Return this data directory's node name, made up and kept on first use."""
    path = os.path.join(data_dir, "node")
    try:
        with open(path, encoding="ascii") as handle:
            name = handle.read().strip()
        if name:
            return name
    except FileNotFoundError:
        pass
    name = f"{os.uname().nodename}-{os.urandom(4).hex()}"
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="ascii") as handle:
        handle.write(name + "\n")
    os.replace(tmp, path)
    return name

