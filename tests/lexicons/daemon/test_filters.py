"""Filters over real sockets: each stage changes, drops and passes; the shipped filters."""
import dataclasses
import logging
import threading
import time

import pytest

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.daemon.filters import Filter, Filters, TokenGroups
from lexicons.daemon.manager import ServiceManager
from lexicons.errors import CallError, CallFailed, ServiceError, SettingsError
from lexicons.signal import Response, Signal
from lexicons.wire.frames import OP_BINARY, OP_TEXT
from tests.support.websocket import make_settings, serving

HERE = "tests.lexicons.daemon.test_filters"


class Echo(Signal):
    def execute(self, data):
        return data


class Add(Signal):
    def execute(self, a: int, b: int = 0) -> int:
        return a + b


class Publish(Signal):
    def execute(self, channel: str, data):
        return Response(data, channels=[channel])


class Room(Channel):
    name = "room:{name}"


APP = Application(signals=[Echo, Add, Publish], channels=[Room])


# --- filters the tests configure ----------------------------------------------------------


class Rewrite(Filter):
    """data: fixes a misspelt signal, drops "noise", refuses "forbidden", decodes binary."""

    def data(self, conn, data):
        if isinstance(data, bytes):
            return data.decode("utf-8")
        if data == "noise":
            return None
        if "forbidden" in data:
            raise CallError("forbidden words are not allowed")
        return data.replace("Ecco", "Echo")


class Shout(Filter):
    """data: upper-cases the word hello (runs after Rewrite)."""

    def data(self, conn, data):
        return data.replace("hello", "HELLO")


class Calls(Filter):
    """message: adds 100 to Add's b, drops Add with a=13, renames Mystery to an unknown name."""

    def message(self, conn, call):
        if call.signal == "Add":
            if call.kwargs["a"] == 13:
                return None
            return dataclasses.replace(call, kwargs={**call.kwargs, "b": 100})
        if call.signal == "Echo" and call.kwargs["data"] == "rename":
            return dataclasses.replace(call, signal="Nowhere")
        return call


class Watch(Filter):
    """connect, disconnect: remembers who came and went; refuses ?refuse=1."""

    def __init__(self, manager):
        super().__init__(manager)
        self.opened = []
        self.closed = []
        self.done = threading.Event()

    def connect(self, conn):
        self.opened.append(conn.id)
        if conn.request.query.get("refuse"):
            raise CallError("no entry today")
        return True

    def disconnect(self, conn):
        self.closed.append((conn.id, conn.close_reason))
        self.done.set()


class Censor(Filter):
    """backplane: drops broadcasts on room:secret, rewrites "bad" to "***"."""

    def backplane(self, channels, message):
        if "room:secret" in channels:
            return None
        return message.replace(b"bad", b"***")


class Broken(Filter):
    """data: raises on "explode" (a bug in a filter)."""

    def data(self, conn, data):
        if data == "explode":
            raise KeyError("a bug")
        return data


class Count(Filter):
    """data: counts the messages it sees."""

    def __init__(self, manager):
        super().__init__(manager)
        self.seen = 0

    def data(self, conn, data):
        self.seen += 1
        return data


class NotAFilter:
    def data(self, conn, data):
        return data


class NoDataMethod(Filter):
    def message(self, conn, call):
        return call


def filtered(**stages):
    return {stage: [f"{HERE}/{name}" for name in names] for stage, names in stages.items()}


def errors_of(answer):
    return answer[0]["Errors"]


# --- the stages ---------------------------------------------------------------------------


def test_data_stage_changes_drops_refuses_and_passes_in_order():
    """Data filters run in order: a message is changed, dropped, refused (error) or passed."""
    with serving(APP, FILTERS=filtered(data=["Rewrite", "Shout"])) as server:
        raw = server.raw()
        try:
            raw.call({"Ecco": {"data": "hello"}})
            assert raw.recv_json() == [{"Echo": "HELLO"}]
            raw.send_text("noise")                                  # dropped silently
            raw.send_text('{"Echo": {"data": "forbidden"}}')        # refused with an error
            assert raw.recv_json() == [{"Errors": ["forbidden words are not allowed"]}]
            raw.send_frame(OP_BINARY, b'{"Echo": {"data": "from bytes"}}')
            assert raw.recv_json() == [{"Echo": "from bytes"}]
            raw.call({"Echo": {"data": "untouched"}})
            assert raw.recv_json() == [{"Echo": "untouched"}]
        finally:
            raw.close()
        filters = server.service("router").filters
        assert filters.dropped["data"] == 2 and filters.failed["data"] == 0


def test_message_stage_changes_drops_and_checks_the_signal():
    """Message filters see checked calls: change arguments, drop (ids still answered), rename."""
    with serving(APP, FILTERS=filtered(message=["Calls"])) as server, server.client() as client:
        assert client.call("Add", a=1, b=2) == 101
        with pytest.raises(CallFailed) as refused:
            client.call("Add", a=13)
        assert refused.value.errors == ["Add: refused"]
        client.send("Add", a=13)                     # no id: dropped without an answer
        assert client.call("Echo", data="after") == "after"
        with pytest.raises(CallFailed) as unknown:
            client.call("Echo", data="rename")
        assert "unknown signal 'Nowhere'" in unknown.value.errors[0]
        with pytest.raises(TimeoutError):
            client.receive(0.2)


