"""Start servers, drive the load generators, and print side-by-side tables.

Theory of operation: every benchmark compares a *subject* (lexicons by default) with a
*peer* (websockets' asyncio server by default) in one run, with the same load generator
and the same parameters, alternating between them round after round. There are two
independent load generators with one command line and one report format: ``c``
(loadgen.c, epoll, no libraries) and ``py`` (pyloadgen.py, picows clients on uvloop,
JSON decoded per frame as an application does); a run measures both servers under each
of them, every round. Each server is a
subprocess on a free port, pinned to core 0; the load generator is pinned to core 1.
The machines are shared and noisy, so the figure that counts is the ratio
subject/peer measured minutes apart, not either absolute figure.

Servers are started in their own process group and killed (SIGTERM, then SIGKILL) when
the ``with`` block ends, whatever ends it: an exception, Ctrl-C, or SIGTERM to the
driver (turned into SystemExit so the ``finally`` clauses run).
"""
from __future__ import annotations

import json
import math
import os
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
BUILD = BENCH / "build"
LOADGEN_SRC = BENCH / "loadgen.c"
LOADGEN = BUILD / "loadgen"
PYLOADGEN = BENCH / "pyloadgen.py"
PYTHON = sys.executable
#: The load generators, by the name ``--generators`` uses.
GENERATORS = {"c": "C load generator (loadgen.c)",
              "py": "Python load generator (pyloadgen.py: picows on uvloop)"}

SERVER_CPU = 0
LOADGEN_CPU = 1
HOST = "127.0.0.1"
LOADGEN_BUSY = 0.9  # above this share of its core, the load generator may be the limit

# The wire format (DESIGN.md section 5) as load generator templates: @DATA@ is the
# marker "#S<seq>:T<ns>#" padded to --size bytes.
CHANNEL = "bench"
SUBSCRIBE = json.dumps({"Subscribe": {"channel": CHANNEL}})
PUBLISH = json.dumps({"Publish": {"channel": CHANNEL, "data": "@DATA@"}})
ECHO = json.dumps({"Echo": {"data": "@DATA@"}})


# --- servers ----------------------------------------------------------------------------


@dataclass(frozen=True)
class ServerSpec:
    """How to start one server in the foreground on a given port."""

    name: str
    describe: str
    argv: Callable[[int, Path], list[str]]
    env: Callable[[int, Path], dict[str, str]] = lambda port, tmp: {}

    def available(self) -> str | None:
        """Return why this server cannot run here, or None when it can."""
        script = Path(self.argv(0, BENCH)[1])
        if script.suffix == ".py" and not script.exists():
            return f"{script} does not exist"
        return None


# The lexicons application to run (``--app`` changes it, e.g. to another checkout's).
LEXICONS_APP = BENCH / "app.py"


def _lexicons_env(port: int, tmp: Path) -> dict[str, str]:
    # the app keeps its lock file, control socket and data in a temporary directory:
    # make that one land in ours, which stop() removes
    return {"TMPDIR": str(tmp)}


SERVERS: dict[str, ServerSpec] = {
    "lexicons": ServerSpec(
        "lexicons", "lexicons (bench/app.py)",
        lambda port, tmp: [PYTHON, str(LEXICONS_APP), "run", "--host", HOST, "--port",
                           str(port)],
        _lexicons_env),
    "websockets": ServerSpec(
        "websockets", "websockets asyncio server, broadcast()",
        lambda port, tmp: [PYTHON, str(BENCH / "peers" / "ws_asyncio.py"), "--port", str(port)]),
    "websockets-threaded": ServerSpec(
        "websockets-threaded", "websockets threaded server (sync), send() loop",
        lambda port, tmp: [PYTHON, str(BENCH / "peers" / "ws_threaded.py"), "--port",
                           str(port)]),
    "raw-python": ServerSpec(
        "raw-python", "one pure-Python selector loop, frames built once (a ceiling)",
        lambda port, tmp: [PYTHON, str(BENCH / "peers" / "raw_python.py"), "--port",
                           str(port)]),
}


