"""Rooms over real sockets: subscriptions, fan-out to exactly the members, slow consumers."""
import json
import socket
import threading
import time

import pytest

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.daemon.service import Service
from lexicons.errors import CallFailed
from lexicons.signal import Response, Signal
from tests.support.websocket import RawClient, serving


class Publish(Signal):
    def execute(self, channel: str, data):
        return Response(data, channels=[channel])


class PublishMany(Signal):
    def execute(self, channels: list[str], data):
        return Response(data, channels=channels, reply="sent", name="News")


class Announce(Signal):
    def execute(self, channel: str, sv):
        sv.publish(channel, "Announce", "early")
        time.sleep(2.0)  # keeps working after publishing
        return "late"


class Public(Channel):
    name = "public"


class Room(Channel):
    name = "room:{name}"


class Vault(Channel):
    name = "vault"

    def permit(self, ws, **params):
        return False


APP = Application(signals=[Publish, PublishMany, Announce],
                  channels=[Public, Room, Vault])


@pytest.fixture(scope="module")
def server():
    with serving(APP) as running:
        yield running


def drain(client, timeout=0.3):
    """Return every message arriving within *timeout* of the previous one."""
    got = []
    while True:
        try:
            got.append(client.receive(timeout))
        except TimeoutError:
            return got


def until_end(client):
    """Return the broadcasts a client gets before the "end" marker."""
    got = []
    while (message := client.receive(5)) != [{"Publish": "end"}]:
        got.append(message)
    return got


def test_broadcasts_reach_exactly_the_subscribers_each_once_in_order(server):
    """Each subscriber of a channel gets every broadcast once, in order; others get none."""
    clients = [server.client() for _ in range(12)]
    channels = ["room:a", "room:b", "public"]
    for i, client in enumerate(clients):
        client.subscribe(channels[i % 3])
    publisher = clients[2]
    for n in range(50):
        publisher.send("Publish", channel="room:a", data=n)
    publisher.send("Publish", channel="room:b", data="b-only")
    for channel in channels:
        publisher.call("Publish", channel=channel, data="end")
    expected = {"room:a": [[{"Publish": n}] for n in range(50)],
                "room:b": [[{"Publish": "b-only"}]], "public": []}
    for i, client in enumerate(clients):
        assert until_end(client) == expected[channels[i % 3]]
    for client in clients:
        client.close()


def test_a_broadcast_leaves_while_its_signal_still_runs(server):
    """sv.publish() inside a long signal reaches subscribers before the signal returns."""
    with server.client() as subscriber, server.client() as caller:
        subscriber.subscribe("room:early")
        started = time.monotonic()
        caller.send("Announce", channel="room:early")
        assert subscriber.receive(2) == [{"Announce": "early"}]
        assert time.monotonic() - started < 1.0  # the signal runs 2 s
        assert caller.receive(5) == [{"Announce": "late"}]


def test_a_connection_in_several_channels_gets_a_broadcast_once(server):
    """A response broadcast on two channels reaches a member of both once."""
    with server.client() as both, server.client() as one, server.client() as caller:
        both.subscribe("room:x")
        both.subscribe("room:y")
        one.subscribe("room:y")
        assert caller.call("PublishMany", channels=["room:x", "room:y"], data=1) == "sent"
        assert drain(both) == [[{"News": 1}]]
        assert drain(one) == [[{"News": 1}]]


def test_subscribing_twice_is_being_in_once(server):
    """Joining a channel twice makes one membership."""
    with server.client() as client:
        client.subscribe("public")
        client.subscribe("public")
        client.call("Publish", channel="public", data="once")
        assert drain(client) == [[{"Publish": "once"}]]


def test_unsubscribe_stops_delivery(server):
    """After Unsubscribe a connection receives nothing more from that channel."""
    with server.client() as client:
        client.subscribe("room:u")
        client.unsubscribe("room:u")
        client.unsubscribe("room:u")  # leaving twice is not an error
        client.call("Publish", channel="room:u", data=1)
        assert drain(client) == []


def test_unknown_and_forbidden_channels_are_refused(server):
    """Subscribing to an undeclared channel or one whose permit says no is an error."""
    with server.client() as client:
        with pytest.raises(CallFailed, match="unknown channel 'nowhere'"):
            client.subscribe("nowhere")
        with pytest.raises(CallFailed, match="not permitted to subscribe to 'vault'"):
            client.subscribe("vault")


