"""Real daemons sharing one replicated database through a private Redis Stream."""
from __future__ import annotations

import http.client
import json
import os
import threading
import time
import uuid

import pytest
import redis
from simple_websocket import ConnectionClosed

from lexicons.client import Client
from lexicons.errors import CallFailed, Refused
from tests.support.brokers import PrivateRedis
from tests.support.daemon import wait_for
from tests.support.replicas import Cluster, wait_equal


@pytest.fixture
def private_redis(tmp_path):
    server = PrivateRedis(tmp_path, appendonly=True)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def cluster(tmp_path, private_redis):
    running = Cluster(tmp_path, private_redis.url, "test:" + uuid.uuid4().hex[:8])
    yield running
    running.stop_all()


class Writers:
    """Client threads calling Add on nodes until stopped; they keep every acknowledged pk."""

    def __init__(self, nodes, per_node: int = 2, limit: int = 10**9):
        self.acked: dict[str, int] = {}
        self.errors: list[str] = []
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        self.limit = limit
        self.threads = [threading.Thread(target=self._run, args=(node, f"{i}.{k}"), daemon=True)
                        for i, node in enumerate(nodes) for k in range(per_node)]
        for thread in self.threads:
            thread.start()

    def _run(self, node, name: str) -> None:
        n = 0
        client = None
        while not self.stopping.is_set() and n < self.limit:
            try:
                if client is None:
                    client = Client(f"ws://127.0.0.1:{node.port}/")
                pk = client.call("Add", timeout=30, name=name, n=n, node=name)
                with self.lock:
                    self.acked[pk] = n
                n += 1
            except CallFailed as exc:
                with self.lock:
                    self.errors.append(str(exc))
                time.sleep(0.05)
            except (OSError, Refused, TimeoutError, ConnectionClosed) as exc:   # node down
                with self.lock:
                    self.errors.append(f"connection: {exc}")
                client = None
                time.sleep(0.1)
                if self.stopping.is_set():
                    break
        if client is not None:
            client.close()

    def count(self) -> int:
        with self.lock:
            return len(self.acked)

    def stop(self) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(60)


def assert_all_there(acked: dict[str, int], items: list[dict]) -> None:
    held = {row["pk"]: row["n"] for row in items}
    missing = [pk for pk in acked if pk not in held]
    assert not missing, f"{len(missing)} acknowledged write(s) missing, e.g. {missing[:3]}"
    assert all(held[pk] == n for pk, n in acked.items())


def snapshot_files(node) -> tuple[str, bytes]:
    """Return the position and the Item table of a stopped node's snapshot."""
    data = node.workdir / "data"
    [name] = [n for n in os.listdir(data) if n.startswith("snapshot.")]
    return name, (data / name / "Item.csv").read_bytes()


def test_three_nodes_writing_at_once_end_with_identical_tables(cluster):
    """Clients writing on three nodes at once: every node ends with the same rows, in the
    same order, and writes the same snapshot."""
    nodes = [cluster.node() for _ in range(3)]
    writers = Writers(nodes, per_node=2, limit=60)
    for thread in writers.threads:
        thread.join(120)
    assert not writers.errors and writers.count() == 360
    with nodes[1].client() as client:   # an update made on one node shows on the others
        pk = next(iter(writers.acked))
        assert client.call("Bump", pk=pk, n=-1) == -1
    writers.acked[pk] = -1
    items = wait_equal(nodes)
    assert len(items) == 360
    assert_all_there(writers.acked, items)
    for node in nodes:
        node.stop()
    files = [snapshot_files(node) for node in nodes]
    assert files[0] == files[1] == files[2]


def test_a_user_registered_on_one_node_logs_in_on_another_at_once(tmp_path, private_redis):
    """Register through node A, log in through node B right after: admitted; a wrong
    password is still refused; with Redis gone, logins work and registering gets a 503."""
    cluster = Cluster(tmp_path, private_redis.url, "test:" + uuid.uuid4().hex[:8])
    try:
        a = cluster.node(APP="examples.chat")
        b = cluster.node(APP="examples.chat")
        for i in range(3):
            name = f"user{i}"
            with Client(f"ws://127.0.0.1:{a.port}/",
                        headers={"Register": {"name": name, "password": "secret"}}):
                pass
            with Client(f"ws://127.0.0.1:{b.port}/",
                        headers={"Login": {"name": name, "password": "secret"}}) as client:
                assert client.call("Rooms", timeout=10) is not None
            with pytest.raises(Refused) as refused:
                Client(f"ws://127.0.0.1:{b.port}/",
                       headers={"Login": {"name": name, "password": "wrong"}})
            assert "wrong name or password" in refused.value.reason
        with pytest.raises(Refused) as taken:   # the name is taken on every node
            Client(f"ws://127.0.0.1:{b.port}/",
                   headers={"Register": {"name": "user0", "password": "other"}})
        assert "taken" in taken.value.reason
        private_redis.kill()   # without Redis: logins work, registering is refused clearly
        with Client(f"ws://127.0.0.1:{b.port}/",
                    headers={"Login": {"name": "user1", "password": "secret"}}):
            pass
        with pytest.raises(Refused) as down:
            Client(f"ws://127.0.0.1:{b.port}/",
                   headers={"Register": {"name": "newcomer", "password": "secret"}})
        assert down.value.status == 503 and "cannot take writes now" in down.value.reason
    finally:
        cluster.stop_all()


