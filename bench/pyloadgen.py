"""A second, independent load generator: Python, asyncio on uvloop, picows clients.

It speaks to a server the way a Python program using a websocket client library does:
picows does the handshake and the framing, every received frame is decoded with
``json.loads`` as an application would, and payloads can be JSON objects (an int, a
float and strings, about --size bytes) instead of the C generator's marker strings. Its
command line and its JSON reports are those of ``loadgen.c`` (same modes, same options,
same report keys), so the drivers run either one:

    python bench/pyloadgen.py fanout --port P --conns 1000 --init TEXT --init-reply \
        --pub TEXT --msgs 2000 --window 0 --payload json --read frame
    python bench/pyloadgen.py calls --port P --conns 50 --call TEXT --payload json
    python bench/pyloadgen.py connect --port P --conns 10000   # holds until stdin closes

Its own options:

* ``--payload marker|json``: ``@DATA@`` (with the quotes around it) becomes the marker
  string ``"#S<seq>:T<ns>#xxx..."`` or the object
  ``{"seq": <int>, "t": <ns>, "price": <float>, "sym": "...", "note": "xxx..."}``.
* ``--read frame|burst``: a subscriber decodes each frame as picows hands it over
  (one message per receive, like ``await ws.recv()``), or collects the frames of one
  socket read and decodes them together when the read's last frame arrives.
* ``--window 0`` in fanout: no window; the publisher sends all --msgs broadcasts as fast
  as the server takes them (it stops only while its transport asks it to pause).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import resource
import sys
import time
from array import array
from typing import Any

import uvloop
from picows import WSFrame, WSListener, WSMsgType, WSTransport, ws_connect

MARKER = re.compile(r"#S(\d+):T(\d+)#")
_loads = json.loads
_now = time.monotonic_ns


def cpu_now() -> float:
    """Return this process's CPU time (user + system) in seconds."""
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


class Payloads:
    """Expand the call templates: @DATA@ becomes a marker string or a JSON object."""

    def __init__(self, kind: str, size: int):
        self.kind, self.size = kind, size

    def data(self, seq: int, ts: int, conn: int = 0) -> str:
        """Return the JSON text that replaces ``"@DATA@"``."""
        if self.kind == "json":
            head = f'{{"seq":{seq},"t":{ts},"price":{100 + seq % 997 / 8:.3f},' \
                   f'"sym":"C{conn % 1000:03d}","note":"'
            pad = max(0, self.size - len(head) - 2)
            return head + "x" * pad + '"}'
        marker = f"#S{seq}:T{ts}#"
        return '"' + marker + "x" * max(0, self.size - len(marker)) + '"'

    def expand(self, template: str, seq: int, ts: int, conn: int = 0) -> bytes:
        """Return the frame text of one call."""
        text = template.replace('"@DATA@"', self.data(seq, ts, conn))
        return text.replace("@SEQ@", str(seq)).replace("@CONN@", str(conn)).encode()


def find_data(message: Any) -> tuple[int, int] | None:
    """Return (seq, ns) from a decoded frame of either payload kind, or None."""
    item = message[0] if type(message) is list and message else message
    if type(item) is not dict:
        return None
    for key, value in item.items():
        if key == "#":
            continue
        if type(value) is dict:
            seq, ts = value.get("seq"), value.get("t")
            if type(seq) is int and type(ts) is int:
                return seq, ts
        elif type(value) is str:
            m = MARKER.search(value)
            if m:
                return int(m.group(1)), int(m.group(2))
    return None


def percentile(sorted_values: list[float], pct: float) -> float:
    """Return the pct-th percentile of already sorted values (0 when empty)."""
    if not sorted_values:
        return 0.0
    k = min(len(sorted_values) - 1, max(0, int(round(pct / 100 * len(sorted_values))) - 1))
    return sorted_values[k]


