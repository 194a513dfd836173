"""The listener: handshake checks with real HTTP answers, timeouts, limits, routes, TLS."""
import json
import socket
import ssl
import subprocess
import time

import pytest

from lexicons.daemon.application import Application
from lexicons.signal import Signal
from lexicons.wire.frames import client_frame
from services.listener import HTTPResponse
from tests.support.websocket import RawClient, http_exchange, open_fds, serving, upgrade_request


class Echo(Signal):
    def execute(self, data):
        return data


APP = Application(signals=[Echo])


upgrade = upgrade_request


@pytest.fixture(scope="module")
def server():
    with serving(APP, HANDSHAKE_TIMEOUT=0.5, MAX_CONNECTIONS=50) as running:
        yield running


@pytest.mark.parametrize("request_bytes, status, reason", [
    (b"BAD\r\n\r\n", 400, "malformed request line"),
    (upgrade(key="c2hvcnQ="), 400, "bad Sec-WebSocket-Key"),
    (upgrade(extra="").replace(b"Sec-WebSocket-Version: 13", b"Sec-WebSocket-Version: 7"),
     400, "unsupported Sec-WebSocket-Version"),
    (upgrade().replace(b"Host: 127.0.0.1\r\n", b""), 400, "missing Host"),
    (upgrade(path="/nowhere"), 404, "no websocket endpoint at /nowhere"),
    (b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n", 404, "nothing at /nothing"),
    (upgrade(method="POST"), 405, "must use GET"),
    (b"GET /" + b"a" * 9000 + b" HTTP/1.1\r\n\r\n", 414, "request line longer"),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 426, "websocket endpoint"),
    (b"GET / HTTP/1.1\r\n" + b"X-Big: " + b"b" * 20000 + b"\r\n\r\n", 431, "request head larger"),
    (upgrade(version="HTTP/1.0"), 505, "needs HTTP/1.1"),
])
def test_bad_handshakes_get_an_http_error_with_a_json_reason(server, request_bytes, status,
                                                             reason):
    """Each bad handshake is answered with its status and a JSON body saying why."""
    got, headers, body = http_exchange(server.port, request_bytes)
    assert got == status
    assert headers["content-type"] == "application/json"
    assert headers["connection"] == "close"
    message = json.loads(body)
    assert message["status"] == status and reason in message["reason"]


def test_405_names_the_allowed_method(server):
    """A handshake that is not GET is told which method to use."""
    _, headers, _ = http_exchange(server.port, upgrade(method="PUT"))
    assert headers["allow"] == "GET"


def test_the_server_still_serves_after_bad_handshakes(server):
    """After bad handshakes a good client connects and is answered."""
    for _ in range(3):
        http_exchange(server.port, b"NONSENSE\r\n\r\n")
    with server.client() as client:
        assert client.call("Echo", data="ok") == "ok"


def test_slow_loris_handshakes_time_out_without_blocking_others():
    """Clients trickling a request get 408 after HANDSHAKE_TIMEOUT; others connect meanwhile."""
    with serving(APP, HANDSHAKE_TIMEOUT=2.0) as running:
        slow = []
        for _ in range(40):
            sock = socket.create_connection(("127.0.0.1", running.port))
            sock.sendall(b"GET / HT")
            slow.append(sock)
        started = time.monotonic()
        with running.client() as client:
            assert client.call("Echo", data=1) == 1
        assert time.monotonic() - started < 1.0  # not held up by the 40 slow ones
        for sock in slow:
            sock.sendall(b"T")  # one more byte: trickling does not extend the deadline
        for sock in slow:
            sock.settimeout(5)
            data = sock.recv(4096)
            assert data.startswith(b"HTTP/1.1 408 "), data
            sock.close()
        assert time.monotonic() - started < 4.0


def test_refused_handshakes_leave_no_open_descriptor(server):
    """Sockets of refused handshakes are closed explicitly, not left to the collector."""
    before = open_fds()
    for _ in range(30):
        http_exchange(server.port, upgrade(key="bad"))
    deadline = time.monotonic() + 3
    while open_fds() > before and time.monotonic() < deadline:
        time.sleep(0.02)
    assert open_fds() <= before