def test_connect_and_disconnect_stages_see_every_connection():
    """Connect filters see each connection and may refuse it (1008); disconnect ones see it go."""
    with serving(APP, FILTERS=filtered(connect=["Watch"], disconnect=["Watch"])) as server:
        watch = server.service("router").filters.stages["connect"][0]
        assert watch is server.service("router").filters.stages["disconnect"][0]
        with server.client() as client:
            assert client.call("Echo", data=1) == 1
        assert watch.done.wait(5)
        assert len(watch.opened) == 1 and watch.closed == [(watch.opened[0], 1000)]
        refused = server.raw("/?refuse=1")
        try:
            assert refused.expect_close() == (1008, "no entry today")
        finally:
            refused.close()
        server.wait_connections(0)
        assert len(watch.closed) == 2


def test_backplane_stage_changes_and_drops_broadcasts_before_delivery():
    """Backplane filters see each broadcast once before local delivery: changed or dropped."""
    with serving(APP, FILTERS=filtered(backplane=["Censor"])) as server:
        with server.client() as member, server.client() as publisher:
            member.subscribe("room:open")
            member.subscribe("room:secret")
            publisher.call("Publish", channel="room:secret", data="hidden")
            publisher.call("Publish", channel="room:open", data="a bad word")
            assert member.receive() == [{"Publish": "a *** word"}]
            with pytest.raises(TimeoutError):
                member.receive(0.2)
        assert server.service("router").filters.dropped["backplane"] == 1


def test_a_failing_filter_costs_only_that_message():
    """A filter that raises: the client hears a plain error, the log the traceback, and goes on."""
    with serving(APP, FILTERS=filtered(data=["Broken"])) as server:
        raw = server.raw()
        try:
            raw.send_text("explode")
            assert raw.recv_json() == [{"Errors": ["the server could not handle this message"]}]
            raw.call({"Echo": {"data": "still here"}})
            assert raw.recv_json() == [{"Echo": "still here"}]
        finally:
            raw.close()
        assert server.service("router").filters.failed["data"] == 1


def test_no_filters_leave_the_plain_methods_in_place():
    """Without FILTERS the router and rooms keep their own methods: nothing runs per message."""
    with serving(APP) as server:
        router, rooms = server.service("router"), server.service("rooms")
        for name in ("on_open", "on_message", "run", "on_close"):
            assert name not in vars(router)
        assert "deliver" not in vars(rooms)
        assert not router.filters


def test_installing_again_does_not_stack_the_pipelines():
    """Installing the filters again (a second setup) replaces the pipelines: each runs once."""
    with serving(APP, FILTERS=filtered(data=["Count"])) as server:
        router = server.service("router")
        router.filters.install_handler(router)
        with server.client() as client:
            assert client.call("Echo", data="once") == "once"
        assert router.filters.stages["data"][0].seen == 1
        assert router.info()["filters"]["data"]["filters"] == ["Count"]


# --- loading ------------------------------------------------------------------------------


@pytest.mark.parametrize("spec, words", [
    ({"data": ["tests.nowhere/Ghost"]}, "cannot import 'tests.nowhere'"),
    ({"data": [f"{HERE}/Missing"]}, "has no class 'Missing'"),
    ({"data": [f"{HERE}/NotAFilter"]}, "is not a lexicons.daemon.filters.Filter subclass"),
    ({"data": [f"{HERE}/NoDataMethod"]}, "has no data() method"),
])
def test_a_bad_filter_stops_start_up_naming_it(spec, words):
    """A filter entry that cannot load stops the services' start-up with a message naming it."""
    manager = ServiceManager(make_settings(FILTERS=spec), APP)
    with pytest.raises(ServiceError) as failed:
        manager.start()
    assert "FILTERS" in str(failed.value) and words in str(failed.value)
    assert all(s.state.value == "STOPPED" for s in manager.services.values())


@pytest.mark.parametrize("value, words", [
    ({"mesage": []}, "unknown stage 'mesage'"),
    ({"data": "lexicons.filters/RateLimit"}, "expected a list"),
    ({"data": ["RateLimit"]}, "is not of the form 'module.path/ClassName'"),
])
def test_a_bad_filters_setting_is_refused_naming_it(value, words):
    """FILTERS with an unknown stage or a malformed entry is a settings error naming FILTERS."""
    with pytest.raises(SettingsError) as bad:
        make_settings(FILTERS=value)
    assert "FILTERS" in str(bad.value) and words in str(bad.value)