class Run:
    """What every mode shares: options, counters, connections, the common report."""

    def __init__(self, opt: argparse.Namespace):
        self.opt = opt
        self.url = f"ws://{opt.host}:{opt.port}{opt.path}"
        self.payloads = Payloads(opt.payload, opt.size)
        self.t_begin = time.monotonic()
        self.ready = self.failed = self.closed_by_server = 0
        self.other_frames = self.error_frames = self.binary_frames = 0
        self.frames_in = self.bytes_in = 0
        self.first_failure = ""
        self.sample_other = ""
        self.live: list[Client] = []
        self.run_cpu0 = self.run_t0 = 0.0
        self.run_cpu = self.run_wall = 0.0
        self.close_pending = 0
        self.closing = False

    def fail(self, why: str) -> None:
        """Count a failed connection; remember the first reason."""
        self.failed += 1
        if not self.first_failure:
            self.first_failure = why[:200]

    def note_other(self, payload: bytes) -> None:
        """Count a frame that carried no marker."""
        self.other_frames += 1
        if b'"Errors"' in payload:
            self.error_frames += 1
        if not self.sample_other:
            self.sample_other = payload[:200].decode("utf-8", "replace")

    async def open(self, n: int, factory: Any) -> tuple[list[Client], float]:
        """Open n connections, --inflight handshakes at a time; return them and the secs."""
        gate = asyncio.Semaphore(self.opt.inflight)
        t0 = time.monotonic()

        async def one(i: int) -> Client | None:
            async with gate:
                try:
                    _, client = await ws_connect(lambda: factory(i), self.url,
                                                 enable_auto_pong=True,
                                                 websocket_handshake_timeout=30)
                except Exception as exc:  # refused, reset, bad handshake: counted
                    self.fail(f"connection {i}: {type(exc).__name__}: {exc}")
                    return None
                if self.opt.init:
                    client.init_done = asyncio.get_running_loop().create_future()
                    client.transport.send(WSMsgType.TEXT, self.opt.init.encode())
                    if self.opt.init_reply:
                        try:
                            await asyncio.wait_for(client.init_done, 30)
                        except (TimeoutError, ConnectionError) as exc:
                            self.fail(f"connection {i}: no reply to --init ({exc!r})")
                            client.transport.disconnect()
                            return None
                self.ready += 1
                return client

        clients = [c for c in await asyncio.gather(*(one(i) for i in range(n))) if c]
        self.live = clients
        return clients, time.monotonic() - t0

    def running(self) -> None:
        """Say traffic starts (the driver samples the server's CPU time there)."""
        self.run_cpu0, self.run_t0 = cpu_now(), time.monotonic()
        print('{"event": "running"}', flush=True)

    def ran(self) -> None:
        """Traffic ended: keep how busy the load generator was meanwhile."""
        self.run_cpu = cpu_now() - self.run_cpu0
        self.run_wall = time.monotonic() - self.run_t0

    async def close_all(self, limit: float) -> float:
        """Send a close frame on every live connection; wait (bounded) for the server."""
        self.closing = True
        t0 = time.monotonic()
        live = [c for c in self.live if not c.transport.is_disconnected]
        for c in live:
            c.transport.send_close()
        waits = [asyncio.ensure_future(c.transport.wait_disconnected()) for c in live]
        if waits:
            done, pending = await asyncio.wait(waits, timeout=limit)
            self.close_pending = len(pending)
            for c in live:
                if not c.transport.is_disconnected:
                    c.transport.disconnect()
            for w in pending:
                w.cancel()
        return time.monotonic() - t0

    def common(self) -> dict[str, Any]:
        """Return the report fields every mode shares (as loadgen.c names them)."""
        cpu = cpu_now()
        rep = {"close_pending": self.close_pending, "conns": self.opt.conns,
               "ready": self.ready, "failed": self.failed,
               "closed_by_server": self.closed_by_server, "other_frames": self.other_frames,
               "error_frames": self.error_frames, "binary_frames": self.binary_frames,
               "frames_in": self.frames_in, "bytes_in": self.bytes_in, "reads": 0,
               "loadgen_cpu_s": round(cpu, 3),
               "loadgen_wall_s": round(time.monotonic() - self.t_begin, 3),
               "first_failure": self.first_failure, "sample_other": self.sample_other,
               "generator": "python", "payload": self.opt.payload, "read": self.opt.read}
        if self.run_wall > 0:
            rep["loadgen_busy"] = round(self.run_cpu / self.run_wall, 3)
        return rep


