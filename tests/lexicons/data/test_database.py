"""Tests of Database: writes, references, threads, stored properties and transactions."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from lexicons import Database, Model, verify_password
from lexicons.errors import (
    DatabaseError,
    DoesNotExist,
    IntegrityError,
    ValidationError,
)
from lexicons.utils import encrypt
from tests.lexicons.data.models import Person, Post, Team


def test_create_returns_an_instance_and_get_finds_it(db):
    """create returns the stored row as an instance; get(pk) returns an equal copy."""
    row = db.create(Person, name="ann", age=3, tags=["x"])
    assert isinstance(row, Person) and row.name == "ann" and row.tags == ["x"]
    again = db.get(Person, row.pk)
    assert again == row and again is not row
    assert db.get(Person, "missing") is None


def test_model_may_be_named_by_string(db):
    """Every call takes the model as a class or as its name."""
    row = db.create("Person", name="ann")
    assert db.get("Person", row.pk) == row
    assert db.count("Person") == 1
    with pytest.raises(DatabaseError, match="unknown model 'Nope'"):
        db.create("Nope")


def test_given_pk_is_kept_and_duplicates_refused(db):
    """A given pk is used; a second row with the same pk is refused."""
    db.create(Team, pk="t1", name="x")
    with pytest.raises(ValidationError, match="pk 't1' exists"):
        db.create(Team, pk="t1", name="y")
    assert db.get(Team, "t1").name == "x"


def test_writes_are_type_checked_never_coerced(db):
    """A wrong type on create or update is a ValidationError and changes nothing."""
    with pytest.raises(ValidationError, match=r"Person\.age: expected int, got bool"):
        db.create(Person, age=True)
    with pytest.raises(ValidationError, match=r"Person\.tags: expected str items"):
        db.create(Person, tags=[1])
    row = db.create(Person, name="ann", score=2)
    assert row.score == 2.0 and type(db.get(Person, row.pk).score) is float
    with pytest.raises(ValidationError, match=r"Person\.name: expected str, got int"):
        db.update(Person, row.pk, name=5)
    assert db.get(Person, row.pk).name == "ann" and db.count(Person) == 1


def test_falsy_values_are_stored_as_given(db):
    """0, '' and False are values, not missing fields."""
    row = db.create(Person, name="", age=0, active=False, score=0.0)
    stored = db.get(Person, row.pk)
    assert (stored.name, stored.age, stored.active, stored.score) == ("", 0, False, 0.0)
    assert db.count(Person, age=0) == 1 and db.count(Person, name="") == 1


def test_instances_are_detached_copies(db):
    """Changing a returned instance or its lists does not change the database."""
    row = db.create(Person, name="ann", tags=["a"])
    row.tags.append("evil")
    row.name = "zed"
    fetched = db.get(Person, row.pk)
    fetched.tags.append("evil")
    assert db.get(Person, row.pk).tags == ["a"] and db.get(Person, row.pk).name == "ann"
    assert db.query(Person)[0].tags == ["a"]


def test_computed_field_on_create_and_update(db):
    """A property setter runs on create and update, storing what it computes."""
    row = db.create(Person, name="ann", password="one")
    assert verify_password("one", db.get(Person, row.pk).password_hash)
    db.update(Person, row.pk, password="two")
    assert verify_password("two", db.get(Person, row.pk).password_hash)


def test_update_by_pk_or_instance(people, db):
    """update takes a pk or an instance (its values when no fields are given)."""
    _, _, (ann, *_rest) = people
    updated = db.update(Person, ann.pk, age=32)
    assert updated.age == 32 and db.get(Person, ann.pk).age == 32
    ann.name = "anna"
    db.update(Person, ann)
    assert db.get(Person, ann.pk).name == "anna" and db.get(Person, ann.pk).age == 31
    with pytest.raises(DoesNotExist, match="no Person with pk 'nope'"):
        db.update(Person, "nope", age=1)
    with pytest.raises(ValidationError, match="cannot be changed"):
        db.update(Person, ann.pk, pk="x")


def test_references_must_point_at_rows(people, db):
    """Creating or updating a reference to a missing row is refused."""
    with pytest.raises(IntegrityError, match="no Team with pk 'ghost'"):
        db.create(Person, name="x", team="ghost")
    _, _, (ann, *_rest) = people
    with pytest.raises(IntegrityError, match="no Team with pk 'ghost'"):
        db.update(Person, ann, team="ghost")


def test_drop_refuses_while_referenced_and_cascades(people, db):
    """drop refuses a referenced row, cascades through every level when asked."""
    red, blue, (ann, bob, cid, dee) = people
    db.create(Post, title="hi", author=ann)
    with pytest.raises(IntegrityError, match="2 Person row.* Person.team"):
        db.drop(Team, red)
    assert db.count(Team) == 2
    assert db.drop(Team, red, cascade=True) == 4   # red, ann, cid, ann's post
    assert db.count(Person) == 2 and db.count(Post) == 0
    assert db.drop(Person, dee) == 1
    with pytest.raises(DoesNotExist):
        db.drop(Person, dee)
    assert [r.name for r in db.query(Person)] == ["bob"]


def test_get_or_create(db):
    """get_or_create finds the one match or creates it with the defaults."""
    row, created = db.get_or_create(Person, name="ann", defaults={"age": 5})
    assert created and row.age == 5
    again, created = db.get_or_create(Person, name="ann", defaults={"age": 9})
    assert not created and again == row


def test_commit_without_journal_is_a_no_op(db):
    """commit() returns at once when no journal is attached, and the write stands."""
    import time

    team = db.create(Team, name="x")
    assert db.journal is None
    started = time.monotonic()
    assert db.commit() is None
    assert time.monotonic() - started < 0.5
    assert db.get(Team, team.pk).name == "x"


def test_threads_lose_no_write_and_create_once(db):
    """Many threads creating rows lose none; get_or_create makes exactly one row."""
    def work(n: int) -> None:
        for i in range(300):
            db.create(Person, name=f"t{n}", age=i)
            db.get_or_create(Team, name="shared")
    threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert db.count(Person) == 2400 and db.count(Team, name="shared") == 1
    assert all(db.count(Person, name=f"t{n}") == 300 for n in range(8))


def test_readers_never_see_half_a_write(db):
    """Readers on other threads always see both fields of an update or none."""
    row = db.create(Person, name="0", age=0, score=0.0)
    stop = threading.Event()
    torn: list[str] = []

    def writer() -> None:
        i = 0
        while not stop.is_set():
            i += 1
            db.update(Person, row.pk, age=i, score=float(i), name=str(i))
            db.create(Person, name=str(i), age=i, score=float(i))

    def reader() -> None:
        while not stop.is_set():
            got = db.get(Person, row.pk)
            if not (got.age == got.score == float(got.name)):
                torn.append(repr(got))
            for r in db.query(Person, age__gt=0, _limit=50):
                if not (r.age == r.score == float(r.name)):
                    torn.append(repr(r))
            frame = db.Person
            if not np.array_equal(frame.age.to_numpy(), frame.score.to_numpy()):
                torn.append("frame")

    threads = [threading.Thread(target=writer)] + [
        threading.Thread(target=reader) for _ in range(3)]
    for t in threads:
        t.start()
    stop.wait(1.5)
    stop.set()
    for t in threads:
        t.join(timeout=30)
    assert not torn
    assert db.count(Person) > 1


# --- stored properties (the original API's password field) -----------------------------


class Member(Model):
    email: str

    @property
    def password(self):
        return self._password

    @password.setter
    def password(self, raw):
        self._password = encrypt(raw)


class Badge(Model):
    _level: int = 1

    @property
    def level(self):
        return self._level

    @level.setter
    def level(self, value):
        self._level = value      # checked against the annotation of _level


@pytest.fixture
def members():
    return Database([Member, Badge])


def test_a_stored_property_is_a_queryable_column_holding_what_its_setter_stored(members):
    """password='raw' stores encrypt('raw') in the column `password`; get by the hash finds it."""
    row = members.create("Member", email="a@example.com", password="raw")
    assert row.password == encrypt("raw")
    assert list(members.Member.columns) == ["pk", "email", "password"]
    assert members.Member["password"].tolist() == [encrypt("raw")]
    found = members.get("Member", email="a@example.com", password=encrypt("raw"))
    assert found == row and found.password == encrypt("raw")
    assert members.get("Member", email="a@example.com", password="raw") is None
    assert members.query(Member, password=encrypt("raw")).pks == [row.pk]


def test_a_stored_property_is_set_again_through_its_setter_only(members):
    """update(password=raw) runs the setter once; writing an instance back does not re-hash."""
    row = members.create(Member, email="a@example.com", password="one")
    members.update(Member, row.pk, password="two")
    assert members.get(Member, row.pk).password == encrypt("two")
    row = members.get(Member, row.pk)
    row.password = "three"
    members.update(Member, row)
    assert members.get(Member, row.pk).password == encrypt("three")
    members.update(Member, row)            # the stored hash as it is, not hashed again
    assert members.get(Member, row.pk).password == encrypt("three")
    again, created = members.get_or_create(Member, email="b@example.com",
                                           defaults={"password": "four"})
    assert created and again.password == encrypt("four")


def test_a_stored_property_takes_its_type_and_default_from_the_private_annotation(members):
    """`_level: int = 1` makes an int column `level` with default 1, type-checked."""
    assert members.create(Badge).level == 1
    assert members.create(Badge, level=7).level == 7
    assert members.Badge["level"].dtype == "int64"
    with pytest.raises(ValidationError, match="Badge.level: expected int"):
        members.create(Badge, level="high")
    assert members.count(Badge, level__ge=5) == 1


def test_encrypt_is_deterministic():
    """encrypt gives the same hex hash for the same text, another for another text."""
    assert encrypt("secret") == encrypt("secret") != encrypt("Secret")
    assert len(encrypt("")) == 64 and int(encrypt("x"), 16) >= 0
    with pytest.raises(TypeError):
        encrypt(b"bytes")


# --- transactions -----------------------------------------------------------------------


class Recorder:
    """A journal that records what it is handed."""

    def __init__(self):
        self.records = []

    def append(self, record):
        self.records.append(record)
        return len(self.records)

    def wait(self, seq):
        pass


def test_a_transaction_that_raises_leaves_nothing_behind(db, people):
    """Creates, updates and drops in a failed transaction are undone and never journaled."""
    red, blue, (ann, bob, cid, dee) = people
    db.journal = Recorder()
    order = db.query(Person).pks
    with pytest.raises(RuntimeError):
        with db.transaction():
            db.create(Person, name="eve", team=red)
            db.update(Person, ann, age=99, tags=["changed"])
            db.drop(Person, bob)
            assert db.get(Person, bob.pk) is None and db.count(Person) == 4   # own writes
            raise RuntimeError("after three writes")
    assert db.journal.records == []
    assert db.query(Person).pks == order      # a dropped row comes back in its place
    assert db.get(Person, ann.pk) == ann and db.get(Person, bob.pk) == bob
    assert db.count(Person, name="eve") == 0 and db.count(Person, age=25) == 2


def test_a_transaction_that_ends_journals_its_writes_in_order(db, people):
    """A block without an exception keeps its writes; the journal gets them at its end."""
    red, blue, (ann, *_) = people
    db.journal = Recorder()
    with db.transaction():
        eve = db.create(Person, name="eve")
        with db.transaction():            # inside another: part of the outer one
            db.update(Person, eve, age=5)
        assert db.journal.records == []
    assert [r[0] for r in db.journal.records] == ["c", "u"]
    assert db.get(Person, eve.pk).age == 5


def test_other_writers_wait_for_a_transaction_readers_do_not(db, people):
    """From its first write to its end, a transaction keeps other threads' writes out."""
    red, blue, (ann, *_) = people
    db.journal = Recorder()
    wrote = threading.Event()
    done = []

    def other():
        wrote.wait(5)
        assert db.get(Person, ann.pk) is not None       # a read goes through at once
        done.append("read")
        db.update(Person, ann, age=1)
        done.append("write")

    thread = threading.Thread(target=other)
    thread.start()
    with db.transaction():
        db.update(Person, ann, age=50)
        wrote.set()
        deadline = time.monotonic() + 5
        while "read" not in done and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.1)
        assert done == ["read"]
    thread.join(5)
    assert done == ["read", "write"] and db.get(Person, ann.pk).age == 1
    assert [r[3] for r in db.journal.records] == [{"age": 50}, {"age": 1}]