def test_one_instance_per_class_across_stages():
    """A class listed on several stages is built once and serves them all."""
    loaded = Filters.load(filtered(connect=["Watch"], disconnect=["Watch"], data=["Rewrite"]),
                          manager=None)
    assert loaded.stages["connect"][0] is loaded.stages["disconnect"][0]
    assert loaded.info()["data"] == {"filters": ["Rewrite"], "dropped": 0, "failed": 0}


# --- the shipped filters ------------------------------------------------------------------


RATE = {"FILTERS": {"data": ["lexicons.filters/RateLimit"]}, "RATE_LIMIT": 1.0,
        "RATE_LIMIT_BURST": 3, "RATE_LIMIT_CLOSE": 1000}


def test_rate_limit_tells_the_client_and_spares_the_others():
    """Past its bucket a client gets a clear rate-limit error; another client is served."""
    with serving(APP, **RATE) as server:
        flooder, other = server.raw(), server.raw()
        try:
            for n in range(8):
                flooder.call({"Echo": {"data": n}})
            answers = [flooder.recv_json() for _ in range(8)]
            assert answers[:3] == [[{"Echo": n}] for n in range(3)]
            for answer in answers[3:]:
                assert errors_of(answer) == [
                    "rate limit: more than 1 messages a second (burst 3); message dropped"]
            for n in range(3):
                other.call({"Echo": {"data": f"other {n}"}})
                assert other.recv_json() == [{"Echo": f"other {n}"}]
        finally:
            flooder.close()
            other.close()


def test_rate_limit_closes_a_persistent_abuser():
    """A client that keeps flooding past RATE_LIMIT_CLOSE drops is closed with 1008."""
    with serving(APP, **{**RATE, "RATE_LIMIT_CLOSE": 5}) as server:
        raw = server.raw()
        try:
            for n in range(12):
                raw.call({"Echo": {"data": n}})
            assert raw.expect_close() == (1008, "rate limit exceeded")
        finally:
            raw.close()
        with server.client() as fine:
            assert fine.call("Echo", data="welcome") == "welcome"


def test_rate_limit_on_the_message_stage_counts_calls():
    """Listed under message, RateLimit counts calls (a list of calls is no way around it)."""
    settings = {**RATE, "FILTERS": {"message": ["lexicons.filters/RateLimit"]}}
    with serving(APP, **settings) as server:
        raw = server.raw()
        try:
            raw.call([{"Echo": {"data": n}, "#": n} for n in range(5)])
            answers = [raw.recv_json()[0] for _ in range(5)]
            assert [a.get("Echo") for a in answers[:3]] == [0, 1, 2]
            assert [a["#"] for a in answers[3:]] == [3, 4]
            assert all(a["Errors"][0].startswith("rate limit: ") for a in answers[3:])
        finally:
            raw.close()


TOKENS = {"FILTERS": {stage: ["lexicons.filters/TokenGroups"]
                      for stage in ("connect", "data", "disconnect")}}


def test_token_groups_relay_to_the_others_of_the_same_token():
    """A message from a token's connection reaches the other connections of that token only."""
    with serving(APP, **TOKENS) as server:
        a = server.raw(headers={"X-Token": "t1"})
        b = server.raw("/?token=t1")
        c = server.raw("/?token=t2")
        plain = server.raw()
        try:
            a.send_text("hello from a")
            assert b.recv_frame() == (OP_TEXT, b"hello from a")
            b.send_frame(OP_BINARY, b"\x00\x01")
            assert a.recv_frame() == (OP_BINARY, b"\x00\x01")
            c.send_text('{"Echo": {"data": "to t2 only"}}')    # relayed, not run
            plain.call({"Echo": {"data": "plain"}})
            assert plain.recv_json() == [{"Echo": "plain"}]    # no token: calls run as usual
            for quiet in (a, b, c):
                with pytest.raises(TimeoutError):
                    quiet.recv_frame(0.3)
        finally:
            for client in (a, b, c, plain):
                client.close()
        server.wait_connections(0)
        groups = server.service("router").filters.stages["data"][0]
        assert isinstance(groups, TokenGroups)
        assert groups.members("t1") == () and groups.members("t2") == ()


def test_traffic_log_writes_debug_lines(caplog):
    """TrafficLog logs each message, call and disconnect at DEBUG and changes nothing."""
    stages = {s: ["lexicons.filters/TrafficLog"] for s in ("connect", "data", "message",
                                                           "disconnect", "backplane")}
    caplog.set_level(logging.DEBUG, logger="lexicons.filters.traffic")
    with serving(APP, FILTERS=stages) as server:
        with server.client() as client:
            client.subscribe("room:log")
            assert client.call("Echo", data="logged") == "logged"
            client.call("Publish", channel="room:log", data="news")
            assert client.receive() == [{"Publish": "news"}]
        server.wait_connections(0)
        deadline = time.monotonic() + 5
        while "closed (code" not in caplog.text and time.monotonic() < deadline:
            time.sleep(0.02)
    text = caplog.text
    assert ": open" in text and '"logged"' in text and "call Echo #" in text
    assert "broadcast on room:log" in text and "closed (code 1000)" in text
