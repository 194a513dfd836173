"""The gate: header classes, query-parameter headers, the gate function and the trust list."""
import json
import threading
import time

import pytest

from lexicons.application import Application
from lexicons.errors import NotPermitted, Refused
from lexicons.header import Header
from lexicons.signal import Signal
from tests.support.websocket import http_exchange, serving, upgrade_request

USERS = {"ann": "secret", "bob": "hunter2"}


class Login(Header):
    def execute(self, user: str, password: str, ws) -> bool:
        if USERS.get(user) != password:
            return False
        ws.auth["user"] = user
        ws.nickname = user.upper()
        return True


class Token(Header):
    name = "X-Token"

    def execute(self, token: str, ws) -> bool:
        if token == "revoked":
            raise NotPermitted("token revoked")
        if token == "t-slow":
            time.sleep(3.0)
        if token == "crash":
            raise RuntimeError("bug in header code")
        ws.auth["token"] = token
        return token.startswith("t-")


class Whoami(Signal):
    def execute(self, ws):
        return {"auth": ws.auth, "nickname": getattr(ws, "nickname", None)}


def app(gate=all, headers=(Login,)):
    return Application(signals=[Whoami], headers=list(headers), gate=gate)


def test_good_credentials_are_admitted_and_stay_on_the_connection():
    """A client whose header passes connects; what the header set is on ws in signals."""
    with serving(app()) as running:
        with running.client(headers={"Login": {"user": "ann", "password": "secret"}}) as c:
            assert c.call("Whoami") == {"auth": {"user": "ann"}, "nickname": "ANN"}


def test_header_names_match_case_insensitively():
    """A header sent as 'login' runs the Login class."""
    with serving(app()) as running:
        with running.client(headers={"login": {"user": "bob", "password": "hunter2"}}) as c:
            assert c.call("Whoami")["auth"] == {"user": "bob"}


def test_headers_as_query_parameters():
    """Browsers' way: the same header as a URL-encoded query parameter."""
    with serving(app()) as running:
        with running.client(headers={"Login": {"user": "ann", "password": "secret"}},
                            query=True) as c:
            assert c.call("Whoami")["auth"] == {"user": "ann"}


def test_refused_credentials_get_401_with_the_reason():
    """Wrong credentials: 401 and a JSON reason naming the header; no signal reachable."""
    with serving(app()) as running:
        with pytest.raises(Refused) as info:
            running.client(headers={"Login": {"user": "ann", "password": "wrong"}})
        assert info.value.status == 401 and info.value.reason == "Login: refused"
        with pytest.raises(Refused) as info:
            running.client()
        assert info.value.reason == "Login: not given"
        assert running.connections() == 0


def test_header_that_is_not_json_is_400():
    """A header value that is not a JSON object is a 400 saying so."""
    with serving(app()) as running:
        status, _, body = http_exchange(running.port, upgrade_request(extra="Login: nope\r\n"))
        assert status == 400
        assert json.loads(body)["reason"] == "header Login: value is not valid JSON"
        status, _, body = http_exchange(running.port, upgrade_request(extra="Login: [1]\r\n"))
        assert json.loads(body)["reason"] == "header Login: value must be a JSON object of " \
                                             "arguments"


def test_header_holding_a_number_too_long_is_400():
    """A header whose JSON holds an integer of more digits than Python converts is a 400."""
    with serving(app(), MAX_HEADER_SIZE=65536) as running:
        value = '{"password": ' + "9" * 20000 + "}"
        status, _, body = http_exchange(running.port,
                                        upgrade_request(extra=f"Login: {value}\r\n"))
        assert status == 400
        assert json.loads(body)["reason"] == "header Login: value is not valid JSON"


def test_header_arguments_are_checked():
    """A header missing an argument is a 400 naming it."""
    with serving(app()) as running:
        with pytest.raises(Refused) as info:
            running.client(headers={"Login": {"user": "ann"}})
        assert info.value.status == 400
        assert info.value.reason == "header Login: missing argument 'password'"


def test_gate_function_combines_results():
    """With gate=any one passing header is enough; the default all needs every one."""
    with serving(app(gate=any, headers=(Login, Token))) as running:
        with running.client(headers={"X-Token": {"token": "t-1"}}) as c:
            assert c.call("Whoami")["auth"] == {"token": "t-1"}
    with serving(app(headers=(Login, Token))) as running:
        with pytest.raises(Refused) as info:
            running.client(headers={"X-Token": {"token": "t-1"}})
        assert info.value.reason == "Login: not given"


def test_not_permitted_gives_its_reason_and_a_crash_gives_500():
    """A header raising NotPermitted refuses with that reason; a bug is a 500 without detail."""
    with serving(app(headers=(Token,))) as running:
        with pytest.raises(Refused) as info:
            running.client(headers={"X-Token": {"token": "revoked"}})
        assert info.value.status == 401 and info.value.reason == "X-Token: token revoked"
        with pytest.raises(Refused) as info:
            running.client(headers={"X-Token": {"token": "crash"}})
        assert info.value.status == 500 and "bug" not in info.value.reason


def test_a_slow_header_does_not_stall_other_handshakes():
    """Header code that blocks delays only its own client."""
    with serving(app(headers=(Token,)), HANDSHAKE_WORKERS=2) as running:
        slow = threading.Thread(target=lambda: running.client(
            headers={"X-Token": {"token": "t-slow"}}).close())
        slow.start()
        time.sleep(0.05)
        started = time.monotonic()
        with running.client(headers={"X-Token": {"token": "t-fast"}}) as c:
            assert c.call("Whoami")["auth"] == {"token": "t-fast"}
        assert time.monotonic() - started < 1.5  # well before the slow header's 3 s
        slow.join(10)


def test_untrusted_addresses_get_403():
    """A client outside TRUST is refused with 403 before anything else."""
    with serving(app(headers=()), TRUST=["10.0.0.0/8", "::1"]) as running:
        with pytest.raises(Refused) as info:
            running.client()
        assert info.value.status == 403 and info.value.reason == "client address not trusted"
    with serving(app(headers=()), TRUST=["127.0.0.0/8"]) as running:
        with running.client() as c:
            assert c.call("Whoami")["auth"] == {}
