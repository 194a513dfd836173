"""Snapshots of a replicated database: the tables plus the stream position they hold.

Theory of operation
-------------------
A replicated node keeps no journal: the Redis Stream is its journal. What it keeps
in ``DATA_DIR`` is its newest snapshot, a directory ``snapshot.<position>/`` with
one ``<Table>.csv`` per model (the format of :mod:`lexicons.storage`) and a file
``POSITION`` naming the last stream entry the tables hold. A snapshot is taken in
one hold of the database lock (every table and the position together: the
replication reader applies entries under that lock), then written without the
lock into ``.snapshot.<position>.tmp/``; a table unchanged since the previous
snapshot is hard-linked from it, not written again. ``POSITION`` is written
last, the directory fsynced and renamed; only then are older snapshots removed.
So a crash leaves either the old complete snapshot or the new one, never a mix
of tables from two moments (which replaying the stream could not repair: a
made-up pk is decided by the state at the entry's position).

The same files also go to Redis (:meth:`SnapshotStore.share`), in one hash per
deployment, for nodes that start with nothing or whose own snapshot is older
than what the stream still holds.
"""
from __future__ import annotations

import glob
import logging
import os
import re
import shutil
import threading
import time
from typing import Any

from lexicons.data.database import Database
from lexicons.data.journal import _fsync_dir
from lexicons.data.replication import START, position_key
from lexicons.data.storage import make_data_dir, read_table, write_table
from lexicons.errors import StorageError

log = logging.getLogger("lexicons.snapshot")

SNAPSHOT = re.compile(r"^snapshot\.(\d+-\d+)$")
POSITION = "POSITION"


