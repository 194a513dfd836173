"""The backplane: local delivery, Redis fan-out across nodes, outages, cluster events."""
from __future__ import annotations

import threading
import time
import uuid

import pytest
import redis

from lexicons.daemon.application import Application
from lexicons.daemon.manager import ServiceManager
from lexicons.daemon.settings import DECLARED
from services.backplane import BackplaneService, Envelope, pack, unpack
from tests.support.brokers import PrivateRedis, require_redis
from tests.support.daemon import make_settings, wait_for

BACKPLANE = "services.backplane/BackplaneService"


class Inbox:
    """A receiver that records (channel, message) and the thread it ran in."""

    def __init__(self) -> None:
        self.items: list[tuple[str, bytes]] = []
        self.threads: set[str] = set()
        self.lock = threading.Lock()

    def __call__(self, channel: str, message: bytes) -> None:
        with self.lock:
            self.items.append((channel, message))
            self.threads.add(threading.current_thread().name)

    def on(self, channel: str) -> list[bytes]:
        with self.lock:
            return [m for c, m in self.items if c == channel]


@pytest.fixture
def nodes(tmp_path):
    """Start backplane nodes (each in its own service manager); stop them all at the end."""
    managers: list[ServiceManager] = []

    def start(url: str = "memory", prefix: str | None = None, **overrides):
        values = {"SERVICE_LIST": [BACKPLANE], "BACKPLANE": url,
                  "BACKPLANE_PREFIX": prefix or "test", "BACKPLANE_RETRY_MAX": 0.2, **overrides}
        settings = make_settings(tmp_path, **values)
        manager = ServiceManager(settings, Application())
        manager.start()
        managers.append(manager)
        node = manager.get_service("backplane")
        node.inbox = Inbox()
        node.set_receiver(node.inbox)
        return node

    yield start
    for manager in managers:
        manager.stop()


def unique_prefix() -> str:
    return "lexicons-test-" + uuid.uuid4().hex[:8]


def test_envelope_round_trip():
    """A packed message unpacks to its node and payload; foreign bytes unpack to None."""
    node = "0123456789abcdef"
    assert unpack(pack(node, b"[1]")) == Envelope(node, b"[1]")
    many = unpack(pack(node, b"[2]", "fedcba9876543210", ("a", "b:c")))
    assert many == Envelope(node, b"[2]", "fedcba9876543210", ("a", "b:c"))
    assert unpack(b"hello") is None
    assert unpack(b"\x03" + b"0" * 16 + b"x") is None
    assert unpack(b"\x02" + b"0" * 16 + b"x") is None  # a multi header cut short


def test_memory_publish_delivers_at_once_in_the_callers_thread(nodes):
    """In memory, publish() calls the receiver before returning, in the caller's thread."""
    node = nodes()
    node.publish("room", b"hello")
    assert node.inbox.items == [("room", b"hello")]
    assert node.inbox.threads == {threading.current_thread().name}
    info = node.info()
    assert info["kind"] == "memory" and info["published"] == 1
    assert not node.degraded and node.synced()


def test_join_and_leave_track_channels(nodes):
    """join/leave keep the set of channels with local members; repeats are harmless."""
    node = nodes()
    node.join("a")
    node.join("a")
    node.join("b")
    node.leave("a")
    node.leave("zzz")
    assert node.channels() == {"b"}
    assert node.info()["channels"] == 1


def test_spaces_keep_same_names_apart(nodes):
    """A channel name in another space has its own receiver and membership."""
    node = nodes()
    other = Inbox()
    node.set_receiver(other, space="h")
    node.join("x", space="h")
    node.publish("x", b"room", space="h")
    node.publish("x", b"channel")
    assert other.items == [("x", b"room")] and node.inbox.items == [("x", b"channel")]
    assert node.channels() == set() and node.channels("h") == {"x"}
    for bad in ("", "e", "n", "a:b"):
        with pytest.raises(ValueError):
            node.set_receiver(other, space=bad)


def test_publish_many_delivers_once_through_the_many_receiver(nodes):
    """A broadcast on several channels goes to the many-receiver once, with every channel."""
    node = nodes()
    many = []
    node.set_many_receiver(lambda channels, message: many.append((channels, message)))
    node.publish_many(["a", "b", "a"], b"x")
    node.publish_many(["a"], b"y")
    node.publish_many([], b"z")
    assert many == [(("a", "b"), b"x")]
    assert node.inbox.items == [("a", b"y")]
    assert node.info()["published"] == 2


def test_failing_receiver_is_counted_not_raised(nodes):
    """A receiver that raises is logged and counted; publish() still returns."""
    node = nodes()

    def boom(channel, message):
        raise RuntimeError("broken receiver")

    node.set_receiver(boom)
    node.publish("room", b"x")
    assert node.info()["handler_errors"] == 1


