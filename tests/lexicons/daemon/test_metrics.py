"""/metrics and /health over real sockets: the numbers parse, move with traffic, and per daemon."""
import base64
import json
import os
import socket

import prometheus_client
import pytest
from prometheus_client.parser import text_string_to_metric_families

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.daemon.metrics import OK, CallStats
from lexicons.data.model import Model
from lexicons.errors import CallError, CallFailed
from lexicons.signal import Response, Signal
from tests.support.daemon import wait_for
from tests.support.services import Flaky, Hanging
from tests.support.websocket import CORE, HANDSHAKE, RawClient, http_exchange, serving


class Echo(Signal):
    def execute(self, data):
        return data


class Refuse(Signal):
    def execute(self):
        raise CallError("not today")


class Boom(Signal):
    def execute(self):
        raise ZeroDivisionError("internal")


class Publish(Signal):
    def execute(self, channel: str, data):
        return Response(data, channels=[channel])


class Note(Model):
    text: str


class Write(Signal):
    def execute(self, text: str, db):
        db.create(Note, text=text)
        return "written"


class Room(Channel):
    name = "room:{name}"


APP = Application(models=[Note], signals=[Echo, Refuse, Boom, Publish, Write], channels=[Room])


def get(port, path):
    return http_exchange(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


def scrape(port, path="/metrics"):
    """Return {(sample name, sorted labels): value} of one scrape, parsed by prometheus_client."""
    status, headers, body = get(port, path)
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples, name, **labels):
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_parse_and_move_as_calls_happen():
    """Calls, outcomes, rejections, messages and the latency histogram count what happened."""
    with serving(APP) as server:
        before = scrape(server.port)
        with server.client() as client:
            for n in range(3):
                assert client.call("Echo", data=n) == n
            with pytest.raises(CallFailed):
                client.call("Refuse")
            with pytest.raises(CallFailed):
                client.call("Boom")
            with pytest.raises(CallFailed):
                client.call("Ecco", data=1)
            assert value(scrape(server.port), "lexicons_connections") == 1
        after = scrape(server.port)

    def moved(name, **labels):
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("lexicons_calls_total", signal="Echo", outcome="ok") == 3
    assert moved("lexicons_calls_total", signal="Refuse", outcome="error") == 1
    assert moved("lexicons_calls_total", signal="Boom", outcome="failed") == 1
    assert moved("lexicons_calls_rejected_total") == 1
    assert moved("lexicons_messages_received_total") == 6
    assert moved("lexicons_messages_sent_total", kind="reply") == 6
    assert moved("lexicons_call_duration_seconds_count", signal="Echo") == 3
    assert value(after, "lexicons_call_duration_seconds_sum", signal="Echo") > 0
    buckets = [v for (name, labels), v in after.items()
               if name == "lexicons_call_duration_seconds_bucket" and ("signal", "Echo") in labels]
    assert len(buckets) == 17 and max(buckets) == 3
    assert ("lexicons_call_duration_seconds_count", (("signal", "Write"),)) not in after
    assert value(after, "lexicons_service_state", service="router", state="RUNNING") == 1
    assert value(after, "lexicons_healthy") == 1


def test_broadcasts_and_connections_are_counted():
    """Broadcasts published and delivered, channels and open connections show on /metrics."""
    with serving(APP) as server:
        clients = [server.client() for _ in range(3)]
        try:
            for client in clients:
                client.subscribe("room:a")
            samples = scrape(server.port)
            assert value(samples, "lexicons_connections") == 3
            assert value(samples, "lexicons_channels") == 1
            assert value(samples, "lexicons_channel_memberships") == 3
            clients[0].call("Publish", channel="room:a", data="hi")
            for client in clients:
                assert client.receive() == [{"Publish": "hi"}]
            samples = scrape(server.port)
            assert value(samples, "lexicons_broadcasts_total") == 1
            assert value(samples, "lexicons_messages_sent_total", kind="broadcast") == 3
        finally:
            for client in clients:
                client.close()


