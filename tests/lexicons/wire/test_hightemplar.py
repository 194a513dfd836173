"""The pure high-templar protocol: rooms, permission, every client message, triggers."""
from __future__ import annotations

import json

import pytest

from lexicons.errors import BadTrigger, ProtocolError
from lexicons.wire.hightemplar import (
    Joined,
    Left,
    Reply,
    Session,
    Status,
    StatusAsked,
    Trigger,
    allowed_rooms_of,
    error,
    id_json,
    id_key,
    is_pattern,
    matches,
    parse_pattern_message,
    parse_trigger,
    pattern_message,
    permitted,
    publish_message,
    publish_payload,
    refusal,
    room_key,
    status_reply,
    valid_allowed_rooms,
    welcome,
)

ALLOWED = [{"target": "message", "customer": "1"}, {"target": "user", "id": "*"}]
CID = "c0ffee"


def session() -> Session:
    return Session(CID, ALLOWED)


def replies(actions) -> list:
    """Return the replies among *actions*, decoded from JSON where they are JSON."""
    out = []
    for action in actions:
        if isinstance(action, Reply):
            try:
                out.append(json.loads(action.text))
            except ValueError:
                out.append(action.text)
    return out


def subscribe(s: Session, room, request_id="1"):
    message = {"type": "subscribe", "room": room}
    if request_id is not None:
        message["requestId"] = request_id
    return s.receive(json.dumps(message))


# --- rooms and permission ---------------------------------------------------------------


def test_room_identity_ignores_key_order():
    """Two rooms with the same keys and values are one room whatever their key order."""
    assert room_key({"a": 1, "b": "x"}) == room_key({"b": "x", "a": 1})
    assert room_key({"a": 1}) != room_key({"a": "1"})
    assert room_key({"a": 1}) != room_key({"a": 1, "b": 2})


def test_permission_needs_the_same_key_set():
    """A room with fewer or more keys than every allowed room is not permitted."""
    assert permitted({"target": "message", "customer": "1"}, ALLOWED)
    assert not permitted({"target": "message"}, ALLOWED)
    assert not permitted({"target": "message", "customer": "1", "x": 1}, ALLOWED)


def test_permission_values_equal_or_wildcard():
    """Each value must equal the allowed one, unless the allowed value is "*"."""
    assert not permitted({"target": "message", "customer": "2"}, ALLOWED)
    assert permitted({"target": "user", "id": 42}, ALLOWED)
    assert permitted({"id": "anything", "target": "user"}, ALLOWED)
    assert not permitted({"target": "*", "customer": "1"}, ALLOWED)  # "*" only on the allowed side


def test_permission_compares_values_as_high_templar():
    """Values compare with Python's == as in high-templar 3.1.0: true is 1, 1.0 is 1."""
    assert permitted({"flag": 1}, [{"flag": True}])
    assert permitted({"flag": False}, [{"flag": 0}])
    assert permitted({"flag": True}, [{"flag": True}])
    assert permitted({"n": 1.0}, [{"n": 1}])
    assert not permitted({"n": "1"}, [{"n": 1}])


def test_permission_refuses_non_objects():
    """A room that is not a JSON object is never permitted."""
    for room in (None, "room", ["target"], 5):
        assert not permitted(room, ALLOWED)


def test_allowed_rooms_of_reads_as_high_templar():
    """Missing allowed_rooms (or an empty string or object) is none; repeats are kept once."""
    assert allowed_rooms_of({}) == []
    assert allowed_rooms_of({"allowed_rooms": ""}) == []
    assert allowed_rooms_of({"allowed_rooms": {}}) == []
    assert allowed_rooms_of({"allowed_rooms": [{"a": 1, "b": 2}, {"b": 2, "a": 1}]}) == [
        {"a": 1, "b": 2}]
    for bad in (None, "x", [1], {"a": 1}, 5):
        assert allowed_rooms_of({"allowed_rooms": bad}) is None


def test_a_trigger_pattern_matches_rooms_with_the_same_keys():
    """A "*" value in a trigger's room matches any value; other values must be equal."""
    pattern = {"target": "user", "id": "*"}
    assert is_pattern(pattern) and not is_pattern({"target": "user", "id": 7})
    assert matches(pattern, {"id": 7, "target": "user"})
    assert matches(pattern, {"target": "user", "id": "x"})
    assert not matches(pattern, {"target": "message", "id": 7})
    assert not matches(pattern, {"target": "user", "id": 7, "extra": 1})
    assert not matches(pattern, {"target": "user"})
    assert matches({"flag": 1, "x": "*"}, {"flag": True, "x": 0})  # Python ==, as 3.1.0


