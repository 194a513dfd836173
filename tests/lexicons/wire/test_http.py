"""HTTP request heads and websocket handshake checks (no network)."""
import pytest

from lexicons.wire import http
from lexicons.wire.http import HTTPError, check_upgrade, parse_head

GOOD = (b"GET /chat?Login=%7B%22user%22%3A%22a%22%7D HTTP/1.1\r\nHost: x\r\n"
        b"Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n")


def status_of(head: bytes) -> int:
    with pytest.raises(HTTPError) as info:
        check_upgrade(parse_head(head))
    return info.value.status


def test_parses_a_good_upgrade_request():
    """A good request gives its path, decoded query, lower-case headers and its key."""
    request = parse_head(GOOD)
    assert request.path == "/chat" and request.query == {"Login": '{"user":"a"}'}
    assert request.header("HOST") == "x" and request.wants_upgrade
    assert check_upgrade(request) == b"dGhlIHNhbXBsZSBub25jZQ=="


def test_accept_token_matches_rfc_6455():
    """The Sec-WebSocket-Accept of the RFC's example key is the RFC's value."""
    assert http.accept_token(b"dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="


@pytest.mark.parametrize("head, status", [
    (GOOD.replace(b"GET ", b"POST "), 405),
    (GOOD.replace(b"HTTP/1.1", b"HTTP/1.0"), 505),
    (GOOD.replace(b"HTTP/1.1", b"HTTP/2.0"), 505),
    (GOOD.replace(b"Upgrade: websocket\r\n", b""), 426),
    (GOOD.replace(b"keep-alive, Upgrade", b"keep-alive"), 426),
    (GOOD.replace(b"dGhlIHNhbXBsZSBub25jZQ==", b"c2hvcnQ="), 400),
    (GOOD.replace(b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n", b""), 400),
    (GOOD.replace(b"Version: 13", b"Version: 8"), 400),
    (GOOD.replace(b"Sec-WebSocket-Version: 13\r\n", b""), 400),
    (GOOD.replace(b"Host: x\r\n", b""), 400),
    (b"GARBAGE\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\n bad folded\r\n\r\n", 400),
    (b"GET / HTTP/1.1\r\nNo colon here\r\n\r\n", 400),
    (b"GET " + b"a" * 10 + b" HTTP/1.1\r\n\r\n", 400),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414),
    (b"GET / HTTP/1.1\r\n" + b"X-A: b\r\n" * 200 + b"\r\n", 431),
])
def test_bad_requests_get_their_status(head, status):
    """Each kind of bad upgrade request is refused with its own status."""
    assert status_of(head) == status


def test_bad_version_answer_names_the_supported_version():
    """A 400 for a bad version carries Sec-WebSocket-Version: 13."""
    with pytest.raises(HTTPError) as info:
        check_upgrade(parse_head(GOOD.replace(b"Version: 13", b"Version: 8")))
    assert ("Sec-WebSocket-Version", "13") in info.value.headers


def test_partial_heads_that_are_too_long_are_refused_early():
    """An unfinished request line over the limit is 414; an unfinished head over it is 431."""
    with pytest.raises(HTTPError) as info:
        http.check_partial(b"GET /" + b"a" * 9000, 16384)
    assert info.value.status == 414
    with pytest.raises(HTTPError) as info:
        http.check_partial(b"GET / HTTP/1.1\r\n" + b"X: y\r\n" * 3000, 16384)
    assert info.value.status == 431
    http.check_partial(b"GET / HTTP/1.1\r\nHost: x\r\n", 16384)


def test_error_response_has_a_json_body_and_closes():
    """An error answer says why in JSON and announces Connection: close."""
    data = http.error_response(HTTPError(401, "Login: refused"))
    head, _, body = data.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 401 Unauthorized") and b"Connection: close" in head
    assert body == b'{"status":401,"error":"Unauthorized","reason":"Login: refused"}'
    assert f"Content-Length: {len(body)}".encode() in head
