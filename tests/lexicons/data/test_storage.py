"""Tests of CSV snapshots and journal replay: round trips, damage, migration, cut points."""
from __future__ import annotations

import logging
import os
import shutil

import pytest

from lexicons import Database, Model
from lexicons.data.journal import frame
from lexicons.data.storage import Storage
from lexicons.errors import StorageError


class Club(Model):
    name: str


class Kitchen(Model):
    s: str
    maybe_s: str | None
    i: int
    maybe_i: int | None
    f: float
    maybe_f: float | None
    b: bool
    maybe_b: bool | None
    lst: list
    ints: list[int]
    st: set
    words: set[str]
    d: dict
    club: Club


EDGE_ROWS = [
    {},
    {"s": "", "maybe_s": "", "i": 0, "maybe_i": 0, "f": 0.0, "maybe_f": 0.0, "b": False,
     "maybe_b": False},
    {"s": 'a,b\r\n"q"\x00 é✓😀\ud800 ', "maybe_s": "null", "i": -(1 << 63),
     "maybe_i": (1 << 63) - 1, "f": float("nan"), "maybe_f": float("-inf"), "b": True,
     "maybe_b": True, "lst": [1, "a", None, [2.5, []], {"k": {"z": False}}, ""],
     "ints": [3, -1], "st": {1, "a", 2.5, ""}, "words": {"x", "y"},
     "d": {"": None, "k": [1, {"n": "v"}], "é": "\n"}},
    {"s": "NaN", "maybe_s": None, "f": 1e-308, "maybe_f": 5e-324, "i": 1, "d": {"a": 1},
     "lst": ["null", "None", "", "\""]},
    {"s": "   spaced  ", "f": 0.1 + 0.2, "maybe_f": -0.0, "lst": [float("inf")],
     "st": set(), "words": set()},
]


def fresh(data_dir: str, models=(Club, Kitchen)) -> tuple[Database, Storage]:
    db = Database(list(models))
    storage = Storage(db, data_dir, "always")
    storage.load()
    return db, storage


def fill(db: Database) -> list[Model]:
    club = db.create(Club, name="chess")
    return [club] + [db.create(Kitchen, club=club if i % 2 else None, **values)
                     for i, values in enumerate(EDGE_ROWS)]


def assert_same(db: Database, rows: list[Model]) -> None:
    for row in rows:
        assert db.get(type(row), row.pk) == row, row
    assert db.count(Kitchen) == len(EDGE_ROWS) and db.count(Club) == 1


@pytest.mark.parametrize("path", ["snapshot", "journal"])
def test_every_type_and_edge_value_round_trips(tmp_path, path):
    """Every field type and edge value comes back exactly, through CSV or journal replay."""
    db, storage = fresh(str(tmp_path))
    storage.open()
    rows = fill(db)
    db.commit()
    if path == "snapshot":
        storage.snapshot()
        assert not [n for n in os.listdir(tmp_path) if n.startswith("journal.000001")]
    loaded, _ = fresh(str(tmp_path))
    assert_same(loaded, rows)
    got = loaded.get(Kitchen, rows[3].pk)
    assert type(got.f) is float and type(got.st) is set and got.maybe_s == "null"
    assert loaded.get(Kitchen, rows[1].pk).maybe_s is None
    assert loaded.get(Kitchen, rows[2].pk).maybe_s == ""
    storage.close()


def test_updates_and_drops_replay(tmp_path):
    """Updates and drops in the journal are applied in order on load."""
    db, storage = fresh(str(tmp_path))
    storage.open()
    rows = fill(db)
    db.update(Kitchen, rows[1].pk, s="changed", st={"n"})
    db.drop(Kitchen, rows[2].pk)
    db.create(Kitchen, pk=rows[2].pk, s="again")
    db.drop(Club, rows[0].pk, cascade=True)
    db.commit()
    loaded, _ = fresh(str(tmp_path))
    assert loaded.get(Kitchen, rows[1].pk).s == "changed"
    assert loaded.get(Kitchen, rows[1].pk).st == {"n"}
    assert loaded.get(Kitchen, rows[2].pk).s == "again"
    assert loaded.count(Club) == 0 and loaded.count(Kitchen) == len(EDGE_ROWS) - 1
    storage.close()