class SnapshotStore:
    """Load and take snapshots of a replicated database in a data directory."""

    def __init__(self, db: Database, data_dir: str):
        self.db = db
        self.data_dir = os.path.abspath(data_dir)
        self.current: str | None = None     # the newest complete snapshot's directory
        self.position = START               # ... and its stream position
        self.last_snapshot: float | None = None
        self.last_snapshot_seconds: float | None = None
        self._lock = threading.Lock()       # one snapshot at a time

    def _complete(self) -> list[tuple[tuple[int, int], str, str]]:
        """Return (key, position, directory) of every complete snapshot, oldest first."""
        found = []
        for name in os.listdir(self.data_dir):
            match = SNAPSHOT.match(name)
            path = os.path.join(self.data_dir, name)
            if match and os.path.exists(os.path.join(path, POSITION)):
                found.append((position_key(match.group(1)), match.group(1), path))
        return sorted(found)

    # --- loading --------------------------------------------------------------------------

    def load(self) -> str:
        """Load the newest complete snapshot (if any); return its stream position."""
        make_data_dir(self.data_dir)
        for stale in glob.glob(os.path.join(self.data_dir, ".snapshot.*.tmp")):
            log.info("removing %s, left by a snapshot cut short", stale)
            shutil.rmtree(stale, ignore_errors=True)
        complete = self._complete()
        if not complete:
            return START
        _, position, path = complete[-1]
        self.load_directory(path, position)
        for _, _, older in complete[:-1]:
            shutil.rmtree(older, ignore_errors=True)
        return position

    def load_directory(self, path: str, position: str) -> None:
        """Replace the tables with the snapshot in *path* (at *position*)."""
        with open(os.path.join(path, POSITION), encoding="ascii") as handle:
            written = handle.read().strip()
        if written != position:
            raise StorageError(f"{path}: POSITION says {written!r}, the name {position!r}")
        for table in self.db.tables():
            file = os.path.join(path, f"{table.name}.csv")
            loaded = read_table(file, table.schema) if os.path.exists(file) else None
            with self.db.lock:
                if loaded is None:
                    table._clear()
                else:
                    table._load(loaded.pks, loaded.cols, loaded.index)
                table.saved_version = table.version
        self.current, self.position = path, position
        log.info("loaded the snapshot at stream position %s from %s", position, path)

    # --- taking ---------------------------------------------------------------------------

    def snapshot(self, force: bool = False) -> str | None:
        """Write a snapshot of every table at the current position; return the position.

        Nothing is written (None) when no table changed since the last one, unless
        *force*.
        """
        with self._lock:
            return self._snapshot(force)

    def _snapshot(self, force: bool) -> str | None:
        started = time.monotonic()
        db = self.db
        replica = db.replica
        with db.lock:
            position = replica.position if replica is not None else self.position
            if (not force and position == self.position and self.current is not None) or (
                    position == START and self.current is None and not force):
                return None
            copies = [(t, t.version, t.version == t.saved_version, *t._live_rows())
                      for t in db.tables()]
        final = os.path.join(self.data_dir, f"snapshot.{position}")
        if final == self.current:
            return None
        tmp = os.path.join(self.data_dir, f".snapshot.{position}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        try:
            os.makedirs(tmp)
            for table, _, clean, pks, cols in copies:
                path = os.path.join(tmp, f"{table.name}.csv")
                before = None if self.current is None else os.path.join(
                    self.current, f"{table.name}.csv")
                if clean and before is not None and os.path.exists(before):
                    os.link(before, path)
                else:
                    write_table(path, table.schema, pks, cols)
            with open(os.path.join(tmp, POSITION), "w", encoding="ascii") as handle:
                handle.write(position + "\n")
                handle.flush()
                os.fsync(handle.fileno())
            _fsync_dir(tmp)
            os.replace(tmp, final)
            _fsync_dir(self.data_dir)
        except OSError as exc:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StorageError(f"cannot write the snapshot {final}: {exc}") from exc
        for table, version, *_ in copies:
            table.saved_version = version
        old, self.current, self.position = self.current, final, position
        if old is not None and old != final:
            shutil.rmtree(old, ignore_errors=True)
        self.last_snapshot = time.time()
        self.last_snapshot_seconds = time.monotonic() - started
        log.info("snapshot at stream position %s in %.3f s", position,
                 self.last_snapshot_seconds)
        return position

    def dirty(self) -> list[str]:
        """Return the names of the tables changed since the last snapshot."""
        return [t.name for t in self.db.tables() if t.version != t.saved_version]

    # --- the shared snapshot --------------------------------------------------------------

    def files(self) -> dict[str, bytes]:
        """Return the current snapshot's files (name -> bytes), POSITION included."""
        if self.current is None:
            return {}
        out = {}
        for name in sorted(os.listdir(self.current)):
            with open(os.path.join(self.current, name), "rb") as handle:
                out[name] = handle.read()
        return out

    def adopt(self, files: dict[str, bytes]) -> str:
        """Make a snapshot directory of *files* (from Redis), load it; return its position.

        With a replication log attached, its position becomes the snapshot's.
        """
        with self._lock:
            return self._adopt(files)

    def _adopt(self, files: dict[str, bytes]) -> str:
        position = files[POSITION].decode("ascii").strip()
        position_key(position)   # ValueError for garbage
        tmp = os.path.join(self.data_dir, f".snapshot.{position}.tmp")
        final = os.path.join(self.data_dir, f"snapshot.{position}")
        shutil.rmtree(tmp, ignore_errors=True)
        os.makedirs(tmp)
        for name, data in files.items():
            if os.sep in name or name.startswith("."):
                raise StorageError(f"the shared snapshot holds a strange file name {name!r}")
            with open(os.path.join(tmp, name), "wb") as handle:
                handle.write(data)
                handle.flush()
                os.fsync(handle.fileno())
        _fsync_dir(tmp)
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        _fsync_dir(self.data_dir)
        old = self.current
        self.load_directory(final, position)
        if old is not None and old != final:
            shutil.rmtree(old, ignore_errors=True)
        replica = self.db.replica
        if replica is not None:
            with self.db.lock:
                replica.position = position
            replica.keep_from = position
        return position


def info(store: SnapshotStore | None) -> dict[str, Any]:
    """Return what status shows of the snapshots."""
    if store is None:
        return {}
    return {"data_dir": store.data_dir, "snapshot_position": store.position,
            "dirty": store.dirty(), "last_snapshot": store.last_snapshot,
            "last_snapshot_seconds": store.last_snapshot_seconds}
