"""Tests of Database: writes, look-ups, filters, references, frames and threads."""
from __future__ import annotations

import gc
import threading
import time

import numpy as np
import pytest

from lexicons import Database, Model, verify_password
from lexicons.data import query
from lexicons.data import table as tables
from lexicons.data.query import Rows
from lexicons.errors import (
    DatabaseError,
    DoesNotExist,
    IntegrityError,
    MultipleRowsFound,
    ValidationError,
)
from lexicons.passwords import hash_password
from lexicons.utils import encrypt


class Team(Model):
    name: str


class Person(Model):
    name: str
    age: int
    score: float
    active: bool
    tags: list[str]
    team: Team
    nick: str | None
    password_hash: str

    @property
    def password(self) -> str:
        return self.password_hash

    @password.setter
    def password(self, value: str) -> None:
        self.password_hash = hash_password(value)


class Post(Model):
    title: str
    author: Person


@pytest.fixture
def db():
    return Database([Team, Person, Post])


@pytest.fixture
def people(db):
    red = db.create(Team, name="red")
    blue = db.create(Team, name="blue")
    rows = [
        db.create(Person, name="ann", age=31, score=1.5, active=True, tags=["a"], team=red),
        db.create(Person, name="bob", age=25, score=2.5, tags=["b", "c"], team=blue),
        db.create(Person, name="cid", age=40, score=0.5, active=True, team=red, nick="c"),
        db.create(Person, name="dee", age=25, score=3.0),
    ]
    return red, blue, rows


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


def test_get_by_fields_none_one_or_several(people, db):
    """get(**fields) returns None, the one row, or raises naming model and filter."""
    assert db.get(Person, name="ann").age == 31
    assert db.get(Person, name="nobody") is None
    with pytest.raises(MultipleRowsFound, match="Person: several rows match age=25"):
        db.get(Person, age=25)


@pytest.mark.parametrize("filters,names", [
    ({"age": 25}, ["bob", "dee"]),
    ({"age__eq": 25}, ["bob", "dee"]),
    ({"age__ne": 25}, ["ann", "cid"]),
    ({"age__gt": 30}, ["ann", "cid"]),
    ({"age__ge": 31}, ["ann", "cid"]),
    ({"age__lt": 31}, ["bob", "dee"]),
    ({"age__le": 31}, ["ann", "bob", "dee"]),
    ({"age__min": 31, "age__max": 40}, ["ann", "cid"]),
    ({"age__in": [25, 40]}, ["bob", "cid", "dee"]),
    ({"age__nin": [25, 40]}, ["ann"]),
    ({"name__in": ["ann", "zed"]}, ["ann"]),
    ({"name__contains": "e"}, ["dee"]),
    ({"name__icontains": "E"}, ["dee"]),
    ({"name__startswith": "c"}, ["cid"]),
    ({"name__endswith": "n"}, ["ann"]),
    ({"name__regex": "^[ab]"}, ["ann", "bob"]),
    ({"name__gt": "b"}, ["bob", "cid", "dee"]),
    ({"score__gt": 1}, ["ann", "bob", "dee"]),
    ({"active": True}, ["ann", "cid"]),
    ({"tags__contains": "c"}, ["bob"]),
    ({"nick": None}, ["ann", "bob", "dee"]),
    ({"nick__ne": None}, ["cid"]),
    ({"team": None}, ["dee"]),
    ({"team__name": "red"}, ["ann", "cid"]),
    ({"team__name__contains": "lu"}, ["bob"]),
    ({"team__name": "red", "age__gt": 35}, ["cid"]),
])
def test_query_filters(people, db, filters, names):
    """Each filter operator selects the expected rows, in insertion order."""
    assert [row.name for row in db.query(Person, **filters)] == names
    assert db.count(Person, **filters) == len(names)