class Client(WSListener):
    """One connection: counts frames, hands decoded messages to ``on_message``."""

    def __init__(self, run: Run, idx: int):
        self.run = run
        self.idx = idx
        self.transport: WSTransport | None = None
        self.init_done: asyncio.Future | None = None
        self.burst = run.opt.read == "burst"
        self.pending: list[bytes] = []

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.transport = transport

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if not self.run.closing:
            self.run.closed_by_server += 1
            if not self.run.first_failure:
                self.run.first_failure = f"connection {self.idx} closed by the server"
        if self.init_done is not None and not self.init_done.done():
            self.init_done.set_exception(ConnectionError("closed before the init reply"))

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            payload = frame.get_payload_as_bytes()
            run = self.run
            run.frames_in += 1
            run.bytes_in += len(payload)
            if kind is WSMsgType.BINARY:
                run.binary_frames += 1
            if self.burst:
                self.pending.append(payload)
                if frame.last_in_buffer:
                    batch, self.pending = self.pending, []
                    for p in batch:
                        self.receive(p)
            else:
                self.receive(payload)
        elif kind is WSMsgType.CLOSE:
            transport.send_close(frame.get_close_code())
            transport.disconnect()

    def receive(self, payload: bytes) -> None:
        if self.init_done is not None and not self.init_done.done():
            self.init_done.set_result(payload)
            return
        try:
            message = _loads(payload)
        except ValueError:
            self.run.note_other(payload)
            return
        found = find_data(message)
        if found is None:
            self.run.note_other(payload)
        else:
            self.on_data(found[0], found[1], len(payload))

    def on_data(self, seq: int, ts: int, size: int) -> None:
        pass


# --- fanout -----------------------------------------------------------------------------


class Subscriber(Client):
    def __init__(self, run: FanOut, idx: int):
        super().__init__(run, idx)
        self.seen = bytearray(run.opt.msgs + 1)
        self.got = self.dup = self.ooo = self.maxseq = 0

    def on_data(self, seq: int, ts: int, size: int) -> None:
        run = self.run
        if not 0 < seq <= run.opt.msgs:
            run.note_other(b"sequence out of range")
            return
        if self.seen[seq]:
            self.dup += 1
            run.dups += 1
            return
        self.seen[seq] = 1
        self.got += 1
        if seq < self.maxseq:
            self.ooo += 1
        else:
            self.maxseq = seq
        now = _now()
        run.delivered += 1
        run.t_deliv_last = now
        run.frame_bytes += size
        if seq > run.opt.warmup_msgs:
            run.delivered_measured += 1
        run.lat.append((now - ts) / 1e3)
        run.progress(now)


class Publisher(Client):
    def __init__(self, run: FanOut, idx: int):
        super().__init__(run, idx)
        self.can_write = asyncio.Event()
        self.can_write.set()

    def pause_writing(self) -> None:
        self.can_write.clear()

    def resume_writing(self) -> None:
        self.can_write.set()


