"""Fixtures of the data tests: a database of the shared models, with rows or a short tail."""
from __future__ import annotations

import pytest

from lexicons import Database
from lexicons.data import table as tables
from tests.lexicons.data.models import Person, Post, Team


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


@pytest.fixture
def small_tail(monkeypatch):
    """Move rows into the numpy columns every 64 creates, and cut text into 50-row pieces."""
    monkeypatch.setattr(tables, "TAIL_MAX", 64)
    monkeypatch.setattr(tables, "TEXT_CHUNK", 50)
    return Database([Team, Person, Post])
