"""Measure what channel history costs: fan-out with history against without, and recovery.

Two lexicons servers run side by side, the same bench/app.py: the subject's channel
``bench`` keeps a history of 1000 publications (``BENCH_HISTORY=1000``), the peer's
keeps none. Per round and server:

1. fan-out, as bench_fanout.py measures it (1000 subscribers, throughput then fixed-rate
   latency); target: deliveries/s with history at least 0.8x of those without;
2. on the history server only, recovery: a client that saw offset N subscribes again
   with ``recover`` after 1000 publications it missed; the time from sending the
   Subscribe to having all 1000 and the answer. Target: under 50 ms.

    python bench/bench_history.py [--quick] [--subscribers 1000]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from typing import Any

import bench_fanout
import harness
from harness import CHANNEL, SERVERS, Metric, Server, ServerSpec

TARGET_RATIO = 0.8
TARGET_RECOVERY_MS = 50.0
MISSED = 1000

HISTORY = ServerSpec(
    "lexicons-history", "lexicons (bench/app.py), channel bench keeping 1000 publications",
    lambda port, tmp: SERVERS["lexicons"].argv(port, tmp),
    lambda port, tmp: {**SERVERS["lexicons"].env(port, tmp), "BENCH_HISTORY": str(MISSED)})


def recovery_ms(port: int, tries: int) -> list[float]:
    """Return the milliseconds each of *tries* recoveries of MISSED publications took."""
    from websockets.sync.client import connect

    url = f"ws://{harness.HOST}:{port}/"
    times = []
    with connect(url, compression=None, max_size=None) as sub, \
            connect(url, compression=None) as pub:
        for _ in range(tries):
            sub.send(json.dumps({"Subscribe": {"channel": CHANNEL}, "#": 1}))
            position = json.loads(sub.recv(timeout=10))[0]["Subscribe"]
            sub.send(json.dumps({"Unsubscribe": {"channel": CHANNEL}, "#": 2}))
            sub.recv(timeout=10)
            for n in range(MISSED):
                pub.send(json.dumps({"Publish": {"channel": CHANNEL, "data": f"m{n}"},
                                     "#": n}))
            for _ in range(MISSED):
                pub.recv(timeout=10)
            recover = {"offset": position["offset"], "epoch": position["epoch"]}
            started = time.perf_counter()
            sub.send(json.dumps({"Subscribe": {"channel": CHANNEL, "recover": recover},
                                 "#": 3}))
            got = 0
            while True:
                item = json.loads(sub.recv(timeout=10))[0]
                if "Subscribe" in item:
                    break
                got += 1
            times.append((time.perf_counter() - started) * 1e3)
            answer = item["Subscribe"]
            if not answer.get("recovered") or got != MISSED:
                raise RuntimeError(f"recovery failed: {got} of {MISSED}, answer {answer}")
            sub.send(json.dumps({"Unsubscribe": {"channel": CHANNEL}, "#": 4}))
            sub.recv(timeout=10)
    return times


def main(argv: list[str] | None = None) -> str:
    """Run the history benchmark; print and return the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_args(parser)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--msgs", type=int, default=None)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument("--rate", type=float, default=20)
    parser.add_argument("--secs", type=float, default=None)
    parser.add_argument("--size", type=int, default=84)
    parser.add_argument("--quiet", type=float, default=10)
    parser.add_argument("--timeout", type=float, default=180)
    parser.add_argument("--tries", type=int, default=None,
                        help="recoveries per round (default 10, quick 5)")
    p = parser.parse_args(argv)
    p.rounds = p.rounds or (1 if p.quick else 3)
    p.msgs = p.msgs or (300 if p.quick else 1000)
    p.secs = p.secs or (2 if p.quick else 3)
    p.tries = p.tries or (5 if p.quick else 10)
    harness.install_cleanup()
    harness.raise_nofile(p.subscribers + 64)
    harness.build_loadgen()
    harness.pick_servers(p)  # --app
    plain = SERVERS["lexicons"]
    rows = bench_fanout.metrics()
    rows[0] = Metric("deliveries/s", "", target=f">= {TARGET_RATIO:g}x",
                     check=lambda s, q, r: r is not None and r >= TARGET_RATIO)
    rows[3] = Metric("p99 at fixed rate", "ms", fmt="{:.2f}")
    recovery = Metric(f"recover {MISSED} missed", "ms", fmt="{:.1f}",
                      target=f"< {TARGET_RECOVERY_MS:g} ms",
                      check=lambda s, q, r: s < TARGET_RECOVERY_MS)
    raw: list[dict[str, Any]] = []

    def measure(server: Server) -> dict[str, Any]:
        report = bench_fanout.measure(server, p)
        if server.spec is HISTORY:
            server.wait_idle()
            report["recovery_ms"] = recovery_ms(server.port, p.tries)
        return report

    def on_report(which: str, server: Server, r: int, rep: dict[str, Any]) -> None:
        bench_fanout.record(rows, which, rep)
        line = bench_fanout.describe(server.spec.name, rep)
        if "recovery_ms" in rep:
            recovery.add(which, statistics.median(rep["recovery_ms"]))
            line += (f"\n  recovery of {MISSED}: "
                     f"{', '.join(f'{t:.1f}' for t in rep['recovery_ms'])} ms")
        raw.append({"round": r, "server": server.spec.name, **rep})
        print(f"round {r + 1} {line}", flush=True)

    harness.alternate_rounds(HISTORY, plain, p.rounds, measure, on_report)
    harness.dump_json(p.json, raw)
    title = (f"history: fan-out to {p.subscribers} subscribers with a 1000-publication "
             f"history against none, and recovery of {MISSED} missed; median of {p.rounds}")
    return harness.print_table(title, HISTORY.name, plain.name, [*rows, recovery])


if __name__ == "__main__":
    main()