def test_pattern_message_round_trips_the_room_and_the_data_bytes():
    """A pattern publish carries its room and the data exactly, even with newlines."""
    room = {"name": "a\nb", "id": "*"}
    data = b'{"text":"line\\nbreak"}'
    assert parse_pattern_message(pattern_message(room, data)) == (room, data)


def test_valid_allowed_rooms():
    """allowed_rooms must be a list of objects."""
    assert valid_allowed_rooms([]) and valid_allowed_rooms(ALLOWED)
    for bad in (None, {}, "x", [1], [{"a": 1}, "b"]):
        assert not valid_allowed_rooms(bad)


# --- first message ----------------------------------------------------------------------


def test_welcome_and_refusal():
    """The first message says whether the client is authorized and lists its rooms."""
    assert json.loads(welcome(ALLOWED)) == {"is_authorized": True, "allowed_rooms": ALLOWED}
    assert json.loads(refusal()) == {"is_authorized": False}


# --- client messages --------------------------------------------------------------------


def test_ping_gets_raw_pong():
    """Raw text ping is answered with raw text pong, not JSON."""
    assert session().receive("ping") == [Reply("pong")]


def test_json_ping_string_is_not_a_ping():
    """Only the raw text ping is a ping; the JSON string "ping" has no type."""
    assert replies(session().receive('"ping"')) == [
        {"requestId": CID, "code": "error", "message": "message-type-not-allowed"}]


def test_subscribe_success():
    """A permitted subscribe joins the room under its requestId and answers success."""
    s = session()
    room = {"customer": "1", "target": "message"}
    actions = subscribe(s, room, "7")
    assert actions == [Joined(room_key(room), room, "7"), Reply('{"code": "success"}')]
    assert list(s.subscriptions.values())[0].request_id == "7"


def test_subscribe_not_permitted():
    """A subscribe to a room not allowed answers room-not-found and joins nothing."""
    s = session()
    assert replies(subscribe(s, {"target": "message", "customer": "2"})) == [
        {"code": "error", "message": "room-not-found"}]
    assert s.subscriptions == {}


def test_subscribe_without_room():
    """A subscribe without a room (or with a room that is not an object) is room-not-found."""
    s = session()
    assert replies(s.receive('{"type":"subscribe","requestId":"1"}')) == [
        {"code": "error", "message": "room-not-found"}]
    assert replies(subscribe(s, "message")) == [{"code": "error", "message": "room-not-found"}]


def test_subscribe_without_request_id():
    """A subscribe without the requestId key answers no-request-id."""
    s = session()
    room = {"target": "message", "customer": "1"}
    assert replies(subscribe(s, room, None)) == [{"code": "error", "message": "no-request-id"}]
    assert s.subscriptions == {}


def test_null_request_id_is_an_id():
    """requestId null is an id like any other, as high-templar 3.1.0 tests for the key."""
    s = session()
    room = {"target": "message", "customer": "1"}
    assert replies(s.receive(json.dumps({"type": "subscribe", "room": room,
                                         "requestId": None}))) == [{"code": "success"}]
    assert replies(s.receive('{"type":"unsubscribe","requestId":null}')) == [
        {"code": "success"}]


def test_request_ids_compare_as_high_templar():
    """1, 1.0 and true are one request id (Python's ==); "1" is another."""
    assert id_key(1) == id_key(1.0) == id_key(True)
    assert id_key(0) == id_key(False)
    assert id_key("1") != id_key(1)
    s = session()
    room = {"target": "message", "customer": "1"}
    subscribe(s, room, 1)
    assert replies(subscribe(s, room, 1.0)) == [{"code": "success"}]
    assert len(s.subscriptions) == 1
    assert replies(s.receive('{"type":"unsubscribe","requestId":true}')) == [
        {"code": "success"}]


def test_numeric_request_ids_work_and_differ_from_strings():
    """A requestId may be any JSON value; 1 and "1" are different subscriptions."""
    s = session()
    room = {"target": "message", "customer": "1"}
    subscribe(s, room, 1)
    subscribe(s, room, "1")
    assert len(s.subscriptions) == 2
    assert replies(s.receive('{"type":"unsubscribe","requestId":1}')) == [{"code": "success"}]
    assert [sub.request_id for sub in s.subscriptions.values()] == ["1"]


