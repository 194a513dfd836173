"""Tests of the persister service: load, journal, snapshots, info, and kill -9 safety."""
from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import pytest

from lexicons import Database, Model
from lexicons.daemon.application import Application
from lexicons.daemon.manager import ServiceManager
from lexicons.daemon.settings import load
from lexicons.data.storage import Storage
from services.persister import PersisterService
from tests.services.crash_writer import Counter

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class Entry(Model):
    title: str
    views: int
    tags: set[str]


def start(data_dir: str, **overrides) -> tuple[ServiceManager, PersisterService]:
    settings = load(env={}, overrides={"DATA_DIR": data_dir, "SERVICE_LIST": [],
                                       "DB_FSYNC": "always", **overrides})
    manager = ServiceManager(settings, Application(models=[Entry]))
    persister = PersisterService(manager, settings)
    manager.add(persister)
    manager.start()
    return manager, persister


def test_data_survives_a_clean_stop_and_start(tmp_path):
    """Rows written while running are in the CSV after stop and loaded on the next start."""
    manager, persister = start(str(tmp_path))
    db = manager.get_service("persister").db
    rows = [db.create(Entry, title=f"t{i}", views=i, tags={"a", str(i)}) for i in range(50)]
    db.update(Entry, rows[0].pk, views=1000)
    db.drop(Entry, rows[1].pk)
    db.commit()
    manager.stop()
    assert sorted(os.listdir(tmp_path)) == ["Entry.csv", "lexicons.lock"]
    manager, persister = start(str(tmp_path))
    db = persister.db
    assert db.count(Entry) == 49 and db.get(Entry, rows[0].pk).views == 1000
    assert db.get(Entry, rows[5].pk) == rows[5]
    manager.stop()


def test_journal_is_replayed_after_a_crash_and_snapshotted_at_start(tmp_path):
    """Writes only in the journal are replayed at start, then folded into the CSV."""
    manager, persister = start(str(tmp_path))
    row = persister.db.create(Entry, title="only in the journal")
    persister.db.commit()
    persister.storage.journal.close()
    persister.storage = None            # as a killed process: no final snapshot
    manager.stop()
    assert sorted(os.listdir(tmp_path)) == ["journal.000001", "lexicons.lock"]
    manager2, persister2 = start(str(tmp_path))
    assert persister2.db.get(Entry, row.pk).title == "only in the journal"
    assert sorted(os.listdir(tmp_path)) == ["Entry.csv", "journal.000001", "lexicons.lock"]
    assert os.path.getsize(tmp_path / "journal.000001") == 0
    manager2.stop()


def test_main_snapshots_changed_tables_on_its_interval(tmp_path):
    """main() writes changed tables every SNAPSHOT_INTERVAL and cuts the journal."""
    manager, persister = start(str(tmp_path), SNAPSHOT_INTERVAL=0.2)
    persister.db.create(Entry, title="x")
    deadline = time.monotonic() + 10
    while persister.storage.dirty() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not persister.storage.dirty()
    assert Storage(Database([Entry]), str(tmp_path)).load() == {"Entry": 1}
    manager.stop()


def test_info_reports_tables_journal_and_snapshot(tmp_path):
    """info() lists tables with row counts, the journal's size and lag, the last snapshot."""
    manager, persister = start(str(tmp_path))
    persister.db.create(Entry, title="x")
    persister.db.commit()
    info = persister.info()
    assert info["tables"] == {"Entry": 1} and info["dirty"] == ["Entry"]
    assert info["journal"]["bytes"] > 0 and info["journal"]["lag"] == 0
    assert info["journal"]["policy"] == "always"
    persister.commands()["snapshot"]({})
    assert persister.info()["last_snapshot"] is not None
    manager.stop()


def test_damaged_data_stops_start_up_with_a_clear_error(tmp_path):
    """A hand-damaged CSV stops start-up naming file, row and column; the file is kept."""
    data = b"pk,title,views,tags\r\na,x,lots,[]\r\n"
    (tmp_path / "Entry.csv").write_bytes(data)
    with pytest.raises(Exception, match=r"Entry.csv: row 1 .*column 'views'"):
        start(str(tmp_path))
    assert (tmp_path / "Entry.csv").read_bytes() == data


def run_writer(data_dir: str, policy: str, seconds: float) -> list[str]:
    """Run the crash writer, kill it with SIGKILL after *seconds*; return its ack lines.

    Its output goes to a file, not a pipe: a full pipe would stall the writer and
    leave nothing unflushed to lose.
    """
    out_path = os.path.join(data_dir, "..", f"acks-{time.monotonic_ns()}.txt")
    with open(out_path, "wb") as out:
        child = subprocess.Popen([sys.executable, "-m", "tests.services.crash_writer",
                                  data_dir, policy], cwd=ROOT, stdout=out,
                                 stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 20
        while not open(out_path, "rb").read(6) == b"READY\n":
            assert child.poll() is None and time.monotonic() < deadline, "writer did not start"
            time.sleep(0.02)
        time.sleep(seconds)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
    with open(out_path, "rb") as handle:
        lines = handle.read().decode().split("\n")[1:-1]   # READY, ..., a torn last line
    os.unlink(out_path)
    return lines


def test_kill_9_loses_no_acknowledged_write(tmp_path):
    """A writer killed with SIGKILL at random moments keeps every acknowledged write,
    under each journal policy, and its data loads cleanly each time."""
    data_dir = str(tmp_path / "data")
    os.mkdir(data_dir)
    created: set[str] = set()
    updated: dict[str, int] = {}
    rng = random.Random()
    for policy in ("always", "everysec", "no", "always", "everysec"):
        for line in run_writer(data_dir, policy, rng.uniform(0.3, 1.2)):
            kind, pk, *rest = line.split()
            if kind == "C":
                created.add(pk)
            else:
                updated[pk] = max(updated.get(pk, 0), int(rest[0]))
        db = Database([Counter])
        storage = Storage(db, data_dir)
        storage.load()
        storage.lock.release()  # a look only: the next writer takes the directory again
        missing = [pk for pk in created if db.get(Counter, pk) is None]
        assert not missing, f"{policy}: {len(missing)} acknowledged rows lost"
        stale = [pk for pk, n in updated.items() if db.get(Counter, pk).n < n]
        assert not stale, f"{policy}: {len(stale)} acknowledged updates lost"
    assert len(created) > 100
    manager = ServiceManager(load(env={}, overrides={"DATA_DIR": data_dir,
                                                     "SERVICE_LIST": []}),
                             Application(models=[Counter]))
    manager.add(PersisterService(manager, manager.settings))
    manager.start()
    assert manager.get_service("persister").db.count(Counter) >= len(created)
    manager.stop()
    assert sorted(os.listdir(data_dir)) == ["Counter.csv", "lexicons.lock"]