def test_filter_by_reference_instance_or_pk(people, db):
    """A reference filter takes an instance or a pk."""
    red, _, _ = people
    assert [r.name for r in db.query(Person, team=red)] == ["ann", "cid"]
    assert [r.name for r in db.query(Person, team=red.pk)] == ["ann", "cid"]
    assert [r.name for r in db.query(Person, team__pk=red.pk)] == ["ann", "cid"]


def test_sort_limit_offset(people, db):
    """_sort orders stably (ascending or '-' descending, several keys), _limit cuts."""
    assert [r.name for r in db.query(Person, _sort="age")] == ["bob", "dee", "ann", "cid"]
    assert [r.name for r in db.query(Person, _sort="-age")] == ["cid", "ann", "bob", "dee"]
    assert [r.name for r in db.query(Person, _sort=["age", "-name"])] == [
        "dee", "bob", "ann", "cid"]
    assert [r.name for r in db.query(Person, _sort="-name", _limit=2)] == ["dee", "cid"]
    assert [r.name for r in db.query(Person, _sort="name", _offset=1, _limit=2)] == [
        "bob", "cid"]
    assert [r.name for r in db.query(Person, _sort="nick")][0] == "cid"  # None sorts last


def test_bad_filters_are_clear_errors(people, db):
    """Unknown fields or operators and mistyped values are errors naming the filter."""
    with pytest.raises(DatabaseError, match="Person has no field 'height'"):
        db.query(Person, height=3)
    with pytest.raises(DatabaseError, match="unknown filter 'age__near'"):
        db.query(Person, age__near=3)
    with pytest.raises(ValidationError, match="Person filter age__gt: expected int, got str"):
        db.query(Person, age__gt="3")
    with pytest.raises(ValidationError, match="bad regular expression"):
        db.query(Person, name__regex="(")
    with pytest.raises(ValidationError, match="_limit"):
        db.query(Person, _limit=-1)
    with pytest.raises(DatabaseError, match="unknown query option"):
        db.query(Person, _order="age")


def test_rows_give_pks_dicts_and_frames(people, db):
    """Rows read as instances, JSON-ready dicts, a column or a DataFrame."""
    rows = db.query(Person, age=25)
    assert isinstance(rows, Rows) and len(rows) == 2
    assert rows.pks == [rows[0].pk, rows[1].pk]
    assert rows.to_dicts()[0]["tags"] == ["b", "c"] and rows.column("name") == ["bob", "dee"]
    frame = rows.frame()
    assert list(frame.columns[:3]) == ["pk", "name", "age"] and frame.age.tolist() == [25, 25]
    assert rows[1:].pks == rows.pks[1:] and rows.first().name == "bob"


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


def test_many_drops_compact_and_keep_the_index(db):
    """After enough drops tombstones are compacted and every look-up still works."""
    rows = [db.create(Person, name=f"p{i}", age=i) for i in range(10000)]
    for row in rows[:9000]:
        db.drop(Person, row.pk)
    assert db.table(Person).dead < 9000   # compacted at least once
    assert db.count(Person) == 1000 and db.get(Person, rows[9500].pk).age == 9500
    assert db.count(Person, age__lt=9500) == 500
    assert db.Person.age.tolist() == list(range(9000, 10000))


def test_get_or_create(db):
    """get_or_create finds the one match or creates it with the defaults."""
    row, created = db.get_or_create(Person, name="ann", defaults={"age": 5})
    assert created and row.age == 5
    again, created = db.get_or_create(Person, name="ann", defaults={"age": 9})
    assert not created and again == row


def test_aggregate(people, db):
    """aggregate computes over a numeric field of the filtered rows."""
    assert db.aggregate(Person, "age", "sum") == 121
    assert db.aggregate(Person, "age", "max", active=True) == 40
    assert db.aggregate(Person, "score", "mean", age=25) == 2.75
    assert db.aggregate(Person, "age", "min", age__gt=100) is None
    with pytest.raises(DatabaseError, match="cannot aggregate"):
        db.aggregate(Person, "name", "sum")