class FanOut(Run):
    def __init__(self, opt: argparse.Namespace):
        super().__init__(opt)
        self.sent = self.delivered = self.delivered_measured = self.dups = 0
        self.frame_bytes = 0
        self.t_pub_first = self.t_pub_warm = self.t_deliv_last = self.t_progress = 0
        self.lat: array = array("d")
        self.total = 0
        self.finished = asyncio.Event()
        self.room = asyncio.Event()

    def progress(self, now: int) -> None:
        self.t_progress = now
        if self.delivered >= self.total:
            self.finished.set()
        elif self.opt.window > 0 and not self.room.is_set():
            inflight = self.sent * self.n_subs - self.delivered
            if inflight < self.opt.window * self.n_subs:
                self.room.set()

    def publish(self, pub: Publisher) -> None:
        now = _now()
        self.sent += 1
        if self.sent == 1:
            self.t_pub_first = self.t_progress = now
        if self.sent == self.opt.warmup_msgs + 1:
            self.t_pub_warm = now
        pub.transport.send(WSMsgType.TEXT,
                           self.payloads.expand(self.opt.pub, self.sent, now, pub.idx))

    async def main(self) -> dict[str, Any]:
        opt = self.opt
        self.n_subs = opt.conns
        subs, open_secs = await self.open(opt.conns, lambda i: Subscriber(self, i))
        init, opt.init = opt.init, ""
        pubs, _ = await self.open(1, lambda i: Publisher(self, opt.conns))
        opt.init = init
        self.live = subs + pubs
        if len(subs) < opt.conns or not pubs:
            return {"mode": "fanout", "ok": False, **self.common()}
        pub = pubs[0]
        self.total = opt.msgs * len(subs)
        self.running()
        t_start = time.monotonic()
        stalled = False
        publisher = asyncio.ensure_future(self.drive(pub, t_start))
        while not self.finished.is_set():
            try:
                await asyncio.wait_for(self.finished.wait(), 0.2)
            except TimeoutError:
                pass
            if time.monotonic() - t_start > opt.timeout:
                break
            quiet_since = self.t_progress or int(t_start * 1e9)
            if self.sent and (_now() - quiet_since) / 1e9 > opt.quiet:
                stalled = True
                break
            if pub.transport.is_disconnected:
                break
        publisher.cancel()
        self.ran()
        close_secs = await self.close_all(2.0)
        lost = self.total - self.delivered
        t_from = self.t_pub_warm if opt.warmup_msgs > 0 and self.t_pub_warm else \
            self.t_pub_first
        span = (self.t_deliv_last - t_from) / 1e9 if self.t_deliv_last > t_from else 0
        lat = sorted(self.lat)
        gots = [s.got for s in subs]
        return {
            "mode": "fanout", "ok": lost == 0 and self.dups == 0 and not stalled,
            "subscribers": len(subs), "msgs": opt.msgs, "sent": self.sent,
            "rate_target": opt.rate, "window": opt.window, "deliveries": self.delivered,
            "expected": self.total, "lost": lost, "duplicates": self.dups,
            "out_of_order": sum(s.ooo for s in subs),
            "conns_with_loss": sum(g < opt.msgs for g in gots),
            "conns_with_dup": sum(s.dup > 0 for s in subs),
            "conns_out_of_order": sum(s.ooo > 0 for s in subs),
            "min_per_conn": min(gots), "max_per_conn": max(gots), "stalled": stalled,
            "deliveries_per_s": round(self.delivered_measured / span, 1) if span else 0,
            "measured_deliveries": self.delivered_measured, "measured_secs": round(span, 4),
            "run_secs": round(self.run_wall, 4), "open_secs": round(open_secs, 4),
            "close_secs": round(close_secs, 4),
            "p50_us": percentile(lat, 50), "p90_us": percentile(lat, 90),
            "p99_us": percentile(lat, 99), "p999_us": percentile(lat, 99.9),
            "max_us": lat[-1] if lat else 0,
            "mean_us": sum(lat) / len(lat) if lat else 0,
            "avg_frame_bytes": self.frame_bytes / max(1, self.delivered), **self.common()}

    async def drive(self, pub: Publisher, t_start: float) -> None:
        opt = self.opt
        if opt.rate > 0:
            while self.sent < opt.msgs:
                due = int((time.monotonic() - t_start) * opt.rate) + 1
                while self.sent < min(due, opt.msgs):
                    self.publish(pub)
                await asyncio.sleep(max(0.0, t_start + self.sent / opt.rate
                                        - time.monotonic()))
        elif opt.window > 0:
            while self.sent < opt.msgs:
                while self.sent < opt.msgs and \
                        self.sent * self.n_subs - self.delivered < opt.window * self.n_subs:
                    self.publish(pub)
                self.room.clear()
                await self.room.wait()
        else:  # as fast as the server takes them
            while self.sent < opt.msgs:
                await pub.can_write.wait()
                self.publish(pub)
                if self.sent % 16 == 0:
                    await asyncio.sleep(0)


# --- calls ------------------------------------------------------------------------------


class Caller(Client):
    def __init__(self, run: Calls, idx: int):
        super().__init__(run, idx)
        self.cseq = 0
        self.sent_ns = 0
        self.waiting = False

    def call(self) -> None:
        run = self.run
        if run.stop:
            return
        self.cseq += 1
        self.sent_ns = _now()
        self.waiting = True
        self.transport.send(WSMsgType.TEXT,
                            run.payloads.expand(run.opt.call, self.cseq, self.sent_ns,
                                                self.idx))

    def on_data(self, seq: int, ts: int, size: int) -> None:
        if not self.waiting or seq != self.cseq:
            self.run.note_other(b"an answer for another call")
            return
        self.waiting = False
        now = _now()
        run = self.run
        run.calls += 1
        run.frame_bytes += size
        if run.measure_from <= self.sent_ns and now <= run.measure_to:
            run.measured += 1
            run.lat.append((now - self.sent_ns) / 1e3)
        self.call()


