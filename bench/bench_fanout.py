"""Measure broadcast fan-out: N subscribers on one channel, one publisher.

Two phases per server and round, with the same load generator and parameters:

1. throughput: the publisher keeps --window broadcasts in flight (a broadcast is in
   flight until every subscriber has it) and sends --msgs of them; deliveries/s is
   measured after the first 10% (warm-up). Latency here is mostly queueing
   (Little's law: window x subscribers / throughput), so it is shown but not judged.
2. latency: the publisher sends --rate broadcasts/s for --secs seconds, a load both
   servers sustain; p50/p99 are the time from the publish call to each delivery.

Loss, duplicates and reordering are checked per subscriber in both phases.
Target (DESIGN.md section 9): at least 2x the peer's deliveries/s, p99 lower, zero loss.

    python bench/bench_fanout.py [--quick] [--subscribers 1000] [--peer websockets]
"""
from __future__ import annotations

import argparse
from typing import Any

import harness
from harness import PUBLISH, SUBSCRIBE, Metric, Server, loadgen

TARGET_RATIO = 2.0


def measure(server: Server, gen: str, p: argparse.Namespace) -> dict[str, Any]:
    """Run both phases against one server under load generator ``gen``; return the
    load generator reports."""
    base = ["--conns", str(p.subscribers), "--init", SUBSCRIBE, "--init-reply",
            "--pub", PUBLISH, "--size", str(p.size), "--quiet", str(p.quiet)]
    msgs, window = p.msgs, p.window
    if gen == "py":
        base += harness.py_args(p)
        msgs, window = p.py_msgs, p.py_window
    cpu: dict[str, float] = {}

    def mark() -> None:
        cpu["start"] = server.cpu_seconds()

    thr = loadgen("fanout", server.port,
                  [*base, "--msgs", str(msgs), "--warmup-msgs", str(msgs // 10),
                   "--window", str(window)], timeout=p.timeout, on_running=mark,
                  generator=gen)
    thr["server_cpu_s"] = server.cpu_seconds() - cpu.get("start", 0.0)
    server.wait_idle()
    n = max(1, int(p.rate * p.secs))
    lat = loadgen("fanout", server.port,
                  [*base, "--msgs", str(n), "--warmup-msgs", str(n // 10),
                   "--rate", str(p.rate)], timeout=p.timeout, generator=gen)
    if not server.alive():
        raise RuntimeError(f"{server.spec.name} died:\n{server.log_tail()}")
    return {"throughput": thr, "latency": lat}


def metrics() -> list[Metric]:
    """Return the rows of the fan-out table."""
    return [
        Metric("deliveries/s", "", target=f">= {TARGET_RATIO:g}x",
               check=lambda s, p, r: r is not None and r >= TARGET_RATIO),
        Metric("server CPU per delivery", "us", fmt="{:.2f}"),
        Metric("p50 at fixed rate", "ms", fmt="{:.2f}"),
        Metric("p99 at fixed rate", "ms", fmt="{:.2f}", target="lower",
               check=lambda s, p, r: r is not None and r < 1.0),
        Metric("p50 saturated", "ms", fmt="{:.1f}"),
        Metric("p99 saturated", "ms", fmt="{:.1f}"),
        Metric("lost + duplicated", "", target="0", check=lambda s, p, r: s == 0),
        Metric("delivered frame", "bytes", fmt="{:.0f}"),
    ]


def record(rows: list[Metric], which: str, rep: dict[str, Any]) -> None:
    """Add one round's reports for ``which`` to the table rows."""
    thr, lat = rep["throughput"], rep["latency"]
    bad = sum(r["lost"] + r["duplicates"] for r in (thr, lat))
    # the CPU sample starts at "running": the whole throughput phase, warm-up included
    cpu_us = thr["server_cpu_s"] * 1e6 / max(1, thr["deliveries"])
    values = [thr["deliveries_per_s"], cpu_us, lat["p50_us"] / 1e3, lat["p99_us"] / 1e3,
              thr["p50_us"] / 1e3, thr["p99_us"] / 1e3, bad, thr["avg_frame_bytes"]]
    for row, value in zip(rows, values, strict=True):
        row.add(which, value)


def describe(name: str, rep: dict[str, Any]) -> str:
    """Return a one-line summary of a round (loss details, failures, sample frames)."""
    thr, lat = rep["throughput"], rep["latency"]
    parts = [f"{name}: {thr['deliveries_per_s']:,.0f} deliveries/s "
             f"({thr['deliveries']:,}/{thr['expected']:,} in {thr['measured_secs']:.2f} s, "
             f"server CPU {thr['server_cpu_s']:.2f} s, load generator busy "
             f"{thr.get('loadgen_busy', 0):.0%})"
             f", fixed rate p50/p99 {lat['p50_us'] / 1e3:.2f}/{lat['p99_us'] / 1e3:.2f} ms"]
    if thr.get("loadgen_busy", 0) > harness.LOADGEN_BUSY:
        parts.append("  warning: the load generator used most of its core; this figure may "
                     "be its limit, not the server's")
    for phase, r in (("throughput", thr), ("latency", lat)):
        if r["lost"] or r["duplicates"] or r["out_of_order"] or r["failed"] or r["stalled"]:
            parts.append(f"  {phase}: lost {r['lost']} (on {r['conns_with_loss']} conns), "
                         f"dup {r['duplicates']}, out of order {r['out_of_order']}, "
                         f"failed {r['failed']}, stalled {r['stalled']}: "
                         f"{r['first_failure']}")
        if r["other_frames"]:
            parts.append(f"  {phase}: {r['other_frames']} frames without a marker, e.g. "
                         f"{r['sample_other'][:120]}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> str:
    """Run the fan-out benchmark; print and return the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_args(parser)
    parser.add_argument("--subscribers", type=int, default=1000)
    parser.add_argument("--msgs", type=int, default=None,
                        help="broadcasts in the throughput phase (default 1000, quick 300)")
    parser.add_argument("--window", type=int, default=8,
                        help="broadcasts in flight in the throughput phase")
    parser.add_argument("--py-msgs", type=int, default=None,
                        help="broadcasts of the Python generator's throughput phase "
                             "(default 2000, quick 300)")
    parser.add_argument("--py-window", type=int, default=0,
                        help="the Python generator's window (default 0: every broadcast "
                             "sent as fast as the server takes them)")
    parser.add_argument("--rate", type=float, default=20,
                        help="broadcasts/s in the latency phase")
    parser.add_argument("--secs", type=float, default=None,
                        help="length of the latency phase (default 3, quick 2)")
    parser.add_argument("--size", type=int, default=84,
                        help="bytes of the data string (84: a 100-byte frame from the peer)")
    parser.add_argument("--quiet", type=float, default=10,
                        help="seconds without a delivery before a phase gives up (stalled)")
    parser.add_argument("--timeout", type=float, default=180)
    p = parser.parse_args(argv)
    p.rounds = p.rounds or (1 if p.quick else 3)
    p.msgs = p.msgs or (300 if p.quick else 1000)
    p.py_msgs = p.py_msgs or (300 if p.quick else 2000)
    p.secs = p.secs or (2 if p.quick else 3)
    harness.install_cleanup()
    harness.raise_nofile(p.subscribers + 64)
    gens = harness.generators(p)
    subject, peer = harness.pick_servers(p)
    rows = harness.run_rounds(subject, peer, p, gens, measure, metrics, record, describe)

    def title(gen: str) -> str:
        if gen == "py":
            load = (f"{p.py_msgs} broadcasts, "
                    + (f"window {p.py_window}" if p.py_window else "no window")
                    + f", {p.py_payload} payloads, read {p.py_read}")
        else:
            load = f"{p.msgs} broadcasts, window {p.window}"
        return (f"fan-out [{harness.GENERATORS[gen]}]: {p.subscribers} subscribers, {load}; "
                f"latency at {p.rate:g} broadcasts/s for {p.secs:g} s; median of {p.rounds}")

    return harness.print_tables(gens, title, subject, peer, p, rows)

if __name__ == "__main__":
    main()
