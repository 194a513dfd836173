"""The write-ahead journal: an append-only file of framed records, group-committed.

Theory of operation
-------------------
The database hands each write to :meth:`Journal.append` while it holds its lock,
so records queue in the order the writes happened. Appending is only a list
append: nothing is encoded or written yet. :meth:`Journal.wait` (behind
``db.commit()``) makes the records up to a sequence number durable:

* one waiting thread becomes the *leader*: it takes every queued record,
  encodes and frames them, writes them with one ``write`` and, under the
  ``always`` policy, calls ``fsync`` once;
* the others wait on a condition; when the leader is done, every thread whose
  records went out returns at once (one fsync serves them all); the rest elect
  the next leader, who takes everything queued meanwhile.

Policies (the ``DB_FSYNC`` setting): ``always`` fsyncs before ``wait`` returns;
``everysec`` writes to the OS before ``wait`` returns (a killed process loses
nothing acknowledged) and :meth:`sync`, called once a second, fsyncs; ``no``
writes to the OS and leaves flushing to it.

Each record is framed as ``<length:u32 little-endian><crc32:u32><payload>``.
:func:`read_records` tells a torn last record (a crash in the middle of a write:
ignored with a warning) from damage anywhere else (StorageError with the offset).
"""
from __future__ import annotations

import logging
import os
import struct
import threading
import zlib
from collections.abc import Callable, Iterator
from typing import Any

from lexicons.errors import StorageError

log = logging.getLogger("lexicons.journal")

HEADER = struct.Struct("<II")
POLICIES = ("always", "everysec", "no")
#: The largest record accepted when reading; anything longer is damage.
MAX_RECORD = 1 << 30


def frame(payload: bytes) -> bytes:
    """Return *payload* framed with its length and CRC-32."""
    return HEADER.pack(len(payload), zlib.crc32(payload)) + payload


