"""The hub's readers: connections hold no thread, one reader serves them in turn, and a
handler that blocks holds up only its own connection."""
import os
import struct
import threading
import time

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.signal import Response, Signal
from lexicons.wire import frames
from tests.support.websocket import need_descriptors, serving

RELEASE = threading.Event()


class Echo(Signal):
    def execute(self, data):
        return data


class Wait(Signal):
    """Blocks its reader until the test lets it go (a call waiting on a slow backend)."""

    def execute(self):
        return RELEASE.wait(10)


class Publish(Signal):
    def execute(self, channel: str, data):
        return Response(data, channels=[channel])


class News(Channel):
    name = "news"


APP = Application(signals=[Echo, Wait, Publish], channels=[News])


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


def hub(running):
    return running.service("listener").hub


def test_open_connections_hold_no_thread():
    """300 open connections are watched by the readers without a thread each."""
    count = 300
    need_descriptors(2 * count + 200)
    with serving(APP) as running:
        before = threads()
        raws = [running.raw() for _ in range(count)]
        wait_for(lambda: hub(running).watched() == count, what="every connection watched")
        assert threads() < before + 20
        for raw in raws:
            raw.call({"Echo": {"data": 1}})
        for raw in raws:
            assert raw.recv_json() == [{"Echo": 1}]
            raw.close()
        running.wait_connections(0)
        assert hub(running).watched() == 0


def test_a_blocking_call_holds_up_only_its_own_connection():
    """While one call blocks its reader, another reader starts and serves the others;
    once the call returns, the spare reader leaves again."""
    RELEASE.clear()
    with serving(APP, READER_PATIENCE=0.01) as running:
        blocked, other = running.raw(), running.raw()
        blocked.call({"Wait": {}})
        time.sleep(0.1)
        started = time.monotonic()
        for n in range(20):
            other.call({"Echo": {"data": n}})
            assert other.recv_json() == [{"Echo": n}]
        assert time.monotonic() - started < 2
        blocked.call({"Echo": {"data": "after"}})  # in order, behind its own blocked call
        RELEASE.set()
        assert blocked.recv_json() == [{"Wait": True}]
        assert blocked.recv_json() == [{"Echo": "after"}]
        wait_for(lambda: hub(running).readers() == 1, what="the spare reader to leave")
        blocked.close()
        other.close()


def test_the_readers_answer_pings():
    """A ping gets its pong with the same payload."""
    with serving(APP) as running:
        raw = running.raw()
        raw.send_frame(frames.OP_PING, b"are you there")
        assert raw.recv_frame() == (frames.OP_PONG, b"are you there")
        raw.close()


def test_a_frame_sent_in_two_parts_is_put_together():
    """Half a frame, a pause, then the rest make one message."""
    with serving(APP) as running:
        raw = running.raw()
        data = frames.client_frame(frames.OP_TEXT, b'{"Echo": {"data": "joined"}}')
        raw.sock.sendall(data[:5])
        time.sleep(0.2)
        raw.sock.sendall(data[5:])
        assert raw.recv_json() == [{"Echo": "joined"}]
        raw.close()


def test_subscribers_get_every_broadcast_in_order():
    """Subscribers that only read receive every broadcast, in order."""
    with serving(APP) as running:
        subscribers = [running.raw() for _ in range(5)]
        for raw in subscribers:
            raw.call({"Subscribe": {"channel": "news"}})
            assert raw.recv_json() == [{"Subscribe": "news"}]
        with running.client() as publisher:
            for n in range(20):
                publisher.call("Publish", channel="news", data=n)
        for raw in subscribers:
            assert [raw.recv_json() for _ in range(20)] == [
                [{"Publish": n}] for n in range(20)]
            raw.close()


def test_a_close_frame_is_echoed_and_the_socket_closed():
    """A client's close is answered and the server closes the TCP connection."""
    with serving(APP) as running:
        raw = running.raw()
        wait_for(lambda: hub(running).watched() == 1, what="the connection to be watched")
        raw.send_frame(frames.OP_CLOSE, struct.pack("!H", 1000) + b"bye")
        assert raw.expect_close() == (1000, "")
        assert raw.closed_by_server(3)
        running.wait_connections(0)
        assert hub(running).watched() == 0


def test_an_abrupt_disconnect_is_noticed():
    """A client that vanishes without a close frame is forgotten, its channels left."""
    with serving(APP) as running:
        raw = running.raw()
        raw.call({"Subscribe": {"channel": "news"}})
        assert raw.recv_json() == [{"Subscribe": "news"}]
        raw.sock.setsockopt(1, 13, struct.pack("ii", 1, 0))  # SO_LINGER 0: a reset
        raw.close()
        running.wait_connections(0)
        assert running.service("rooms").info()["memberships"] == 0


