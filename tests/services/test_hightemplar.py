"""The high-templar endpoint end to end: real listener, real websocket clients, test backend."""
from __future__ import annotations

import datetime
import json
import threading
import time
import uuid

import pytest
from websockets.exceptions import ConnectionClosed

from tests.support.backend import ROOMS, Backend
from tests.support.brokers import require_redis
from tests.support.daemon import wait_for
from tests.support.nodes import http_request, nodes_of, trigger, ws_client

MESSAGE_ROOM = {"target": "message", "customer": "1"}
USER_ROOM = {"target": "user", "id": 7}


@pytest.fixture
def backend():
    with Backend(slow_delay=5.0) as running:
        yield running


@pytest.fixture
def nodes(tmp_path):
    with nodes_of(tmp_path) as running:
        yield running


@pytest.fixture
def node(nodes, backend):
    """One node whose backend authorizes by token (see tests.support.backend)."""
    return nodes.start(BOOTSTRAP_URL=backend.url("/bytoken"), BACKEND_TIMEOUT=1.0,
                       BACKEND_HEADERS={"X-Lexicons": "yes"})


def recv_json(client, timeout: float = 5.0):
    return json.loads(client.recv(timeout=timeout))


def authorized(node, query: str = "", **kwargs):
    """Connect and read the welcome; return the open client."""
    client = ws_client(node, query, **kwargs)
    assert recv_json(client) == {"is_authorized": True, "allowed_rooms": ROOMS}
    return client


def ask(client, message) -> dict:
    client.send(json.dumps(message) if not isinstance(message, str) else message)
    return recv_json(client)


def subscribe(client, room, request_id):
    return ask(client, {"type": "subscribe", "room": room, "requestId": request_id})


def closed_with(client, timeout: float = 5.0) -> int | None:
    """Read until the server closes; return the close code."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            client.recv(timeout=deadline - time.monotonic())
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None
    except TimeoutError:
        pytest.fail("the server did not close the connection")
    return None


def no_more_messages(client) -> None:
    """Check nothing else is queued for the client: the next reply is the pong."""
    client.send("ping")
    assert client.recv(timeout=5) == "pong"


# --- bootstrap ----------------------------------------------------------------------


def test_authorized_client_gets_rooms_and_backend_gets_headers(node, backend):
    """The welcome lists the allowed rooms; the backend saw the client's credentials."""
    client = authorized(node, "?token=T0K", user_agent_header="Agent/1",
                        additional_headers={"Cookie": "sessionid=s; csrftoken=CS",
                                            "X-Real-IP": "203.0.113.9"})
    client.close()
    seen = backend.headers_of()
    assert seen["authorization"] == "Token T0K"
    assert seen["cookie"] == "sessionid=s; csrftoken=CS"
    assert seen["x-csrftoken"] == "CS"
    assert seen["user-agent"] == "Agent/1"
    assert seen["x-real-ip"] == "203.0.113.9"
    assert seen["x-lexicons"] == "yes"


def test_x_real_ip_defaults_to_the_client_address(node, backend):
    """Without an X-Real-IP header the backend gets the client's address."""
    authorized(node).close()
    assert backend.headers_of()["x-real-ip"] == "127.0.0.1"


@pytest.mark.parametrize("token", ["deny", "garbage", "slow"])
def test_refused_client_gets_false_and_close_1000(node, token):
    """403, garbage and a backend slower than BACKEND_TIMEOUT all refuse: false, then 1000."""
    started = time.monotonic()
    client = ws_client(node, f"?token={token}")
    assert recv_json(client) == {"is_authorized": False}
    assert closed_with(client) == 1000
    assert time.monotonic() - started < 3.0  # BACKEND_TIMEOUT is 1 s
    assert node.get_service("hightemplar").info()["refused"] == 1