def test_503_when_the_connection_limit_is_reached():
    """Past MAX_CONNECTIONS a new client gets 503 with a reason; one leaving makes room."""
    with serving(APP, MAX_CONNECTIONS=3) as running:
        held = [running.raw() for _ in range(3)]
        status, _, body = http_exchange(running.port, upgrade())
        assert status == 503 and "maximum of 3" in json.loads(body)["reason"]
        held.pop().close()
        running.wait_connections(2)
        listener = running.service("listener")
        deadline = time.monotonic() + 5  # the refused request counts until its client leaves
        while listener.info()["handshakes"] and time.monotonic() < deadline:
            time.sleep(0.01)
        held.append(running.raw())
        for raw in held:
            raw.close()


def test_health_reports_every_service(server):
    """/health answers 200 with each service's state while all run."""
    status, _, body = http_exchange(server.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    report = json.loads(body)
    assert status == 200 and report["healthy"] is True
    assert report["services"] == {"rooms": "RUNNING", "router": "RUNNING", "gate": "RUNNING",
                                  "listener": "RUNNING"}


def test_registered_routes_get_the_request_and_its_body(server):
    """A route another service registers receives the request with its body."""
    def echo_body(request):
        return HTTPResponse(201, {"method": request.method, "body": request.body.decode()})
    server.service("listener").route("/echo-body", echo_body)
    status, _, body = http_exchange(
        server.port, b"POST /echo-body HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert status == 201 and json.loads(body) == {"method": "POST", "body": "hello"}


def test_a_failing_route_is_a_500_without_internals(server):
    """A route that raises answers 500 naming the path only."""
    def broken(request):
        raise RuntimeError("secret detail")
    server.service("listener").route("/broken", broken)
    status, _, body = http_exchange(server.port, b"GET /broken HTTP/1.1\r\nHost: x\r\n\r\n")
    assert status == 500 and b"secret" not in body


def test_accepted_sockets_have_tcp_nodelay(server):
    """Every accepted connection has Nagle's algorithm off."""
    raw = server.raw()
    server.wait_connections(1)
    [conn] = list(server.service("listener").hub.connections)
    assert conn.raw.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
    raw.close()
    server.wait_connections(0)


def test_first_frame_sent_with_the_handshake_is_not_lost(server):
    """A frame sent right behind the request head (same packet) is handled."""
    frame = RawClient.__new__(RawClient)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
    sock.sendall(upgrade() + client_frame(1, b'{"Echo": {"data": "early"}}'))
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(4096)
    frame.sock, frame.buf = sock, data.partition(b"\r\n\r\n")[2]
    assert frame.recv_json() == [{"Echo": "early"}]
    sock.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory):
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                    "-subj", "/CN=127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=60)
    return str(cert), str(key)


def test_tls_connections_work(certificate):
    """With TLS_CERT and TLS_KEY the server speaks wss and plain HTTPS errors."""
    from lexicons.client import Client
    cert, key = certificate
    context = ssl.create_default_context(cafile=cert)
    context.check_hostname = False
    with serving(APP, TLS_CERT=cert, TLS_KEY=key) as running:
        with Client(f"wss://127.0.0.1:{running.port}/", ssl_context=context) as client:
            assert client.call("Echo", data="secure" * 5000) == "secure" * 5000
        with socket.create_connection(("127.0.0.1", running.port)) as plain:
            with context.wrap_socket(plain) as sock:
                sock.sendall(b"GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n")
                assert sock.recv(4096).startswith(b"HTTP/1.1 404 ")
        with socket.create_connection(("127.0.0.1", running.port)) as plain:
            with context.wrap_socket(plain) as sock:  # a first frame in the same record
                sock.settimeout(5)
                sock.sendall(upgrade() + client_frame(1, b'{"Echo": {"data": "tls"}}'))
                data = b""
                while b'"tls"' not in data:
                    data += sock.recv(4096)
                assert data.startswith(b"HTTP/1.1 101 ") and data.endswith(b'[{"Echo":"tls"}]')


def test_health_is_503_when_a_service_is_not_running():
    """/health answers 503 and names the state of a service that failed."""
    from tests.support.services import Flaky
    with serving(APP, extra=[Flaky]) as running:
        running.service("flaky").crash(always=True)
        deadline = time.monotonic() + 5
        while running.service("flaky").state.value == "RUNNING" and time.monotonic() < deadline:
            time.sleep(0.02)
        status, _, body = http_exchange(running.port, b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        report = json.loads(body)
        assert status == 503 and report["healthy"] is False
        assert report["services"]["flaky"] in ("BACKOFF", "FATAL", "STARTING")
