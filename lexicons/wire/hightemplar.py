"""The high-templar 3.x protocol, pure: text in, replies and membership changes out.

lexicons serves existing high-templar clients on ``/ws/``. This module holds
everything of that protocol that is not I/O; the driver
(``services/hightemplar.py``) owns sockets, threads, the clock and the
counters, and feeds this module text.

The protocol, as clients see it:

* After the backend's bootstrap answer: ``{"is_authorized": true,
  "allowed_rooms": [...]}``, or ``{"is_authorized": false}`` and a close 1000.
* A room is a JSON object; two rooms are the same whatever the order of their
  keys (:func:`room_key`). A client may join a room when it has the key set of
  one of its allowed rooms and each value equals the allowed one, or the
  allowed value is ``"*"`` (:func:`permitted`).
* Client messages (:meth:`Session.receive`): raw ``ping`` -> raw ``pong``;
  ``subscribe`` / ``unsubscribe`` keyed by ``requestId``; ``status``; any other
  type -> ``message-type-not-allowed`` and text that is not JSON ->
  ``non-json-message``, both carrying the connection id as ``requestId``.
* A publish reaches every subscription of the exact room, each with its own
  ``requestId`` (:func:`publish_message`); a trigger's room with a ``"*"``
  value reaches the subscriptions of every room it matches (:func:`matches`).
* Triggers (HTTP ``POST /trigger/`` and AMQP) carry ``{"rooms": [...],
  "data": ...}`` (:func:`parse_trigger`).
"""
from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from lexicons.errors import BadTrigger

PING = "ping"
PONG = "pong"
WILDCARD = "*"

SUCCESS = {"code": "success"}
NO_REQUEST_ID = "no-request-id"
ROOM_NOT_FOUND = "room-not-found"
NOT_SUBSCRIBED = "not-subscribed"
TYPE_NOT_ALLOWED = "message-type-not-allowed"
NON_JSON = "non-json-message"


def dumps(value: Any) -> str:
    """Encode *value* as high-templar 3.1.0 does (``json.dumps``: ``", "``, ASCII only).

    Clients see the same bytes as from high-templar, so even one that compares
    text rather than parsing it is served alike.
    """
    return json.dumps(value)


# --- rooms and permission -------------------------------------------------------------


