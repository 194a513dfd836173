"""Connections over real sockets: pluggable handlers, pings, closing, storms and memory."""
import json
import os
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from websockets.sync.client import connect as websockets_connect

from lexicons.channel import Channel
from lexicons.daemon.application import Application
from lexicons.signal import Response, Signal
from lexicons.wire.frames import OP_PING, OP_PONG
from tests.support.websocket import need_descriptors, serving, upgrade_request

ROOT = str(Path(__file__).resolve().parents[3])


class Echo(Signal):
    def execute(self, data):
        return data


class Publish(Signal):
    def execute(self, channel: str, data):
        return Response(data, channels=[channel])


class News(Channel):
    name = "news"


APP = Application(signals=[Echo, Publish], channels=[News])


class Shouter:
    """A protocol handler of another path: upper-cases text, fails on 'boom'."""

    def __init__(self):
        self.opened = 0
        self.closed = 0

    def admit(self, admission):
        if admission.request.query.get("deny"):
            admission.refuse(403, "denied by the handler")
        else:
            admission.upgrade(self)
        return True

    def on_open(self, conn):
        self.opened += 1

    def on_message(self, conn, data):
        if data == "boom":
            raise RuntimeError("handler bug")
        conn.send(data.upper())

    def on_close(self, conn):
        self.closed += 1


def test_other_paths_get_their_own_protocol_handler():
    """A handler registered for a path gets its connections and their messages."""
    with serving(APP) as running:
        shouter = Shouter()
        running.service("listener").websocket("/shout", shouter)
        raw = running.raw("/shout")
        raw.send_text("hello")
        assert raw.recv_frame() == (1, b"HELLO")
        raw.close()
        with pytest.raises(ConnectionError, match="403"):
            running.raw("/shout?deny=1")
        running.wait_connections(0)
        assert (shouter.opened, shouter.closed) == (1, 1)


def test_a_handler_that_raises_closes_with_1011_not_a_zombie():
    """An exception escaping a handler closes the connection with 1011."""
    with serving(APP) as running:
        running.service("listener").websocket("/shout", Shouter())
        raw = running.raw("/shout")
        raw.send_text("boom")
        assert raw.expect_close() == (1011, "internal error")
        assert raw.closed_by_server(3)
        raw.close()


def test_stopping_the_server_closes_connections_with_1001():
    """On stop every client gets close 1001 'server shutting down'."""
    with serving(APP) as running:
        raws = [running.raw() for _ in range(3)]
        running.wait_connections(3)
        stopper = threading.Thread(target=running.manager.stop)
        stopper.start()
        for raw in raws:
            assert raw.expect_close() == (1001, "server shutting down")
            raw.send_frame(8, struct.pack("!H", 1001))
            raw.close()
        stopper.join(10)
        assert running.connections() == 0


def test_server_pings_and_closes_clients_that_do_not_answer():
    """With PING_INTERVAL, a client answering pongs stays; a silent one is closed (1008)."""
    with serving(APP, PING_INTERVAL=0.3) as running:
        good, silent = running.raw(), running.raw()
        stop = threading.Event()

        def answer_pings():
            while not stop.is_set():
                try:
                    opcode, payload = good.recv_frame(timeout=0.2)
                except (TimeoutError, OSError):
                    continue
                if opcode == OP_PING:
                    good.send_frame(OP_PONG, payload)
        thread = threading.Thread(target=answer_pings)
        thread.start()
        assert silent.recv_frame(timeout=2)[0] == OP_PING
        assert silent.expect_close(timeout=3) == (1008, "no pong within 0.3 s")
        stop.set()
        thread.join(5)
        good.call({"Echo": {"data": "alive"}})
        assert good.recv_json() == [{"Echo": "alive"}]
        good.close()
        silent.close()


CROWD_SCRIPT = """
import socket, struct, sys
sys.path.insert(0, {root!r})
from tests.support.websocket import RawClient, need_descriptors, upgrade_request
need_descriptors({count} + 100)
crowd = []
# in waves smaller than the gate's queue of handshakes (1024), which answers 503 when full
for _ in range(0, {count}, 500):
    wave = []
    for _ in range(min(500, {count} - len(crowd))):
        sock = socket.create_connection(("127.0.0.1", {port}))
        sock.sendall(upgrade_request())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        wave.append(RawClient(sock, b""))
    for raw in wave:
        head = b""
        while b"\\r\\n\\r\\n" not in head:
            head += raw.sock.recv(1)
        if not head.startswith(b"HTTP/1.1 101"):
            print("refused:", head.split(b"\\r\\n")[0].decode(), flush=True)
            sys.exit(1)
    crowd += wave
for raw in crowd[:{count} // 4]:
    raw.call({{"Subscribe": {{"channel": "news"}}}})
for raw in crowd[:{count} // 4]:
    raw.recv_json()
print("ready", flush=True)
sys.stdin.readline()
# exiting resets every socket at once, as a crashed client or a dropped network would
"""