def test_memory_events_reach_handlers_on_the_event_thread(nodes):
    """say() reaches subscribed handlers with JSON data, off the caller's thread."""
    node = nodes()
    got, threads = [], []
    done = threading.Event()

    def handler(event, data):
        got.append((event, data))
        threads.append(threading.current_thread().name)
        done.set()

    node.subscribe("reload", handler)
    node.say("reload", {"table": "User", "n": (1, 2)})
    assert done.wait(5)
    assert got == [("reload", {"table": "User", "n": [1, 2]})]
    assert threads[0] != threading.current_thread().name
    node.unsubscribe("reload", handler)
    node.say("reload", 1)
    node.say("other", 2)
    wait_for(lambda: node.info()["events_said"] == 3)
    assert len(got) == 1


def test_event_data_must_be_json(nodes):
    """say() with data JSON cannot carry raises TypeError at once; a bad name ValueError."""
    node = nodes()
    with pytest.raises(TypeError):
        node.say("x", {"when": object()})
    with pytest.raises(ValueError):
        node.say("x", float("nan"))
    with pytest.raises(ValueError):
        node.say("", 1)


def test_failing_event_handler_does_not_stop_others(nodes):
    """A handler that raises is counted; the next handler of the event still runs."""
    node = nodes()
    got = []
    node.subscribe("e", lambda event, data: 1 / 0)
    node.subscribe("e", lambda event, data: got.append(data))
    node.say("e", 5)
    wait_for(lambda: got == [5], what="second handler")
    assert node.info()["handler_errors"] == 1


# --- Redis ---------------------------------------------------------------------------


def test_three_nodes_each_broadcast_reaches_all_exactly_once_in_order(nodes):
    """A broadcast from any of three nodes reaches every node once, in publishing order."""
    url = require_redis()
    prefix = unique_prefix()
    trio = [nodes(url, prefix) for _ in range(3)]
    for node in trio:
        node.join("room")
        assert node.wait_synced(10), node.info()
    count = 200
    for i, node in enumerate(trio):
        for n in range(count):
            node.publish("room", f"{i}:{n}".encode())
    for node in trio:
        wait_for(lambda node=node: len(node.inbox.on("room")) >= 3 * count, timeout=20,
                 what=f"deliveries on {node.node}")
    # a moment for any duplicate to show up
    wait_for(lambda: all(n.info()["sent"] == count for n in trio), what="all sent")
    for node in trio:
        got = node.inbox.on("room")
        assert len(got) == 3 * count
        for i in range(3):
            from_i = [m for m in got if m.startswith(f"{i}:".encode())]
            assert from_i == [f"{i}:{n}".encode() for n in range(count)]
        assert node.info()["dropped"] == 0


def test_own_broadcast_is_delivered_locally_at_once_and_not_again(nodes):
    """With Redis a node delivers its own broadcast at once and skips its echo."""
    url = require_redis()
    prefix = unique_prefix()
    a, b = nodes(url, prefix), nodes(url, prefix)
    for node in (a, b):
        node.join("room")
        assert node.wait_synced(10)
    a.publish("room", b"one")
    assert a.inbox.on("room") == [b"one"]  # before publish() returned
    wait_for(lambda: b.inbox.on("room") == [b"one"], what="remote delivery")
    wait_for(lambda: a.info()["sent"] == 1)
    # the echo has come back through Redis by now: b got it, so a's reader saw it too
    b.publish("room", b"two")
    wait_for(lambda: a.inbox.on("room") == [b"one", b"two"], what="second message")
    assert a.inbox.on("room") == [b"one", b"two"]


def test_node_subscribes_only_to_channels_it_has_members_in(nodes):
    """A node without members of a channel holds no Redis subscription and gets nothing."""
    url = require_redis()
    prefix = unique_prefix()
    a, b = nodes(url, prefix), nodes(url, prefix)
    a.join("news")
    assert a.wait_synced(10) and b.wait_synced(10)
    client = redis.Redis.from_url(url)
    try:
        counts = dict(client.pubsub_numsub(f"{prefix}:c:news", f"{prefix}:c:other"))
        assert counts == {f"{prefix}:c:news".encode(): 1, f"{prefix}:c:other".encode(): 0}
        b.publish("other", b"nobody")
        b.publish("news", b"hi")
        wait_for(lambda: a.inbox.on("news") == [b"hi"], what="news on a")
        assert a.inbox.on("other") == []
        a.leave("news")
        assert a.wait_synced(10)
        assert dict(client.pubsub_numsub(f"{prefix}:c:news"))[f"{prefix}:c:news".encode()] == 0
    finally:
        client.close()