def test_a_bad_frame_closes_with_1002():
    """An unmasked frame is a protocol error: close 1002, then the server's FIN."""
    with serving(APP) as running:
        raw = running.raw()
        raw.sock.sendall(b"\x81\x02hi")  # not masked
        code, _ = raw.expect_close()
        assert code == 1002
        assert raw.closed_by_server(3)
        running.wait_connections(0)


def test_many_clients_leaving_at_once_are_answered_while_a_newcomer_is_served():
    """300 clients close together: every close is answered, and a new client is served
    meanwhile."""
    count = 300
    need_descriptors(2 * count + 200)
    with serving(APP) as running:
        raws = [running.raw() for _ in range(count)]
        wait_for(lambda: hub(running).watched() == count, what="every connection watched")
        for raw in raws:
            raw.send_frame(frames.OP_CLOSE, struct.pack("!H", 1000))
        with running.client() as newcomer:
            assert newcomer.call("Echo", data="still here") == "still here"
        for raw in raws:
            assert raw.expect_close() == (1000, "")
            assert raw.closed_by_server(3)
            raw.close()
        running.wait_connections(0)


def test_a_flooding_client_does_not_starve_the_others():
    """While one client pipelines thousands of calls, another's calls are answered at
    once: readable connections are served in turn, a read at a time."""
    with serving(APP) as running:
        flooder, other = running.raw(), running.raw()
        count = 3000
        burst = b"".join(frames.client_frame(frames.OP_TEXT,
                                             b'{"Echo": {"data": %d}}' % n)
                         for n in range(count))
        replies = []

        def drain():
            for _ in range(count):
                replies.append(flooder.recv_json(timeout=30))

        reader = threading.Thread(target=drain)
        reader.start()
        flooder.sock.sendall(burst)
        slowest = 0.0
        for n in range(20):
            started = time.monotonic()
            other.call({"Echo": {"data": n}})
            assert other.recv_json() == [{"Echo": n}]
            slowest = max(slowest, time.monotonic() - started)
        reader.join(30)
        assert replies == [[{"Echo": n}] for n in range(count)]
        assert slowest < 1.0
        flooder.close()
        other.close()


def test_a_reader_that_cannot_start_is_tried_again(monkeypatch, caplog):
    """When no thread can be started for a second reader while a call blocks the first,
    the reader count stays true: the next try serves the others, and afterwards one
    reader waits again."""
    from lexicons.daemon.connection import _ReaderThread

    real_start = _ReaderThread.start
    failures = []

    def start(self):
        func = getattr(self.target, "func", None)
        if getattr(func, "__name__", "") == "_read" and not failures:
            failures.append(self)
            raise RuntimeError("can't start new thread")
        return real_start(self)

    RELEASE.clear()
    with serving(APP, READER_PATIENCE=0.01) as running:
        blocked, other = running.raw(), running.raw()
        wait_for(lambda: hub(running).watched() == 2, what="both connections watched")
        monkeypatch.setattr(_ReaderThread, "start", start)
        blocked.call({"Wait": {}})
        other.call({"Echo": {"data": "meanwhile"}})
        assert other.recv_json() == [{"Echo": "meanwhile"}]
        assert failures
        RELEASE.set()
        assert blocked.recv_json() == [{"Wait": True}]
        wait_for(lambda: hub(running).readers() == 1, what="one reader waiting")
        for n in range(3):
            other.call({"Echo": {"data": n}})
            assert other.recv_json() == [{"Echo": n}]
        blocked.close()
        other.close()


def test_a_broadcast_leaves_at_once_when_its_sender_closes_in_the_same_read():
    """A publish and a close frame read together: the broadcast goes out with the reader's
    batch, not a flusher round later."""
    with serving(APP) as running:
        subscriber, publisher = running.raw(), running.raw()
        subscriber.call({"Subscribe": {"channel": "news"}})
        assert subscriber.recv_json() == [{"Subscribe": "news"}]
        hub(running).tick = 30.0  # the flusher's round for left-over batches: far away
        publisher.sock.sendall(
            frames.client_frame(frames.OP_TEXT,
                                b'{"Publish": {"channel": "news", "data": "bye"}}')
            + frames.client_frame(frames.OP_CLOSE, struct.pack("!H", 1000)))
        assert subscriber.recv_json(timeout=5) == [{"Publish": "bye"}]
        assert publisher.expect_close() == (1000, "")
        publisher.close()
        subscriber.close()