def test_two_subscriptions_of_one_room():
    """The same room under two requestIds is two subscriptions."""
    s = session()
    room = {"target": "message", "customer": "1"}
    subscribe(s, room, "a")
    subscribe(s, room, "b")
    assert sorted(sub.request_id for sub in s.subscriptions.values()) == ["a", "b"]


def test_one_request_id_may_name_two_rooms():
    """Subscribing another room under a requestId keeps both (3.1.0); unsubscribe ends one."""
    s = session()
    first = {"target": "message", "customer": "1"}
    second = {"target": "user", "id": 3}
    subscribe(s, first, "x")
    actions = subscribe(s, second, "x")
    assert actions == [Joined(room_key(second), second, "x"), Reply('{"code": "success"}')]
    assert len(s.subscriptions) == 2
    assert s.receive('{"type":"unsubscribe","requestId":"x"}')[0] == Left(room_key(first), "x")
    assert s.receive('{"type":"unsubscribe","requestId":"x"}')[0] == Left(room_key(second), "x")
    assert replies(s.receive('{"type":"unsubscribe","requestId":"x"}')) == [
        {"code": "error", "message": "not-subscribed"}]


def test_same_subscription_twice_is_one():
    """The same room under the same requestId again answers success and stays one."""
    s = session()
    room = {"target": "message", "customer": "1"}
    subscribe(s, room, "x")
    assert subscribe(s, dict(reversed(list(room.items()))), "x") == [
        Reply('{"code": "success"}')]
    assert len(s.subscriptions) == 1


def test_unsubscribe_success():
    """Unsubscribe of a known requestId leaves its room and answers success."""
    s = session()
    room = {"target": "message", "customer": "1"}
    subscribe(s, room, "1")
    actions = s.receive('{"type":"unsubscribe","requestId":"1"}')
    assert actions == [Left(room_key(room), "1"), Reply('{"code": "success"}')]
    assert s.subscriptions == {}


def test_unsubscribe_unknown_id():
    """Unsubscribe of an unknown requestId answers not-subscribed."""
    assert replies(session().receive('{"type":"unsubscribe","requestId":"9"}')) == [
        {"code": "error", "message": "not-subscribed"}]


def test_unsubscribe_without_request_id():
    """Unsubscribe without requestId answers no-request-id."""
    assert replies(session().receive('{"type":"unsubscribe"}')) == [
        {"code": "error", "message": "no-request-id"}]


def test_status_is_asked_of_the_driver():
    """A status message asks the driver for the counters."""
    assert session().receive('{"type":"status"}') == [StatusAsked()]


def test_status_reply_shape():
    """The status reply carries the connection, room and message counters."""
    reply = json.loads(status_reply(Status(3, 2, "2024-01-02T03:04:05.000001", 4, 10, 9, 1)))
    assert reply == {"open_connections": 3, "num_rooms": 2,
                     "online_since": "2024-01-02T03:04:05.000001",
                     "rabbitmq_messages_received": 4, "ws_messages_received": 10,
                     "ws_messages_send": 9, "ws_messages_send_error": 1,
                     "ws_messages_send_queued": 0}


@pytest.mark.parametrize("text", ['{"type":"publish","data":1}', '{"type":"nope"}', "{}",
                                  '{"type":5}', "[1, 2]", "42", "null", '"subscribe"'])
def test_other_types_are_not_allowed(text):
    """Any other type (or no type) answers message-type-not-allowed with the connection id."""
    assert replies(session().receive(text)) == [
        {"requestId": CID, "code": "error", "message": "message-type-not-allowed"}]


@pytest.mark.parametrize("text", ["", "pong", "PING", "ping ", "{", "{'a': 1}", "\x00",
                                  '{"type": "status", "n": ' + "9" * 5000 + "}"])
def test_non_json_text(text):
    """Text that is not JSON (and not exactly ping) answers non-json-message."""
    assert replies(session().receive(text)) == [
        {"requestId": CID, "code": "error", "message": "non-json-message"}]


