"""The backend bootstrap call: forwarded headers, verdicts, failures and time limits."""
from __future__ import annotations

import threading
import time

import pytest

from lexicons.daemon.backend import (
    Authorization,
    bootstrap,
    bootstrap_headers,
    cookie_value,
    verdict,
)
from tests.support.backend import ROOMS, Backend
from tests.support.brokers import free_port


@pytest.fixture
def backend():
    with Backend(slow_delay=3.0) as running:
        yield running


def test_cookie_value():
    """The csrftoken cookie is found among others, quoted or not."""
    assert cookie_value("a=1; csrftoken=abc; b=2", "csrftoken") == "abc"
    assert cookie_value('csrftoken="q"', "csrftoken") == "q"
    assert cookie_value("xcsrftoken=1; sessionid=2", "csrftoken") is None
    assert cookie_value("garbage;;=", "csrftoken") is None


def test_headers_forwarded():
    """Cookie, User-Agent, X-Real-IP, X-CSRFToken and the token become bootstrap headers."""
    headers = bootstrap_headers(
        {"cookie": "sessionid=s; csrftoken=c", "user-agent": "UA/1", "x-real-ip": "10.1.2.3",
         "host": "example"},
        {"token": "T0K"}, {"X-Extra": "1"}, client_address="127.0.0.1")
    assert headers == {"Accept": "*/*", "Cookie": "sessionid=s; csrftoken=c",
                       "X-CSRFToken": "c", "User-Agent": "UA/1", "X-Real-IP": "10.1.2.3",
                       "Authorization": "Token T0K", "X-Extra": "1"}


def test_headers_minimal_and_extra_wins():
    """Absent client headers are not invented (X-Real-IP falls back to the peer address)."""
    headers = bootstrap_headers({}, {}, {"Authorization": "Bearer fixed"}, "192.0.2.7")
    assert headers == {"Accept": "*/*", "X-Real-IP": "192.0.2.7",
                       "Authorization": "Bearer fixed"}
    assert bootstrap_headers({}, {"token": ""}, {}) == {"Accept": "*/*"}


def test_empty_csrftoken_is_forwarded_empty():
    """An empty csrftoken cookie is still forwarded (empty), as high-templar 3.1.0 does."""
    headers = bootstrap_headers({"cookie": "csrftoken=; sessionid=s"}, {}, {})
    assert headers["X-CSRFToken"] == ""


NOT_OBJECT = "backend answer is not a JSON object"
BAD_ROOMS = "backend's allowed_rooms is not a list of objects"


@pytest.mark.parametrize("status, body, expected", [
    (200, b'{"allowed_rooms": [{"a": 1}]}', Authorization(True, [{"a": 1}])),
    (200, b'{"allowed_rooms": []}', Authorization(True, [])),
    # high-templar 3.1.0 reads answer.get('allowed_rooms', []): no key, no rooms
    (200, b'{"user": 1}', Authorization(True, [])),
    (200, b"{}", Authorization(True, [])),
    (200, b'{"allowed_rooms": ""}', Authorization(True, [])),
    (200, b'{"allowed_rooms": {}}', Authorization(True, [])),
    (200, b'{"allowed_rooms": [{"a": 1}, {"a": 1}, {"b": 2}]}',
     Authorization(True, [{"a": 1}, {"b": 2}])),
    (403, b'{"allowed_rooms": []}', Authorization(False, reason="backend answered 403")),
    (500, b"", Authorization(False, reason="backend answered 500")),
    (200, b"nope", Authorization(False, reason="backend answer is not JSON")),
    (200, b"\xff", Authorization(False, reason="backend answer is not JSON")),
    (200, b"", Authorization(False, reason=NOT_OBJECT)),
    (200, b"[]", Authorization(False, reason=NOT_OBJECT)),
    (200, b'"x"', Authorization(False, reason=NOT_OBJECT)),
    (200, b"null", Authorization(False, reason=NOT_OBJECT)),
    (200, b'{"allowed_rooms": [1]}', Authorization(False, reason=BAD_ROOMS)),
    (200, b'{"allowed_rooms": null}', Authorization(False, reason=BAD_ROOMS)),
    (200, b'{"allowed_rooms": "everything"}', Authorization(False, reason=BAD_ROOMS)),
])
def test_verdict(status, body, expected):
    """A 200 JSON object authorizes, its allowed_rooms (missing: none) being its rooms."""
    assert verdict(status, body) == expected