def test_frame_is_a_read_only_view(people, db):
    """db.<Model> is a DataFrame; changing it never changes the database."""
    frame = db.Person
    assert frame.name.tolist() == ["ann", "bob", "cid", "dee"]
    frame.loc[0, "age"] = 99
    frame["extra"] = 1
    frame.tags.iloc[0].append("evil")
    with pytest.raises(ValueError):
        frame.age.to_numpy()[1] = 5
    fresh = db.Person
    assert fresh.age.tolist() == [31, 25, 40, 25] and "extra" not in fresh
    assert fresh.tags.iloc[0] == ["a"] and db.get(Person, name="ann").tags == ["a"]
    db.create(Person, name="eve")
    assert db.Person.name.tolist()[-1] == "eve"


def test_frame_after_writes_matches_the_rows(db):
    """The cached arrays follow appends, updates and drops."""
    rows = [db.create(Person, name=f"p{i}", age=i) for i in range(50)]
    assert db.count(Person, age__ge=25) == 25
    db.create(Person, name="late", age=100)
    db.update(Person, rows[0].pk, age=1000)
    db.drop(Person, rows[1].pk)
    assert db.count(Person, age__ge=25) == 27
    frame = db.Person
    assert len(frame) == 50 and frame.age.iloc[0] == 1000 and frame.name.iloc[-1] == "late"


def test_substring_on_a_large_column(db):
    """contains over many rows finds exactly the rows holding the text."""
    for i in range(5000):
        db.create(Person, name=f"user{i}")
    expected = [f"user{i}" for i in range(5000) if "99" in f"user{i}"]
    assert db.query(Person, name__contains="99").column("name") == expected
    assert db.count(Person, name__contains="user") == 5000   # every row: many matches
    assert db.count(Person, name__contains="zz") == 0


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


def test_equality_index_follows_every_write(db):
    """Equality look-ups on a large table stay right through creates, updates and drops."""
    rows = [db.create(Person, name=f"p{i % 3000}", age=i % 7) for i in range(6000)]
    assert [r.pk for r in db.query(Person, name="p5")] == [rows[5].pk, rows[3005].pk]
    assert "name" in db.table(Person).eqidx
    late = db.create(Person, name="p5")
    db.update(Person, rows[5].pk, name="other")
    db.update(Person, rows[6].pk, name="p5")
    db.drop(Person, rows[3005].pk)
    assert [r.pk for r in db.query(Person, name="p5")] == [rows[6].pk, late.pk]
    assert db.get(Person, name="other").pk == rows[5].pk
    assert db.count(Person, name="p5", age=6) == 1 and db.count(Person, name="nobody") == 0
    for row in rows[:3005] + rows[3006:5000]:
        db.drop(Person, row.pk)
    assert [r.pk for r in db.query(Person, name="p5")] == [late.pk]
    assert [r.name for r in db.query(Person, name="p5000")] == []
    assert db.get(Person, name="p2999").pk == rows[5999].pk


@pytest.fixture
def small_tail(monkeypatch):
    """Move rows into the numpy columns every 64 creates, and cut text into 50-row pieces."""
    monkeypatch.setattr(tables, "TAIL_MAX", 64)
    monkeypatch.setattr(tables, "TEXT_CHUNK", 50)
    return Database([Team, Person, Post])


