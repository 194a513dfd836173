"""Tests of the table engine: the tail and the numpy columns, compaction, equality indexes."""
from __future__ import annotations

from tests.lexicons.data.models import Person


def test_many_drops_compact_and_keep_the_index(db):
    """After enough drops tombstones are compacted and every look-up still works."""
    rows = [db.create(Person, name=f"p{i}", age=i) for i in range(10000)]
    for row in rows[:9000]:
        db.drop(Person, row.pk)
    assert db.table(Person).dead < 9000   # compacted at least once
    assert db.count(Person) == 1000 and db.get(Person, rows[9500].pk).age == 9500
    assert db.count(Person, age__lt=9500) == 500
    assert db.Person.age.tolist() == list(range(9000, 10000))


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
