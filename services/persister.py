"""The persister service: the database's durability (journal, CSV snapshots, load, save).

Other services reach the database as ``self.service('persister').db``.

* ``setup()`` builds the :class:`~lexicons.database.Database` from the
  application's models, loads the CSV snapshots from ``DATA_DIR``, replays the
  journal and, when the replay changed anything, takes a snapshot at once so the
  old journal files go away; then it opens a new journal file (policy ``DB_FSYNC``).
* ``main()`` flushes the journal once a second (the ``everysec`` fsync) and
  snapshots the changed tables every ``SNAPSHOT_INTERVAL`` seconds.
* ``teardown()`` takes the final snapshot and closes the journal.

With ``DATABASE = "redis://..."`` there is no journal: setup loads the newest
snapshot (:mod:`lexicons.snapshot`), attaches a :class:`~lexicons.replication.StreamLog`
and waits (``DATABASE_TIMEOUT``) until the stream is applied; main registers the
node's position every second and, every ``SNAPSHOT_INTERVAL``, snapshots, shares
the snapshot through Redis and trims the stream; teardown stops the log and
takes the final snapshot.
"""
from __future__ import annotations

import gc
import time
from typing import Any

from lexicons.daemon.service import Service
from lexicons.data import snapshot as snapshots
from lexicons.data.database import Database
from lexicons.data.replication import StreamLog, node_name
from lexicons.data.snapshot import SnapshotStore
from lexicons.data.storage import Storage

#: Seconds between two journal flushes (the ``everysec`` policy's second).
SYNC_TICK = 1.0