def test_get_or_create_of_one_key_on_three_nodes_at_once_creates_one_row(cluster):
    """Three nodes claim the same names at the same moment: one row each, one winner,
    and every caller gets the winner's row."""
    nodes = [cluster.node() for _ in range(3)]
    clients = [node.client() for node in nodes]
    rounds = 15
    barrier = threading.Barrier(3)
    answers: list[list[dict]] = [[] for _ in nodes]

    def claim(i: int) -> None:
        for r in range(rounds):
            barrier.wait(30)
            answers[i].append(clients[i].call("Claim", timeout=30, name=f"key{r}",
                                              node=f"node{i}"))

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    for r in range(rounds):
        got = [answers[i][r] for i in range(3)]
        assert sum(a["created"] for a in got) == 1, got
        assert len({(a["pk"], a["node"]) for a in got}) == 1, got
    items = wait_equal(nodes)
    assert sorted(row["name"] for row in items) == sorted(f"key{r}" for r in range(rounds))
    for client in clients:
        client.close()


def test_a_node_killed_under_load_catches_up_and_loses_nothing(cluster):
    """kill -9 of a node while all three take writes; restarted, it catches up and every
    acknowledged write (its own included) is on every node."""
    nodes = [cluster.node(SNAPSHOT_INTERVAL=0.5) for _ in range(3)]
    writers = Writers(nodes)
    wait_for(lambda: writers.count() >= 150, timeout=60, what="150 writes")
    wait_for(lambda: any(n.startswith("snapshot.") for n in os.listdir(
        nodes[2].workdir / "data")), timeout=30, what="a snapshot on node 2")
    nodes[2].kill()
    before = writers.count()
    wait_for(lambda: writers.count() >= before + 100, timeout=60, what="writes without it")
    nodes[2].start()
    wait_for(lambda: writers.count() >= before + 200, timeout=60, what="writes after")
    writers.stop()
    items = wait_equal(nodes)
    assert_all_there(writers.acked, items)
    assert len(items) >= len(writers.acked)   # unacknowledged writes may be there too


def test_redis_restarted_under_load_refuses_writes_clearly_and_loses_nothing(
        cluster, private_redis):
    """Redis killed and restarted while two nodes take writes: meanwhile writes fail with
    a clear error, reads work and /health says degraded; after, nothing acknowledged is
    missing."""
    nodes = [cluster.node() for _ in range(2)]
    writers = Writers(nodes)
    wait_for(lambda: writers.count() >= 100, timeout=60, what="100 writes")
    private_redis.kill()   # kill -9: only the AOF (appendfsync always) is left
    wait_for(lambda: any("cannot take writes now" in e for e in writers.errors),
             timeout=30, what="a refused write")
    wait_for(lambda: nodes[0].replication()["degraded"], timeout=30, what="degraded")
    assert nodes[0].status()["persister"]["info"]["degraded"] is True
    connection = http.client.HTTPConnection("127.0.0.1", nodes[0].port, timeout=10)
    connection.request("GET", "/health")
    response = connection.getresponse()
    health = json.loads(response.read())
    connection.close()
    assert response.status == 200 and health["degraded"] == ["persister"]
    with Client(f"ws://127.0.0.1:{nodes[0].port}/") as client:   # reads go on
        with pytest.raises(CallFailed) as down:   # Dump syncs first: a clear error
            client.call("Dump", timeout=30)
        assert "cannot reach Redis" in str(down.value)
        assert "Traceback" not in str(down.value)
    before = writers.count()
    private_redis.start()
    wait_for(lambda: writers.count() >= before + 100, timeout=60, what="writes after")
    writers.stop()
    items = wait_equal(nodes)
    assert_all_there(writers.acked, items)
    assert not nodes[0].replication()["degraded"]


def test_a_late_node_gets_everything_even_after_the_stream_was_trimmed(
        cluster, private_redis):
    """A node started after writes, snapshots and trimming loads the shared snapshot and
    replays the rest: it holds every row."""
    nodes = [cluster.node(SNAPSHOT_INTERVAL=0.3) for _ in range(2)]
    writers = Writers(nodes, per_node=1, limit=100)
    for thread in writers.threads:
        thread.join(120)
    client = redis.Redis.from_url(private_redis.url)
    wait_for(lambda: client.get(cluster.stream + ":trimmed") is not None
             and client.xlen(cluster.stream) < 200, timeout=60, what="the stream trimmed")
    late = cluster.node(SNAPSHOT_INTERVAL=0.3)
    items = wait_equal([*nodes, late])
    assert len(items) == 200
    assert_all_there(writers.acked, items)
    client.close()
