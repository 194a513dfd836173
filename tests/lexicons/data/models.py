"""Models shared by the tests of the database, its tables and its queries."""
from __future__ import annotations

from lexicons import Model
from lexicons.passwords import hash_password


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
