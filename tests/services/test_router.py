"""The router over real sockets: calls, answers, errors, order, and bad input of every kind."""
import asyncio
import contextlib
import logging
import struct
import sys
import threading
import time

import pytest

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.daemon.service import Service
from lexicons.data.journal import read_records
from lexicons.data.model import Model
from lexicons.errors import CallError, CallFailed, NotPermitted
from lexicons.signal import Response, Signal
from lexicons.wire.frames import OP_BINARY, OP_PING, OP_PONG, OP_TEXT, client_frame
from tests.support.websocket import CORE, serving

STARTED = threading.Event()
FINISHED = threading.Event()


class Echo(Signal):
    def execute(self, data):
        return data


class Add(Signal):
    def execute(self, a: int, b: int = 0) -> int:
        return a + b


class Boom(Signal):
    def execute(self):
        raise ZeroDivisionError("internal detail that must not leak")


class Refuse(Signal):
    def execute(self, why: str):
        raise CallError(why)


class Admin(Signal):
    def permit(self, ws, **kwargs):
        return ws.auth.get("admin", False)

    def execute(self):
        return "secret"


class Quiet(Signal):
    def execute(self):
        return None


class Private(Signal):
    def execute(self):
        return Response({"to": "you"})


class Slow(Signal):
    def execute(self, seconds: float):
        STARTED.set()
        time.sleep(seconds)
        FINISHED.set()
        return "done"


class Unsendable(Signal):
    def execute(self):
        return object()


class Denied(Signal):
    def execute(self):
        raise NotPermitted("admins only")


class Saved(Signal):
    def execute(self, db):
        db.writes.append("x")
        return len(db.writes)


SIGNALS = [Echo, Add, Boom, Refuse, Admin, Quiet, Private, Slow, Unsendable, Denied, Saved]


@pytest.fixture(scope="module")
def server():
    with serving(Application(signals=SIGNALS), MAX_MESSAGE_SIZE=4096) as running:
        yield running


def test_call_and_answer(server):
    """A call is answered with its signal's return value."""
    with server.client() as client:
        assert client.call("Add", a=2, b=3) == 5
        assert client.call("Private") == {"to": "you"}


def test_calls_from_one_client_are_answered_in_order(server):
    """Many calls sent at once are answered in the order sent."""
    raw = server.raw()
    for i in range(300):
        raw.call({"Add": {"a": i}})
    assert [raw.recv_json() for _ in range(300)] == [[{"Add": i}] for i in range(300)]
    raw.close()


def test_a_list_of_calls_runs_in_order_each_answered(server):
    """A list of calls runs in order; a bad one is answered with an error in its place."""
    raw = server.raw()
    raw.call([{"Add": {"a": 1}}, {"Nope": {}}, {"Add": {"a": 2}}])
    assert raw.recv_json() == [{"Add": 1}]
    assert raw.recv_json() == [{"Errors": ["call 1: unknown signal 'Nope'"]}]
    assert raw.recv_json() == [{"Add": 2}]
    raw.close()


def test_a_call_with_an_id_is_always_answered_once(server):
    """None sends nothing without an id; with an id the answer carries it."""
    raw = server.raw()
    raw.call({"Quiet": {}})
    raw.call({"Quiet": {}, "#": "q1"})
    assert raw.recv_json() == [{"Quiet": None, "#": "q1"}]
    raw.close()


@pytest.mark.parametrize("message, error", [
    ("not json", "invalid JSON: Expecting value at character 0"),
    ("17", 'a message must be a JSON object {"Signal": {arguments}} or a list of them, not int'),
    ('{"Nope": {}}', "unknown signal 'Nope'"),
    ('{"Add": {}}', "Add: missing argument 'a'"),
    ('{"Add": {"a": 1, "c": 2}}', "Add: unexpected argument 'c'"),
    ('{"Add": {"a": "one"}}', "Add: argument 'a' must be int, got str"),
    ('{"Boom": {}}', "Boom failed"),
    ('{"Refuse": {"why": "no way"}}', "no way"),
    ('{"Admin": {}}', "not permitted: Admin"),
    ('{"Denied": {}}', "admins only"),
    ('{"Unsendable": {}}', "Unsendable failed: its answer cannot be sent as JSON"),
])
def test_bad_calls_get_a_clear_error_and_the_connection_stays_usable(server, message, error):
    """Each bad call gets an error naming the problem; the same connection still works."""
    raw = server.raw()
    raw.send_text(message)
    assert raw.recv_json() == [{"Errors": [error]}]
    raw.call({"Echo": {"data": "still here"}})
    assert raw.recv_json() == [{"Echo": "still here"}]
    raw.close()


def test_a_number_too_long_gets_an_error_and_the_connection_stays_usable():
    """A JSON integer of 100,000 digits gets an error naming it, not a close with 1011."""
    limit = sys.get_int_max_str_digits()
    with serving(Application(signals=SIGNALS)) as big:  # room for a 100 kB message
        raw = big.raw()
        raw.send_text('{"Add": {"a": ' + "1" * 100000 + "}}")
        assert raw.recv_json() == [{"Errors": [
            f"invalid JSON: number too long (more than {limit} digits) at character 14"]}]
        raw.call({"Add": {"a": 2, "b": 3}})
        assert raw.recv_json() == [{"Add": 5}]
        raw.close()


