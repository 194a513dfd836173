"""Tests of the replicated database: databases in one process on a private Redis Stream."""
from __future__ import annotations

import json
import math
import os
import threading
import time

import pytest
import redis

from lexicons import Database, Model
from lexicons.data.database import _free_pk
from lexicons.data.replication import START, StreamLog, decode_op, encode_op, position_key
from lexicons.data.snapshot import SnapshotStore
from lexicons.errors import (
    DatabaseError,
    DoesNotExist,
    IntegrityError,
    Unavailable,
    ValidationError,
)
from tests.support.brokers import PrivateRedis
from tests.support.daemon import wait_for


class Owner(Model):
    name: str
    score: float
    tags: set[str]
    extra: dict
    note: str | None


class Pet(Model):
    name: str
    owner: Owner | None


@pytest.fixture
def server(tmp_path):
    private = PrivateRedis(tmp_path, appendonly=True)
    private.start()
    yield private
    private.stop()


@pytest.fixture
def nodes(server):
    """A function making nodes (database + log) on one stream; all stopped at the end."""
    made: list[StreamLog] = []

    def node(name: str, db: Database | None = None, **kwargs) -> Database:
        db = db or Database([Owner, Pet])
        log = StreamLog(db, server.url, "test:db", name, timeout=10, retry_max=0.2, **kwargs)
        log.start()
        assert log.catch_up(10)
        made.append(log)
        return db

    yield node
    for log in made:
        log.stop()


def same(a: Database, b: Database) -> bool:
    """Tell whether two databases hold the same rows in the same order."""
    b.sync()
    a.sync()
    return all(a.query(m).to_dicts() == b.query(m).to_dicts() for m in (Owner, Pet))


def test_writes_on_one_node_reach_the_others_with_the_same_answers(nodes):
    """create, update, get_or_create and drop made on one node: the caller's answers are
    what every node holds."""
    a, b = nodes("a"), nodes("b")
    owner = a.create(Owner, name="ann", score=1.5, tags={"x", "y"}, extra={"k": [1]})
    b.sync()
    assert b.get(Owner, owner.pk) == owner
    updated = b.update(Owner, owner.pk, score=2.5, note="hi")
    assert updated.score == 2.5 and updated.note == "hi"
    a.sync()
    assert a.get(Owner, owner.pk) == updated
    pet, created = a.get_or_create(Pet, name="rex", defaults={"owner": owner.pk})
    assert created and pet.owner == owner.pk
    again, created = b.get_or_create(Pet, name="rex")
    assert not created and again == pet
    assert b.drop(Owner, owner.pk, cascade=True) == 2
    a.sync()
    assert a.count(Owner) == 0 and a.count(Pet) == 0
    assert same(a, b)


def test_a_made_up_pk_that_is_taken_is_replaced_alike_on_every_node(nodes):
    """Two nodes replace a taken made-up pk by the same pk, derived from the entry."""
    a, b = nodes("a"), nodes("b")
    a.create(Owner, pk="taken", name="first")
    row = ("second", 0.0, set(), {}, None)
    pk = a._write(("c", "Owner", "taken", row, False))   # as if new_pk() had drawn it
    assert pk != "taken"
    b.sync()
    assert b.get(Owner, pk).name == "second" and b.get(Owner, "taken").name == "first"
    table = a.table(Owner)
    assert _free_pk(table, "1-0/0") == _free_pk(table, "1-0/0") != _free_pk(table, "1-0/1")


def test_a_refused_write_changes_nothing_on_any_node(nodes):
    """A duplicate pk, an update of a missing row, a dangling reference, a drop of a row
    still referred to: the caller gets the error, no node changes."""
    a, b = nodes("a"), nodes("b")
    owner = a.create(Owner, pk="o1", name="ann")
    a.create(Pet, name="rex", owner=owner)
    with pytest.raises(ValidationError, match="exists"):
        b.create(Owner, pk="o1", name="other")
    with pytest.raises(DoesNotExist):
        b.update(Owner, "nobody", name="x")
    with pytest.raises(IntegrityError):
        b.create(Pet, name="ghost", owner="nobody")
    with pytest.raises(IntegrityError, match="refer to it"):
        a.drop(Owner, "o1")
    assert same(a, b)
    assert b.get(Owner, "o1").name == "ann" and b.count(Pet) == 1