class Journal:
    """An append-only journal file with group commit (see the module docstring).

    *encode* turns a record (what the database appends) into payload bytes; it
    runs in the committing thread, outside the database lock.
    """

    def __init__(self, path: str, policy: str = "everysec",
                 encode: Callable[[Any], bytes] | None = None):
        if policy not in POLICIES:
            raise ValueError(f"unknown journal policy {policy!r} (use {', '.join(POLICIES)})")
        self.policy = policy
        self.encode = encode or (lambda record: record)
        self._lock = threading.Lock()        # guards _pending and _seq
        self._pending: list[Any] = []
        self._seq = 0
        self._cond = threading.Condition()   # guards the fields below
        self._leading = False
        self._written = 0                    # records handed to the OS
        self._synced = 0                     # records fsynced
        self.fsyncs = 0
        self.path = ""
        self.size = 0
        self._fd = -1
        self._open(path)

    # --- the file -------------------------------------------------------------------

    def _open(self, path: str) -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
            size = os.fstat(fd).st_size
            _fsync_dir(os.path.dirname(os.path.abspath(path)))
        except OSError as exc:
            raise StorageError(f"cannot open journal {path}: {exc}") from exc
        self._fd, self.path, self.size = fd, path, size

    @property
    def closed(self) -> bool:
        return self._fd < 0

    @property
    def lag(self) -> int:
        """Return how many appended records are not fsynced yet."""
        return self._seq - self._synced

    @property
    def seq(self) -> int:
        """Return the number of records appended so far."""
        return self._seq

    # --- appending and committing -------------------------------------------------------

    def append(self, record: Any) -> int:
        """Queue one record; return its sequence number (needs no lock held)."""
        with self._lock:
            self._pending.append(record)
            self._seq += 1
            return self._seq

    def wait(self, seq: int) -> None:
        """Return once record *seq* and all before it are durable per the policy."""
        self._flush(seq, self.policy == "always")

    def sync(self) -> None:
        """Write every queued record and fsync (unless the policy is ``no``)."""
        self._flush(self._seq, self.policy != "no")

    def _flush(self, seq: int, fsync: bool) -> None:
        with self._cond:
            while True:
                done = self._synced if fsync else self._written
                if done >= seq:
                    return
                if not self._leading:
                    self._leading = True
                    break
                self._cond.wait()
        written = synced = None
        try:
            written, synced = self._lead(fsync)
        finally:
            with self._cond:
                if written is not None:
                    self._written = max(self._written, written)
                if synced is not None:
                    self._synced = max(self._synced, synced)
                self._leading = False
                self._cond.notify_all()

    def _lead(self, fsync: bool) -> tuple[int, int | None]:
        """Write what is queued (and fsync); run by the one leader at a time."""
        if self._fd < 0:
            raise StorageError(f"journal {self.path} is closed")
        with self._lock:
            batch, self._pending = self._pending, []
            top = self._seq
        if batch:
            try:
                data = b"".join([frame(self.encode(record)) for record in batch])
                self._write_all(data)
            except BaseException:
                with self._lock:   # keep the records for the next try, in order
                    self._pending[:0] = batch
                raise
        if not fsync:
            return top, None
        try:
            os.fsync(self._fd)
        except OSError as exc:
            raise StorageError(f"cannot fsync journal {self.path}: {exc}") from exc
        self.fsyncs += 1
        return top, top

    def _write_all(self, data: bytes) -> None:
        start = self.size
        view = memoryview(data)
        try:
            while view:
                done = os.write(self._fd, view)
                view = view[done:]
        except OSError as exc:
            # Cut a partial record off, so that the next write does not follow garbage.
            try:
                os.ftruncate(self._fd, start)
            except OSError:
                log.error("cannot cut journal %s back to %d bytes", self.path, start)
            raise StorageError(f"cannot write journal {self.path}: {exc}") from exc
        self.size = start + len(data)

    # --- rotation and closing --------------------------------------------------------------

    def rotate(self, path: str) -> None:
        """Make every queued record durable in the current file, then continue in *path*.

        The caller must keep new records from being appended meanwhile (the
        database lock), so that the old file ends exactly at the cut.
        """
        with self._cond:
            while self._leading:
                self._cond.wait()
            self._leading = True
        try:
            written, synced = self._lead(True)
            self._written = max(self._written, written)
            self._synced = max(self._synced, synced or 0)
            old = self._fd
            self._open(path)
            os.close(old)
        finally:
            with self._cond:
                self._leading = False
                self._cond.notify_all()

    def close(self) -> None:
        """Write and fsync what is queued, then close the file (idempotent)."""
        if self._fd < 0:
            return
        self._flush(self._seq, True)
        with self._cond:
            fd, self._fd = self._fd, -1
        os.close(fd)


# --- reading ------------------------------------------------------------------------------


def read_records(path: str) -> Iterator[tuple[int, bytes]]:
    """Yield ``(offset, payload)`` for each record of a journal file.

    A torn last record (cut short, or a bad checksum with nothing after it, or a
    zero-filled tail) ends the file with a warning. Any other damage raises
    StorageError naming the file and the record's offset.
    """
    try:
        with open(path, "rb") as handle:
            data = handle.read()
    except OSError as exc:
        raise StorageError(f"cannot read journal {path}: {exc}") from exc
    size = len(data)
    offset = 0
    while offset < size:
        if size - offset < HEADER.size:
            _torn(path, offset, "a cut-short record header")
            return
        length, crc = HEADER.unpack_from(data, offset)
        end = offset + HEADER.size + length
        if length == 0 or length > MAX_RECORD:
            if not any(data[offset:]):
                _torn(path, offset, "a zero-filled tail")
                return
            raise StorageError(f"journal {path} is damaged at offset {offset}: "
                               f"impossible record length {length}")
        if end > size:
            _torn(path, offset, "a cut-short record")
            return
        payload = data[offset + HEADER.size:end]
        if zlib.crc32(payload) != crc:
            if end == size:
                _torn(path, offset, "a last record with a bad checksum")
                return
            raise StorageError(f"journal {path} is damaged at offset {offset}: bad checksum "
                               f"(record of {length} bytes, {size - end} bytes follow)")
        yield offset, payload
        offset = end


def _torn(path: str, offset: int, what: str) -> None:
    log.warning("journal %s ends with %s at offset %d (a write cut by a crash); "
                "ignoring it", path, what, offset)


def _fsync_dir(path: str) -> None:
    fd = os.open(path or ".", os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