def test_cluster_events_cross_nodes(nodes):
    """say() on one node reaches the event's handlers on every node, this one included."""
    url = require_redis()
    prefix = unique_prefix()
    a, b, c = nodes(url, prefix), nodes(url, prefix), nodes(url, prefix)
    got = {"a": [], "b": []}
    a.subscribe("flush", lambda e, d: got["a"].append(d))
    b.subscribe("flush", lambda e, d: got["b"].append(d))
    for node in (a, b, c):
        assert node.wait_synced(10)
    c.say("flush", {"n": 1})
    a.say("flush", {"n": 2})

    def both() -> bool:  # two nodes said them: no order between them is promised
        return all(sorted(d["n"] for d in got[k]) == [1, 2] for k in got)

    wait_for(both, what="events on a and b")
    assert c.info()["events_received"] == 0  # no handler on c: not even subscribed


def test_spaces_cross_nodes_separately(nodes):
    """Through Redis, a space's broadcast reaches only that space's receiver and members."""
    url = require_redis()
    prefix = unique_prefix()
    a, b = nodes(url, prefix), nodes(url, prefix)
    rooms = Inbox()
    b.set_receiver(rooms, space="h")
    b.join("k", space="h")
    b.join("k")
    assert b.wait_synced(10) and a.wait_synced(10)
    a.publish("k", b"to rooms", space="h")
    a.publish("k", b"to channel")
    wait_for(lambda: rooms.items == [("k", b"to rooms")] and b.inbox.items == [
        ("k", b"to channel")], what="one delivery per space")
    assert b.info()["received"] == 2 and a.info()["sent"] == 2


def test_publish_many_reaches_each_node_once(nodes):
    """Across nodes a broadcast on two channels is delivered once per node that has them."""
    url = require_redis()
    prefix = unique_prefix()
    a, both, only_b, none = (nodes(url, prefix) for _ in range(4))
    got = {}
    for name, node in (("both", both), ("only_b", only_b), ("none", none)):
        got[name] = []
        node.set_many_receiver(lambda channels, message, name=name: got[name].append(
            (channels, message)))
    both.join("a")
    both.join("b")
    only_b.join("b")
    for node in (a, both, only_b, none):
        assert node.wait_synced(10)
    a.publish_many(["a", "b"], b"1")
    a.publish_many(["a", "b"], b"2")
    a.publish("b", b"3")
    wait_for(lambda: only_b.inbox.items == [("b", b"3")], what="single-channel broadcast")
    wait_for(lambda: both.inbox.items == [("b", b"3")], what="single-channel broadcast")
    assert got["both"] == [(("a", "b"), b"1"), (("a", "b"), b"2")]
    assert got["only_b"] == [(("b",), b"1"), (("b",), b"2")]
    assert got["none"] == []
    assert a.info()["sent"] == 3 and both.info()["received"] == 3


def test_foreign_messages_on_a_channel_are_ignored(nodes):
    """Bytes published on a node's Redis channel by something else are counted, not delivered."""
    url = require_redis()
    prefix = unique_prefix()
    a = nodes(url, prefix)
    a.join("room")
    assert a.wait_synced(10)
    client = redis.Redis.from_url(url)
    try:
        client.publish(f"{prefix}:c:room", b"not a backplane message")
    finally:
        client.close()
    wait_for(lambda: a.info()["foreign"] == 1, what="foreign counted")
    assert a.inbox.items == []


def test_redis_outage_keeps_local_delivery_and_cluster_delivery_resumes(nodes, tmp_path):
    """Redis stopped mid-way: local delivery goes on, drops counted; after restart all resumes."""
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        prefix = unique_prefix()
        a, b = nodes(server.url, prefix), nodes(server.url, prefix)
        for node in (a, b):
            node.join("room")
            assert node.wait_synced(10)
        a.publish("room", b"before")
        wait_for(lambda: b.inbox.on("room") == [b"before"], what="delivery before outage")

        server.stop()
        wait_for(lambda: a.degraded and b.degraded, what="both degraded")
        assert a.info()["state"] == "degraded"
        for n in range(5):
            a.publish("room", f"during {n}".encode())
        assert a.inbox.on("room") == [b"before"] + [f"during {n}".encode() for n in range(5)]
        # dropped at once, or when the publisher finds its connection dead
        wait_for(lambda: a.info()["dropped"] == 5, what="5 broadcasts counted as dropped")

        server.start()
        assert a.wait_synced(15) and b.wait_synced(15), (a.info(), b.info())
        assert a.info()["state"] == "up" and a.info()["reconnects"] >= 1
        a.publish("room", b"after")
        wait_for(lambda: b.inbox.on("room") == [b"before", b"after"],
                 what="delivery after restart on b")
        b.publish("room", b"from b")
        wait_for(lambda: a.inbox.on("room")[-2:] == [b"after", b"from b"],
                 what="delivery after restart on a")
        assert b.info()["received"] == 2 and a.info()["received"] == 1
    finally:
        server.stop()


