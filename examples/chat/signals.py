"""What a chat client may call.

Every signal runs for a connection the headers admitted, so ``ws.auth["user"]``
is the caller's name. Public rooms are channels ``room:<name>``; a direct
conversation between two users is the room ``dm:<a>+<b>`` (names sorted), whose
messages go to the two users' inboxes ``user:<name>``.

Calls and what they answer (``[{"Name": answer}]``) or broadcast:

=================================  ===============================================
``Rooms {}``                       the rooms, each with who is in it now
``CreateRoom {name, topic?}``      broadcasts the new room on ``public``
``Join {room}``                    broadcasts ``{room, user}`` to the room; answers
                                   the room's recent messages and who is in it
``Leave {room}``                   broadcasts ``{room, user}`` to the room
``Send {room, text}``              broadcasts the message as ``Message`` to the
                                   room (or both inboxes for ``dm:`` rooms)
``History {room, before?, limit?}``  messages older than ``before``, oldest first
``Online {}``                      the users in ``public`` now (a page joins it
                                   once logged in)
=================================  ===============================================
"""
from __future__ import annotations

import re
import time
from typing import Any

from lexicons.errors import CallError, NotPermitted
from lexicons.signal import Response, Signal

from .channels import Inbox, Public, RoomChannel
from .models import ChatMessage, Room, User

ROOM_NAME = re.compile(r"^[a-z0-9_-]{1,32}$")
MAX_TEXT = 2000
HISTORY = 50


# --- helpers shared by the signals (and the tasks) ----------------------------------------


def members(sv: Any, channel: str) -> list[str]:
    """Return the names of the users connected to *channel* on this node, sorted."""
    rooms = sv.service("rooms")
    return sorted({conn.auth.get("user") for conn in rooms.members(channel)} - {None})


def dm_room(a: str, b: str) -> str:
    """Return the room name of the private conversation between users *a* and *b*."""
    first, second = sorted((a, b))
    return f"dm:{first}+{second}"


def dm_members(room: str) -> list[str]:
    """Return the two users of a ``dm:`` room."""
    return room[3:].split("+", 1)


def message_dict(db: Any, message: ChatMessage, names: dict[str, str] | None = None) -> dict:
    """Return a message as the clients see it (the author by name)."""
    names = {} if names is None else names
    author = names.get(message.author)
    if author is None:
        user = db.get(User, message.author)
        author = names[message.author] = user.name if user is not None else "?"
    return {"id": message.pk, "room": message.room, "author": author,
            "text": message.text, "time": message.time}


def recent(db: Any, room: str, before: float | None = None,
           limit: int = HISTORY) -> list[dict]:
    """Return up to *limit* messages of *room* older than *before*, oldest first."""
    filters: dict[str, Any] = {"room": room, "_sort": "-time", "_limit": limit}
    if before is not None:
        filters["time__lt"] = before
    rows = db.query(ChatMessage, **filters)
    names: dict[str, str] = {}
    return [message_dict(db, m, names) for m in reversed(rows)]


def check_room(db: Any, ws: Any, room: str) -> str:
    """Return the channel of *room* if the caller may read and write it, else raise."""
    user = ws.auth["user"]
    if room.startswith("dm:"):
        pair = dm_members(room)
        if user not in pair or dm_room(*pair) != room:
            raise NotPermitted(f"not permitted: {room!r} is a conversation of other users")
        return str(Inbox(name=user))
    if db.get(Room, name=room) is None:
        raise CallError(f"no room named {room!r}")
    return str(RoomChannel(name=room))


# --- the signals ----------------------------------------------------------------------


class Rooms(Signal):
    """List the rooms, with who is in each now."""

    def execute(self, db: Any, sv: Any) -> list[dict]:
        rows = db.query(Room, _sort="name")
        return [{"name": r.name, "topic": r.topic,
                 "members": members(sv, str(RoomChannel(name=r.name)))} for r in rows]


class CreateRoom(Signal):
    """Create a public room and tell everyone about it."""

    def execute(self, name: str, ws: Any, db: Any, topic: str = "") -> Response:
        name = name.strip().lower()
        if not ROOM_NAME.match(name):
            raise CallError("a room name is 1 to 32 of a-z, 0-9, '_' or '-'")
        creator = db.get(User, name=ws.auth["user"])
        room, created = db.get_or_create(
            Room, name=name, defaults={"topic": topic[:200], "creator": creator,
                                       "created": time.time()})
        if not created:
            raise CallError(f"a room named {name!r} exists already")
        payload = {"name": room.name, "topic": room.topic, "members": []}
        return Response(payload, channels=[Public()], reply=payload)


class Join(Signal):
    """Enter a room: hear its messages from now on; get its recent ones."""

    def execute(self, room: str, ws: Any, db: Any, sv: Any) -> Response:
        channel = check_room(db, ws, room)
        if room.startswith("dm:"):   # the inbox is joined already: just the history
            return Response({"room": room, "messages": recent(db, room), "members": []})
        already = channel in ws.channels
        sv.subscribe(ws, channel, check=True)   # the channel's permission applies
        answer = {"room": room, "messages": recent(db, room), "members": members(sv, channel)}
        if already:
            return Response(answer)
        return Response({"room": room, "user": ws.auth["user"]}, channels=[channel],
                        reply=answer)


class Leave(Signal):
    """Leave a room: tell those still in it."""

    def execute(self, room: str, ws: Any, sv: Any) -> Response:
        channel = str(RoomChannel(name=room))
        if channel not in ws.channels:
            raise CallError(f"you are not in room {room!r}")
        sv.unsubscribe(ws, channel)
        payload = {"room": room, "user": ws.auth["user"]}
        return Response(payload, channels=[channel], reply=payload)


class Send(Signal):
    """Say something in a room (joined first) or to another user (``dm:`` room)."""

    def execute(self, room: str, text: str, ws: Any, db: Any) -> Response:
        text = text.strip()
        if not text:
            raise CallError("say something: the text is empty")
        if len(text) > MAX_TEXT:
            raise CallError(f"a message has at most {MAX_TEXT} characters")
        user = ws.auth["user"]
        if room.startswith("dm:"):
            check_room(db, ws, room)
            other = ([n for n in dm_members(room) if n != user] or [user])[0]
            if db.get(User, name=other) is None:
                raise CallError(f"there is no user named {other!r}")
            channels = [Inbox(name=n) for n in dm_members(room)]
        else:
            channel = str(RoomChannel(name=room))
            if channel not in ws.channels:
                raise CallError(f"join room {room!r} before sending to it")
            channels = [channel]
        author = db.get(User, name=user)
        message = db.create(ChatMessage, author=author, room=room, text=text, time=time.time())
        return Response(message_dict(db, message, {author.pk: user}), channels=channels,
                        name="Message")


class History(Signal):
    """Return up to *limit* messages of a room older than *before*, oldest first."""

    def execute(self, room: str, ws: Any, db: Any, before: float | None = None,
                limit: int = HISTORY) -> list[dict]:
        check_room(db, ws, room)
        if not 1 <= limit <= 500:
            raise CallError("limit is from 1 to 500")
        return recent(db, room, before, limit)


class Online(Signal):
    """Return the names of the users in the public channel now (who is online)."""

    def execute(self, sv: Any) -> list[str]:
        return members(sv, str(Public()))