def test_slow_backend_does_not_stall_other_clients(node):
    """While one client waits on a slow backend, others connect and are served."""
    slow = []
    threading.Thread(target=lambda: slow.append(ws_client(node, "?token=slow")),
                     daemon=True).start()
    wait_for(lambda: slow, what="slow client connected")
    started = time.monotonic()
    fast = authorized(node)
    fast.send("ping")
    assert fast.recv(timeout=5) == "pong"
    assert time.monotonic() - started < 0.5
    assert recv_json(slow[0]) == {"is_authorized": False}
    fast.close()
    slow[0].close()


def test_unreachable_backend_refuses(nodes, tmp_path):
    """A backend that refuses connections refuses the client cleanly."""
    from tests.support.brokers import free_port

    node = nodes.start(BOOTSTRAP_URL=f"http://127.0.0.1:{free_port()}/bootstrap/")
    client = ws_client(node)
    assert recv_json(client) == {"is_authorized": False}
    assert closed_with(client) == 1000


def test_answer_without_allowed_rooms_authorizes_with_none(nodes, backend):
    """A 200 JSON object without allowed_rooms authorizes with no rooms; the protocol works."""
    node = nodes.start(BOOTSTRAP_URL=backend.url("/norooms"))
    client = ws_client(node)
    assert recv_json(client) == {"is_authorized": True, "allowed_rooms": []}
    client.send("ping")
    assert client.recv(timeout=5) == "pong"
    assert ask(client, {"type": "status"})["open_connections"] == 1
    assert subscribe(client, MESSAGE_ROOM, "1") == {"code": "error",
                                                    "message": "room-not-found"}
    assert ask(client, {"type": "nope"})["message"] == "message-type-not-allowed"
    client.close()


def test_backend_on_a_unix_socket_with_a_header_from_the_query(nodes, tmp_path):
    """BOOTSTRAP_SOCKET and a BACKEND_HEADERS source, as high-templar's API_SOCKET and
    CONNECTION_HEADERS = {'X-Session-Token': header.Param('session_token')}."""
    path = str(tmp_path / "api.sock")
    with Backend(unix_path=path) as unix_backend:
        node = nodes.start(BOOTSTRAP_URL="http://api.internal/ok", BOOTSTRAP_SOCKET=path,
                           BACKEND_HEADERS={"X-Session-Token": {"param": "session_token"}})
        authorized(node, "?session_token=s3").close()
        assert unix_backend.headers_of()["x-session-token"] == "s3"


def test_redirected_bootstrap_authorizes(nodes, backend):
    """A backend that redirects the bootstrap (say, to add a slash) still authorizes."""
    node = nodes.start(BOOTSTRAP_URL=backend.url("/redirect"))
    authorized(node).close()


def test_same_request_id_in_two_rooms_gets_both(node):
    """One requestId subscribed to two rooms receives the publishes of both (3.1.0)."""
    client = authorized(node)
    subscribe(client, MESSAGE_ROOM, "x")
    subscribe(client, USER_ROOM, "x")
    trigger(node, [MESSAGE_ROOM], "one")
    trigger(node, [USER_ROOM], "two")
    assert [recv_json(client)["data"] for _ in range(2)] == ["one", "two"]
    client.send(b'{"type":"status"}')  # binary JSON is read too
    assert recv_json(client)["num_rooms"] == 2
    client.close()


def test_endpoint_off_without_bootstrap_url(nodes):
    """Without BOOTSTRAP_URL there is no /ws/ and no /trigger/ (404)."""
    node = nodes.start()
    assert http_request(node, "POST", "/trigger/", {"rooms": [], "data": 1})[0] == 404
    with pytest.raises(Exception) as caught:
        ws_client(node)
    assert "404" in str(caught.value)
    assert node.get_service("hightemplar").info()["enabled"] is False


# --- client messages ------------------------------------------------------------------


def test_ping_pong_raw(node):
    """Raw text ping gets raw text pong."""
    client = authorized(node)
    client.send("ping")
    assert client.recv(timeout=5) == "pong"
    client.close()


