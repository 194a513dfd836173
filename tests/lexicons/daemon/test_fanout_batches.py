"""Broadcasts made on a reader thread leave from that thread, together, after its batch."""
import threading
import time

import pytest

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.signal import Response, Signal
from tests.support.websocket import serving

GATE = threading.Event()


class Publish(Signal):
    def execute(self, channel: str, data):
        return Response(data, channels=[channel])


class Hold(Signal):
    """Keep the caller's reader busy until the test lets it go (answers nothing)."""

    def execute(self):
        GATE.wait(10)


class Feed(Channel):
    name = "feed"


APP = Application(signals=[Publish, Hold], channels=[Feed])


@pytest.fixture
def server():
    GATE.clear()
    with serving(APP) as running:
        yield running
    GATE.set()


def wait_for(predicate, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached in time")
        time.sleep(0.01)


def test_calls_that_arrive_while_a_batch_runs_share_its_sends(server):
    """Publishes that arrive while the reader is busy join the broadcasts it already made:
    the subscriber gets them all, in order, in one send."""
    hub = server.service("listener").hub
    hub.tick = 30.0  # the flusher must not step in: only the reader sends here
    with server.client() as subscriber, server.client() as publisher:
        subscriber.subscribe("feed")
        sends = hub.sends
        publisher.send_text('[{"Publish": {"channel": "feed", "data": 0}}, {"Hold": {}}]')
        wait_for(lambda: server.service("router").calls >= 3)  # Subscribe, Publish, Hold
        for n in range(1, 21):  # separate frames, each its own write
            publisher.send("Publish", channel="feed", data=n)
        time.sleep(0.2)  # loopback: they are in the server's receive buffer by now
        GATE.set()
        got = [subscriber.receive(10) for _ in range(21)]
        assert got == [[{"Publish": n}] for n in range(21)]
        assert hub.sends - sends == 1
        assert hub.chunks >= 21


def test_broadcasts_from_other_threads_still_leave_through_the_flusher(server):
    """A broadcast made off any reader thread (a task, the backplane) is sent by the flusher."""
    with server.client() as subscriber:
        subscriber.subscribe("feed")
        rooms = server.service("rooms")
        done = threading.Event()

        def publish():
            rooms.publish(["feed"], "Publish", "from a thread")
            done.set()

        threading.Thread(target=publish).start()
        assert done.wait(5)
        assert subscriber.receive(5) == [{"Publish": "from a thread"}]
