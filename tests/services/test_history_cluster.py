"""History, recovery and presence across nodes on a real Redis backplane."""
from __future__ import annotations

import threading
import time
import uuid

import pytest

from lexicons.client import Client
from lexicons.errors import CallFailed
from tests.examples.chat_daemon import ChatDaemon
from tests.support.brokers import PrivateRedis, require_redis
from tests.support.daemon import wait_for
from tests.support.historyapp import application
from tests.support.nodes import NATIVE_SERVICES, nodes_of, port_of

#: Short presence entries, so a dead node's members go quickly (gone within 4/3 of it).
PRESENCE_TTL = 1.5
#: Presence entries of the tests that expect no member to expire: a busy machine can hold up
#: a node's heartbeat for over a second, and the other node would sweep a live member out.
STEADY_PRESENCE_TTL = 30.0


@pytest.fixture
def nodes(tmp_path):
    with nodes_of(tmp_path) as running:
        yield running


def start(nodes, url: str, prefix: str, presence_ttl: float = STEADY_PRESENCE_TTL):
    node = nodes.start(NATIVE_SERVICES, app=application(), BACKPLANE=url,
                       BACKPLANE_PREFIX=prefix, BACKPLANE_RETRY_MAX=0.2, PING_INTERVAL=0.0,
                       HISTORY_META_TTL=300.0, PRESENCE_TTL=presence_ttl)
    assert node.get_service("backplane").wait_synced(10)
    return node


def client(node, user: str, **kwargs) -> Client:
    return Client(f"ws://127.0.0.1:{port_of(node)}/", headers={"User": {"name": user}},
                  timeout=10.0, **kwargs)


def test_a_client_moving_from_node_a_to_node_b_misses_nothing(nodes):
    """Two nodes publishing at once; a client leaves A and recovers on B: offsets 1..N once."""
    url, prefix = require_redis(), f"t{uuid.uuid4().hex[:12]}"
    a, b = start(nodes, url, prefix), start(nodes, url, prefix)
    channel = "feed:move"
    count = 150

    def publish(node, origin):
        with client(node, origin) as pub:
            for n in range(count):
                pub.call("Post", channels=[channel], n=n)

    on_a = client(a, "walker")
    on_a.subscribe(channel)
    threads = [threading.Thread(target=publish, args=(node, name), daemon=True)
               for node, name in ((a, "A"), (b, "B"))]
    for thread in threads:
        thread.start()
    wait_for(lambda: on_a.positions.get(channel, {}).get("offset", 0) >= 40,
             what="40 publications on node A")
    position = dict(on_a.positions[channel])
    seen_on_a = position["offset"]
    on_a.close()
    with client(b, "walker") as on_b:
        answer = on_b.subscribe(channel, recover=position)
        assert answer["recovered"] is True, answer
        for thread in threads:
            thread.join(60)
        seen = []
        deadline = time.monotonic() + 30
        while not seen or seen[-1] < 2 * count:
            assert time.monotonic() < deadline, f"got up to {seen[-3:]}"
            for item in on_b.receive(10):
                if "Post" in item:
                    seen.append(item["@"]["offset"])
        assert seen == list(range(seen_on_a + 1, 2 * count + 1))


def test_history_lost_in_redis_starts_a_new_epoch_and_recovery_says_so(nodes, tmp_path):
    """Redis restarted without its data: a new epoch, and recovered false for the old one."""
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        node = start(nodes, redis.url, "lost")
        with client(node, "a") as first:
            first.subscribe("feed:lost")
            for n in range(3):
                first.call("Post", channels=["feed:lost"], n=n)
            wait_for(lambda: first.positions.get("feed:lost", {}).get("offset") == 3,
                     what="three publications")
            old = dict(first.positions["feed:lost"])
        redis.stop()
        redis.start()
        assert node.get_service("backplane").wait_synced(20)
        with client(node, "b") as again:
            answer = wait_for(lambda: _subscribe_or_none(again, "feed:lost", old), timeout=20,
                              what="a subscription once Redis is back")
            assert answer["recovered"] is False and "another epoch" in answer["reason"]
            assert answer["epoch"] != old["epoch"] and answer["offset"] == 0
    finally:
        redis.stop()


def _subscribe_or_none(c, channel, position):
    try:
        return c.subscribe(channel, recover=position)
    except Exception:  # Redis still coming back
        return None


def test_presence_is_shared_across_nodes(nodes):
    """Members on two nodes: each sees the other's join and leave; both count two."""
    url, prefix = require_redis(), f"t{uuid.uuid4().hex[:12]}"
    a, b = start(nodes, url, prefix), start(nodes, url, prefix)
    with client(a, "ann") as ann:
        ann.subscribe("lobby:x")
        assert ann.receive(5)[0]["Presence"]["user"] == "ann"
        with client(b, "bob") as bob:
            bob.subscribe("lobby:x")
            joined = wait_for(lambda: _presence(ann), what="bob's join")
            assert joined["event"] == "join" and joined["user"] == "bob"
            for c in (ann, bob):
                who = c.call("Presence", channel="lobby:x")
                assert who["count"] == 2
                assert sorted(m["user"] for m in who["members"]) == ["ann", "bob"]
        left = wait_for(lambda: _presence(ann), what="bob's leave")
        assert left == {**joined, "event": "leave"}
        assert ann.call("Presence", channel="lobby:x")["count"] == 1