def test_subscribe_replies(node):
    """subscribe: success, room-not-found, no-request-id."""
    client = authorized(node)
    assert subscribe(client, MESSAGE_ROOM, "1") == {"code": "success"}
    assert subscribe(client, {"target": "user", "id": "anything"}, "2") == {"code": "success"}
    assert subscribe(client, {"target": "message", "customer": "2"}, "3") == {
        "code": "error", "message": "room-not-found"}
    assert subscribe(client, {"target": "message"}, "4") == {
        "code": "error", "message": "room-not-found"}
    assert ask(client, {"type": "subscribe", "room": MESSAGE_ROOM}) == {
        "code": "error", "message": "no-request-id"}
    client.close()


def test_unsubscribe_replies(node):
    """unsubscribe: success, not-subscribed (unknown or already gone), no-request-id."""
    client = authorized(node)
    subscribe(client, MESSAGE_ROOM, "1")
    assert ask(client, {"type": "unsubscribe", "requestId": "1"}) == {"code": "success"}
    assert ask(client, {"type": "unsubscribe", "requestId": "1"}) == {
        "code": "error", "message": "not-subscribed"}
    assert ask(client, {"type": "unsubscribe", "requestId": "zz"}) == {
        "code": "error", "message": "not-subscribed"}
    assert ask(client, {"type": "unsubscribe"}) == {"code": "error", "message": "no-request-id"}
    client.close()


def test_other_types_and_non_json_name_the_connection(node):
    """Other types and non-JSON text are errors carrying the connection's id."""
    client = authorized(node)
    reply = ask(client, {"type": "publish", "data": 1})
    assert reply["code"] == "error" and reply["message"] == "message-type-not-allowed"
    connection_id = reply["requestId"]
    uuid.UUID(connection_id)
    assert list(reply) == ["requestId", "code", "message"]
    assert ask(client, "{not json") == {"requestId": connection_id, "code": "error",
                                        "message": "non-json-message"}
    client.send(b"\x00binary")
    assert recv_json(client) == {"requestId": connection_id, "code": "error",
                                 "message": "non-json-message"}
    other = authorized(node)
    assert ask(other, "[]")["requestId"] != connection_id
    client.close()
    other.close()


def test_status_counters(node):
    """status counts open connections and rooms; a closed connection no longer counts."""
    a = authorized(node)
    b = authorized(node)
    subscribe(a, MESSAGE_ROOM, "1")
    subscribe(b, USER_ROOM, "1")
    subscribe(b, {"customer": "1", "target": "message"}, "2")  # same room, other key order
    status = ask(a, {"type": "status"})
    assert status["open_connections"] == 2
    assert status["num_rooms"] == 2
    assert set(status) == {"open_connections", "num_rooms", "online_since",
                           "rabbitmq_messages_received", "ws_messages_received",
                           "ws_messages_send", "ws_messages_send_error",
                           "ws_messages_send_queued"}  # high-templar 3.1.0's keys
    assert status["ws_messages_received"] == 4  # three subscribes and this status
    assert status["ws_messages_send"] == 0      # publishes only, as 3.1.0 counts
    assert status["ws_messages_send_error"] == 0
    assert status["rabbitmq_messages_received"] == 0
    datetime.datetime.fromisoformat(status["online_since"])
    trigger(node, [MESSAGE_ROOM], 1)
    assert recv_json(a)["type"] == "publish"
    assert ask(a, {"type": "status"})["ws_messages_send"] == 2  # a's and b's subscription
    b.close()
    status = ask(a, {"type": "status"})
    assert status["open_connections"] == 1
    assert status["num_rooms"] == 1
    a.close()


# --- publishing -------------------------------------------------------------------------


