"""The gate: header classes, query-parameter headers, the gate function and the trust list."""
import asyncio
import json
import threading
import time
import urllib.parse

import orjson
import pytest

from lexicons.channel import Channel
from lexicons.client import Client
from lexicons.daemon.application import Application
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


# --- sessions and tickets (POST /session) ---------------------------------------------


def session_request(running, method: str, body) -> tuple[int, dict]:
    """Send *body* as JSON to /session; return the status and the decoded answer."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
    try:
        conn.request(method, "/session", body=json.dumps(body).encode(),
                     headers={"Content-Type": "application/json"})
        response = conn.getresponse()
        answer = json.loads(response.read())
        if response.status == 200:
            assert response.getheader("Cache-Control") == "no-store"
        return response.status, answer
    finally:
        conn.close()


def with_ticket(running, ticket: str) -> Client:
    """Connect with only ?ticket= in the URL."""
    return Client(f"{running.url}?ticket={ticket}", timeout=5.0)


def test_login_over_post_then_connect_with_a_ticket():
    """POST /session runs the headers; ?ticket= alone admits with what they established."""
    with serving(app()) as running:
        status, answer = session_request(running, "POST",
                                         {"headers": {"Login": {"user": "ann",
                                                                "password": "secret"}}})
        assert status == 200 and set(answer) == {"session", "ticket", "ticket_ttl"}
        with with_ticket(running, answer["ticket"]) as c:
            assert c.call("Whoami") == {"auth": {"user": "ann"}, "nickname": "ANN"}


def test_a_ticket_is_good_for_one_connect():
    """A used ticket is refused (401); the session gives a new one for the next connect."""
    with serving(app()) as running:
        _, answer = session_request(running, "POST", {"headers": {"Login": {
            "user": "bob", "password": "hunter2"}}})
        with_ticket(running, answer["ticket"]).close()
        with pytest.raises(Refused) as info:
            with_ticket(running, answer["ticket"])
        assert info.value.status == 401 and "log in again" in info.value.reason
        status, again = session_request(running, "POST", {"session": answer["session"]})
        assert status == 200 and again["ticket"] != answer["ticket"]
        with with_ticket(running, again["ticket"]) as c:
            assert c.call("Whoami")["auth"] == {"user": "bob"}


def test_a_ticket_expires():
    """A ticket unused for TICKET_TTL seconds is refused."""
    with serving(app(), TICKET_TTL=1.0) as running:
        _, answer = session_request(running, "POST", {"headers": {"Login": {
            "user": "ann", "password": "secret"}}})
        time.sleep(1.5)
        with pytest.raises(Refused) as info:
            with_ticket(running, answer["ticket"])
        assert info.value.status == 401


def test_bad_login_is_refused_like_a_connect():
    """Wrong credentials over POST get the connect's 401 and reason; bad bodies 400."""
    with serving(app()) as running:
        status, answer = session_request(running, "POST", {"headers": {"Login": {
            "user": "ann", "password": "wrong"}}})
        assert (status, answer["reason"]) == (401, "Login: refused")
        assert session_request(running, "POST", {"headers": {"Login": "x"}})[0] == 400
        assert session_request(running, "POST", [1])[0] == 400
        status, answer = session_request(running, "POST", {"session": "made-up"})
        assert (status, answer["reason"]) == (401, "the session has ended: log in again")
        assert session_request(running, "PUT", {})[0] == 405


def test_logout_ends_the_session_and_its_tickets():
    """DELETE /session ends the session: its unused ticket and its token are no good."""
    with serving(app()) as running:
        _, answer = session_request(running, "POST", {"headers": {"Login": {
            "user": "ann", "password": "secret"}}})
        assert session_request(running, "DELETE", {"session": answer["session"]}) == (
            200, {"ended": True})
        with pytest.raises(Refused):
            with_ticket(running, answer["ticket"])
        assert session_request(running, "POST", {"session": answer["session"]})[0] == 401
        assert session_request(running, "DELETE", {"session": answer["session"]}) == (
            200, {"ended": False})


def test_gate_check_tells_whether_a_ticket_is_good():
    """GET /gate?ticket= answers 200 for a good ticket (without using it), 401 otherwise."""
    import http.client

    with serving(app()) as running:
        _, answer = session_request(running, "POST", {"headers": {"Login": {
            "user": "ann", "password": "secret"}}})
        for ticket, expected in ((answer["ticket"], 200), ("nope", 401)):
            conn = http.client.HTTPConnection("127.0.0.1", running.port, timeout=5)
            conn.request("GET", f"/gate?ticket={ticket}")
            assert conn.getresponse().status == expected
            conn.close()
        with_ticket(running, answer["ticket"]).close()  # still good: /gate did not use it


# --- the original API: headers as functions, ws.auth of any value, ws.send ---------------


def Member(**kwargs) -> bool:
    """A header written as a function, as in the original API."""
    ws = kwargs["ws"]
    if USERS.get(kwargs.get("user")) != kwargs.get("password"):
        asyncio.ensure_future(ws.send(orjson.dumps([{"Errors": ["Authentication failed"]}])))
        return False
    ws.auth = kwargs["user"]                      # any value, not only a dict
    asyncio.ensure_future(ws.send(json.dumps([{"Welcome": kwargs["user"]}])))
    return True


async def Later(ws, code: str) -> bool:
    """An async header: awaited, ws.send awaited too."""
    await ws.send(json.dumps([{"Hello": code}]))
    return code == "ok"


def test_a_function_header_admits_and_its_messages_come_first():
    """A header function taking **kwargs runs; what it sent reaches the client first."""
    class Lobby(Channel):
        name = "lobby"

    members = Application(signals=[Whoami], headers=[Member], channels=[Lobby])
    with serving(members) as running:
        with running.client(headers={"Member": {"user": "ann", "password": "secret"}}) as c:
            assert c.receive(timeout=5) == [{"Welcome": "ann"}]
            assert c.call("Whoami")["auth"] == "ann"
            c.subscribe("lobby")                   # the default permit takes a str auth
        assert running.service("gate").info()["headers"] == ["Member"]


def test_a_header_may_tell_the_client_why_before_refusing():
    """ensure_future(ws.send(...)) then False: the refusal carries that message and reason."""
    with serving(app(headers=(Member,))) as running:
        with pytest.raises(Refused) as info:
            running.client(headers={"Member": {"user": "ann", "password": "nope"}})
        assert info.value.status == 401
        assert info.value.reason == "Member: Authentication failed"
        assert info.value.messages == [[{"Errors": ["Authentication failed"]}]]
        query = "Member=" + urllib.parse.quote(json.dumps({"user": "x", "password": "y"}))
        request = f"GET /gate?{query} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
        status, _, body = http_exchange(running.port, request)
        assert status == 401
        assert json.loads(body)["messages"] == [[{"Errors": ["Authentication failed"]}]]


def test_an_async_header_is_awaited():
    """`async def` headers run to their end; their verdict counts."""
    with serving(app(headers=(Later,))) as running:
        with running.client(headers={"Later": {"code": "ok"}}) as c:
            assert c.receive(timeout=5) == [{"Hello": "ok"}]
        with pytest.raises(Refused) as info:
            running.client(headers={"Later": {"code": "no"}})
        assert info.value.messages == [[{"Hello": "no"}]]


def test_an_empty_trust_list_admits_everyone():
    """TRUST=[] (Server(trust=[]) in the original API) restricts nobody."""
    with serving(app(headers=()), TRUST=[]) as running:
        with running.client() as c:
            assert c.call("Whoami")["auth"] == {}