def room_key(room: Mapping[str, Any]) -> str:
    """Return the identity of *room*: the same for any order of its keys."""
    return json.dumps(room, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def permitted(room: Any, allowed_rooms: Iterable[Mapping[str, Any]]) -> bool:
    """Tell whether *room* matches an allowed room (same keys; equal values, or ``"*"``).

    Values compare as high-templar 3.1.0 compares them, with Python's ``==``
    (so ``1``, ``1.0`` and ``true`` are equal); a requested ``"*"`` matches only
    an allowed ``"*"``.
    """
    if not isinstance(room, Mapping):
        return False
    return any(matches(allowed, room) for allowed in allowed_rooms)


def matches(pattern: Mapping[str, Any], room: Mapping[str, Any]) -> bool:
    """Tell whether *room* fits *pattern*: the same keys, each value equal or ``"*"``."""
    if len(pattern) != len(room) or set(pattern) != set(room):
        return False
    return all(pattern[k] == WILDCARD or pattern[k] == room[k] for k in pattern)


def is_pattern(room: Mapping[str, Any]) -> bool:
    """Tell whether a trigger's room has a ``"*"`` value (it then reaches every room it
    matches, :func:`matches`)."""
    return any(value == WILDCARD for value in room.values())


def pattern_message(room: Mapping[str, Any], data_json: bytes) -> bytes:
    """Encode a publish to a room pattern for the backplane: the room's key, a newline,
    the data (a room key holds no raw newline)."""
    return room_key(room).encode("utf-8") + b"\n" + data_json


def parse_pattern_message(message: bytes) -> tuple[dict[str, Any], bytes]:
    """Return the room pattern and the encoded data of :func:`pattern_message`'s output."""
    key, _, data_json = message.partition(b"\n")
    return json.loads(key), data_json



def allowed_rooms_of(answer: Mapping[str, Any]) -> list[dict[str, Any]] | None:
    """Return the rooms a bootstrap answer allows, as high-templar 3.1.0 reads them.

    3.1.0 reads ``answer.get('allowed_rooms', [])`` and makes a room of each
    item: a missing key means no rooms, and so does an empty string or object
    (iterating one gives nothing). Returns None when the value is not a list
    of objects (3.1.0 refuses the client, or fails on it). Repeated rooms are
    kept once, as 3.1.0 keeps them in a set.
    """
    rooms = answer.get("allowed_rooms", [])
    if rooms == "" or rooms == {}:
        return []
    if not valid_allowed_rooms(rooms):
        return None
    return list({room_key(room): room for room in rooms}.values())


def valid_allowed_rooms(value: Any) -> bool:
    """Tell whether a backend's ``allowed_rooms`` is a list of JSON objects."""
    return isinstance(value, list) and all(isinstance(room, dict) for room in value)


# --- messages sent to clients ---------------------------------------------------------


def welcome(allowed_rooms: list[dict[str, Any]]) -> str:
    """Return the first message to an authorized client."""
    return dumps({"is_authorized": True, "allowed_rooms": allowed_rooms})


def refusal() -> str:
    """Return the first (and last) message to a client the backend did not authorize."""
    return dumps({"is_authorized": False})


def error(message: str, request_id: Any = None, *, with_id: bool = False) -> str:
    """Return an error reply; *with_id* puts ``requestId`` first, as high-templar did."""
    if with_id:
        return dumps({"requestId": request_id, "code": "error", "message": message})
    return dumps({"code": "error", "message": message})


def id_json(request_id: Any) -> bytes:
    """Return a request id encoded once, to be spliced into publishes."""
    return dumps(request_id).encode("utf-8")


def publish_payload(data_json: bytes, request_id_json: bytes) -> bytes:
    """Return the publish of already-encoded data for one already-encoded request id.

    The data is encoded once per publish and each subscription's id once per
    subscription; the messages of one publish differ only by their ``requestId``.
    """
    return (b'{"type": "publish", "data": ' + data_json + b', "requestId": ' + request_id_json
            + b"}")


def publish_message(data: Any, request_id: Any) -> str:
    """Return the publish of *data* for the subscription named *request_id*."""
    return publish_payload(dumps(data).encode("utf-8"), id_json(request_id)).decode("utf-8")


@dataclass(frozen=True)
class Status:
    """The counters a ``status`` message answers with (high-templar 3.1.0's names)."""

    open_connections: int
    num_rooms: int
    online_since: str
    #: AMQP messages consumed, good or bad (``rabbitmq_messages_received``)
    amqp_received: int
    #: client messages received (3.1.0 declares this counter but never counts)
    received: int
    #: publishes handed to connections (``ws_messages_send``)
    sent: int
    #: publishes that found their connection closed (``ws_messages_send_error``)
    failed: int


def status_reply(status: Status) -> str:
    """Return the reply to ``{"type": "status"}``, with high-templar 3.1.0's keys.

    ``ws_messages_send_queued`` counts publishes handed over but not yet sent;
    a publish here is sent once it is in its connection's outbound buffer, so
    there are none in that state.
    """
    return dumps({
        "open_connections": status.open_connections,
        "num_rooms": status.num_rooms,
        "online_since": status.online_since,
        "rabbitmq_messages_received": status.amqp_received,
        "ws_messages_received": status.received,
        "ws_messages_send": status.sent,
        "ws_messages_send_error": status.failed,
        "ws_messages_send_queued": 0,
    })


# --- what the session asks of its driver ----------------------------------------------


@dataclass(frozen=True)
class Reply:
    """Send *text* to this client."""

    text: str


@dataclass(frozen=True)
class Joined:
    """This connection now receives publishes of *room* (key *key*) as *request_id*."""

    key: str
    room: dict[str, Any]
    request_id: Any


@dataclass(frozen=True)
class Left:
    """This connection no longer receives publishes of room *key* as *request_id*."""

    key: str
    request_id: Any


@dataclass(frozen=True)
class StatusAsked:
    """The client asked for the counters; answer with :func:`status_reply`."""


Action = Reply | Joined | Left | StatusAsked


@dataclass(frozen=True)
class Subscription:
    """One subscription of a connection: a room under the client's request id."""

    key: str
    room: dict[str, Any]
    request_id: Any

    @property
    def id_key(self) -> str:
        """Return the identity of the request id (any JSON value)."""
        return id_key(self.request_id)


def id_key(request_id: Any) -> str:
    """Return a hashable identity for a request id of any JSON type.

    Ids compare as high-templar 3.1.0 compares them, with Python's ``==``:
    ``1``, ``1.0`` and ``true`` are one id, ``"1"`` another.
    """
    if isinstance(request_id, bool):
        request_id = int(request_id)
    elif isinstance(request_id, float) and request_id.is_integer():
        request_id = int(request_id)
    return dumps(request_id)


class Session:
    """The protocol state of one high-templar connection (its subscriptions).

    As in high-templar 3.1.0, a subscription is a (request id, room) pair: the
    same id may name subscriptions of several rooms (each gets the publishes of
    its room), the same pair again is the same subscription, and an unsubscribe
    ends one subscription of its id (the oldest here).

    Not thread-safe: the driver feeds one connection's messages in order from
    one thread at a time.
    """

    def __init__(self, connection_id: str, allowed_rooms: list[dict[str, Any]]):
        self.connection_id = connection_id
        self.allowed_rooms = allowed_rooms
        # (request id key, room key) -> subscription, oldest first
        self.subscriptions: dict[tuple[str, str], Subscription] = {}

    def receive(self, text: str | bytes) -> list[Action]:
        """Handle one message from the client; return what to do, in order."""
        if text == PING:
            return [Reply(PONG)]
        try:
            message = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested too deeply
            return [Reply(error(NON_JSON, self.connection_id, with_id=True))]
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "subscribe":
            return self._subscribe(message)
        if kind == "unsubscribe":
            return self._unsubscribe(message)
        if kind == "status":
            return [StatusAsked()]
        return [Reply(error(TYPE_NOT_ALLOWED, self.connection_id, with_id=True))]

    def receive_binary(self, data: bytes) -> list[Action]:
        """Handle a binary message: JSON in it counts, as high-templar 3.1.0 reads it."""
        return self.receive(data)

    def _subscribe(self, message: dict[str, Any]) -> list[Action]:
        if "requestId" not in message:
            return [Reply(error(NO_REQUEST_ID))]
        request_id = message["requestId"]
        room = message.get("room")
        if not permitted(room, self.allowed_rooms):
            return [Reply(error(ROOM_NOT_FOUND))]
        key = room_key(room)
        pair = (id_key(request_id), key)
        if pair in self.subscriptions:  # the same subscription again
            return [Reply(dumps(SUCCESS))]
        self.subscriptions[pair] = Subscription(key, dict(room), request_id)
        return [Joined(key, dict(room), request_id), Reply(dumps(SUCCESS))]

    def _unsubscribe(self, message: dict[str, Any]) -> list[Action]:
        if "requestId" not in message:
            return [Reply(error(NO_REQUEST_ID))]
        wanted = id_key(message["requestId"])
        for pair, old in self.subscriptions.items():
            if pair[0] == wanted:
                del self.subscriptions[pair]
                return [Left(old.key, old.request_id), Reply(dumps(SUCCESS))]
        return [Reply(error(NOT_SUBSCRIBED))]

    def close(self) -> list[Left]:
        """Drop every subscription (the connection is gone); return what was left."""
        left = [Left(s.key, s.request_id) for s in self.subscriptions.values()]
        self.subscriptions.clear()
        return left


# --- triggers -------------------------------------------------------------------------


@dataclass(frozen=True)
class Trigger:
    """A publish asked by the backend: *data* to every subscription of each room."""

    rooms: list[dict[str, Any]]
    data: Any

    @property
    def data_json(self) -> bytes:
        """Return the data encoded once, as every publish message carries it."""
        return dumps(self.data).encode("utf-8")


def parse_trigger(body: bytes | str) -> Trigger:
    """Return the trigger in *body*; BadTrigger says what is wrong with it."""
    try:
        message = json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise BadTrigger("body is not JSON") from None
    if not isinstance(message, dict):
        raise BadTrigger("body must be a JSON object with rooms and data")
    if "rooms" not in message:
        raise BadTrigger("rooms is missing")
    if "data" not in message:
        raise BadTrigger("data is missing")
    rooms = message["rooms"]
    if not isinstance(rooms, list) or not all(isinstance(room, dict) for room in rooms):
        raise BadTrigger("rooms must be a list of objects")
    return Trigger(rooms, message["data"])
