"""The control service: commands, garbage, permissions."""
import json
import os
import socket
import stat
import time

import pytest

from lexicons.daemon import control
from lexicons.daemon.application import Application
from lexicons.daemon.bootstrap import Bootstrap
from lexicons.errors import ControlError, ProtocolError
from services.control import MAX_CLIENTS, REQUEST_DEADLINE
from tests.support.daemon import make_settings, wait_for

SUPPORT = "tests.support.services"


@pytest.fixture
def daemon(tmp_path):
    settings = make_settings(tmp_path, SERVICE_LIST=["services.control/ControlService",
                                                     f"{SUPPORT}/Counter", f"{SUPPORT}/Flaky"])
    with Bootstrap(settings, Application()) as d:
        yield d


def raw(path, payload: bytes, read=True):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(5)
    sock.connect(path)
    try:
        sock.sendall(payload)
        if not read:
            return None
        data = b""
        while not data.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return [json.loads(line) for line in data.splitlines()]
    finally:
        sock.close()


def test_decode_request_names_the_problem():
    """The pure decoder says what is wrong with a request line."""
    assert control.decode_request(b'{"command": "status"}') == {"command": "status"}
    for line, words in [(b"\xff\xfe", "UTF-8"), (b"hello", "not JSON"),
                        (b"[1]", "JSON object"), (b'{"x": 1}', "'command'")]:
        with pytest.raises(ProtocolError, match=words):
            control.decode_request(line)


def test_status_and_ping(daemon):
    """status lists every service; ping answers pong."""
    path = daemon.settings.CONTROL_SOCKET
    status = control.request(path, "status")
    assert [s["name"] for s in status["services"]] == ["control", "counter", "flaky"]
    assert all(s["state"] == "RUNNING" for s in status["services"])
    assert status["pid"] == os.getpid()
    assert control.request(path, "ping") == "pong"
    assert "restart" in control.request(path, "help")


def test_restart_command(daemon):
    """restart <service> runs the service again; restart of an unknown one is an error."""
    path = daemon.settings.CONTROL_SOCKET
    result = control.request(path, "restart", service="counter")
    assert result["state"] == "RUNNING"
    assert daemon.manager.get_service("counter").runs == 2
    with pytest.raises(ControlError, match="no service named 'nope'"):
        control.request(path, "restart", service="nope")
    with pytest.raises(ControlError, match="needs a 'service'"):
        control.request(path, "restart")


def test_service_commands_are_offered(daemon):
    """A service's own commands are reachable on the socket."""
    path = daemon.settings.CONTROL_SOCKET
    assert control.request(path, "crash") == "crashing"
    flaky = daemon.manager.get_service("flaky")
    wait_for(lambda: flaky.runs == 2, what="restart after crash")


@pytest.mark.parametrize("payload, words", [
    (b"garbage\n", "not JSON"),
    (b"\x00\x01\x02\xff\n", "UTF-8"),
    (b'"status"\n', "JSON object"),
    (b'{"command": "explode"}\n', "unknown command 'explode'"),
    (b'{"command": 5}\n', "'command'"),
    (b'{"command": "status", "n": ' + b"9" * 5000 + b'}\n', "number too long"),
])
def test_garbage_gets_an_error_and_service_survives(daemon, payload, words):
    """Garbage gets an error reply naming the problem; the service keeps serving."""
    path = daemon.settings.CONTROL_SOCKET
    replies = raw(path, payload)
    assert replies[0]["ok"] is False and words in replies[0]["error"]
    assert control.request(path, "ping") == "pong"


def test_oversized_line_is_refused(daemon):
    """A request longer than the line limit is refused and the connection closed."""
    path = daemon.settings.CONTROL_SOCKET
    replies = raw(path, b"x" * (control.MAX_LINE + 10))
    assert "longer than" in replies[0]["error"]
    assert control.request(path, "ping") == "pong"


def test_abrupt_clients_do_not_hurt(daemon):
    """Clients that connect and vanish, or send half a line, leave the service serving."""
    path = daemon.settings.CONTROL_SOCKET
    for _ in range(20):
        raw(path, b'{"command": "sta', read=False)
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.close()
    several = raw(path, b'{"command":"ping"}\n{"command":"ping"}\n')
    assert control.request(path, "ping") == "pong"
    assert several[0]["result"] == "pong"


def test_socket_is_owner_only(daemon):
    """The socket file is mode 0600, and another user cannot connect to it."""
    path = daemon.settings.CONTROL_SOCKET
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    if os.getuid() != 0:
        pytest.skip("trying the socket as another user needs root to switch users "
                    "(CI runs as root)")
    os.chmod(os.path.dirname(path), 0o755)
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        try:
            os.setgid(65534)
            os.setuid(65534)
            control.request(path, "status", timeout=2)
            os.write(write_fd, b"connected")
        except ControlError as exc:
            os.write(write_fd, str(exc).encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd) as fh:
        said = fh.read()
    assert "permission denied" in said


def test_no_daemon_is_a_clear_error(tmp_path):
    """Asking a socket nobody listens on says so."""
    with pytest.raises(ControlError, match="does not exist"):
        control.request(str(tmp_path / "none.sock"), "status")


def abusers(path, silent: int, half: int) -> list[socket.socket]:
    """Connect *silent* clients that send nothing and *half* that send half a request."""
    socks = []
    for n in range(silent + half):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.connect(path)
        if n >= silent:
            sock.sendall(b'{"command": "sta')
        socks.append(sock)
    return socks


def test_idle_and_half_line_clients_cannot_lock_the_operator_out(daemon):
    """With every client slot held by silent or half-line clients, status and stop still
    answer within 2 s: the client idle the longest makes room."""
    path = daemon.settings.CONTROL_SOCKET
    socks = abusers(path, MAX_CLIENTS // 2, MAX_CLIENTS // 2 + 8)
    try:
        for command in ("status", "ping", "stop"):
            started = time.monotonic()
            assert control.request(path, command, timeout=10)
            assert time.monotonic() - started < 2.0, command
        assert daemon.manager.get_service("control").info()["dropped"] >= 8
    finally:
        for sock in socks:
            sock.close()


def test_a_request_line_not_finished_in_time_is_cut_off(daemon):
    """Half a line gets an error naming the deadline, then the connection is closed;
    a line sent in pieces within the deadline is served."""
    path = daemon.settings.CONTROL_SOCKET
    [sock] = abusers(path, 0, 1)
    started = time.monotonic()
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    waited = time.monotonic() - started
    sock.close()
    reply = json.loads(data)
    assert reply == {"ok": False, "error": f"request line not finished within "
                                           f"{REQUEST_DEADLINE:g} s"}
    assert REQUEST_DEADLINE * 0.9 <= waited < REQUEST_DEADLINE + 8  # room for a loaded host
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(10)
    sock.connect(path)
    try:
        sock.sendall(b'{"command": ')
        time.sleep(REQUEST_DEADLINE / 4)
        sock.sendall(b'"ping"}\n{"comm')
        time.sleep(REQUEST_DEADLINE / 4)
        sock.sendall(b'and": "ping"}\n')
        data = b""
        while data.count(b"\n") < 2:
            data += sock.recv(65536)
    finally:
        sock.close()
    assert [json.loads(line)["result"] for line in data.splitlines()] == ["pong", "pong"]
