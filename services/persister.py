"""The persister service: the database's durability (journal, CSV snapshots, load, save).

Other services reach the database as ``self.service('persister').db``.

* ``setup()`` builds the :class:`~lexicons.database.Database` from the
  application's models, loads the CSV snapshots from ``DATA_DIR``, replays the
  journal and, when the replay changed anything, takes a snapshot at once so the
  old journal files go away; then it opens a new journal file (policy ``DB_FSYNC``).
* ``main()`` flushes the journal once a second (the ``everysec`` fsync) and
  snapshots the changed tables every ``SNAPSHOT_INTERVAL`` seconds.
* ``teardown()`` takes the final snapshot and closes the journal.
"""
from __future__ import annotations

import gc
import time
from typing import Any

from lexicons.database import Database
from lexicons.service import Service
from lexicons.storage import Storage

#: Seconds between two journal flushes (the ``everysec`` policy's second).
SYNC_TICK = 1.0


class PersisterService(Service):
    """Own the database: load it at start, journal its writes, snapshot it."""

    name = "persister"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.db: Database | None = None
        self.storage: Storage | None = None
        self._last_snapshot = time.monotonic()

    def setup(self) -> None:
        """Build the database, load the snapshots, replay the journal and open a new one."""
        app = getattr(self.manager, "app", None)
        models = list(getattr(app, "models", None) or [])
        self.db = Database(models)
        self.storage = Storage(self.db, self.settings.DATA_DIR, self.settings.DB_FSYNC)
        started = time.monotonic()
        counts = self.storage.load()
        if self.storage.dirty():   # fold the replayed writes into the CSV files
            self.storage.snapshot()
        self.storage.open()
        # The column buffers are a few huge lists: keep the cyclic collector from walking
        # every row of them on each full collection (it cannot free them anyway).
        gc.freeze()
        self._last_snapshot = time.monotonic()
        self.log.info("loaded %d table(s), %d row(s), replayed %d write(s) in %.2f s from %s",
                      len(counts), sum(counts.values()), self.storage.replayed,
                      time.monotonic() - started, self.storage.data_dir)

    def main(self) -> None:
        """Flush the journal every second; snapshot every SNAPSHOT_INTERVAL seconds."""
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

    def teardown(self) -> None:
        """Take the final snapshot and close the journal."""
        if self.storage is not None:
            self.storage.close()
            self.log.info("final snapshot written to %s", self.storage.data_dir)

    def info(self) -> dict[str, Any]:
        """Return tables with row counts, journal size and lag, and the last snapshot."""
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
            assert self.storage is not None
            return {"written": self.storage.snapshot()}
        return {"snapshot": snapshot}