def test_a_failing_transaction_keeps_its_replicated_writes_on_every_node(nodes):
    """With the replicated log a write is committed when made: a transaction that raises
    afterwards undoes nothing locally, so the nodes never diverge."""
    a, b = nodes("a"), nodes("b")
    with pytest.raises(RuntimeError), a.transaction():
        made = a.create(Owner, name="kept", score=1.0, tags=set(), extra={})
        a.update(Owner, made.pk, score=2.0)
        raise RuntimeError("the signal failed after writing")
    assert a.get(Owner, made.pk).score == 2.0
    a.create(Owner, name="after", score=0.0, tags=set(), extra={})   # writers not held back
    assert same(a, b)
    assert b.get(Owner, made.pk).score == 2.0


def test_get_or_create_from_threads_on_three_nodes_creates_one_row(nodes):
    """Twelve threads on three nodes claim one name at once: one row, one creator."""
    dbs = [nodes(f"n{i}") for i in range(3)]
    barrier = threading.Barrier(12)
    results = []

    def claim(db: Database) -> None:
        barrier.wait(10)
        results.append(db.get_or_create(Owner, name="unique", defaults={"score": 1.0}))

    threads = [threading.Thread(target=claim, args=(dbs[i % 3],)) for i in range(12)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert sum(created for _, created in results) == 1
    assert len({row.pk for row, _ in results}) == 1
    for db in dbs:
        db.sync()
        assert db.count(Owner, name="unique") == 1


def test_returned_rows_share_no_container_with_the_tables(nodes):
    """Changing what create returned changes neither this node's row nor others'."""
    a = nodes("a")
    owner = a.create(Owner, name="ann", tags={"x"}, extra={"k": [1]})
    owner.tags.add("y")
    owner.extra["k"].append(2)
    assert a.get(Owner, owner.pk).tags == {"x"} and a.get(Owner, owner.pk).extra == {"k": [1]}


def canonical(value):
    """Return the repr of *value* with sets in sorted order (NaN compares by its repr)."""
    if isinstance(value, (set, frozenset)):
        return "set(" + repr(sorted(value)) + ")"
    if isinstance(value, (tuple, list)):
        return type(value).__name__ + "(" + ", ".join(canonical(v) for v in value) + ")"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k!r}: {canonical(v)}" for k, v in value.items()) + "}"
    return repr(value)


def test_write_ops_round_trip_through_json():
    """Sets, dicts, NaN, infinity, None and any text survive the stream encoding."""
    db = Database([Owner, Pet])
    row = ("é,\n\"\udc80", math.inf, {"b", "a"}, {"n": [1, None, {"x": 1.5}]}, None)
    for op in [("c", "Owner", "p1", row, True),
               ("u", "Owner", "p1", {"score": math.nan, "note": "x"}),
               ("d", "Owner", "p1", True),
               ("g", "Owner", {"name": "é"}, "p2", row, False)]:
        back = decode_op(db, encode_op(db, op))
        assert canonical(back) == canonical(op)
    with pytest.raises(DatabaseError, match="2 values"):   # it does not fit the model
        decode_op(db, json.dumps(["c", "Owner", "p", [1, 2], False]).encode())


def test_redis_down_refuses_writes_keeps_reads_and_catches_up(nodes, server):
    """Redis stopped: writes fail with a clear error, reads work, the log is degraded;
    Redis back: writes work again and reach the other node."""
    a, b = nodes("a"), nodes("b")
    owner = a.create(Owner, name="ann")
    server.stop()
    wait_for(lambda: a.replica.degraded, what="degraded")
    with pytest.raises(Unavailable, match="cannot take writes now"):
        a.create(Owner, name="bob")
    assert a.get(Owner, owner.pk).name == "ann" and a.count(Owner) == 1
    assert a.replica.info()["state"] == "degraded" and a.replica.info()["refused"] == 1
    server.start()
    wait_for(lambda: not a.replica.degraded and not b.replica.degraded, timeout=20,
             what="reconnected")
    bob = a.create(Owner, name="bob")
    b.sync()
    assert b.get(Owner, bob.pk).name == "bob" and b.count(Owner) == 2
    assert a.replica.info()["reconnects"] >= 1


