"""Measure fan-out across nodes (Redis backplane) and on the high-templar endpoint, in one run.

Scenarios, each against real ``lexiconsd`` daemons started here (pinned to core 0,
with a redis-server of this benchmark's own), driven by this Python process
(pinned to core 1):

* ``native, 1 node``         subscribers and publisher on one node, memory backplane
* ``native, 1 node + redis``  the same on a node whose backplane is Redis (the cost of
  forwarding every broadcast to Redis on the publishing node)
* ``native, across nodes``    publisher on node A, subscribers on node B, Redis between
* ``high-templar, 1 node``    subscribers on ``/ws/``, triggers by ``POST /trigger/``

Per scenario and round: --subscribers connections subscribe; the publisher keeps
--window broadcasts in flight (a broadcast is in flight until every subscriber has it)
for --msgs broadcasts; deliveries/s is measured after the first 10%. Then --rate
broadcasts/s for --secs seconds: p50/p99 latency from publish to delivery. Loss and
duplicates are counted per subscriber. The figures are ratios against ``native, 1 node``
measured in the same rounds.

The load generator is Python (one selector loop that finds the markers in the raw bytes
received); it reports how busy it was: near 100% of its core, a figure is its limit.

    python bench/bench_cluster.py [--quick] [--subscribers 1000] [--rounds 2]
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import queue
import re
import resource
import selectors
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from array import array
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
LEXICONSD = ROOT / "bin" / "lexiconsd"
HOST = "127.0.0.1"
SERVER_CPU, CLIENT_CPU = 0, 1
MARKER = re.compile(rb"#S(\d+):T(\d+)#")
ROOM = {"bench": 1}
TIMED_OUT = "  TIMED OUT (lost = not delivered within --timeout)"

SERVICES = [
    "services.control/ControlService",
    "services.backplane/BackplaneService",
    "services.rooms/RoomsService",
    "services.router/RouterService",
    "services.gate/GateService",
    "services.hightemplar/HighTemplarService",
    "services.listener/ListenerService",
]


# --- processes ------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def _pinned(cpu: int):
    def pin() -> None:
        os.setsid()
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    return pin


def wait_port(port: int, proc: subprocess.Popen, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            socket.create_connection((HOST, port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not listen on {port} within {timeout:g} s")


class Process:
    """A child process pinned to the server core; stopped with its process group."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], log: Path):
        self.name = name
        self.log = log
        with open(log, "wb") as out:
            self.proc = subprocess.Popen(argv, env=env, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT, cwd=log.parent,
                                         preexec_fn=_pinned(SERVER_CPU))

    def cpu_seconds(self) -> float:
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
            return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
        except (OSError, IndexError, ValueError):
            return 0.0

    def stop(self) -> None:
        """Stop the process group: SIGTERM, then SIGKILL after 20 s."""
        for sig, wait in ((signal.SIGTERM, 20), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                return
            try:
                os.killpg(self.proc.pid, sig)
                self.proc.wait(wait)
            except ProcessLookupError:
                return
            except subprocess.TimeoutExpired:
                print(f"{self.name} did not stop on signal {sig}", file=sys.stderr)


def start_redis(tmp: Path) -> tuple[Process, str]:
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("bench_cluster needs redis-server (bin/setup --test installs it)")
    port = free_port()
    proc = Process("redis", [binary, "--port", str(port), "--bind", HOST, "--save", "",
                             "--appendonly", "no", "--dir", str(tmp)], dict(os.environ),
                   tmp / "redis.log")
    wait_port(port, proc.proc, "redis-server")
    return proc, f"redis://{HOST}:{port}/0"


def start_node(name: str, tmp: Path, **settings: Any) -> tuple[Process, int]:
    directory = tmp / name
    directory.mkdir()
    port = free_port()
    values = {"APP": "clusterapp", "HOST": HOST, "PORT": port, "SERVICE_LIST": SERVICES,
              "DATA_DIR": "data", "LOCK_FILE": "lexiconsd.pid",
              "CONTROL_SOCKET": "lexiconsd.sock", "LOG_PATH": "-", "LOG_LEVEL": "WARNING",
              "PING_INTERVAL": 0.0, "IDLE_TIMEOUT": 0.0, "MAX_CONNECTIONS": 20000}
    values.update(settings)
    (directory / "settings.py").write_text(
        "".join(f"{k} = {v!r}\n" for k, v in values.items()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LEXICONS_")}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(BENCH)])
    proc = Process(name, [sys.executable, str(LEXICONSD), "start", "--foreground",
                          "--settings", "settings.py"], env, directory / "node.log")
    wait_port(port, proc.proc, f"node {name}")
    return proc, port


class Backend:
    """The high-templar backend: every client may join the bench room."""

    def __init__(self) -> None:
        body = json.dumps({"allowed_rooms": [ROOM]}).encode()

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: Any) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer((HOST, 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://{HOST}:{self.server.server_address[1]}/bootstrap/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()


# --- a minimal websocket client -------------------------------------------------------


def client_frame(text: str) -> bytes:
    """Return a masked text frame (mask of zeros: XOR leaves the payload as it is)."""
    payload = text.encode()
    n = len(payload)
    if n < 126:
        head = bytes([0x81, 0x80 | n])
    elif n < 65536:
        head = bytes([0x81, 0x80 | 126]) + n.to_bytes(2, "big")
    else:
        head = bytes([0x81, 0x80 | 127]) + n.to_bytes(8, "big")
    return head + b"\x00\x00\x00\x00" + payload


def ws_connect(port: int, path: str) -> socket.socket:
    """Open a websocket connection (blocking handshake); return the socket."""
    sock = socket.create_connection((HOST, port), timeout=30)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: {HOST}:{port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
                  f"Sec-WebSocket-Version: 13\r\n\r\n").encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError(f"handshake on {path} closed")
        head += chunk
    if not head.startswith(b"HTTP/1.1 101"):
        raise RuntimeError(f"handshake on {path} refused: {head[:80]!r}")
    _leftover[sock.fileno()] = head.split(b"\r\n\r\n", 1)[1]
    return sock


_leftover: dict[int, bytes] = {}  # bytes read past the handshake, by file descriptor


def read_until(sock: socket.socket, needle: bytes) -> None:
    """Read until *needle* was received (the welcome, a subscribe's answer)."""
    data = _leftover.pop(sock.fileno(), b"")
    while needle not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed while subscribing")
        data += chunk


# --- scenarios --------------------------------------------------------------------------


class Scenario:
    """Subscribers on one port and path, a publisher somewhere."""

    def __init__(self, name: str, sub_port: int, pub_port: int, hightemplar: bool,
                 processes: list[Process], redis_channel: str | None = None):
        self.name = name
        self.sub_port = sub_port
        self.pub_port = pub_port
        self.hightemplar = hightemplar
        self.processes = processes
        self.redis_channel = redis_channel

    def subscribe(self, n: int) -> list[socket.socket]:
        socks = []
        for i in range(n):
            if self.hightemplar:
                sock = ws_connect(self.sub_port, "/ws/")
                read_until(sock, b"is_authorized")
                sock.sendall(client_frame(json.dumps(
                    {"type": "subscribe", "room": ROOM, "requestId": str(i)})))
                read_until(sock, b'"success"')
            else:
                sock = ws_connect(self.sub_port, "/")
                sock.sendall(client_frame('{"Subscribe": {"channel": "bench"}}'))
                read_until(sock, b'"Subscribe"')
            sock.setblocking(False)
            socks.append(sock)
        return socks

    def publisher(self) -> SocketPublisher | TriggerPublisher:
        if self.hightemplar:
            return TriggerPublisher(self.pub_port)
        return SocketPublisher(self.pub_port)

    def cpu(self) -> float:
        return sum(p.cpu_seconds() for p in self.processes)


class SocketPublisher:
    """Publishes with the native Publish signal over one websocket."""

    def __init__(self, port: int):
        self.sock = ws_connect(port, "/")

    def publish(self, data: str) -> None:
        self.sock.sendall(client_frame(json.dumps(
            {"Publish": {"channel": "bench", "data": data}}, separators=(",", ":"))))

    def close(self) -> None:
        self.sock.close()


class TriggerPublisher:
    """Publishes with POST /trigger/ from a few threads (each request its own connection)."""

    def __init__(self, port: int, threads: int = 4):
        self.port = port
        self.jobs: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self.errors = 0
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]
        for thread in self.threads:
            thread.start()

    def publish(self, data: str) -> None:
        self.jobs.put(data)

    def _run(self) -> None:
        while True:
            data = self.jobs.get()
            if data is None:
                return
            body = json.dumps({"rooms": [ROOM], "data": data}).encode()
            conn = http.client.HTTPConnection(HOST, self.port, timeout=30)
            try:
                conn.request("POST", "/trigger/", body, {"Content-Type": "application/json"})
                if conn.getresponse().status != 200:
                    self.errors += 1
            except OSError:
                self.errors += 1
            finally:
                conn.close()

    def close(self) -> None:
        for _ in self.threads:
            self.jobs.put(None)
        for thread in self.threads:
            thread.join(10)


def marker(seq: int, size: int) -> str:
    text = f"#S{seq}:T{time.monotonic_ns()}#"
    return text + "x" * max(0, size - len(text))


def run_phase(socks: list[socket.socket], publisher: Any, msgs: int, window: int,
              rate: float, size: int, timeout: float) -> dict[str, Any]:
    """Publish *msgs* (windowed, or at *rate*/s); return deliveries, latency, loss."""
    n = len(socks)
    warm = msgs // 10
    selector = selectors.DefaultSelector()
    state = {}
    for i, sock in enumerate(socks):
        selector.register(sock, selectors.EVENT_READ, i)
        state[i] = [bytearray(msgs + 1), b""]  # seen sequences, tail of the last read
    latencies = array("q")
    delivered = dups = measured = 0
    sent = 0
    t_warm = t_last = 0
    cpu0 = time.process_time()
    t0 = time.monotonic()
    next_due = t0
    deadline = t0 + timeout
    while delivered < msgs * n and time.monotonic() < deadline:
        now = time.monotonic()
        if sent < msgs:
            if rate > 0:
                while sent < msgs and now >= next_due:
                    sent += 1
                    if sent == warm + 1:
                        t_warm = time.monotonic_ns()
                    publisher.publish(marker(sent, size))
                    next_due += 1.0 / rate
            else:
                while sent < msgs and (sent - window) * n < delivered:
                    sent += 1
                    if sent == warm + 1:
                        t_warm = time.monotonic_ns()
                    publisher.publish(marker(sent, size))
        wait = max(0.0, min(next_due - time.monotonic(), 0.05)) if rate > 0 else 0.05
        for key, _ in selector.select(wait):
            sock = key.fileobj
            seen, tail = state[key.data]
            try:
                data = sock.recv(262144)
            except BlockingIOError:
                continue
            if not data:
                raise RuntimeError("a subscriber was disconnected")
            data = tail + data
            now_ns = time.monotonic_ns()
            last = 0
            for m in MARKER.finditer(data):
                seq = int(m.group(1))
                last = m.end()
                if seen[seq]:
                    dups += 1
                    continue
                seen[seq] = 1
                delivered += 1
                if seq > warm:
                    measured += 1
                    latencies.append(now_ns - int(m.group(2)))
            rest = data[last:]
            state[key.data][1] = rest[-40:] if b"#S" in rest[-40:] else b""
            t_last = now_ns
    elapsed_ns = max(1, t_last - t_warm)
    cpu = time.process_time() - cpu0
    wall = time.monotonic() - t0
    selector.close()
    lat = sorted(latencies)
    pick = (lambda q: lat[min(len(lat) - 1, int(q * len(lat)))] / 1e6) if lat else (
        lambda q: float("nan"))
    return {"deliveries_per_s": measured / (elapsed_ns / 1e9), "p50_ms": pick(0.50),
            "p99_ms": pick(0.99), "lost": msgs * n - delivered, "duplicates": dups,
            "client_busy": cpu / max(wall, 1e-9),
            "timed_out": delivered < msgs * n and time.monotonic() >= deadline}


def drain(socks: list[socket.socket], quiet: float = 0.3) -> None:
    """Read and discard whatever is still arriving (replies, late frames)."""
    selector = selectors.DefaultSelector()
    for sock in socks:
        selector.register(sock, selectors.EVENT_READ)
    while True:
        events = selector.select(quiet)
        if not events:
            break
        for key, _ in events:
            try:
                key.fileobj.recv(262144)
            except BlockingIOError:
                pass
    selector.close()


def wait_redis(url: str, channel: str, timeout: float = 15.0) -> None:
    import redis

    client = redis.Redis.from_url(url)
    try:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if dict(client.pubsub_numsub(channel)).get(channel.encode(), 0) >= 1:
                return
            time.sleep(0.05)
    finally:
        client.close()
    raise RuntimeError(f"no node subscribed to {channel} within {timeout:g} s")


def measure(scenario: Scenario, p: argparse.Namespace, redis_url: str) -> dict[str, Any]:
    socks = scenario.subscribe(p.subscribers)
    publisher = scenario.publisher()
    try:
        if scenario.redis_channel:
            wait_redis(redis_url, scenario.redis_channel)
        cpu0 = scenario.cpu()
        thr = run_phase(socks, publisher, p.msgs, p.window, 0, p.size, p.timeout)
        thr["server_cpu_ms_per_1k"] = (scenario.cpu() - cpu0) * 1e6 / max(
            1, p.msgs * p.subscribers)
        drain(socks)
        n = max(10, int(p.rate * p.secs))
        lat = run_phase(socks, publisher, n, p.window, p.rate, p.size, p.timeout)
        return {"throughput": thr, "latency": lat}
    finally:
        publisher.close()
        for sock in socks:
            sock.close()
        time.sleep(0.5)  # let the servers notice the clients left


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--msgs", type=int, default=1000)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--secs", type=float, default=3.0)
    parser.add_argument("--size", type=int, default=80, help="data bytes per broadcast")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--quick", action="store_true", help="1 round, 300 broadcasts")
    parser.add_argument("--json", help="write the raw figures to this file")
    parser.add_argument("--only", action="append", default=[],
                        help="run only the scenarios whose name contains this (repeatable)")
    p = parser.parse_args()
    if p.quick:
        p.rounds, p.msgs, p.secs = 1, 300, 2.0
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, max(soft, 4 * p.subscribers + 256)),
                                                 hard))
    try:
        os.sched_setaffinity(0, {CLIENT_CPU})
    except OSError:
        pass
    tmp = Path(tempfile.mkdtemp(prefix="lexicons-bench-"))
    processes: list[Process] = []
    backend = Backend()
    ok = False
    try:
        redis_proc, redis_url = start_redis(tmp)
        processes.append(redis_proc)
        prefix = "bench-" + uuid.uuid4().hex[:6]
        single, single_port = start_node("single", tmp)
        alone, alone_port = start_node("alone", tmp, BACKPLANE=redis_url,
                                       BACKPLANE_PREFIX=prefix + "-alone")
        node_a, port_a = start_node("a", tmp, BACKPLANE=redis_url, BACKPLANE_PREFIX=prefix)
        node_b, port_b = start_node("b", tmp, BACKPLANE=redis_url, BACKPLANE_PREFIX=prefix)
        ht, ht_port = start_node("hightemplar", tmp, BOOTSTRAP_URL=backend.url)
        processes += [single, alone, node_a, node_b, ht]
        scenarios = [
            Scenario("native, 1 node", single_port, single_port, False, [single]),
            Scenario("native, 1 node + redis", alone_port, alone_port, False,
                     [alone, redis_proc]),
            Scenario("native, across nodes", port_b, port_a, False,
                     [node_a, node_b, redis_proc], redis_channel=f"{prefix}:c:bench"),
            Scenario("high-templar, 1 node", ht_port, ht_port, True, [ht]),
        ]
        if p.only:
            scenarios = [s for s in scenarios
                         if s.name == "native, 1 node" or any(o in s.name for o in p.only)]
        results: dict[str, list[dict[str, Any]]] = {s.name: [] for s in scenarios}
        for r in range(p.rounds):
            order = scenarios if r % 2 == 0 else list(reversed(scenarios))
            for scenario in order:
                rep = measure(scenario, p, redis_url)
                results[scenario.name].append(rep)
                thr, lat = rep["throughput"], rep["latency"]
                print(f"  round {r + 1} {scenario.name:<24} "
                      f"{thr['deliveries_per_s']:>9,.0f}/s  p99 fixed {lat['p99_ms']:.2f} ms  "
                      f"lost {thr['lost'] + lat['lost']} dup "
                      f"{thr['duplicates'] + lat['duplicates']}  client busy "
                      f"{thr['client_busy']:.0%}"
                      f"{TIMED_OUT if thr['timed_out'] or lat['timed_out'] else ''}", flush=True)
        report(results, p)
        if p.json:
            Path(p.json).write_text(json.dumps(results, indent=2))
        ok = True
    finally:
        for proc in reversed(processes):
            proc.stop()
        backend.stop()
        if ok:
            shutil.rmtree(tmp, ignore_errors=True)
        else:
            print(f"the servers' logs are kept in {tmp}", file=sys.stderr)
    return 0


