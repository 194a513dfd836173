"""Idle connections: off their reader threads, watched by one poller, still fully served."""
import os
import struct
import threading
import time

import pytest

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.signal import Response, Signal
from lexicons.wire import frames
from tests.support.websocket import need_descriptors, serving

IDLE = 0.1


class Echo(Signal):
    def execute(self, data):
        return data


class Publish(Signal):
    def execute(self, channel: str, data):
        return Response(data, channels=[channel])


class News(Channel):
    name = "news"


APP = Application(signals=[Echo, Publish], channels=[News])


def wait_for(predicate, timeout: float = 5.0, what: str = "condition") -> None:
    """Poll *predicate* until it holds; fail naming *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def threads() -> int:
    """Return how many threads this process runs, however they were started."""
    return len(os.listdir("/proc/self/task"))


def idle(running) -> int:
    return running.service("listener").hub.idle_count()


def test_a_silent_connection_moves_to_the_poller_and_comes_back_for_a_call():
    """After IDLE_AFTER of silence the poller holds the connection; a call still gets its
    answer on a reader thread, and the connection goes idle again afterwards."""
    with serving(APP, IDLE_AFTER=IDLE) as running:
        raw = running.raw()
        wait_for(lambda: idle(running) == 1, what="the connection to go idle")
        raw.call({"Echo": {"data": "first"}})
        assert raw.recv_json() == [{"Echo": "first"}]
        wait_for(lambda: idle(running) == 1, what="the connection to go idle again")
        raw.call({"Echo": {"data": "second"}})
        assert raw.recv_json() == [{"Echo": "second"}]
        assert running.service("listener").info()["idle"] in (0, 1)
        raw.close()
        running.wait_connections(0)
        assert idle(running) == 0


def test_the_poller_answers_pings_itself():
    """A ping to an idle connection gets its pong without taking the connection off the
    poller."""
    with serving(APP, IDLE_AFTER=IDLE) as running:
        raw = running.raw()
        wait_for(lambda: idle(running) == 1, what="the connection to go idle")
        raw.send_frame(frames.OP_PING, b"are you there")
        assert raw.recv_frame() == (frames.OP_PONG, b"are you there")
        assert idle(running) == 1
        raw.close()


def test_a_frame_split_across_the_idle_boundary_is_put_together():
    """Half a frame read by the poller and the rest later make one message."""
    with serving(APP, IDLE_AFTER=IDLE) as running:
        raw = running.raw()
        wait_for(lambda: idle(running) == 1, what="the connection to go idle")
        data = frames.client_frame(frames.OP_TEXT, b'{"Echo": {"data": "joined"}}')
        raw.sock.sendall(data[:5])
        time.sleep(0.2)
        assert idle(running) == 1
        raw.sock.sendall(data[5:])
        assert raw.recv_json() == [{"Echo": "joined"}]
        raw.close()


def test_idle_subscribers_get_broadcasts():
    """Subscribers that went idle still receive every broadcast, in order."""
    with serving(APP, IDLE_AFTER=IDLE) as running:
        subscribers = [running.raw() for _ in range(5)]
        for raw in subscribers:
            raw.call({"Subscribe": {"channel": "news"}})
            assert raw.recv_json() == [{"Subscribe": "news"}]
        wait_for(lambda: idle(running) == 5, what="the subscribers to go idle")
        with running.client() as publisher:
            for n in range(20):
                publisher.call("Publish", channel="news", data=n)
        for raw in subscribers:
            assert [raw.recv_json() for _ in range(20)] == [
                [{"Publish": n}] for n in range(20)]
            raw.close()


def test_a_close_frame_on_an_idle_connection_is_echoed_and_the_socket_closed():
    """The poller answers a client's close and the server closes the TCP connection."""
    with serving(APP, IDLE_AFTER=IDLE) as running:
        raw = running.raw()
        wait_for(lambda: idle(running) == 1, what="the connection to go idle")
        raw.send_frame(frames.OP_CLOSE, struct.pack("!H", 1000) + b"bye")
        assert raw.expect_close() == (1000, "")
        assert raw.closed_by_server(3)
        running.wait_connections(0)
        assert idle(running) == 0