def test_a_stopped_log_refuses_writes(nodes):
    """After stop, a write is refused instead of being made locally only."""
    a = nodes("a")
    a.replica.stop()
    with pytest.raises(Unavailable, match="stopped"):
        a.create(Owner, name="late")
    assert a.count(Owner) == 0


def test_a_snapshot_records_its_position_and_a_restart_replays_only_what_follows(
        nodes, tmp_path):
    """Load a snapshot, replay from its position: every row once, none twice."""
    a = nodes("a")
    store = SnapshotStore(a, str(tmp_path / "a"))
    store.load()
    first = [a.create(Owner, name=f"o{i}").pk for i in range(10)]
    position = store.snapshot()
    assert position == a.replica.position and position != START
    assert (tmp_path / "a" / f"snapshot.{position}" / "POSITION").read_text().strip() == position
    later = [a.create(Owner, name=f"p{i}").pk for i in range(5)]
    again = Database([Owner, Pet])
    loaded = SnapshotStore(again, str(tmp_path / "a")).load()
    assert loaded == position and again.count(Owner) == 10
    nodes("a-restarted", db=again, position=loaded)
    again.sync()
    assert again.query(Owner).pks == first + later


def test_a_snapshot_cut_short_leaves_the_previous_one(nodes, tmp_path):
    """A temporary snapshot directory, or one without POSITION, is never loaded."""
    a = nodes("a")
    store = SnapshotStore(a, str(tmp_path / "a"))
    store.load()
    a.create(Owner, name="kept")
    position = store.snapshot()
    os.makedirs(tmp_path / "a" / ".snapshot.9999999999999-0.tmp")
    os.makedirs(tmp_path / "a" / "snapshot.9999999999998-0")   # no POSITION: incomplete
    again = Database([Owner, Pet])
    assert SnapshotStore(again, str(tmp_path / "a")).load() == position
    assert [r.name for r in again.query(Owner)] == ["kept"]
    assert not (tmp_path / "a" / ".snapshot.9999999999999-0.tmp").exists()


def test_trimming_keeps_what_live_nodes_need_and_forgets_silent_ones(nodes, server, tmp_path):
    """The stream is trimmed to the oldest position a live node needs, and past a node
    silent for longer than the node timeout."""
    a = nodes("a", node_timeout=30)
    b = nodes("b")
    store = SnapshotStore(a, str(tmp_path / "a"))
    store.load()
    for i in range(5):
        a.create(Owner, name=f"o{i}")
    b.replica.keep_from = b.replica.position     # b would restart from here
    b.replica.heartbeat()
    for i in range(5):
        a.create(Owner, name=f"p{i}")
    store.snapshot()
    a.replica.share(store.files())
    a.replica.keep_from = store.position
    a.replica.heartbeat()
    client = redis.Redis.from_url(server.url)
    needed = [e for e, _ in client.xrange("test:db", min=b.replica.keep_from)]
    assert len(needed) >= 6   # b's position and the five writes after it
    assert a.replica.trim() == b.replica.keep_from
    assert [e for e, _ in client.xrange("test:db")] == needed
    entry = json.loads(client.hget("test:db:nodes", "b"))
    entry["seen"] = time.time() - 60
    client.hset("test:db:nodes", "b", json.dumps(entry))
    assert a.replica.trim() == store.position
    assert client.xlen("test:db") == 1 and not client.hexists("test:db:nodes", "b")
    client.close()


def test_a_node_behind_the_trim_loads_the_shared_snapshot(nodes, tmp_path):
    """A node whose position the stream no longer reaches loads the shared snapshot,
    then replays the rest: it holds every row."""
    a = nodes("a")
    store = SnapshotStore(a, str(tmp_path / "a"))
    store.load()
    for i in range(20):
        a.create(Owner, name=f"o{i}", tags={str(i)})
    store.snapshot()
    a.replica.share(store.files())
    a.replica.keep_from = store.position
    a.replica.heartbeat()
    assert a.replica.trim() == store.position
    a.create(Owner, name="after the snapshot")
    late = Database([Owner, Pet])
    late_store = SnapshotStore(late, str(tmp_path / "late"))
    late_store.load()
    nodes("late", db=late, adopt=late_store.adopt)
    late.sync()
    assert late.query(Owner).to_dicts() == a.query(Owner).to_dicts()
    assert late.count(Owner) == 21
    assert position_key(late_store.position) == position_key(store.position)