@pytest.mark.parametrize("content_type, authorized", [
    ("application/json", True), ("application/json; charset=utf-8", True),
    ("application/problem+json", True), ("Application/JSON", True),
    ("text/html", False), ("text/plain", False), ("", False),
])
def test_verdict_needs_a_json_content_type(content_type, authorized):
    """As with high-templar 3.1.0's HTTP client, only a JSON content type is read."""
    assert verdict(200, b"{}", content_type).authorized is authorized


def test_bootstrap_ok_sends_the_headers(backend):
    """A 200 answer authorizes with its rooms; the backend saw the forwarded headers."""
    auth = bootstrap(backend.url("/ok?x=1"), {"Cookie": "csrftoken=c", "X-CSRFToken": "c",
                                               "Authorization": "Token T"}, 2.0)
    assert auth == Authorization(True, ROOMS)
    seen = backend.headers_of()
    assert seen["cookie"] == "csrftoken=c" and seen["x-csrftoken"] == "c"
    assert seen["authorization"] == "Token T"


@pytest.mark.parametrize("path, reason", [
    ("/forbidden", "backend answered 403"),
    ("/garbage", "backend answer is text/html, not application/json"),
    ("/plain", "backend answer is text/plain, not application/json"),
    ("/badrooms", "backend's allowed_rooms is not a list of objects"),
    ("/loop", "backend redirected more than 10 times"),
    ("/missing", "backend answered 404"),
])
def test_bootstrap_refusals(backend, path, reason):
    """Every answer but a good 200 refuses the client, saying why."""
    assert bootstrap(backend.url(path), {}, 2.0) == Authorization(False, reason=reason)


def test_bootstrap_no_allowed_rooms_authorizes_with_none(backend):
    """A 200 JSON object without allowed_rooms authorizes with no rooms (3.1.0)."""
    assert bootstrap(backend.url("/norooms"), {}, 2.0) == Authorization(True, [])


def test_bootstrap_follows_redirects(backend):
    """A redirect is followed, with the forwarded headers, as high-templar's client does."""
    auth = bootstrap(backend.url("/redirect"), {"Authorization": "Token T", "Cookie": "a=1"},
                     2.0)
    assert auth == Authorization(True, ROOMS)
    assert [path for path, _ in backend.requests] == ["/redirect", "/ok"]
    assert backend.headers_of()["authorization"] == "Token T"
    assert backend.headers_of()["cookie"] == "a=1"


def test_redirect_to_another_origin_drops_authorization(backend):
    """Authorization is not sent on to another origin; the cookie and the rest are."""
    with Backend() as other:
        auth = bootstrap(backend.url(f"/away?to={other.url('/ok')}"),
                         {"Authorization": "Token T", "Cookie": "a=1"}, 2.0)
        assert auth == Authorization(True, ROOMS)
        seen = other.headers_of()
        assert "authorization" not in seen and seen["cookie"] == "a=1"


def test_bootstrap_too_big(backend):
    """An answer over 1 MiB is refused rather than read whole."""
    auth = bootstrap(backend.url("/big"), {}, 5.0)
    assert not auth.authorized and "longer than" in auth.reason


def test_bootstrap_slow_backend_times_out(backend):
    """A backend that does not answer within the timeout refuses the client in time."""
    started = time.monotonic()
    auth = bootstrap(backend.url("/slow"), {}, 0.5)
    took = time.monotonic() - started
    assert auth == Authorization(False, reason="backend did not answer within 0.5 s")
    assert took < 1.5