#: How soon cross-node delivery must work again once a restarted Redis answers.
RESUME_WITHIN = 2.0


def _first_delivery(sender, receiver, tag: str, timeout: float = 30.0) -> float:
    """Publish numbered messages from *sender* until *receiver* gets one; return the seconds."""
    started = time.monotonic()
    n = 0
    while not any(m.startswith(tag.encode()) for m in receiver.inbox.on("room")):
        assert time.monotonic() - started < timeout, (sender.info(), receiver.info())
        sender.publish("room", f"{tag} {n}".encode())
        n += 1
        time.sleep(0.02)
    return time.monotonic() - started


def test_cross_node_delivery_resumes_within_2_s_of_redis_answering_again(nodes, tmp_path):
    """After an outage long enough for the retry backoff to reach its ceiling, both
    directions deliver again within RESUME_WITHIN seconds of Redis answering."""
    ceiling = DECLARED["BACKPLANE_RETRY_MAX"].default
    server = PrivateRedis(tmp_path)
    server.start()
    try:
        prefix = unique_prefix()
        a = nodes(server.url, prefix, BACKPLANE_RETRY_MAX=ceiling)
        b = nodes(server.url, prefix, BACKPLANE_RETRY_MAX=ceiling)
        for node in (a, b):
            node.join("room")
            assert node.wait_synced(10)
        server.stop()
        wait_for(lambda: a.degraded and b.degraded, what="both degraded")
        outage = time.monotonic() + 7.0  # longer than any backoff ceiling takes to reach
        while time.monotonic() < outage:  # both publishers find the outage too
            a.publish("room", b"during")
            b.publish("room", b"during")
            time.sleep(0.2)
        server.start()  # returns once Redis accepts connections
        a_to_b = _first_delivery(a, b, "a")
        b_to_a = _first_delivery(b, a, "b")
        assert a_to_b < RESUME_WITHIN and b_to_a < RESUME_WITHIN, (a_to_b, b_to_a)
    finally:
        server.stop()


def test_nothing_published_once_a_node_is_synced_is_lost(nodes, tmp_path):
    """Every broadcast published after a node reports synced reaches it: the subscription
    Redis confirmed is the one it reads, never silently replaced by another (Redis sees
    each node connect twice, subscriber and publisher, and no more)."""
    server = PrivateRedis(tmp_path)
    server.start()
    watcher = redis.Redis.from_url(server.url)
    stop = threading.Event()
    sent: list[int] = []
    a = None

    def publish() -> None:
        n = 0
        while not stop.is_set():
            a.publish("room", str(n).encode())
            sent.append(n)
            n += 1
            stop.wait(0.001)

    thread = threading.Thread(target=publish)
    try:
        prefix = unique_prefix()
        a = nodes(server.url, prefix)
        a.join("room")
        assert a.wait_synced(10)
        thread.start()
        for _ in range(5):
            connections = watcher.info("stats")["total_connections_received"]
            b = nodes(server.url, prefix)
            b.join("room")
            assert b.wait_synced(10)
            first = len(sent) + 1  # published after synced() said yes
            wait_for(lambda n=first: len(sent) > n + 100, what="100 more broadcasts")
            wanted = set(range(first, len(sent)))

            def all_there(node=b, wanted=wanted) -> bool:
                return wanted <= {int(m) for m in node.inbox.on("room")}

            wait_for(all_there, timeout=15, what=f"broadcasts from {first} on the new node")
            assert watcher.info("stats")["total_connections_received"] - connections == 2
    finally:
        stop.set()
        if thread.is_alive():
            thread.join(10)
        watcher.close()
        server.stop()


def test_unreachable_redis_at_start_serves_locally_and_reports_it(nodes, tmp_path):
    """A node whose Redis is down at start runs, delivers locally and says 'connecting'."""
    server = PrivateRedis(tmp_path)  # never started: its port is closed
    node = nodes(server.url, unique_prefix())
    node.join("room")
    node.publish("room", b"local")
    assert node.inbox.on("room") == [b"local"]
    wait_for(lambda: node.info()["last_error"], what="an error recorded")
    info = node.info()
    assert info["degraded"] and info["state"] == "connecting" and info["dropped"] == 1
    server.start()
    try:
        assert node.wait_synced(15), node.info()
        assert node.info()["state"] == "up"
    finally:
        server.stop()


def test_backplane_service_named_and_listed_by_default():
    """The backplane is a default service, right after control."""
    from lexicons.daemon.settings import DEFAULT_SERVICES

    assert DEFAULT_SERVICES[:2] == ["services.control/ControlService", BACKPLANE]
    assert BackplaneService.name == "backplane"