def test_replay_over_a_newer_snapshot_is_idempotent(tmp_path):
    """A crash after the CSV is written but before the old journal goes loses nothing
    and replays nothing twice wrongly."""
    db, storage = fresh(str(tmp_path))
    storage.open()
    rows = fill(db)
    db.update(Kitchen, rows[1].pk, i=5)
    db.update(Kitchen, rows[1].pk, i=6)
    db.drop(Kitchen, rows[3].pk)
    db.commit()
    kept = tmp_path / "kept"
    shutil.copy(tmp_path / "journal.000001", kept)
    storage.snapshot()
    db.update(Kitchen, rows[1].pk, i=7)
    db.commit()
    shutil.copy(kept, tmp_path / "journal.000001")   # as if the delete never happened
    os.unlink(kept)
    loaded, _ = fresh(str(tmp_path))
    assert loaded.get(Kitchen, rows[1].pk).i == 7
    assert loaded.get(Kitchen, rows[3].pk) is None
    assert loaded.count(Kitchen) == len(EDGE_ROWS) - 1
    storage.close()


def test_snapshot_writes_only_changed_tables_and_cuts_the_journal(tmp_path):
    """A snapshot rewrites changed tables only, then removes the old journal files."""
    db, storage = fresh(str(tmp_path))
    storage.open()
    fill(db)
    assert storage.snapshot() == ["Club", "Kitchen"]
    club_mtime = os.stat(tmp_path / "Club.csv").st_mtime_ns
    db.create(Kitchen, s="new")
    assert storage.snapshot() == ["Kitchen"]
    assert os.stat(tmp_path / "Club.csv").st_mtime_ns == club_mtime
    assert storage.snapshot() == []
    assert sorted(n for n in os.listdir(tmp_path) if n.startswith("journal")) == [
        "journal.000003"]
    storage.close()
    assert sorted(os.listdir(tmp_path)) == ["Club.csv", "Kitchen.csv", "lexicons.lock"]


def write_csv(tmp_path, name: str, text: str) -> bytes:
    data = text.encode("utf-8")
    (tmp_path / f"{name}.csv").write_bytes(data)
    return data


HEADER = "pk,s,maybe_s,i,maybe_i,f,maybe_f,b,maybe_b,lst,ints,st,words,d,club\r\n"
GOOD = "k1,x,null,1,,1.5,,true,,[],[],[],[],{},\r\n"


@pytest.mark.parametrize("row,where", [
    ("k2,x,null,one,,1.5,,true,,[],[],[],[],{},\r\n", "row 2 .*column 'i'.*'one'"),
    ("k2,x,null,1.5,,1.5,,true,,[],[],[],[],{},\r\n", "row 2 .*column 'i'"),
    ("k2,x,null,99999999999999999999,,1.5,,true,,[],[],[],[],{},\r\n", "row 2 .*column 'i'"),
    ("k2,x,null,1,,abc,,true,,[],[],[],[],{},\r\n", "row 2 .*column 'f'"),
    ("k2,x,null,1,,1.5,,yes,,[],[],[],[],{},\r\n", "row 2 .*column 'b'"),
    ("k2,x,null,1,x,1.5,,true,,[],[],[],[],{},\r\n", "row 2 .*column 'maybe_i'"),
    ("k2,x,null,1,,1.5,,true,,[oops,[],[],[],{},\r\n", "row 2 .*column 'lst'.*not JSON"),
    ("k2,x,null,1,,1.5,,true,,[" + "1" * 5000 + "],[],[],[],{},\r\n",
     "row 2 .*column 'lst'.*number too long"),
    ("k2,x,null,1,,1.5,,true,,[],\"[\"\"a\"\"]\",[],[],{},\r\n", "row 2 .*column 'ints'"),
    ("k2,x,null,1,,1.5,,true,,[],[],[],[],[],\r\n", "row 2 .*column 'd'"),
    ("k2,x,5,1,,1.5,,true,,[],[],[],[],{},\r\n", "row 2 .*column 'maybe_s'"),
    ("k1,x,null,1,,1.5,,true,,[],[],[],[],{},\r\n", "row 2 .*column 'pk'.*same pk as row 1"),
    (",x,null,1,,1.5,,true,,[],[],[],[],{},\r\n", "row 2 .*column 'pk'.*empty"),
    ("k2,x,null,1,,1.5,,true,,[],[],[],[],{},,extra\r\n",
     r"row 2 \(after the header\) has 16 cells, the header has 15"),
    ("k2,x,null,1,,1.5,,true,,[],[],[],[],{}\r\n", "row 2 .*'club'.*14 cells, the header 15"),
    ("k2,x,null\r\n", "row 2 .*column 'i'"),
    ('k2,"x,y",null,1,,1.5,,true,,"[1,2]",[],[],[],{}\r\n', "row 2 .*column 'club'.*14 cells"),
])
def test_damaged_csv_stops_loading_and_is_left_alone(tmp_path, row, where):
    """A bad cell stops loading with StorageError naming file, row and column;
    the file is left byte for byte as it was."""
    before = write_csv(tmp_path, "Kitchen", HEADER + GOOD + row)
    with pytest.raises(StorageError, match=f"Kitchen.csv.*{where}"):
        fresh(str(tmp_path))
    assert (tmp_path / "Kitchen.csv").read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["Kitchen.csv", "lexicons.lock"]