def test_errors_carry_no_traceback(server):
    """A failing signal's answer holds neither the exception text nor a traceback."""
    with server.client() as client:
        with pytest.raises(CallFailed) as info:
            client.call("Boom")
    assert info.value.errors == ["Boom failed"]


def test_binary_messages_get_an_error(server):
    """A binary message is answered with an error; the connection stays open."""
    raw = server.raw()
    raw.send_frame(OP_BINARY, b"\x00\x01")
    assert raw.recv_json() == [{"Errors": ["binary messages are not understood: "
                                           "send JSON text"]}]
    raw.call({"Echo": {"data": 1}})
    assert raw.recv_json() == [{"Echo": 1}]
    raw.close()


def test_ping_is_answered_with_pong(server):
    """A ping gets a pong with the same payload."""
    raw = server.raw()
    raw.send_frame(OP_PING, b"hello")
    assert raw.recv_frame() == (OP_PONG, b"hello")
    raw.close()


def test_invalid_utf8_closes_with_1007_and_others_are_served(server):
    """Invalid UTF-8 in a text frame closes that connection with 1007, nobody else's."""
    other = server.raw()
    raw = server.raw()
    raw.send_frame(OP_TEXT, b"\xc3\x28")
    assert raw.expect_close() == (1007, "text message is not valid UTF-8")
    raw.close()
    other.call({"Echo": {"data": "fine"}})
    assert other.recv_json() == [{"Echo": "fine"}]
    other.close()


def test_oversized_message_closes_with_1009(server):
    """A message over MAX_MESSAGE_SIZE closes with 1009; the server goes on."""
    raw = server.raw()
    raw.send_text('{"Echo": {"data": "' + "x" * 5000 + '"}}')
    assert raw.expect_close() == (1009, "message over 4096 bytes")
    assert raw.closed_by_server(3)
    raw.close()
    with server.client() as client:
        assert client.call("Echo", data="after") == "after"


def test_frame_header_claiming_2_62_bytes_is_cut_at_once(server):
    """A header claiming 2**62 bytes gets 1009 at once and the socket is closed soon."""
    raw = server.raw()
    started = time.monotonic()
    raw.sock.sendall(bytes((0x81, 0x80 | 127)) + struct.pack("!Q", 1 << 62) + b"mask")
    assert raw.expect_close()[0] == 1009
    assert raw.closed_by_server(3)
    assert time.monotonic() - started < 2.0
    raw.close()
    server.wait_connections(0)


def test_protocol_error_closes_with_1002(server):
    """An unmasked frame from a client is a protocol error: 1002."""
    raw = server.raw()
    raw.sock.sendall(bytes((0x81, 2)) + b"hi")
    assert raw.expect_close() == (1002, "client frames must be masked")
    raw.close()


@pytest.mark.parametrize("violation, close", [
    (bytes((0x81, 2)) + b"hi", (1002, "client frames must be masked")),
    (client_frame(OP_TEXT, b"\xc3\x28"), (1007, "text message is not valid UTF-8")),
])
def test_a_protocol_violation_is_followed_by_fin_at_once(violation, close):
    """After a 1002/1007 close frame the server's FIN follows at once, not after
    CLOSE_TIMEOUT, even with more bytes coming from the client; the close frame is
    read whole (no reset), and the connection is gone once the client closes too."""
    with serving(Application(signals=SIGNALS), CLOSE_TIMEOUT=30.0) as slow_close:
        raw = slow_close.raw()
        raw.sock.sendall(violation + b"x" * 65536)
        assert raw.expect_close(10) == close
        started = time.monotonic()
        raw.sock.settimeout(20)
        assert raw.buf + raw.sock.recv(65536) == b""  # a clean end of stream: FIN, no reset
        assert time.monotonic() - started < 2.0  # CLOSE_TIMEOUT (30 s) would be the old wait
        raw.close()
        slow_close.wait_connections(0, timeout=10)
        with slow_close.client() as client:
            assert client.call("Echo", data="next") == "next"


def test_client_leaving_in_the_middle_of_a_call(server):
    """A client that disconnects while its signal runs harms nothing; the signal completes."""
    STARTED.clear()
    FINISHED.clear()
    raw = server.raw()
    raw.call({"Slow": {"seconds": 0.3}})
    assert STARTED.wait(3)
    raw.close()
    assert FINISHED.wait(3)
    server.wait_connections(0)
    with server.client() as client:
        assert client.call("Echo", data="ok") == "ok"


