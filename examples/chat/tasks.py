"""The chat's server-side behaviour: a lobby at start, presence, pruning old messages."""
from __future__ import annotations

import time
from typing import Any

from lexicons.task import Task

from .channels import Public, RoomChannel
from .models import ChatMessage, Room
from .signals import members

#: Messages older than this many seconds are deleted (30 days).
KEEP_SECONDS = 30 * 24 * 3600.0


class CreateLobby(Task.Startup):
    """Make sure the room everyone starts in exists."""

    def run(self, db: Any, sv: Any) -> None:
        db.get_or_create(Room, name="lobby", defaults={
            "topic": "Say hello", "created": time.time()})


class Presence(Task.Interval):
    """Tell everyone who is online, and who is in which room, whenever it changes.

    Connections come and go without calling anything, so a short interval
    compares the channels' members with what was last told.
    """

    every = 1.0

    def __init__(self) -> None:
        self.told: dict[str, Any] | None = None

    def run(self, db: Any, sv: Any) -> None:
        if sv is None:   # no server facade: nobody to tell
            return
        now = {"users": members(sv, str(Public())),
               "rooms": {r.name: members(sv, str(RoomChannel(name=r.name)))
                         for r in db.query(Room)}}
        if now != self.told:
            sv.publish([Public()], "Online", now)
            self.told = now


class PruneMessages(Task.Interval):
    """Delete messages older than KEEP_SECONDS, once a minute."""

    every = 60.0
    keep = KEEP_SECONDS

    def run(self, db: Any, sv: Any) -> None:
        old = db.query(ChatMessage, time__lt=time.time() - self.keep)
        for message in old:
            db.drop(ChatMessage, message.pk)