def test_bootstrap_trickling_answer_bounded_in_total(backend):
    """A backend sending its answer a byte at a time is cut off at the total timeout."""
    started = time.monotonic()
    auth = bootstrap(backend.url("/trickle"), {}, 1.0)
    assert not auth.authorized and "within 1 s" in auth.reason
    assert time.monotonic() - started < 2.0


def test_bootstrap_refused_connection():
    """A backend that is not running refuses the client, naming the failure."""
    auth = bootstrap(f"http://127.0.0.1:{free_port()}/bootstrap/", {}, 1.0)
    assert not auth.authorized and auth.reason.startswith("backend unreachable")


def test_bootstrap_bad_url():
    """A BOOTSTRAP_URL that is not http(s) refuses every client, saying so."""
    auth = bootstrap("ftp://example/boot", {}, 1.0)
    assert not auth.authorized and "not an http(s) URL" in auth.reason
    assert not bootstrap("", {}, 1.0).authorized


def test_slow_bootstrap_does_not_hold_others(backend):
    """Calls run in parallel threads: a slow one does not delay a fast one."""
    results = {}

    def call(name, path, timeout):
        results[name] = (bootstrap(backend.url(path), {}, timeout), time.monotonic())

    started = time.monotonic()
    slow = threading.Thread(target=call, args=("slow", "/slow", 2.0))
    slow.start()
    call("fast", "/ok", 2.0)
    assert results["fast"][0].authorized
    assert results["fast"][1] - started < 1.0
    slow.join(5)
    assert not results["slow"][0].authorized


def test_header_sources_as_high_templars_connection_headers():
    """BACKEND_HEADERS take values from a query parameter, a header or a cookie, formatted."""
    extra = {"X-Session-Token": {"param": "session_token"},
             "X-Forwarded-Host": {"header": "Host"},
             "X-Session": {"cookie": "sessionid", "format": "Session {}"},
             "X-Missing": {"param": "nope"},
             "authorization": {"param": "key", "format": "Bearer {}"},
             "X-Fixed": "1"}
    headers = bootstrap_headers({"cookie": "sessionid=abc", "host": "front:80"},
                                {"session_token": "st", "token": "T", "key": "K"}, extra)
    assert headers == {"Accept": "*/*", "Cookie": "sessionid=abc", "X-Session-Token": "st",
                       "X-Forwarded-Host": "front:80", "X-Session": "Session abc",
                       "authorization": "Bearer K", "X-Fixed": "1"}
    # a source without a value replaces the default all the same: no Authorization at all
    assert "Authorization" not in bootstrap_headers({}, {"token": "T"},
                                                    {"Authorization": {"param": "key"}})


@pytest.mark.parametrize("spec", [5, {"param": 1}, {"param": "a", "cookie": "b"}, {},
                                  {"param": "a", "format": "no placeholder"},
                                  {"param": "a", "format": "{0} {1}"}, {"query": "a"}])
def test_bad_header_specs_are_bad_settings(spec):
    """A BACKEND_HEADERS value that is neither a string nor a known source is refused."""
    from lexicons.daemon import settings
    from lexicons.errors import SettingsError

    with pytest.raises(SettingsError, match="BACKEND_HEADERS: header 'X'"):
        settings.load(None, env={}, overrides={"BACKEND_HEADERS": {"X": spec}})


def test_bootstrap_through_a_unix_socket(tmp_path):
    """BOOTSTRAP_SOCKET reaches the backend over a UNIX socket; the URL gives path and Host."""
    path = str(tmp_path / "backend.sock")
    with Backend(unix_path=path) as unix_backend:
        auth = bootstrap("http://api.internal/ok", {"Cookie": "a=1"}, 2.0, unix_socket=path)
        assert auth == Authorization(True, ROOMS)
        seen = unix_backend.headers_of()
        assert seen["host"] == "api.internal" and seen["cookie"] == "a=1"
    assert not bootstrap("http://api.internal/ok", {}, 1.0, unix_socket=path).authorized