def _presence(c):
    try:
        for item in c.receive(0.5):
            if "Presence" in item:
                return item["Presence"]
    except TimeoutError:
        return None
    return None


def test_a_killed_nodes_members_leave_presence_in_the_stated_time(nodes, tmp_path):
    """kill -9 a daemon: its members are gone, with a leave broadcast, within 4/3 PRESENCE_TTL."""
    url, prefix = require_redis(), f"t{uuid.uuid4().hex[:12]}"
    # the watcher sweeps the dead node out every third of its own TTL
    watcher_node = start(nodes, url, prefix, presence_ttl=PRESENCE_TTL)
    workdir = tmp_path / "doomed"
    workdir.mkdir()
    doomed = ChatDaemon(workdir, app="tests.support.historyapp", services=[
        "services.control/ControlService", *NATIVE_SERVICES], BACKPLANE=url,
        BACKPLANE_PREFIX=prefix, PRESENCE_TTL=PRESENCE_TTL, HISTORY_META_TTL=300.0)
    doomed.start()
    try:
        with client(watcher_node, "watcher") as watcher:
            watcher.subscribe("lobby:doom")
            with Client(doomed.ws_url, headers={"User": {"name": "victim"}}) as victim:
                victim.subscribe("lobby:doom")
                wait_for(lambda: (_presence(watcher) or {}).get("user") == "victim",
                         what="the victim's join")
                assert watcher.call("Presence", channel="lobby:doom")["count"] == 2
                killed = time.monotonic()
                doomed.kill()
                gone = wait_for(lambda: _presence(watcher), timeout=30, what="the victim's leave")
                elapsed = time.monotonic() - killed
        assert gone["event"] == "leave" and gone["user"] == "victim"
        # 4/3 of the TTL, plus room for a busy machine
        assert elapsed < PRESENCE_TTL * 4 / 3 + 5, elapsed
    finally:
        doomed.kill()


def test_recoveries_racing_live_publications_get_each_one_once(nodes):
    """Clients recover from several positions on two nodes while both nodes publish."""
    url, prefix = require_redis(), f"t{uuid.uuid4().hex[:12]}"
    a, b = start(nodes, url, prefix), start(nodes, url, prefix)
    channel, before, each = "feed:race", 50, 200
    with client(a, "first") as first:
        epoch = first.subscribe(channel)["epoch"]
        for n in range(before):
            first.call("Post", channels=[channel], n=n)

    def publish(node):
        with client(node, "pub") as pub:
            for n in range(each):
                pub.call("Post", channels=[channel], n=n)

    threads = [threading.Thread(target=publish, args=(node,), daemon=True) for node in (a, b)]
    for thread in threads:
        thread.start()
    recovering = []
    try:
        for k, since in enumerate((0, 10, 25, 40, 49)):
            c = client(a if k % 2 else b, f"r{k}")
            recovering.append((since, c))
            answer = c.subscribe(channel, recover={"offset": since, "epoch": epoch})
            assert answer["recovered"] is True, answer
            time.sleep(0.02)
        for thread in threads:
            thread.join(60)
        last = before + 2 * each
        for since, c in recovering:
            seen = []
            deadline = time.monotonic() + 30
            while not seen or seen[-1] < last:
                assert time.monotonic() < deadline, f"from {since}: got up to {seen[-3:]}"
                for item in c.receive(10):
                    if "Post" in item:
                        seen.append(item["@"]["offset"])
            assert seen == list(range(since + 1, last + 1)), f"from {since}"
    finally:
        for _, c in recovering:
            c.close()


def test_a_broadcast_on_a_history_channel_fails_clearly_while_redis_is_down(nodes, tmp_path):
    """No Redis, no position: the caller gets an error, a plain channel still works locally."""
    redis = PrivateRedis(tmp_path)
    redis.start()
    try:
        node = start(nodes, redis.url, "down")
        with client(node, "a") as c:
            c.subscribe("plain:d")
            redis.stop()
            with pytest.raises(CallFailed, match="Post failed"):
                c.call("Post", channels=["feed:d"], n=1)
            assert c.call("Post", channels=["plain:d"], n=2) == "posted"
            assert c.receive(5) == [{"Post": {"n": 2}}]
    finally:
        redis.stop()


def test_a_channel_with_history_and_presence_works_across_nodes(nodes):
    """Presence events and positioned broadcasts of one channel reach the other node."""
    url, prefix = require_redis(), f"t{uuid.uuid4().hex[:12]}"
    a, b = start(nodes, url, prefix), start(nodes, url, prefix)
    with client(a, "ann") as ann, client(b, "bob") as bob:
        ann.subscribe("stage:x")
        assert _presence(ann) == {"channel": "stage:x", "event": "join",
                                  "client": _presence_client(ann, "ann"), "user": "ann"}
        bob.subscribe("stage:x")
        joined = wait_for(lambda: _presence(ann), what="bob's join")
        assert joined["user"] == "bob"
        bob.call("Post", channels=["stage:x"], n=7)
        got = wait_for(lambda: [i for i in ann.receive(5) if "Post" in i], what="bob's post")
        assert got[0]["Post"] == {"n": 7} and got[0]["@"]["offset"] == 1
        assert bob.call("Presence", channel="stage:x")["count"] == 2


def _presence_client(c, user):
    who = c.call("Presence", channel="stage:x")["members"]
    return next(m["client"] for m in who if m["user"] == user)
