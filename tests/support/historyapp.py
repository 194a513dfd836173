"""An application for the history, recovery and presence tests."""
from __future__ import annotations

from typing import Any

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.header import Header
from lexicons.signal import Response, Signal


class Feed(Channel):
    """Keeps its last 2000 publications for a minute."""

    name = "feed:{name}"
    history_size = 2000
    history_ttl = 60


class Short(Channel):
    """Keeps only its last 3 publications."""

    name = "short:{name}"
    history_size = 3
    history_ttl = 60


class Kept(Channel):
    """Keeps its history in DATA_DIR across a restart (memory backplane)."""

    name = "kept:{name}"
    history_size = 100
    history_ttl = 600
    history_persist = True


class Lobby(Channel):
    """Tracks who is in it (no history)."""

    name = "lobby:{name}"
    presence = True


class Stage(Channel):
    """Keeps history and tracks presence."""

    name = "stage:{name}"
    history_size = 100
    history_ttl = 60
    presence = True


class Plain(Channel):
    """Neither history nor presence."""

    name = "plain:{name}"


class User(Header):
    """Name the connection's user."""

    def execute(self, name: str, ws: Any) -> bool:
        ws.auth["user"] = name
        return True


class Post(Signal):
    """Broadcast ``{"n": n}`` on *channels*."""

    def execute(self, channels: list[str], n: int) -> Any:
        return Response({"n": n}, channels=channels, reply="posted", name="Post")


class Read(Signal):
    """Return a channel's history (a signal reading it)."""

    def execute(self, channel: str, sv: Any, limit: int = 100) -> Any:
        return sv.history(channel, limit)


def application() -> Application:
    """Return the application (fresh for each node)."""
    return Application(name="historyapp", channels=[Feed, Short, Kept, Lobby, Stage, Plain],
                       signals=[Post, Read], headers=[User])


APP = application()

# as an APP module for the daemon (APP = "tests.support.historyapp")
channels = [Feed, Short, Kept, Lobby, Stage, Plain]
signals = [Post, Read]
headers = [User]
