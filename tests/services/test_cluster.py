"""Several nodes on one Redis backplane, with native websocket clients on each."""
from __future__ import annotations

import json
import uuid

import pytest

from tests.support.brokers import PrivateRedis, require_redis
from tests.support.clusterapp import application
from tests.support.daemon import wait_for
from tests.support.nodes import NATIVE_SERVICES, http_request, nodes_of, ws_client


@pytest.fixture
def nodes(tmp_path):
    with nodes_of(tmp_path) as running:
        yield running


def start(nodes, url: str, prefix: str):
    return nodes.start(NATIVE_SERVICES, app=application(), BACKPLANE=url,
                       BACKPLANE_PREFIX=prefix, BACKPLANE_RETRY_MAX=0.2)


def subscriber(node):
    """A native client in channel news."""
    client = ws_client(node, path="/")
    client.send(json.dumps({"Subscribe": {"channel": "news"}}))
    assert json.loads(client.recv(timeout=5)) == [{"Subscribe": "news"}]
    return client


def shout(client, origin: str, n: int) -> None:
    client.send(json.dumps({"Shout": {"origin": origin, "n": n}}))


def received(client, count: int) -> list[tuple[str, int]]:
    """Read *count* broadcasts; return (origin, n) of each."""
    out = []
    for _ in range(count):
        [message] = json.loads(client.recv(timeout=10))
        out.append((message["Shout"]["origin"], message["Shout"]["n"]))
    return out


def nothing_more(client) -> None:
    """Nothing else is queued for the client: an unknown call's error comes next."""
    client.send(json.dumps({"Nope": {}}))
    assert "Errors" in json.loads(client.recv(timeout=5))[0]


def test_each_nodes_broadcasts_reach_every_client_once_in_order(nodes):
    """Three nodes: broadcasts from each reach the clients of all three once, in order."""
    url = require_redis()
    prefix = "lexicons-test-" + uuid.uuid4().hex[:8]
    trio = [start(nodes, url, prefix) for _ in range(3)]
    subscribers = [subscriber(n) for n in trio for _ in range(2)]
    for n in trio:
        assert n.get_service("backplane").wait_synced(10)
    count = 50
    shouters = [ws_client(n, path="/") for n in trio]
    for n in range(count):
        for i, client in enumerate(shouters):
            shout(client, f"node{i}", n)
    for client in subscribers:
        got = received(client, 3 * count)
        for i in range(3):
            assert [n for origin, n in got if origin == f"node{i}"] == list(range(count))
    # anything duplicated would have arrived before this round
    shout(shouters[0], "node0", count)
    for client in subscribers:
        assert received(client, 1) == [("node0", count)]
        nothing_more(client)
    for n in trio:
        info = n.get_service("backplane").info()
        assert info["dropped"] == 0 and info["sent"] == count + (1 if n is trio[0] else 0)
    for client in subscribers + shouters:
        client.close()


def test_redis_restart_local_delivery_never_stops(nodes, tmp_path):
    """Redis stopped and started: each node's clients keep getting local broadcasts."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        prefix = "lexicons-test-" + uuid.uuid4().hex[:8]
        a, b = start(nodes, server.url, prefix), start(nodes, server.url, prefix)
        sub_a, sub_b = subscriber(a), subscriber(b)
        shout_a = ws_client(a, path="/")
        for n in (a, b):
            assert n.get_service("backplane").wait_synced(10)
        shout(shout_a, "a", 0)
        assert received(sub_a, 1) == [("a", 0)] and received(sub_b, 1) == [("a", 0)]

        server.stop()
        backplane_a = a.get_service("backplane")
        wait_for(lambda: backplane_a.degraded, what="node a degraded")
        for n in range(1, 4):
            shout(shout_a, "a", n)
        assert received(sub_a, 3) == [("a", 1), ("a", 2), ("a", 3)]  # local: never stops
        wait_for(lambda: backplane_a.info()["dropped"] == 3, what="3 dropped for node b")

        server.start()
        for n in (a, b):
            assert n.get_service("backplane").wait_synced(15), n.get_service(
                "backplane").info()
        shout(shout_a, "a", 4)
        assert received(sub_a, 1) == [("a", 4)]
        assert received(sub_b, 1) == [("a", 4)]  # cluster delivery resumed; 1-3 were dropped
        nothing_more(sub_b)
        for client in (sub_a, sub_b, shout_a):
            client.close()
    finally:
        server.stop()


def test_cluster_events_reach_signals_on_other_nodes(nodes):
    """sv.say on one node reaches handlers a signal registered with sv.subscribe on another."""
    url = require_redis()
    prefix = "lexicons-test-" + uuid.uuid4().hex[:8]
    a, b = start(nodes, url, prefix), start(nodes, url, prefix)
    listener, speaker = ws_client(b, path="/"), ws_client(a, path="/")
    listener.send(json.dumps({"Listen": {}}))
    assert json.loads(listener.recv(timeout=5)) == [{"Listen": "listening"}]
    assert b.get_service("backplane").wait_synced(10)
    speaker.send(json.dumps({"Announce": {"text": "hello"}}))
    assert json.loads(speaker.recv(timeout=5)) == [{"Announce": "said"}]
    assert json.loads(listener.recv(timeout=5)) == [{"Announced": {"text": "hello"}}]
    listener.close()
    speaker.close()


def test_health_shows_the_backplane_degraded(nodes, tmp_path):
    """With Redis out of reach /health still answers 200 and lists the backplane degraded."""
    server = PrivateRedis(tmp_path)  # never started
    node = start(nodes, server.url, "lexicons-test-down")
    wait_for(lambda: node.get_service("backplane").info()["last_error"], what="a failure")
    status, body = http_request(node, "GET", "/health")
    assert status == 200 and body["healthy"] is True
    assert body["degraded"] == ["backplane"]


def test_member_of_two_channels_gets_a_broadcast_on_both_once(nodes):
    """A broadcast on two channels reaches a member of both once, here and on other nodes."""
    url = require_redis()
    prefix = "lexicons-test-" + uuid.uuid4().hex[:8]
    a, b = start(nodes, url, prefix), start(nodes, url, prefix)
    members = []
    for node in (a, b):
        client = ws_client(node, path="/")
        client.send(json.dumps([{"Subscribe": {"channel": "news"}},
                                {"Subscribe": {"channel": "sport"}}]))
        assert [json.loads(client.recv(timeout=5)) for _ in range(2)] == [
            [{"Subscribe": "news"}], [{"Subscribe": "sport"}]]
        members.append(client)
    for node in (a, b):
        assert node.get_service("backplane").wait_synced(10)
    caller = ws_client(a, path="/")
    caller.send(json.dumps({"Both": {"n": 1}}))
    caller.send(json.dumps({"Both": {"n": 2}}))
    for client in members:
        assert [json.loads(client.recv(timeout=5)) for _ in range(2)] == [
            [{"Both": 1}], [{"Both": 2}]]
        nothing_more(client)
    for client in [*members, caller]:
        client.close()