def test_binary_is_read_as_json():
    """A binary message is read as JSON (3.1.0 hands it to json.loads); b"ping" is not ping."""
    assert replies(session().receive_binary(b"\x01\x02")) == [
        {"requestId": CID, "code": "error", "message": "non-json-message"}]
    assert replies(session().receive_binary(b"ping")) == [
        {"requestId": CID, "code": "error", "message": "non-json-message"}]
    assert session().receive_binary(b'{"type":"status"}') == [StatusAsked()]


def test_replies_are_the_bytes_high_templar_sends():
    """Replies are encoded as 3.1.0's json.dumps: ", " and ": " separators, ASCII escapes."""
    assert welcome([{"a": "é"}]) == '{"is_authorized": true, "allowed_rooms": [{"a": "\\u00e9"}]}'
    assert refusal() == '{"is_authorized": false}'
    assert publish_message({"t": "é"}, "a") == (
        '{"type": "publish", "data": {"t": "\\u00e9"}, "requestId": "a"}')


def test_error_reply_key_order():
    """Errors naming the connection put requestId first, as high-templar sent them."""
    assert error("non-json-message", "abc", with_id=True) == (
        '{"requestId": "abc", "code": "error", "message": "non-json-message"}')
    assert error("no-request-id") == '{"code": "error", "message": "no-request-id"}'


def test_close_leaves_every_room():
    """Closing a session reports every subscription left and forgets them."""
    s = session()
    subscribe(s, {"target": "message", "customer": "1"}, "a")
    subscribe(s, {"target": "user", "id": 1}, "b")
    left = s.close()
    assert sorted(x.request_id for x in left) == ["a", "b"]
    assert s.subscriptions == {} and s.close() == []


# --- publish ----------------------------------------------------------------------------


def test_publish_message_shape():
    """A publish carries type, the data and the subscription's requestId."""
    text = publish_message({"id": 1, "name": "é"}, "r1")
    assert json.loads(text) == {"type": "publish", "data": {"id": 1, "name": "é"},
                                "requestId": "r1"}
    assert json.loads(publish_message(None, 5)) == {"type": "publish", "data": None,
                                                    "requestId": 5}


def test_publish_payload_splices_encoded_parts():
    """The fast path splices data encoded once and an id encoded once into valid JSON."""
    payload = publish_payload(b'[1,{"a":"\\u00e9"}]', id_json("x\"y"))
    assert json.loads(payload) == {"type": "publish", "data": [1, {"a": "é"}],
                                   "requestId": 'x"y'}


# --- triggers ---------------------------------------------------------------------------


def test_trigger_parses():
    """A trigger body with rooms and data gives both; data may be null."""
    t = parse_trigger(b'{"rooms":[{"target":"message"}],"data":{"x":1}}')
    assert t == Trigger([{"target": "message"}], {"x": 1})
    assert t.data_json == b'{"x": 1}'
    assert parse_trigger('{"rooms":[],"data":null}') == Trigger([], None)


@pytest.mark.parametrize("body, reason", [
    (b"not json", "body is not JSON"),
    (b"\xff\xfe", "body is not JSON"),
    (b"", "body is not JSON"),
    (b"[1]", "body must be a JSON object with rooms and data"),
    (b'{"data": 1}', "rooms is missing"),
    (b'{"rooms": []}', "data is missing"),
    (b"{}", "rooms is missing"),
    (b'{"rooms": {"a": 1}, "data": 1}', "rooms must be a list of objects"),
    (b'{"rooms": ["a"], "data": 1}', "rooms must be a list of objects"),
])
def test_bad_triggers_name_the_problem(body, reason):
    """A trigger without rooms or data, or not JSON, is refused with the reason."""
    with pytest.raises(BadTrigger) as caught:
        parse_trigger(body)
    assert str(caught.value) == reason
    assert isinstance(caught.value, ProtocolError) and isinstance(caught.value, ValueError)


def test_deeply_nested_json_is_non_json():
    """JSON nested too deeply for the parser is answered as non-json, never a crash."""
    from lexicons.errors import BadTrigger as _BadTrigger
    from lexicons.wire import hightemplar as ht_mod

    session = ht_mod.Session("conn-1", allowed_rooms=[])
    (action,) = session.receive("[" * 100000)
    assert "non-json-message" in action.text
    import pytest as _pytest

    with _pytest.raises(_BadTrigger, match="not JSON"):
        ht_mod.parse_trigger("[" * 100000)
