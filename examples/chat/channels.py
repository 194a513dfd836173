"""Who hears what: the lobby-wide channel, one channel per room, one inbox per user.

Permissions come from the patterns the Login and Register headers grant a
connection in ``ws.auth["channels"]`` (see :func:`grants`); the default
``Channel.permit`` matches the channel's name against them, ``*`` matching
anything. So ``"room:*"`` opens every room's channel, while ``"user:alice"``
opens only Alice's inbox: nobody else can subscribe to it.
"""
from __future__ import annotations

from lexicons.channel import Channel


class Public(Channel):
    """Everyone logged in: new rooms and who is online."""

    name = "public"


class RoomChannel(Channel):
    """The members of one room (``room:lobby``): its messages, arrivals and departures.

    Its recent broadcasts are kept (and saved across a restart), so a page that
    reconnects gets the messages sent while it was away.
    """

    name = "room:{name}"
    history_size = 200
    history_ttl = 3600
    history_persist = True


class Inbox(Channel):
    """One user's private channel (``user:alice``): direct messages to or from them."""

    name = "user:{name}"
    history_size = 200
    history_ttl = 3600
    history_persist = True


def grants(user: str) -> list[str]:
    """Return the channel patterns a logged-in *user* may subscribe to."""
    return ["public", "room:*", f"user:{user}"]
