"""History, recovery and presence on one node, over real sockets (memory backplane)."""
import socket
import threading
import time

import pytest

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.errors import CallFailed
from tests.services.test_rooms import drain
from tests.support.daemon import wait_for
from tests.support.historyapp import APP
from tests.support.websocket import serving


@pytest.fixture(scope="module")
def server():
    with serving(APP) as running:
        yield running


def posts(client, channel, last, timeout=20.0):
    """Return the n of every Post broadcast on *channel* until n == *last* arrives."""
    seen = []
    deadline = time.monotonic() + timeout
    while not seen or seen[-1] != last:
        assert time.monotonic() < deadline, f"got {seen[-5:]} before timing out"
        message = client.receive(timeout)
        for item in message:
            if "Post" in item and item["@"]["channel"] == channel:
                seen.append(item["Post"]["n"])
    return seen


def publish_steadily(server, channel, count, pause=0.002):
    """Start a thread posting n = 0..count-1 on *channel*; return it (join it)."""
    def run():
        with server.client(headers={"User": {"name": "publisher"}}) as pub:
            for n in range(count):
                pub.call("Post", channels=[channel], n=n)
                time.sleep(pause)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_broadcasts_carry_positions_and_a_signal_reads_the_history(server):
    """Each publication gets the next offset in the channel's epoch; sv.history reads them."""
    with server.client(headers={"User": {"name": "a"}}) as client:
        answer = client.subscribe("feed:positions")
        assert answer["channel"] == "feed:positions" and answer["offset"] == 0
        for n in range(4):
            client.call("Post", channels=["feed:positions"], n=n)
        got = [client.receive(5)[0] for _ in range(4)]
        assert [g["@"] for g in got] == [{"channel": "feed:positions", "epoch": answer["epoch"],
                                          "offset": n + 1} for n in range(4)]
        read = client.call("Read", channel="feed:positions", limit=2)
        assert read == {"channel": "feed:positions", "offset": 4, "epoch": answer["epoch"],
                        "publications": [{"offset": 3, "name": "Post", "data": {"n": 2}},
                                         {"offset": 4, "name": "Post", "data": {"n": 3}}]}
        with pytest.raises(CallFailed, match="keeps no history"):
            client.call("Read", channel="plain:x")


def test_a_channel_without_history_broadcasts_as_before(server):
    """No position, no history: a plain channel's broadcast is just [{name: payload}]."""
    with server.client(headers={"User": {"name": "a"}}) as client:
        assert client.call("Subscribe", channel="plain:before") == "plain:before"
        client.call("Post", channels=["plain:before"], n=1)
        assert client.receive(5) == [{"Post": {"n": 1}}]


def test_a_client_whose_socket_drops_recovers_every_message_once_in_order(server):
    """Socket cut under the client mid-stream: after the reconnect, 0..N-1 each once, in order."""
    channel = "feed:drop"
    with server.client(headers={"User": {"name": "sub"}}, reconnect=True,
                       retry_max=0.2) as sub:
        sub.subscribe(channel)
        publisher = publish_steadily(server, channel, 400)
        first = posts(sub, channel, 40)
        sub._ws.sock.shutdown(socket.SHUT_RDWR)  # the network drops
        wait_for(lambda: sub.reconnects == 1, what="a reconnect")
        assert sub.wait_resubscribed(10)
        publisher.join(30)
        rest = posts(sub, channel, 399)
        assert first + rest == list(range(400))
        assert sub.recovered[channel] is True


def test_recovery_is_refused_when_the_history_is_too_short(server):
    """Five missed on a channel that keeps three: recovered false, nothing replayed."""
    with server.client(headers={"User": {"name": "a"}}) as first:
        position = first.subscribe("short:gone")
    with server.client(headers={"User": {"name": "b"}}) as pub:
        for n in range(5):
            pub.call("Post", channels=["short:gone"], n=n)
    with server.client(headers={"User": {"name": "a"}}) as again:
        answer = again.subscribe("short:gone", recover={"offset": position["offset"],
                                                        "epoch": position["epoch"]})
        assert answer["recovered"] is False and answer["missed"] == 0
        assert "no longer reaches back to offset 0" in answer["reason"]
        assert answer["offset"] == 5 and answer["epoch"] == position["epoch"]
        assert drain(again) == []
        # three kept: from offset 2 it can
        answer = again.subscribe("short:gone", recover={"offset": 2, "epoch": position["epoch"]})
        assert answer["recovered"] is True  # already in: nothing was missed