def test_rows_read_the_same_from_the_columns_and_the_tail(small_tail):
    """Rows moved into the numpy columns and rows still in the tail read, update and drop
    alike, with Python values and private container copies."""
    db = small_tail
    rows = [db.create(Person, name=f"p{i}", age=i, score=i / 2, active=i % 2 == 0,
                      tags=[str(i)], nick=None if i % 3 else f"n{i}") for i in range(200)]
    table = db.table(Person)
    assert 0 < table.hn < 200 and table.pks   # some rows in the columns, some in the tail
    for row in (rows[0], rows[150], rows[199]):
        got = db.get(Person, row.pk)
        assert got == row and type(got.age) is int and type(got.score) is float
        assert type(got.active) is bool
        got.tags.append("evil")
        assert db.get(Person, row.pk).tags == row.tags
    db.update(Person, rows[1].pk, age=-1, tags=["x"], nick="late")
    db.update(Person, rows[199].pk, age=-2)
    assert db.get(Person, rows[1].pk).tags == ["x"] and db.get(Person, rows[1].pk).nick == "late"
    assert [r.name for r in db.query(Person, age__lt=0)] == ["p1", "p199"]
    assert db.count(Person, nick=None) == 132
    for row in rows[:180]:
        db.drop(Person, row.pk)
    assert db.count(Person) == 20 and db.get(Person, rows[190].pk).age == 190
    assert db.Person.age.tolist() == [*range(180, 199), -2]


def test_a_frame_keeps_what_it_saw(small_tail):
    """Updating a row after db.<Model> was read does not change that frame."""
    db = small_tail
    rows = [db.create(Person, name=f"p{i}", age=i, tags=[str(i)]) for i in range(100)]
    frame = db.Person
    db.update(Person, rows[3].pk, age=1000, name="changed", tags=[])
    assert frame.age.iloc[3] == 3 and frame.name.iloc[3] == "p3" and frame.tags.iloc[3] == ["3"]
    assert db.Person.age.iloc[3] == 1000 and db.get(Person, rows[3].pk).name == "changed"


@pytest.mark.parametrize("op", ["contains", "icontains", "startswith", "endswith"])
def test_text_filters_match_python_on_every_piece(small_tail, op):
    """Text filters over many pieces of joined text select what Python's str methods
    select, None never matching, and follow updates."""
    db = small_tail
    words = ["Alpha", "alphabet", "beta", "ALPHA", "gamma al", "", "ßtraße", "xAl", "al"]
    for i in range(300):
        db.create(Person, name=words[i % len(words)] + (str(i) if i % 4 else ""),
                  nick=None if i % 5 == 0 else words[(i + 3) % len(words)])
    tests = {"contains": lambda v, n: n in v, "startswith": str.startswith,
             "endswith": str.endswith, "icontains": lambda v, n: n.casefold() in v.casefold()}
    match = tests[op]
    for needle in ("al", "Al", "a", "9", "SS", "ß", "alpha0", "zz"):
        for name in ("name", "nick"):
            expected = [r.pk for r in db.query(Person)
                        if getattr(r, name) is not None and match(getattr(r, name), needle)]
            got = db.query(Person, **{f"{name}__{op}": needle}).pks
            assert got == expected, (name, needle)
    first = db.query(Person).pks[0]
    db.update(Person, first, name="zz-al-zz")
    assert first in db.query(Person, **{f"name__{op}": "zz" if op != "endswith" else "zz"}).pks


def test_text_with_a_nul_is_still_found(small_tail):
    """A value holding a NUL character is searched value by value, not missed."""
    db = small_tail
    for i in range(120):
        db.create(Person, name=f"a\x00b{i}" if i == 7 else f"name{i}")
    assert db.query(Person, name__contains="b7").column("name") == ["a\x00b7"]
    assert db.count(Person, name__startswith="name") == 119


def test_large_reads_pause_the_collector_and_restore_it(db):
    """Reading many rows pauses the garbage collector and leaves it as it found it."""
    for i in range(query.GC_PAUSE_MIN + 10):
        db.create(Team, name=f"t{i}")
    assert gc.isenabled()
    assert len(list(db.query(Team))) == query.GC_PAUSE_MIN + 10
    assert gc.isenabled()
    gc.disable()
    try:
        list(db.query(Team))
        assert not gc.isenabled()
    finally:
        gc.enable()


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
