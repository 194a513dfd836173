"""The Python client against a real server: calls, ids, subscriptions, iteration, closing."""
import threading

import pytest

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.errors import CallFailed
from lexicons.signal import Response, Signal
from tests.support.websocket import serving


class Echo(Signal):
    def execute(self, data):
        return data


class Shout(Signal):
    def execute(self, text: str):
        return Response(text.upper(), channels=["hall"])


class Nap(Signal):
    def execute(self, seconds: float):
        threading.Event().wait(seconds)
        return "rested"


class Hall(Channel):
    name = "hall"


@pytest.fixture(scope="module")
def server():
    with serving(Application(signals=[Echo, Shout, Nap], channels=[Hall])) as running:
        yield running


def test_call_returns_the_answer(server):
    """call() waits for the answer carrying its id and returns the payload."""
    with server.client() as client:
        assert client.call("Echo", data={"a": [1, 2]}) == {"a": [1, 2]}


def test_call_raises_call_failed_with_the_errors(server):
    """An error answer raises CallFailed listing the server's messages."""
    with server.client() as client:
        with pytest.raises(CallFailed) as info:
            client.call("Echo")
        assert info.value.errors == ["Echo: missing argument 'data'"]


def test_call_times_out(server):
    """A call not answered in time raises TimeoutError; the connection stays usable."""
    with server.client() as client:
        with pytest.raises(TimeoutError):
            client.call("Nap", timeout=0.1, seconds=0.5)
        assert client.call("Echo", data=1) == 1


def test_concurrent_calls_from_several_threads(server):
    """Threads sharing one client each get their own answers."""
    with server.client() as client:
        results = {}

        def work(n):
            results[n] = [client.call("Echo", data=[n, i]) for i in range(20)]
        threads = [threading.Thread(target=work, args=(n,)) for n in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(10)
        assert results == {n: [[n, i] for i in range(20)] for n in range(8)}


def test_subscribe_and_iterate_broadcasts(server):
    """Broadcasts of a subscribed channel arrive through receive() and iteration."""
    listener = server.client()
    listener.subscribe("hall")
    with server.client() as speaker:
        speaker.call("Shout", text="one")
        speaker.send("Shout", text="two")
    assert listener.receive() == [{"Shout": "ONE"}]
    got = []
    for message in listener:
        got.append(message)
        break
    assert got == [[{"Shout": "TWO"}]]
    listener.close()
    assert list(listener) == []


def test_close_is_idempotent_and_reports_the_code(server):
    """Closing twice is harmless; a closed client knows the close code."""
    client = server.client()
    client.close()
    client.close()
    assert not client.connected and client.close_code == 1000