@pytest.mark.parametrize("garbage, damaged", [
    (bytes(range(128, 256)) + bytes(range(128)), 0),
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", 0),
    (b"k2,\xc3\x28,null,1,,1.5,,true,,[],[],[],[],{},\r\n", 3),
])
def test_binary_garbage_after_the_rows_is_located(tmp_path, garbage, damaged):
    """Bytes that are not UTF-8 text behind good rows are reported at their row and byte
    offset, not as a damaged header; the file stays as it was."""
    good = (HEADER + GOOD).encode("utf-8")
    (tmp_path / "Kitchen.csv").write_bytes(good + garbage)
    at = len(good) + damaged
    with pytest.raises(StorageError, match=rf"Kitchen.csv: row 2 \(after the header\), "
                                           rf"byte {at} of the file: not UTF-8 text"):
        fresh(str(tmp_path))
    assert (tmp_path / "Kitchen.csv").read_bytes() == good + garbage


@pytest.mark.parametrize("text,where", [
    ("", "empty"),
    ("s,i\r\nx,1\r\n", "no pk column"),
    ("pk,s,s\r\nk,x,y\r\n", "'s' appears twice"),
])
def test_damaged_header_stops_loading(tmp_path, text, where):
    """A missing or broken header is a StorageError and the file stays as it was."""
    before = write_csv(tmp_path, "Club", text)
    with pytest.raises(StorageError, match=f"Club.csv.*{where}"):
        fresh(str(tmp_path))
    assert (tmp_path / "Club.csv").read_bytes() == before


def test_damaged_journal_stops_loading_and_is_left_alone(tmp_path):
    """A bad record in the middle of a journal stops loading, naming file and offset."""
    good = frame(b'["c","Club",{"pk":"a","name":"x"}]')
    bad = frame(b'["c","Club",{"pk":"b","name":"y"}]')
    bad = bad[:-3] + b"XX" + bad[-1:]
    data = good + bad + good
    (tmp_path / "journal.000001").write_bytes(data)
    with pytest.raises(StorageError, match=f"journal.000001 is damaged at offset {len(good)}"):
        fresh(str(tmp_path))
    assert (tmp_path / "journal.000001").read_bytes() == data


def test_journal_record_that_does_not_fit_the_model_stops_loading(tmp_path):
    """A well-framed record with a mistyped value stops loading, naming the offset."""
    data = frame(b'["c","Club",{"pk":"a","name":5}]')
    (tmp_path / "journal.000001").write_bytes(data)
    with pytest.raises(StorageError, match=r"offset 0 cannot be applied: Club\.name"):
        fresh(str(tmp_path))
    assert (tmp_path / "journal.000001").read_bytes() == data


def test_torn_last_journal_record_loads_the_rest(tmp_path, caplog):
    """A journal whose last record was cut by a crash loads every whole record."""
    data = frame(b'["c","Club",{"pk":"a","name":"x"}]') + frame(b'["c","Club",{"pk":"b"')[:9]
    (tmp_path / "journal.000001").write_bytes(data)
    with caplog.at_level(logging.WARNING):
        db, _ = fresh(str(tmp_path))
    assert db.count(Club) == 1 and db.get(Club, "a").name == "x"
    assert "ignoring it" in caplog.text


def test_a_new_field_is_filled_with_its_default(tmp_path):
    """A model that gained a field loads old files with the field's default."""
    write_csv(tmp_path, "Club", "pk,name\r\nc1,chess\r\n")

    class Club2(Model):
        name: str
        rank: int = 3
        tags: list

    Club2.__name__ = "Club"
    Club2._lx_schema = None
    db = Database([Club2])
    storage = Storage(db, str(tmp_path))
    storage.load()
    row = db.get(Club2, "c1")
    assert (row.name, row.rank, row.tags) == ("chess", 3, [])
    assert storage.dirty() == ["Club"]
    storage.snapshot()
    assert (tmp_path / "Club.csv").read_text().splitlines()[0] == "pk,name,rank,tags"


def test_a_lost_field_is_dropped_and_the_old_file_kept(tmp_path, caplog):
    """A column whose field went away is dropped, logged, and the old file backed up."""
    before = write_csv(tmp_path, "Club", "pk,name,gone\r\nc1,chess,1\r\n")
    with caplog.at_level(logging.WARNING):
        db, storage = fresh(str(tmp_path), models=(Club,))
    assert db.get(Club, "c1").name == "chess"
    assert "gone" in caplog.text
    backups = [n for n in os.listdir(tmp_path) if n.endswith(".bak")]
    assert len(backups) == 1 and (tmp_path / backups[0]).read_bytes() == before
    storage.snapshot()
    assert (tmp_path / "Club.csv").read_text() == "pk,name\nc1,chess\n"