def test_trigger_reaches_exactly_the_subscriptions_of_the_room(node):
    """A trigger reaches each subscription of the exact room once, with its requestId."""
    a = authorized(node)
    b = authorized(node)
    c = authorized(node)
    subscribe(a, MESSAGE_ROOM, "a1")
    subscribe(a, {"customer": "1", "target": "message"}, "a2")  # twice in one connection
    subscribe(b, MESSAGE_ROOM, 9)
    subscribe(c, USER_ROOM, "c1")
    status, body = trigger(node, [{"customer": "1", "target": "message"}], {"id": 1})
    assert (status, body["code"]) == (200, "success")
    got_a = sorted((recv_json(a), recv_json(a)), key=lambda m: m["requestId"])
    assert got_a == [{"type": "publish", "data": {"id": 1}, "requestId": "a1"},
                     {"type": "publish", "data": {"id": 1}, "requestId": "a2"}]
    assert recv_json(b) == {"type": "publish", "data": {"id": 1}, "requestId": 9}
    for client in (a, b, c):
        no_more_messages(client)
    for client in (a, b, c):
        client.close()


def test_trigger_to_several_rooms_and_after_unsubscribe(node):
    """A trigger to two rooms reaches both; an unsubscribed requestId gets nothing more."""
    a = authorized(node)
    subscribe(a, MESSAGE_ROOM, "m")
    subscribe(a, USER_ROOM, "u")
    trigger(node, [MESSAGE_ROOM, USER_ROOM, MESSAGE_ROOM], "hello")
    got = sorted(recv_json(a)["requestId"] for _ in range(3))
    assert got == ["m", "m", "u"]  # a room named twice is published twice, as in 3.1.0
    no_more_messages(a)
    ask(a, {"type": "unsubscribe", "requestId": "m"})
    trigger(node, [MESSAGE_ROOM, USER_ROOM], "again")
    assert recv_json(a) == {"type": "publish", "data": "again", "requestId": "u"}
    no_more_messages(a)
    a.close()


def test_trigger_with_a_star_reaches_every_room_it_matches(node):
    """A trigger's room with a "*" value reaches the subscriptions of each room it matches."""
    a = authorized(node)
    b = authorized(node)
    c = authorized(node)
    subscribe(a, {"target": "user", "id": 7}, "u7")
    subscribe(b, {"target": "user", "id": 8}, "u8")
    subscribe(b, {"id": 9, "target": "user"}, "u9")
    subscribe(c, MESSAGE_ROOM, "m")           # other keys: not matched
    status, body = trigger(node, [{"target": "user", "id": "*"}], {"all": True})
    assert (status, body["code"], body["rooms"]) == (200, "success", 1)
    assert recv_json(a) == {"type": "publish", "data": {"all": True}, "requestId": "u7"}
    got_b = sorted(recv_json(b)["requestId"] for _ in range(2))
    assert got_b == ["u8", "u9"]
    trigger(node, [{"target": "*", "customer": "1"}], "messages")
    assert recv_json(c) == {"type": "publish", "data": "messages", "requestId": "m"}
    trigger(node, [{"target": "user", "id": 8}], "exact")     # exact rooms still work
    assert recv_json(b) == {"type": "publish", "data": "exact", "requestId": "u8"}
    for client in (a, b, c):
        no_more_messages(client)
        client.close()


@pytest.mark.parametrize("raw, reason", [
    (b'{"data": 1}', "rooms is missing"),
    (b'{"rooms": []}', "data is missing"),
    (b"nope", "body is not JSON"),
    (b'{"rooms": "x", "data": 1}', "rooms must be a list of objects"),
])
def test_bad_trigger_is_400_with_the_reason(node, raw, reason):
    """A trigger without rooms or data is refused with 400 and the reason."""
    assert http_request(node, "POST", "/trigger/", raw=raw) == (
        400, {"code": "error", "message": reason})