class PersisterService(Service):
    """Own the database: load it at start, journal its writes, snapshot it."""

    name = "persister"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.db: Database | None = None
        self.storage: Storage | None = None
        self.snapshots: SnapshotStore | None = None
        self.replica: StreamLog | None = None
        self._last_snapshot = time.monotonic()

    def setup(self) -> None:
        """Build the database, load the snapshots, replay the journal and open a new one."""
        app = getattr(self.manager, "app", None)
        models = list(getattr(app, "models", None) or [])
        self.db = Database(models)
        if self.settings.DATABASE != "journal":
            self._setup_replicated()
            return
        self.storage = Storage(self.db, self.settings.DATA_DIR, self.settings.DB_FSYNC)
        started = time.monotonic()
        counts = self.storage.load()
        if self.storage.dirty():   # fold the replayed writes into the CSV files
            self.storage.snapshot()
        self.storage.open()
        # The tables are not walked by the cyclic collector (numpy columns), but what the
        # process made until now (modules, classes, settings) would be, on every full
        # collection, for nothing: it lives as long as the process.
        gc.freeze()
        self._last_snapshot = time.monotonic()
        self.log.info("loaded %d table(s), %d row(s), replayed %d write(s) in %.2f s from %s",
                      len(counts), sum(counts.values()), self.storage.replayed,
                      time.monotonic() - started, self.storage.data_dir)

    def _setup_replicated(self) -> None:
        """Load the newest snapshot, attach the stream and catch up with it."""
        assert self.db is not None
        settings = self.settings
        started = time.monotonic()
        self.snapshots = SnapshotStore(self.db, settings.DATA_DIR)
        position = self.snapshots.load()
        self.replica = StreamLog(
            self.db, settings.DATABASE, settings.DATABASE_STREAM,
            node_name(self.snapshots.data_dir), position=position,
            timeout=settings.DATABASE_TIMEOUT, retry_max=settings.BACKPLANE_RETRY_MAX,
            node_timeout=settings.DATABASE_NODE_TIMEOUT, adopt=self.snapshots.adopt)
        self.replica.start()
        if not self.replica.catch_up(settings.DATABASE_TIMEOUT):
            self.log.warning("the replicated database has not caught up with stream %s "
                             "within %g s (%s); serving the tables at position %s meanwhile",
                             settings.DATABASE_STREAM, settings.DATABASE_TIMEOUT,
                             self.replica.last_error or "still replaying",
                             self.replica.position)
        gc.freeze()
        self._last_snapshot = time.monotonic()
        self.log.info("replicated database: %d row(s) at stream position %s (snapshot %s) "
                      "in %.2f s", sum(len(t) for t in self.db.tables()),
                      self.replica.position, position, time.monotonic() - started)

    def main(self) -> None:
        """Flush the journal every second; snapshot every SNAPSHOT_INTERVAL seconds."""
        if self.replica is not None:
            self._main_replicated()
            return
        storage = self.storage
        assert storage is not None, "setup() did not run"
        interval = self.settings.SNAPSHOT_INTERVAL
        tick = min(SYNC_TICK, interval) if interval > 0 else SYNC_TICK
        while not self.stopping.wait(tick):
            self.beat()
            storage.sync()
            if interval > 0 and time.monotonic() - self._last_snapshot >= interval:
                storage.snapshot()
                self._last_snapshot = time.monotonic()

    def _main_replicated(self) -> None:
        """Register the position every second; snapshot, share and trim on the interval."""
        replica, store = self.replica, self.snapshots
        assert replica is not None and store is not None, "setup() did not run"
        interval = self.settings.SNAPSHOT_INTERVAL
        tick = min(SYNC_TICK, interval) if interval > 0 else SYNC_TICK
        while not self.stopping.wait(tick):
            self.beat()
            replica.heartbeat()
            first = store.current is None and replica.info()["caught_up"] and store.dirty()
            due = interval > 0 and time.monotonic() - self._last_snapshot >= interval
            if first or due:
                self.snapshot_replicated()
                self._last_snapshot = time.monotonic()

    def snapshot_replicated(self, force: bool = False) -> str | None:
        """Snapshot the tables, share the snapshot through Redis and trim the stream."""
        replica, store = self.replica, self.snapshots
        assert replica is not None and store is not None
        position = store.snapshot(force)
        if store.current is None:
            return position
        replica.keep_from = store.position
        if replica.degraded:
            return position
        try:
            replica.heartbeat()
            replica.share(store.files())
            floor = replica.trim()
            if floor:
                self.log.debug("stream trimmed below %s", floor)
        except Exception as exc:   # Redis went away meanwhile: next time
            self.log.warning("cannot share the snapshot or trim the stream: %s", exc)
        return position

    def teardown(self) -> None:
        """Take the final snapshot and close the journal."""
        if self.replica is not None:
            self.replica.heartbeat()
            self.replica.stop()   # writes are refused from now on
            assert self.snapshots is not None
            self.snapshots.snapshot()
            self.log.info("final snapshot written to %s", self.snapshots.data_dir)
            return
        if self.storage is not None:
            self.storage.close()
            self.log.info("final snapshot written to %s", self.storage.data_dir)

    def info(self) -> dict[str, Any]:
        """Return tables with row counts, journal size and lag, and the last snapshot."""
        if self.db is not None and self.replica is not None:
            return {"tables": {t.name: len(t) for t in self.db.tables()},
                    "degraded": self.replica.degraded,
                    "replication": self.replica.info(), **snapshots.info(self.snapshots)}
        if self.db is None or self.storage is None:
            return {}
        journal = self.storage.journal
        return {
            "tables": {t.name: len(t) for t in self.db.tables()},
            "dirty": self.storage.dirty(),
            "data_dir": self.storage.data_dir,
            "journal": None if journal is None else {
                "path": journal.path, "bytes": journal.size, "policy": journal.policy,
                "lag": journal.lag, "fsyncs": journal.fsyncs},
            "last_snapshot": self.storage.last_snapshot,
            "last_snapshot_seconds": self.storage.last_snapshot_seconds,
        }

    def commands(self) -> dict[str, Any]:
        """Return ``snapshot``: write the changed tables now."""
        def snapshot(request: Any = None) -> dict[str, Any]:
            if self.replica is not None:
                return {"position": self.snapshot_replicated(force=True)}
            assert self.storage is not None
            return {"written": self.storage.snapshot()}
        return {"snapshot": snapshot}