def test_bad_recover_requests_get_clear_errors(server):
    """A future offset, a malformed position, or a channel without history: errors."""
    with server.client(headers={"User": {"name": "a"}}) as client:
        epoch = client.subscribe("feed:future")["epoch"]
        client.unsubscribe("feed:future")
        with pytest.raises(CallFailed, match="offset 99 is in the future: the channel is at "
                                             "offset 0"):
            client.subscribe("feed:future", recover={"offset": 99, "epoch": epoch})
        with pytest.raises(CallFailed, match="recover.offset must be a whole number"):
            client.subscribe("feed:future", recover={"offset": "x", "epoch": epoch})
        with pytest.raises(CallFailed, match="recover must be an object"):
            client.call("Subscribe", channel="feed:future", recover=[1, 2])
        with pytest.raises(CallFailed, match="keeps no history: there is nothing to recover"):
            client.subscribe("plain:x", recover={"offset": 0, "epoch": epoch})
        assert server.service("rooms").members("feed:future") == ()


def test_presence_join_and_leave_are_seen_by_others(server):
    """Members of a presence channel see joins and leaves; Presence answers who and how many."""
    with server.client(headers={"User": {"name": "ann"}}) as ann:
        ann.subscribe("lobby:p")
        assert ann.receive(5)[0]["Presence"]["user"] == "ann"
        with server.client(headers={"User": {"name": "bob"}}) as bob:
            bob.subscribe("lobby:p")
            joined = ann.receive(5)[0]["Presence"]
            assert joined["event"] == "join" and joined["user"] == "bob"
            who = bob.call("Presence", channel="lobby:p")
            assert who["count"] == 2 and {m["user"] for m in who["members"]} == {"ann", "bob"}
        left = ann.receive(5)[0]["Presence"]
        assert left == {**joined, "event": "leave"}
        assert ann.call("Presence", channel="lobby:p")["count"] == 1
        with pytest.raises(CallFailed, match="keeps no presence"):
            ann.call("Presence", channel="plain:x")
        with pytest.raises(CallFailed, match="unknown channel"):
            ann.call("Presence", channel="nowhere")


class TooLong(Channel):
    name = "toolong"
    history_size = 20_000


def test_a_history_over_the_settings_bound_stops_start_up():
    """history_size above HISTORY_MAX_SIZE is refused, naming the channel and the setting."""
    with pytest.raises(Exception, match="TooLong: history_size 20000 is over HISTORY_MAX_SIZE"):
        with serving(Application(channels=[TooLong])):
            pass


def test_publications_racing_the_history_read_arrive_once(server, monkeypatch):
    """One publication just before the read (so in it and buffered), one just after: each once."""
    rooms = server.service("rooms")
    history = rooms.channel_state.history
    read = history.recover
    channel = "feed:race"

    def racing_read(*args):
        rooms.publish((channel,), "Post", {"n": "before the read"})
        result = read(*args)
        rooms.publish((channel,), "Post", {"n": "after the read"})
        return result

    with server.client(headers={"User": {"name": "a"}}) as first:
        answer = first.subscribe(channel)
        position = {"offset": answer["offset"], "epoch": answer["epoch"]}
        for n in range(3):
            first.call("Post", channels=[channel], n=n)
    monkeypatch.setattr(history, "recover", racing_read)
    with server.client(headers={"User": {"name": "b"}}) as again:
        answer = again.subscribe(channel, recover=position)
        assert answer["recovered"] is True and answer["missed"] == 4
        got = [item["Post"]["n"] for message in drain(again) for item in message]
        assert got == [0, 1, 2, "before the read", "after the read"]
        assert answer["offset"] == 5