def test_trigger_refused_outside_trigger_trust(nodes, backend):
    """A trigger from an address outside TRIGGER_TRUST is refused (403) and publishes nothing."""
    node = nodes.start(BOOTSTRAP_URL=backend.url("/ok"), TRIGGER_TRUST=["10.9.9.9"])
    client = authorized(node)
    subscribe(client, MESSAGE_ROOM, "1")
    assert trigger(node, [MESSAGE_ROOM], 1) == (
        403, {"code": "error", "message": "this address may not publish (TRIGGER_TRUST)"})
    no_more_messages(client)
    client.close()


def test_trigger_needs_post(node):
    """GET /trigger/ is 405."""
    assert http_request(node, "GET", "/trigger/")[0] == 405


# --- idle connections -------------------------------------------------------------------


def test_idle_connection_is_closed(nodes, backend):
    """A connection silent for IDLE_TIMEOUT is closed (1000); one that pings stays open."""
    node = nodes.start(BOOTSTRAP_URL=backend.url("/ok"), IDLE_TIMEOUT=1.0)
    quiet = authorized(node)
    talker = authorized(node)
    started = time.monotonic()
    for _ in range(6):
        time.sleep(0.25)
        talker.send("ping")
        assert talker.recv(timeout=5) == "pong"
    assert closed_with(quiet) == 1000
    assert 0.9 < time.monotonic() - started < 3.5
    talker.send("ping")
    assert talker.recv(timeout=5) == "pong"
    talker.close()
    assert node.get_service("hightemplar").info()["idle_closed"] == 1


# --- across nodes -------------------------------------------------------------------------


def subscribed_nodes(nodes, backend, rooms, prefix_id):
    """Start one node per room on one Redis; on each, a client subscribed to its room
    as requestId prefix_id + index. Return the nodes and the clients, once in sync."""
    url = require_redis()
    prefix = "lexicons-test-" + uuid.uuid4().hex[:8]
    started = [nodes.start(BOOTSTRAP_URL=backend.url("/ok"), BACKPLANE=url,
                           BACKPLANE_PREFIX=prefix) for _ in rooms]
    clients = [authorized(n) for n in started]
    for i, (client, room) in enumerate(zip(clients, rooms, strict=True)):
        assert subscribe(client, room, f"{prefix_id}{i}") == {"code": "success"}
    for n in started:
        assert n.get_service("backplane").wait_synced(10)
    return started, clients


def test_trigger_on_one_node_reaches_subscriptions_on_all(nodes, backend):
    """Through the Redis backplane a trigger POSTed to one node reaches every node once."""
    trio, clients = subscribed_nodes(nodes, backend, [MESSAGE_ROOM] * 3, "r")
    for n_index, n in enumerate(trio):
        assert trigger(n, [MESSAGE_ROOM], n_index)[0] == 200
    for i, client in enumerate(clients):
        got = [recv_json(client) for _ in range(3)]
        assert sorted(m["data"] for m in got) == [0, 1, 2]
        assert {m["requestId"] for m in got} == {f"r{i}"}
    # one more round: had any duplicate come, it would come before these
    assert trigger(trio[0], [MESSAGE_ROOM], "last")[0] == 200
    for client in clients:
        assert recv_json(client)["data"] == "last"
        client.close()


def test_star_trigger_on_one_node_reaches_matching_rooms_on_all(nodes, backend):
    """Through Redis a "*" trigger POSTed to one node reaches each matching room once."""
    rooms = [{"target": "user", "id": i} for i in range(2)]
    pair, clients = subscribed_nodes(nodes, backend, rooms, "u")
    assert trigger(pair[0], [{"target": "user", "id": "*"}], "everyone")[0] == 200
    for i, client in enumerate(clients):
        assert recv_json(client) == {"type": "publish", "data": "everyone",
                                     "requestId": f"u{i}"}
    assert trigger(pair[1], [{"target": "user", "id": 0}], "last")[0] == 200
    assert recv_json(clients[0])["data"] == "last"   # had a duplicate come, it came first
    for client in clients:
        no_more_messages(client)
        client.close()
