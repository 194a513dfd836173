"""The chat's tables: users, rooms and messages."""
from __future__ import annotations

from lexicons import Model
from lexicons.passwords import hash_password, verify_password


class User(Model):
    """Someone who can log in: a unique name and a hashed password."""

    name: str
    password_hash: str
    joined: float

    @property
    def password(self) -> str:
        """Return the stored hash (the password itself is never kept)."""
        return self.password_hash

    @password.setter
    def password(self, value: str) -> None:
        self.password_hash = hash_password(value)

    def check_password(self, password: str) -> bool:
        """Tell whether *password* is this user's password."""
        return verify_password(password, self.password_hash)


class Room(Model):
    """A public room anyone logged in may join."""

    name: str
    topic: str
    creator: User | None
    created: float


class ChatMessage(Model):
    """One message: who wrote it, where, what and when (seconds since the epoch).

    ``room`` is a room's name, or ``dm:alice+bob`` for the private conversation
    of two users (names in alphabetical order).
    """

    author: User
    room: str
    text: str
    time: float
