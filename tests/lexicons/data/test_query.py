"""Tests of reading a database: get, query filters, sort, Rows, aggregates, frames, text search."""
from __future__ import annotations

import gc

import pytest

from lexicons.data import query
from lexicons.data.query import Rows
from lexicons.errors import DatabaseError, MultipleRowsFound, ValidationError
from tests.lexicons.data.models import Person, Team


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