def test_a_disconnect_storm_does_not_stall_the_server():
    """3000 clients resetting at once: others are answered meanwhile, all cleaned up."""
    need_descriptors(3500)
    with serving(APP, MAX_CONNECTIONS=5000) as running:
        crowd = subprocess.Popen(
            [sys.executable, "-c", CROWD_SCRIPT.format(root=ROOT, port=running.port,
                                                       count=3000)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert crowd.stdout.readline() == "ready\n"
            running.wait_connections(3000)
            with running.client() as client:
                crowd.stdin.write("go\n")
                crowd.stdin.flush()
                started = time.monotonic()
                for n in range(20):
                    assert client.call("Echo", data=n) == n
                assert time.monotonic() - started < 3.0  # Python's 5 ms interval: ~10 s
                running.wait_connections(1, timeout=10)
        finally:
            crowd.stdin.close()
            crowd.wait(20)
        assert running.service("rooms").info()["memberships"] == 0


def test_connection_threads_park_are_reused_then_end_unused():
    """The thread that greets a new connection parks afterwards and greets the next one:
    thirty connections in a row add no thread; spare parked threads end later."""
    from lexicons.daemon.connection import Hub, _ReaderThread

    with serving(APP) as running:
        hub = running.service("listener").hub
        with running.client() as client:
            assert client.call("Echo", data=1) == 1
        running.wait_connections(0)
        deadline = time.monotonic() + 5
        while not _ReaderThread.parked() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _ReaderThread.parked() >= 1
        before = len(os.listdir("/proc/self/task"))
        for n in range(30):
            with running.client() as client:
                assert client.call("Echo", data=n) == n
        assert len(os.listdir("/proc/self/task")) <= before + 2
        running.wait_connections(0)
        old = (Hub.spare_readers, Hub.trim_after)
        Hub.spare_readers, Hub.trim_after = 0, 0.0
        try:
            deadline = time.monotonic() + 5
            while _ReaderThread.parked() and time.monotonic() < deadline:
                time.sleep(0.01)
            assert _ReaderThread.parked() == 0
        finally:
            Hub.spare_readers, Hub.trim_after = old
        assert len(hub) == 0


def test_permessage_deflate_with_a_browser_like_client():
    """A client offering permessage-deflate gets it without context takeover, and works."""
    with serving(APP, PERMESSAGE_DEFLATE=True) as running:
        with websockets_connect(running.url, compression="deflate") as ws:
            extensions = ws.response.headers["Sec-WebSocket-Extensions"]
            assert "server_no_context_takeover" in extensions
            ws.send(json.dumps({"Subscribe": {"channel": "news"}}))
            assert json.loads(ws.recv(timeout=5)) == [{"Subscribe": "news"}]
            ws.send(json.dumps({"Publish": {"channel": "news", "data": "x" * 5000}}))
            assert json.loads(ws.recv(timeout=5)) == [{"Publish": "x" * 5000}]
            ws.send(json.dumps({"Echo": {"data": "y" * 3000}}))
            assert json.loads(ws.recv(timeout=5)) == [{"Echo": "y" * 3000}]


def test_without_the_setting_deflate_is_not_negotiated():
    """By default the server declines permessage-deflate."""
    with serving(APP) as running:
        with websockets_connect(running.url, compression="deflate") as ws:
            assert "Sec-WebSocket-Extensions" not in ws.response.headers
            ws.send(json.dumps({"Echo": {"data": 1}}))
            assert json.loads(ws.recv(timeout=5)) == [{"Echo": 1}]


SERVER_SCRIPT = """
import sys
sys.path.insert(0, {root!r})
from tests.support.websocket import need_descriptors, serving
need_descriptors(4000)
from tests.lexicons.daemon.test_connection import APP
import os as _os; _si = float(_os.environ.get("SWITCH", "0")); _si and sys.setswitchinterval(_si)
with serving(APP, MAX_CONNECTIONS=20000) as running:
    print(running.port, flush=True)
    sys.stdin.read()
"""


def rss(pid: int) -> int:
    with open(f"/proc/{pid}/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def test_an_idle_connection_costs_at_most_25_kb():
    """Memory per idle connection, measured in a separate server process, is <= 25 KB."""
    server = subprocess.Popen([sys.executable, "-c", SERVER_SCRIPT.format(root=ROOT)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    held = []
    try:
        port = int(server.stdout.readline())
        request = upgrade_request()

        def open_many(n):
            socks = []
            for _ in range(n):
                sock = socket.create_connection(("127.0.0.1", port))
                sock.sendall(request)
                socks.append(sock)
            for sock in socks:
                sock.settimeout(5)
                assert sock.recv(4096).startswith(b"HTTP/1.1 101")
            return socks

        held += open_many(200)  # warm up: allocator arenas, first thread stacks
        time.sleep(0.3)
        before = rss(server.pid)
        held += open_many(1500)
        time.sleep(0.5)
        per_connection = (rss(server.pid) - before) / 1500
        assert per_connection <= 25 * 1024, f"{per_connection:.0f} bytes per connection"
    finally:
        for sock in held:
            sock.close()
        server.stdin.close()
        server.wait(20)