def slow_reader(port):
    """Connect with a tiny receive buffer and never read: the server's buffer fills."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.settimeout(5)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall(HANDSHAKE.format(path="/", key=key, extra="").encode())
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(1)
    return RawClient(sock, b"")


def test_outbound_buffers_and_slow_consumer_closes_are_measured():
    """Bytes queued for a client that does not read show up; its overflow close is counted."""
    with serving(APP, OUTBOX_LIMIT=256 * 1024) as server:
        lazy = slow_reader(server.port)
        try:
            lazy.call({"Subscribe": {"channel": "room:big"}})
            server.wait_connections(1)
            wait_for(lambda: server.service("rooms").members("room:big"), what="subscription")
            seen = closes = 0.0
            with server.client() as publisher:
                for _ in range(400):   # 8 MB at most: more than any loopback buffer holds
                    publisher.call("Publish", channel="room:big", data="x" * 20000)
                    samples = scrape(server.port)
                    queued = value(samples, "lexicons_outbound_buffer_bytes")
                    assert queued == value(samples, "lexicons_outbound_buffer_max_bytes")
                    seen = max(seen, queued)
                    closes = value(samples, "lexicons_slow_consumer_closes_total")
                    if closes:
                        break
            assert 0 < seen <= 256 * 1024 and closes == 1
        finally:
            lazy.close()


def test_each_daemon_has_its_own_registry():
    """Two daemons in one process expose their own numbers; the global registry has none."""
    with serving(APP) as first, serving(APP) as second:
        with first.client() as client:
            client.call("Echo", data=1)
        one, two = scrape(first.port), scrape(second.port)
        assert value(one, "lexicons_calls_total", signal="Echo", outcome="ok") == 1
        assert value(two, "lexicons_calls_total", signal="Echo", outcome="ok") == 0
    assert b"lexicons_" not in prometheus_client.generate_latest(prometheus_client.REGISTRY)


def test_restarts_and_fatal_services_show_on_metrics_and_health():
    """A restarted service is counted; a FATAL one makes /health 503 naming it and flips gauges."""
    settings = {"RESTART_LIMIT": 1, "RESTART_BACKOFF": 0.01, "RESTART_WINDOW": 60.0}
    with serving(APP, extra=[Flaky], **settings) as server:
        flaky = server.service("flaky")
        flaky.crash()
        wait_for(lambda: value(scrape(server.port), "lexicons_service_restarts_total",
                               service="flaky") == 1, what="one restart")
        status, _, body = get(server.port, "/health")
        assert status == 200 and json.loads(body)["failing"] == {}
        wait_for(lambda: flaky.state.value == "RUNNING", what="flaky running again")
        flaky.crash(always=True)
        wait_for(lambda: flaky.state.value == "FATAL", what="flaky fatal")
        status, _, body = get(server.port, "/health")
        health = json.loads(body)
        assert status == 503 and health["healthy"] is False
        assert health["failing"] == {"flaky": "FATAL"} and health["services"]["router"] == "RUNNING"
        samples = scrape(server.port)
        assert value(samples, "lexicons_service_state", service="flaky", state="FATAL") == 1
        assert value(samples, "lexicons_service_state", service="flaky", state="RUNNING") == 0
        assert value(samples, "lexicons_healthy") == 0


def test_a_hung_service_makes_health_fail():
    """A service that stops beating is named on /health (503) and on lexicons_service_hung."""
    with serving(APP, extra=[Hanging]) as server:
        server.manager.commands()["hang"]({})
        wait_for(lambda: get(server.port, "/health")[0] == 503, what="503")
        assert json.loads(get(server.port, "/health")[2])["failing"] == {"hanging": "hung"}
        assert value(scrape(server.port), "lexicons_service_hung", service="hanging") == 1
        server.manager.commands()["resume"]({})
        wait_for(lambda: get(server.port, "/health")[0] == 200, what="200 again")


def test_journal_and_tables_are_exposed(tmp_path):
    """With the persister, rows per table and the journal's lag and size are on /metrics."""
    services = ["services.persister/PersisterService", *CORE]
    with serving(APP, SERVICE_LIST=services, DATA_DIR=str(tmp_path), DB_FSYNC="no") as server:
        with server.client() as client:
            client.call("Write", text="hello")
        samples = scrape(server.port)
        assert value(samples, "lexicons_table_rows", table="Note") == 1
        assert ("lexicons_journal_lag_records", ()) in samples
        assert value(samples, "lexicons_journal_bytes") > 0


def test_metrics_path_is_a_setting():
    """METRICS_PATH moves the endpoint; empty serves none."""
    with serving(APP, METRICS_PATH="/prom") as server:
        assert value(scrape(server.port, "/prom"), "lexicons_healthy") == 1
        assert get(server.port, "/metrics")[0] == 404
    with serving(APP, METRICS_PATH="") as server:
        assert get(server.port, "/metrics")[0] == 404


def test_call_stats_histogram_is_cumulative():
    """CallStats puts each latency in the first bucket whose bound holds it; +Inf holds all."""
    stats = CallStats(["A"], buckets=(0.001, 0.01))
    for seconds in (0.0005, 0.001, 0.005, 3.0):
        stats.record("A", OK, seconds)
    buckets, total = stats.histogram("A")
    assert buckets == [("0.001", 2), ("0.01", 3), ("+Inf", 4)]
    assert total == pytest.approx(3.0065)
    assert stats.calls == {("A", "ok"): 4, ("A", "error"): 0, ("A", "failed"): 0}