def report(results: dict[str, list[dict[str, Any]]], p: argparse.Namespace) -> None:
    base = "native, 1 node"

    def med(name: str, phase: str, key: str) -> float:
        return statistics.median(r[phase][key] for r in results[name])

    print(f"\nfan-out, {p.subscribers} subscribers, {p.size}-byte data, window {p.window}, "
          f"{p.rounds} round(s); medians; ratio against '{base}'")
    print(f"{'scenario':<26}{'deliveries/s':>14}{'ratio':>8}{'CPU ms/1k':>11}"
          f"{'p50 ms':>9}{'p99 ms':>9}{'lost+dup':>10}")
    base_rate = med(base, "throughput", "deliveries_per_s")
    for name in results:
        rate = med(name, "throughput", "deliveries_per_s")
        bad = sum(r[ph]["lost"] + r[ph]["duplicates"] for r in results[name]
                  for ph in ("throughput", "latency"))
        print(f"{name:<26}{rate:>14,.0f}{rate / base_rate:>8.2f}"
              f"{med(name, 'throughput', 'server_cpu_ms_per_1k'):>11.2f}"
              f"{med(name, 'latency', 'p50_ms'):>9.2f}{med(name, 'latency', 'p99_ms'):>9.2f}"
              f"{bad:>10}")
    print("(p50/p99 at a fixed rate of "
          f"{p.rate:g} broadcasts/s; CPU = all server processes of the scenario, Redis too)")


if __name__ == "__main__":
    sys.exit(main())