def test_a_flood_from_one_client_does_not_starve_others(server):
    """Thousands of calls from one client are all answered in order; others keep answering."""
    flooder = server.raw()
    count = 3000
    payload = b"".join(client_frame(OP_TEXT, b'{"Add": {"a": %d}}' % i) for i in range(count))
    sender = threading.Thread(target=flooder.sock.sendall, args=(payload,))
    sender.start()
    with server.client() as client:
        started = time.monotonic()
        for _ in range(20):
            assert client.call("Echo", data=1) == 1
        assert time.monotonic() - started < 2.0
    got = [flooder.recv_json()[0]["Add"] for _ in range(count)]
    sender.join(5)
    assert got == list(range(count))
    flooder.close()


def test_close_handshake_from_the_client(server):
    """A client's close frame is answered with a close frame and the socket is closed."""
    raw = server.raw()
    raw.send_frame(8, struct.pack("!H", 1000) + b"bye")
    assert raw.expect_close() == (1000, "")
    assert raw.closed_by_server(3)
    raw.close()


class StandInPersister(Service):
    """Stands in for the persister: a db recording writes and commits, in order."""

    name = "persister"

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.db = self

    def setup(self):
        self.writes = []
        self.log_of_events = []

    def transaction(self):
        return contextlib.nullcontext()

    def commit(self):
        time.sleep(0.1)  # a slow flush: the answer must still wait for it
        self.log_of_events.append(("commit", len(self.writes)))


def test_db_is_committed_before_the_answer():
    """execute gets the persister's db, and the db is committed before the caller hears."""
    with serving(Application(signals=[Saved]), extra=[StandInPersister]) as running:
        persister = running.service("persister")
        with running.client() as client:
            assert client.call("Saved") == 1
            assert persister.log_of_events[-1] == ("commit", 1)


# --- the original API's signals, and one transaction per call -------------------------


class Account(Model):
    owner: str
    balance: int


class Open(Signal):
    def execute(self, owner: str, db):
        return db.create(Account, owner=owner, balance=0).pk


class Transfer(Signal):
    """Writes, then fails on a programming error: none of its writes may stay."""

    def execute(self, source: str, amount: int, db):
        db.update(Account, source, balance=db.get(Account, source).balance - amount)
        db.create(Account, owner="audit", balance=amount)
        return {"total": amount} / 2    # TypeError, after two writes


class Shout(Signal):
    def execute(self, text: str, ws):
        return self.response({"text": text}, [Lobby] if text else [])


class Later(Signal):
    async def execute(self, text: str):
        await asyncio.sleep(0)
        return text.upper()


class Lobby(Channel):
    name = "lobby"


@pytest.fixture
def bank(tmp_path):
    app = Application(models=[Account], signals=[Open, Transfer, Shout, Later],
                      channels=[Lobby])
    services = ["services.persister/PersisterService", *CORE]
    with serving(app, SERVICE_LIST=services, DATA_DIR=str(tmp_path), DB_FSYNC="always") as s:
        yield s


def journal_payloads(directory) -> list[bytes]:
    return [payload for path in sorted(directory.glob("journal.*"))
            for _, payload in read_records(str(path))]


def test_a_failing_signal_leaves_none_of_its_writes(bank, tmp_path, caplog):
    """Write-then-raise: the caller hears which signal failed, the log has the traceback,
    and neither the tables nor the journal keep any of its writes."""
    db = bank.service("persister").db
    with bank.client() as client:
        pk = client.call("Open", owner="ann")
        db.update(Account, pk, balance=100)
        db.commit()
        before = journal_payloads(tmp_path)
        with caplog.at_level(logging.ERROR, logger="lexicons.router"):
            with pytest.raises(CallFailed) as info:
                client.call("Transfer", source=pk, amount=30)
        assert info.value.errors == ["Transfer failed"]
        assert "Traceback" in caplog.text and "TypeError" in caplog.text
        assert "signal Transfer failed" in caplog.text
        assert db.get(Account, pk).balance == 100
        assert db.count(Account) == 1
        assert client.call("Open", owner="bob")      # the next call works, and is journaled
    after = journal_payloads(tmp_path)
    assert after[:len(before)] == before and len(after) == len(before) + 1
    assert b"audit" not in b"".join(after) and b"bob" in after[-1]


def test_response_broadcasts_and_without_channels_says_nothing(bank):
    """self.response(payload, [Channel]) broadcasts; with no channels: no broadcast, no reply."""
    with bank.client() as listener, bank.client() as caller:
        listener.subscribe("lobby")
        caller.subscribe("lobby")
        raw = bank.raw()
        raw.call({"Shout": {"text": ""}})
        raw.call({"Shout": {"text": ""}, "#": 1})
        assert raw.recv_json() == [{"Shout": None, "#": 1}]   # an id: answered, with null
        raw.call({"Shout": {"text": "hi"}})
        assert listener.receive(timeout=5) == [{"Shout": {"text": "hi"}}]   # only this one
        assert caller.receive(timeout=5) == [{"Shout": {"text": "hi"}}]
        raw.close()


def test_an_async_execute_is_awaited(bank):
    """A signal whose execute is `async def` answers with what the coroutine returns."""
    with bank.client() as client:
        assert client.call("Later", text="awaited") == "AWAITED"