class Calls(Run):
    def __init__(self, opt: argparse.Namespace):
        super().__init__(opt)
        self.calls = self.measured = self.frame_bytes = 0
        self.measure_from = self.measure_to = 0
        self.stop = False
        self.lat: array = array("d")

    async def main(self) -> dict[str, Any]:
        opt = self.opt
        clients, open_secs = await self.open(opt.conns, lambda i: Caller(self, i))
        if len(clients) < opt.conns:
            return {"mode": "calls", "ok": False, **self.common()}
        self.running()
        start = _now()
        self.measure_from = start + int(opt.warmup * 1e9)
        self.measure_to = self.measure_from + int(opt.duration * 1e9)
        for c in clients:
            c.call()
        await asyncio.sleep(opt.warmup + opt.duration)
        self.stop = True
        self.ran()
        drain = time.monotonic()
        while any(c.waiting and not c.transport.is_disconnected for c in clients) and \
                time.monotonic() - drain < 2:
            await asyncio.sleep(0.02)
        close_secs = await self.close_all(2.0)
        lat = sorted(self.lat)
        return {
            "mode": "calls", "ok": self.failed == 0 and self.closed_by_server == 0,
            "clients": len(clients), "calls": self.calls, "measured_calls": self.measured,
            "duration": opt.duration, "warmup": opt.warmup,
            "calls_per_s": round(self.measured / opt.duration, 1),
            "open_secs": round(open_secs, 4), "close_secs": round(close_secs, 4),
            "p50_us": percentile(lat, 50), "p90_us": percentile(lat, 90),
            "p99_us": percentile(lat, 99), "p999_us": percentile(lat, 99.9),
            "max_us": lat[-1] if lat else 0, "mean_us": sum(lat) / len(lat) if lat else 0,
            "avg_frame_bytes": self.frame_bytes / max(1, self.calls), **self.common()}


# --- connect ----------------------------------------------------------------------------


class Connect(Run):
    async def main(self) -> dict[str, Any]:
        opt = self.opt
        clients, open_secs = await self.open(opt.conns, lambda i: Client(self, i))
        print(json.dumps({"mode": "connect", "event": "ready", "ok": self.ready == opt.conns,
                          "open_secs": round(open_secs, 4),
                          "per_s": round(self.ready / open_secs, 1) if open_secs else 0,
                          **self.common()}), flush=True)
        loop = asyncio.get_running_loop()
        held_from = time.monotonic()
        await loop.run_in_executor(None, sys.stdin.read)  # hold until stdin closes
        held = time.monotonic() - held_from
        dropped = sum(c.transport.is_disconnected for c in clients)
        close_secs = await self.close_all(10.0)
        return {"mode": "connect", "event": "closed",
                "ok": self.ready == opt.conns and dropped == 0, "held_secs": round(held, 3),
                "dropped_while_held": dropped, "close_secs": round(close_secs, 4),
                **self.common()}


MODES = {"fanout": FanOut, "calls": Calls, "connect": Connect}


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("mode", choices=sorted(MODES))
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--path", default="/")
    parser.add_argument("--conns", type=int, default=1000)
    parser.add_argument("--init", default="")
    parser.add_argument("--init-reply", action="store_true")
    parser.add_argument("--pub", default="")
    parser.add_argument("--call", default="")
    parser.add_argument("--msgs", type=int, default=2000)
    parser.add_argument("--rate", type=float, default=0)
    parser.add_argument("--window", type=int, default=0)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--warmup-msgs", type=int, default=0)
    parser.add_argument("--duration", type=float, default=5)
    parser.add_argument("--warmup", type=float, default=1)
    parser.add_argument("--inflight", type=int, default=100)
    parser.add_argument("--quiet", type=float, default=3)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--cpu", type=int, default=-1)
    parser.add_argument("--payload", choices=("marker", "json"), default="json")
    parser.add_argument("--read", choices=("frame", "burst"), default="frame")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    opt = parse(sys.argv[1:] if argv is None else argv)
    if opt.cpu >= 0:
        try:
            os.sched_setaffinity(0, {opt.cpu})
        except OSError as exc:
            print(f"pyloadgen: cannot pin to cpu {opt.cpu}: {exc}", file=sys.stderr)
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    report = uvloop.run(MODES[opt.mode](opt).main())
    print(json.dumps(report), flush=True)
    return 0 if report.get("ok") else 2


if __name__ == "__main__":
    raise SystemExit(main())