def free_port() -> int:
    """Return a TCP port that was free a moment ago."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _pin(cpu: int) -> Callable[[], None]:
    def pin() -> None:
        try:
            os.sched_setaffinity(0, {cpu})
        except OSError:
            pass
    return pin


def _descendants(pid: int) -> list[int]:
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        found.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return found


def _status_kb(pid: int, key: str) -> int:
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class Server:
    """A server subprocess: pinned to core 0, in its own process group, always killed."""

    live: set[Server] = set()

    def __init__(self, spec: ServerSpec, extra_env: dict[str, str] | None = None):
        self.spec = spec
        self.port = free_port()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"bench-{spec.name}-"))
        self.log_path = BUILD / "logs" / f"{spec.name}-{self.port}.log"
        self.extra_env = extra_env or {}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 30.0) -> Server:
        """Start the server and wait until it completes a websocket handshake."""
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.update(self.spec.env(self.port, self.tmp))
        env.update(self.extra_env)
        env["PYTHONUNBUFFERED"] = "1"
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                self.spec.argv(self.port, self.tmp), cwd=REPO, env=env, stdin=subprocess.DEVNULL,
                stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                preexec_fn=_pin(SERVER_CPU))
        finally:
            log.close()
        Server.live.add(self)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.spec.name} exited with {self.proc.returncode} at "
                                   f"start:\n{self.log_tail()}")
            if handshake_ok(HOST, self.port):
                return self
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.spec.name} did not accept a websocket within "
                                   f"{timeout:.0f} s:\n{self.log_tail()}")
            time.sleep(0.1)

    def stop(self) -> None:
        """Kill the server's process group (SIGTERM, then SIGKILL) and remove its files."""
        Server.live.discard(self)
        if self.proc is not None and self.proc.poll() is None:
            for sig, wait in ((signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
                try:
                    os.killpg(self.proc.pid, sig)
                except ProcessLookupError:
                    break
                try:
                    self.proc.wait(wait)
                    break
                except subprocess.TimeoutExpired:
                    continue
        if self.proc is not None:
            try:  # stray children left in the group
                os.killpg(self.proc.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        subprocess.run(["rm", "-rf", str(self.tmp)], check=False)

    def rss_kb(self) -> int:
        """Return the resident memory of the server and its child processes, in KiB."""
        assert self.proc is not None
        return sum(_status_kb(p, "VmRSS") for p in _descendants(self.proc.pid))

    def threads(self) -> int:
        """Return the number of threads of the server process."""
        assert self.proc is not None
        return _status_kb(self.proc.pid, "Threads")

    def cpu_seconds(self) -> float:
        """Return the CPU time (user + system) the server process has used so far."""
        assert self.proc is not None
        total = 0.0
        for p in _descendants(self.proc.pid):
            try:
                with open(f"/proc/{p}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            except (OSError, IndexError, ValueError):
                pass
        return total

    def wait_idle(self, limit: float = 15.0, busy: float = 0.05) -> float:
        """Wait until the server uses under ``busy`` of a core; return the seconds waited.

        A server still tearing down the last round's connections (a thread per
        connection takes seconds) would otherwise steal core 0 from the next measurement.
        """
        start = time.monotonic()
        last = self.cpu_seconds()
        while time.monotonic() - start < limit:
            time.sleep(0.25)
            now = self.cpu_seconds()
            if now - last < busy * 0.25:
                break
            last = now
        return time.monotonic() - start

    def alive(self) -> bool:
        """Return whether the server process still runs."""
        return self.proc is not None and self.proc.poll() is None

    def log_tail(self, lines: int = 30) -> str:
        """Return the end of the server's output."""
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    def __enter__(self) -> Server:
        try:
            return self.start()
        except BaseException:
            self.stop()
            raise

    def __exit__(self, *exc: object) -> None:
        self.stop()


def handshake_ok(host: str, port: int, timeout: float = 1.0) -> bool:
    """Return whether a websocket upgrade on ``host:port`` gets a 101 response."""
    request = (f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
               "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode()
    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.sendall(request)
            reply = b""
            while b"\r\n\r\n" not in reply and len(reply) < 8192:
                chunk = s.recv(4096)
                if not chunk:
                    break
                reply += chunk
            ok = reply.startswith(b"HTTP/1.1 101")
            if ok:
                s.sendall(b"\x88\x82\x00\x00\x00\x00\x03\xe8")  # close 1000, zero mask
            return ok
    except OSError:
        return False


class Probe:
    """Time how long a server takes to answer a new handshake, from now on (a thread)."""

    def __init__(self, host: str, port: int, limit: float = 30.0):
        self.host, self.port, self.limit = host, port, limit
        self.elapsed: float | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Probe:
        """Start probing."""
        self._thread.start()
        return self

    def _run(self) -> None:
        start = time.monotonic()
        time.sleep(0.05)
        while time.monotonic() - start < self.limit:
            left = self.limit - (time.monotonic() - start)
            if handshake_ok(self.host, self.port, timeout=max(0.1, left)):
                self.elapsed = time.monotonic() - start
                return
            time.sleep(0.1)

    def result(self) -> float | None:
        """Wait for the probe; return the seconds to an answer, or None if none came."""
        self._thread.join(self.limit + 5)
        return self.elapsed


def _cleanup_all() -> None:
    for server in list(Server.live):
        server.stop()


def install_cleanup() -> None:
    """Make SIGTERM/SIGHUP end the driver through SystemExit so servers are killed."""
    def on_signal(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    import atexit
    atexit.register(_cleanup_all)


def raise_nofile(need: int) -> int:
    """Raise RLIMIT_NOFILE's soft limit to the hard limit; fail clearly if below ``need``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
    if soft < need:
        raise SystemExit(f"RLIMIT_NOFILE is {soft} (hard limit {hard}); {need} file "
                         "descriptors are needed: raise the hard limit (ulimit -Hn) or "
                         "ask for fewer connections")
    return soft


# --- the load generator -----------------------------------------------------------------


def build_loadgen() -> Path:
    """Compile bench/loadgen.c into bench/build/ unless the binary is up to date."""
    BUILD.mkdir(parents=True, exist_ok=True)
    if LOADGEN.exists() and LOADGEN.stat().st_mtime >= LOADGEN_SRC.stat().st_mtime:
        return LOADGEN
    cmd = ["gcc", "-O2", "-Wall", "-Wextra", "-o", str(LOADGEN), str(LOADGEN_SRC)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode:
        raise SystemExit(f"compiling the load generator failed:\n{' '.join(cmd)}\n"
                         f"{result.stderr}")
    return LOADGEN


def generator_cmd(generator: str) -> list[str]:
    """Return the command that starts load generator ``generator`` ('c' or 'py')."""
    if generator == "py":
        return [PYTHON, str(PYLOADGEN)]
    if generator == "c":
        return [str(build_loadgen())]
    raise ValueError(f"unknown load generator {generator!r}: one of {', '.join(GENERATORS)}")


def generator_available(generator: str) -> str | None:
    """Return why ``generator`` cannot run here, or None when it can."""
    if generator == "py":
        try:
            import picows  # noqa: F401
            import uvloop  # noqa: F401
        except ImportError as exc:
            return f"{exc.name} is not installed (pip install -e '.[bench]')"
    return None


def loadgen(mode: str, port: int, args: Sequence[str], timeout: float,
            on_running: Callable[[], None] | None = None,
            generator: str = "c") -> dict[str, Any]:
    """Run a load generator to completion and return its JSON report.

    ``on_running`` is called when the load generator says its connections are ready and
    traffic starts (so the driver can sample the server's CPU time there).
    """
    cmd = [*generator_cmd(generator), mode, "--host", HOST, "--port", str(port),
           "--cpu", str(LOADGEN_CPU), "--timeout", str(timeout), *args]
    deadline = time.monotonic() + timeout + 15
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise RuntimeError(f"load generator did not finish in {timeout + 15:.0f} s")
            ready, _, _ = select.select([proc.stdout], [], [], left)
            if not ready:
                continue
            line = proc.stdout.readline()
            if not line:
                break
            if line.startswith('{"event": "running"'):
                if on_running is not None:
                    on_running()
            else:
                lines.append(line)
        proc.wait(max(1.0, deadline - time.monotonic()))
        return _report("".join(lines), proc.stderr.read(), cmd)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _report(stdout: str, stderr: str, cmd: Sequence[str]) -> dict[str, Any]:
    lines = [line for line in stdout.splitlines() if line.startswith("{")]
    if not lines:
        raise RuntimeError(f"load generator gave no report: {' '.join(cmd)}\n{stderr}")
    return json.loads(lines[-1])


@contextmanager
def held_connections(port: int, args: Sequence[str], timeout: float, generator: str = "c"
                     ) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """Open connections with ``loadgen connect``; yield (ready report, final report).

    The connections stay open inside the ``with`` block; the final report is filled in
    when the block ends and the load generator has closed them.
    """
    cmd = [*generator_cmd(generator), "connect", "--host", HOST, "--port", str(port),
           "--cpu", str(LOADGEN_CPU), "--timeout", str(timeout), *args]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    final: dict[str, Any] = {}
    try:
        ready, _, _ = select.select([proc.stdout], [], [], timeout + 5)
        line = proc.stdout.readline() if ready else ""
        if not line.startswith("{"):
            proc.kill()
            raise RuntimeError(f"load generator did not open connections: "
                               f"{proc.stderr.read()}")
        yield json.loads(line), final
        out, err = proc.communicate(timeout=30)  # closes stdin: the signal to close
        final.update(_report(out, err, cmd))
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


# --- reporting --------------------------------------------------------------------------


@dataclass
class Metric:
    """One row of a result table: a figure per server, their ratio and the target."""

    name: str
    unit: str
    subject: list[float] = field(default_factory=list)
    peer: list[float] = field(default_factory=list)
    target: str = ""
    # check(subject median, peer median, ratio) -> met?; None: no target
    check: Callable[[float, float, float | None], bool] | None = None
    fmt: str = "{:,.0f}"

    def add(self, which: str, value: float) -> None:
        """Record one round's figure for ``which`` ('subject' or 'peer')."""
        getattr(self, which).append(value)

    def show(self, v: float | None) -> str:
        """Format one figure ("never" for an infinite one, such as no answer)."""
        if v is None:
            return "-"
        return self.fmt.format(v) if math.isfinite(v) else "never"

    def ratio(self) -> float | None:
        """Return the median of the per-round ratios subject/peer.

        Both servers of a round ran within a minute of each other, so a per-round ratio
        cancels most of the machine's drift; the median discards an odd round. With
        unpaired figures, the ratio of the medians.
        """
        pairs = list(zip(self.subject, self.peer, strict=False))
        if not all(math.isfinite(v) for v in self.subject + self.peer):
            return None
        if pairs and len(self.subject) == len(self.peer):
            ratios = [s / p for s, p in pairs if p]
            return statistics.median(ratios) if ratios else None
        if self.subject and self.peer:
            s, p = statistics.median(self.subject), statistics.median(self.peer)
            return s / p if p and math.isfinite(s / p) else None
        return None

    def cells(self) -> list[str]:
        """Return the table cells: name, subject, peer, ratio, target, met."""
        s = statistics.median(self.subject) if self.subject else None
        p = statistics.median(self.peer) if self.peer else None
        ratio = self.ratio()
        met = ""
        if self.check is not None and s is not None:
            met = "yes" if self.check(s, p if p is not None else 0.0, ratio) else "NO"
        return [f"{self.name} ({self.unit})" if self.unit else self.name, self.show(s),
                self.show(p),
                "-" if ratio is None else f"{ratio:.2f}x", self.target or "-", met or "-"]


def print_table(title: str, subject: str, peer: str, metrics: Sequence[Metric],
                notes: Sequence[str] = ()) -> str:
    """Print (and return) a table of medians over rounds and the median per-round ratio."""
    header = ["metric", subject, peer, "ratio", "target", "met"]
    rows = [header] + [m.cells() for m in metrics]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    lines = [f"\n== {title}"]
    for i, row in enumerate(rows):
        lines.append("  ".join(c.ljust(w) if j == 0 else c.rjust(w)
                               for j, (c, w) in enumerate(zip(row, widths, strict=True))))
        if i == 0:
            lines.append("  ".join("-" * w for w in widths))
    lines.append(f"  load average now: {load_average()} (two cores; figures above a few "
                 "are shared with other work)")
    for m in metrics:
        if len(m.subject) > 1 or len(m.peer) > 1:
            lines.append(f"  rounds, {m.name}: {subject} "
                         f"{', '.join(m.show(v) for v in m.subject)}; {peer} "
                         f"{', '.join(m.show(v) for v in m.peer)}")
    lines.extend(f"  {n}" for n in notes)
    text = "\n".join(lines)
    print(text, flush=True)
    return text


def settle(servers: Sequence[Server]) -> None:
    """Wait until every running server is idle (see Server.wait_idle)."""
    for server in servers:
        waited = server.wait_idle()
        if waited > 2:
            print(f"  ({server.spec.name} kept core 0 busy for {waited:.1f} s before this "
                  "measurement)", flush=True)


def load_average() -> str:
    """Return the 1, 5 and 15 minute load averages, as text."""
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "unknown"


def order(round_index: int, names: Sequence[str]) -> list[str]:
    """Alternate which server goes first from one round to the next."""
    return list(names) if round_index % 2 == 0 else list(reversed(names))


def common_args(parser: Any) -> None:
    """Add the options every driver shares."""
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--subject", default="lexicons", choices=sorted(SERVERS),
                        help="the server measured (default lexicons)")
    parser.add_argument("--peer", default="websockets", choices=sorted(SERVERS),
                        help="the server compared against (default websockets asyncio)")
    parser.add_argument("--rounds", type=int, default=None,
                        help="alternating rounds per server (default 3, quick 1)")
    parser.add_argument("--json", metavar="FILE", help="also write the raw reports here")
    parser.add_argument("--app", metavar="PATH", default=str(LEXICONS_APP),
                        help="the lexicons application to run (default bench/app.py)")
    parser.add_argument("--generators", default="c,py",
                        help="load generators to run, comma-separated (default c,py)")
    parser.add_argument("--py-payload", choices=("json", "marker"), default="json",
                        help="the Python generator's payloads: JSON objects (default) or "
                             "the C generator's marker strings")
    parser.add_argument("--py-read", choices=("frame", "burst"), default="frame",
                        help="the Python generator's reading: decode each frame as it comes "
                             "(default) or the frames of one read together")


def generators(args: Any) -> list[str]:
    """Return the load generators to run (those that cannot run here are said and left out)."""
    wanted = [g.strip() for g in args.generators.split(",") if g.strip()]
    for g in wanted:
        if g not in GENERATORS:
            raise SystemExit(f"--generators: unknown load generator {g!r} "
                             f"(one of {', '.join(GENERATORS)})")
    found = []
    for g in wanted:
        why = generator_available(g)
        if why:
            print(f"note: the {g} load generator cannot run ({why}); left out", flush=True)
        else:
            found.append(g)
    if not found:
        raise SystemExit("no load generator can run")
    if "c" in found:
        build_loadgen()
    return found


def py_args(args: Any) -> list[str]:
    """Return the options only the Python generator takes."""
    return ["--payload", args.py_payload, "--read", args.py_read]


def pick_servers(args: Any) -> tuple[ServerSpec | None, ServerSpec]:
    """Return (subject or None when it cannot run here, peer)."""
    global LEXICONS_APP
    LEXICONS_APP = Path(args.app).resolve()
    subject, peer = SERVERS[args.subject], SERVERS[args.peer]
    why = subject.available()
    if why:
        print(f"note: {subject.name} cannot run ({why}); measuring {peer.name} alone",
              flush=True)
        return None, peer
    return subject, peer



def alternate_rounds(subject: ServerSpec | None, peer: ServerSpec, rounds: int,
                     measure: Callable[[Server, str], dict[str, Any]],
                     on_report: Callable[[str, Server, int, str, dict[str, Any]], None],
                     gens: Sequence[str] = ("c",)) -> None:
    """Start both servers; each round, under each load generator, measure them in
    alternating order; always stop them."""
    servers: dict[str, Server] = {}
    try:
        for which, spec in (("subject", subject), ("peer", peer)):
            if spec is not None:
                servers[which] = Server(spec)
                servers[which].start()
        for r in range(rounds):
            for gen in gens:
                for which in order(r, list(servers)):
                    settle(list(servers.values()))
                    on_report(which, servers[which], r, gen, measure(servers[which], gen))
    finally:
        for server in servers.values():
            server.stop()

def run_rounds(subject: ServerSpec | None, peer: ServerSpec, p: Any, gens: Sequence[str],
               measure: Callable[[Server, str, Any], dict[str, Any]],
               metrics: Callable[[], list[Metric]],
               record: Callable[[list[Metric], str, dict[str, Any]], None],
               describe: Callable[[str, dict[str, Any]], str]) -> dict[str, list[Metric]]:
    """Run ``alternate_rounds`` under every load generator; return the table rows of each.

    Prints a line per measurement and writes the raw reports to ``p.json``.
    """
    rows, raw = {g: metrics() for g in gens}, []

    def on_report(which: str, server: Server, r: int, gen: str, rep: dict[str, Any]) -> None:
        record(rows[gen], which, rep)
        raw.append({"round": r, "server": server.spec.name, "generator": gen, **rep})
        print(f"round {r + 1} [{gen}] {describe(server.spec.name, rep)}", flush=True)

    alternate_rounds(subject, peer, p.rounds, lambda server, gen: measure(server, gen, p),
                     on_report, gens)
    dump_json(p.json, raw)
    return rows


def print_tables(gens: Sequence[str], title: Callable[[str], str], subject: ServerSpec | None,
                 peer: ServerSpec, p: Any, rows: dict[str, list[Metric]]) -> str:
    """Print (and return) one table per load generator."""
    return "\n".join(print_table(title(gen), column(subject, p.subject), peer.name, rows[gen])
                     for gen in gens)


def column(spec: ServerSpec | None, name: str) -> str:
    """Return a server's column title (marked when it could not run)."""
    return spec.name if spec is not None else f"{name} (not run)"


def dump_json(path: str | None, data: Any) -> None:
    """Write the raw reports to ``path`` when one was given."""
    if path:
        Path(path).write_text(json.dumps(data, indent=1))