def test_snapshot_is_atomic_and_leaves_no_temporary_file(tmp_path):
    """Snapshots replace files by rename; a stale temporary file is removed at load."""
    (tmp_path / ".Club.csv.tmp").write_text("half a file")
    db, storage = fresh(str(tmp_path))
    db.create(Club, name="x")
    storage.snapshot()
    assert sorted(os.listdir(tmp_path)) == ["Club.csv", "lexicons.lock"]


class Reading(Model):
    label: str
    value: float
    count: int
    ok: bool
    note: str | None
    tags: list[str]


def test_plain_and_quoted_files_round_trip_every_float(tmp_path):
    """Text needs no quotes unless a cell holds a comma, quote or line break; floats
    (signed zero, subnormals, infinities, nan) come back bit for bit either way."""
    import struct
    floats = [0.0, -0.0, 5e-324, 2.2250738585072014e-308, 1.7976931348623157e308, 0.1 + 0.2,
              1e16, 1e-7, 100.0, float("inf"), float("-inf"), float("nan"), 1 / 3]
    for label in ("plain", 'with "quotes", commas\r\nand lines'):
        directory = tmp_path / str(len(label))
        db, storage = fresh(str(directory), models=(Reading,))
        plain = label == "plain"   # JSON text ("n", ["x"]) holds quotes too
        rows = [db.create(Reading, label=f"{label}{i}", value=v, count=-i, ok=i % 2 == 0,
                          note=None if plain or i % 3 else "n", tags=[] if plain else [label])
                for i, v in enumerate(floats * 300)]
        storage.snapshot()
        text = (directory / "Reading.csv").read_text(encoding="utf-8")
        assert ('"' in text) == (not plain)
        loaded, _ = fresh(str(directory), models=(Reading,))
        for row in rows:
            got = loaded.get(Reading, row.pk)
            assert struct.pack("<d", got.value) == struct.pack("<d", row.value)
            assert (got.label, got.count, got.ok, got.note, got.tags) == (
                row.label, row.count, row.ok, row.note, row.tags)


def test_concurrent_snapshots_are_serialised_and_files_private(tmp_path):
    """Snapshots from several threads under writes never collide; tables are mode 0600."""
    import stat
    import threading

    db, storage = fresh(str(tmp_path))
    storage.open()
    fill(db)
    failures: list[BaseException] = []
    stop = threading.Event()

    def writer() -> None:  # bounded: the test must end by itself whatever the speed
        for n in range(2000):
            if stop.is_set():
                return
            db.create(Club, name=f"c{n}")

    def snapshotter() -> None:
        try:
            for _ in range(10):
                storage.snapshot(everything=True)
        except BaseException as exc:  # collected: the test asserts there were none
            failures.append(exc)

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=snapshotter) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join(60)
    stop.set()
    threads[0].join(10)
    assert failures == []
    storage.snapshot()
    storage.close()
    count = db.count(Club)
    db2, storage2 = fresh(str(tmp_path))
    assert db2.count(Club) == count
    storage2.close()
    assert stat.S_IMODE(os.stat(tmp_path / "Club.csv").st_mode) == 0o600


HOLDER = """
import sys
from lexicons import Database
from lexicons.data.storage import Storage
storage = Storage(Database([]), sys.argv[1])
storage.load()
print("held", flush=True)
sys.stdin.read()
storage.close()
"""


def test_a_data_dir_held_by_another_process_is_refused(tmp_path):
    """Another process holding DATA_DIR refuses this one, naming its pid; free once it ends."""
    import subprocess
    import sys

    from lexicons.errors import LockError

    data = tmp_path / "data"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(data)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockError) as refused:
            Storage(Database([]), str(data)).load()
        assert f"is in use by another process (pid {holder.pid}," in str(refused.value)
        assert os.listdir(data) == ["lexicons.lock"]  # nothing read, nothing written
    finally:
        holder.communicate("", timeout=30)
    storage = Storage(Database([]), str(data))
    storage.load()
    storage.close()


def test_one_process_may_open_its_data_dir_twice(tmp_path):
    """Within one process (a service restarted in place) the directory lock is shared."""
    first = Storage(Database([]), str(tmp_path))
    first.load()
    second = Storage(Database([]), str(tmp_path))
    second.load()
    second.close()
    first.close()
    assert (tmp_path / "lexicons.lock").read_text() == ""  # released: no owner named