def test_membership_is_cleaned_up_on_disconnect(server):
    """A connection that goes away leaves all its channels."""
    rooms = server.service("rooms")
    before = rooms.info()["memberships"]
    client = server.client()
    client.subscribe("room:gone")
    client.subscribe("public")
    assert rooms.info()["memberships"] == before + 2
    client.close()
    deadline = time.monotonic() + 3
    while rooms.info()["memberships"] != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert rooms.info()["memberships"] == before
    assert rooms.members("room:gone") == ()


def test_a_stalled_client_is_cut_off_and_others_keep_their_latency():
    """A subscriber that never reads is closed with 1008 at the limit; others lose nothing."""
    with serving(APP, OUTBOX_LIMIT=262144) as running:
        stalled = RawClient.__new__(RawClient)
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", running.port))
        stalled.sock = sock
        stalled.buf = b""
        stalled.sock.sendall(
            b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")
        head = b""
        while b"\r\n\r\n" not in head:
            head += sock.recv(1)
        stalled.call({"Subscribe": {"channel": "public"}})
        assert stalled.recv_json() == [{"Subscribe": "public"}]

        reader = running.client()
        reader.subscribe("public")
        latencies = []
        received = []

        def read():
            for _ in range(3000):
                message = reader.receive(10)
                received.append(message[0]["Publish"]["n"])
                latencies.append(time.monotonic() - message[0]["Publish"]["at"])
        thread = threading.Thread(target=read)
        thread.start()
        with running.client() as publisher:
            pad = "x" * 1000
            for n in range(3000):
                data = {"n": n, "at": time.monotonic(), "pad": pad}
                if n % 50 == 49:  # wait for an answer now and then: a steady, not bursty, rate
                    publisher.call("Publish", channel="public", data=data)
                else:
                    publisher.send("Publish", channel="public", data=data)
            thread.join(20)
        assert received == list(range(3000))
        latencies.sort()
        assert latencies[int(len(latencies) * 0.99)] < 0.5
        reader.close()

        code, reason = stalled.expect_close(timeout=10)
        assert (code, reason) == (1008, "outbound buffer over 262144 bytes: slow consumer")
        assert running.service("listener").hub.slow_consumers == 1
        stalled.close()


def test_pings_without_reading_pongs_hit_the_limit():
    """A client that pings and never reads is cut off too: pongs count in the buffer."""
    with serving(APP, OUTBOX_LIMIT=16384) as running:
        sock = socket.socket()
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        sock.connect(("127.0.0.1", running.port))
        raw = RawClient(sock, b"")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                     b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                     b"Sec-WebSocket-Version: 13\r\n\r\n")
        from lexicons.wire.frames import client_frame
        pings = client_frame(9, b"p" * 125) * 100
        sock.settimeout(5)
        hub = running.service("listener").hub
        deadline = time.monotonic() + 15
        try:
            while not hub.slow_consumers and time.monotonic() < deadline:
                sock.sendall(pings)
        except OSError:
            pass  # the server closed the connection
        assert running.service("listener").hub.slow_consumers == 1
        running.wait_connections(0, timeout=5)
        raw.close()


class StandInBackplane(Service):
    """Stands in for the backplane service: records calls and loops publishes back."""

    name = "backplane"

    def setup(self):
        self.calls = []
        self.receiver = None

    def set_receiver(self, fn):
        self.receiver = fn

    def set_many_receiver(self, fn):
        self.many_receiver = fn

    def publish_many(self, channels, message):
        self.calls.append(("publish", channels, json.loads(message)))
        self.many_receiver(channels, message)

    def join(self, channel):
        self.calls.append(("join", channel))

    def leave(self, channel):
        self.calls.append(("leave", channel))

    def publish(self, channel, message):
        self.calls.append(("publish", channel, json.loads(message)))
        self.receiver(channel, message)


def test_with_a_backplane_broadcasts_go_through_it():
    """Rooms joins/leaves channels on the backplane and publishes through it."""
    with serving(APP, extra=[StandInBackplane]) as running:
        backplane = running.service("backplane")
        first, second = running.client(), running.client()
        first.subscribe("room:bp")
        second.subscribe("room:bp")
        first.call("Publish", channel="room:bp", data=7)
        assert drain(second) == [[{"Publish": 7}]]
        first.close()
        second.close()
        deadline = time.monotonic() + 3
        while ("leave", "room:bp") not in backplane.calls and time.monotonic() < deadline:
            time.sleep(0.01)
        assert backplane.calls == [("join", "room:bp"),
                                   ("publish", "room:bp", [{"Publish": 7}]),
                                   ("leave", "room:bp")]