def test_an_abrupt_disconnect_of_an_idle_connection_is_noticed():
    """A client that vanishes without a close frame is forgotten, its channels left."""
    with serving(APP, IDLE_AFTER=IDLE) as running:
        raw = running.raw()
        raw.call({"Subscribe": {"channel": "news"}})
        assert raw.recv_json() == [{"Subscribe": "news"}]
        wait_for(lambda: idle(running) == 1, what="the connection to go idle")
        raw.sock.setsockopt(1, 13, struct.pack("ii", 1, 0))  # SO_LINGER 0: a reset
        raw.close()
        running.wait_connections(0)
        assert running.service("rooms").info()["memberships"] == 0


def test_a_bad_frame_on_an_idle_connection_closes_it_with_1002():
    """The poller decodes with the same checks: an unmasked frame is a protocol error."""
    with serving(APP, IDLE_AFTER=IDLE) as running:
        raw = running.raw()
        wait_for(lambda: idle(running) == 1, what="the connection to go idle")
        raw.sock.sendall(b"\x81\x02hi")  # not masked
        code, _ = raw.expect_close()
        assert code == 1002
        assert raw.closed_by_server(3)
        running.wait_connections(0)


def test_stopping_the_server_closes_idle_connections_with_1001():
    """Idle connections get close 1001 on stop and the stop does not wait for them."""
    with serving(APP, IDLE_AFTER=IDLE) as running:
        raws = [running.raw() for _ in range(3)]
        wait_for(lambda: idle(running) == 3, what="the connections to go idle")
        stopper = threading.Thread(target=running.manager.stop)
        started = time.monotonic()
        stopper.start()
        for raw in raws:
            assert raw.expect_close() == (1001, "server shutting down")
            raw.send_frame(frames.OP_CLOSE, struct.pack("!H", 1001))
            raw.close()
        stopper.join(10)
        assert running.connections() == 0
        assert time.monotonic() - started < 3


def test_a_silent_client_that_ignores_pings_is_closed_while_idle():
    """Keepalive works on idle connections: one that never answers a ping is closed."""
    with serving(APP, IDLE_AFTER=IDLE, PING_INTERVAL=0.3) as running:
        raw = running.raw()
        assert raw.expect_close(timeout=5) == (1008, "no pong within 0.3 s")
        raw.close()
        running.wait_connections(0)


def test_idle_connections_hold_no_thread_and_leave_together_quickly():
    """300 idle clients hold no reader thread each; when they all close at once, every
    one gets its close answered and the server answers a new client meanwhile."""
    count = 300
    need_descriptors(2 * count + 200)
    with serving(APP, IDLE_AFTER=IDLE) as running:
        raws = [running.raw() for _ in range(count)]
        wait_for(lambda: idle(running) == count, timeout=20, what="every client to go idle")
        wait_for(lambda: threads() < count // 2, timeout=20,
                 what="the parked reader threads to end")
        for raw in raws:
            raw.send_frame(frames.OP_CLOSE, struct.pack("!H", 1000))
        with running.client() as newcomer:
            assert newcomer.call("Echo", data="still here") == "still here"
        for raw in raws:
            assert raw.expect_close() == (1000, "")
            assert raw.closed_by_server(3)
            raw.close()
        running.wait_connections(0)


@pytest.mark.parametrize("idle_after", [0.0, 30.0])
def test_without_idling_every_connection_keeps_its_thread(idle_after):
    """IDLE_AFTER = 0 (or longer than the silence) keeps the thread-per-connection model."""
    with serving(APP, IDLE_AFTER=idle_after) as running:
        raw = running.raw()
        time.sleep(0.3)
        assert idle(running) == 0
        raw.call({"Echo": {"data": 1}})
        assert raw.recv_json() == [{"Echo": 1}]
        raw.close()
        running.wait_connections(0)
