"""Measure idle connections: memory per connection and the time to open them.

For each server and round, a fresh server is started and warmed up (--warm connections
opened and closed, so lazy imports and first-use caches are not charged to the
connections); its resident memory (RSS, with any child processes) is read, then --conns
connections are opened (at most --inflight handshakes at a time) and held idle for
--settle seconds before the RSS is read again:

    memory per connection = (RSS with the connections - RSS before) / connections

The load generator then closes them all at once, while a probe times how long the server
takes to answer a new handshake during that disconnect storm (DESIGN.md section 10: it
must not stall the server). The server's CPU time from then until a second after the last
close, per connection, is the steadier figure: the wall time of the storm is often the
load generator's own. Target (DESIGN.md section 9): 10,000 connections at 25 KB or
less each.

    python bench/bench_connections.py [--quick] [--conns 10000] [--peer websockets]
"""
from __future__ import annotations

import argparse
import math
import time
from typing import Any

import harness
from harness import SUBSCRIBE, Metric, Server, ServerSpec, held_connections

TARGET_KB = 25.0


def settle_rss(server: Server, secs: float) -> int:
    """Wait ``secs`` and return the server's RSS (KiB), the last of a few samples."""
    end = time.monotonic() + secs
    rss = server.rss_kb()
    while time.monotonic() < end:
        time.sleep(0.25)
        rss = server.rss_kb()
    return rss


def measure(spec: ServerSpec, gen: str, p: argparse.Namespace) -> dict[str, Any]:
    """Start a fresh server, open and hold the connections with load generator ``gen``,
    return the figures."""
    open_args = ["--inflight", str(p.inflight)]
    if p.subscribe:
        open_args += ["--init", SUBSCRIBE, "--init-reply"]
    with Server(spec) as server:
        with held_connections(server.port, ["--conns", str(p.warm), *open_args], 60,
                              generator=gen):
            pass
        before = settle_rss(server, 1.0)
        threads_before = server.threads()
        with held_connections(server.port, ["--conns", str(p.conns), *open_args],
                              p.timeout, generator=gen) as (ready, final):
            held = settle_rss(server, p.settle)
            threads_held = server.threads()
            alive_held = server.alive()
            probe = harness.Probe(harness.HOST, server.port).start()  # as the clients leave
            cpu_before_close = server.cpu_seconds()
        answer_secs = probe.result()
        after = settle_rss(server, 1.0)
        close_cpu = server.cpu_seconds() - cpu_before_close
        if not server.alive():
            raise RuntimeError(f"{spec.name} died:\n{server.log_tail()}")
    return {
        "server": spec.name, "generator": gen, "conns": p.conns, "opened": ready["ready"],
        "failed": ready["failed"], "first_failure": ready["first_failure"],
        "open_secs": ready["open_secs"], "open_per_s": ready["per_s"],
        "close_secs": final.get("close_secs"), "close_pending": final.get("close_pending"),
        "dropped_while_held":
        final.get("dropped_while_held"), "rss_before_kb": before, "rss_held_kb": held,
        "rss_after_close_kb": after, "threads_before": threads_before,
        "threads_held": threads_held, "alive_held": alive_held,
        "answer_during_close_secs": answer_secs,
        "close_cpu_us": close_cpu * 1e6 / max(1, ready["ready"]),
        "kb_per_conn": (held - before) / max(1, ready["ready"]),
    }


def metrics() -> list[Metric]:
    """Return the rows of the connections table."""
    return [
        Metric("memory per connection", "KB", fmt="{:.1f}", target=f"<= {TARGET_KB:g} KB",
               check=lambda s, p, r: s <= TARGET_KB),
        Metric("time to open", "s", fmt="{:.2f}"),
        Metric("connections opened/s", "", fmt="{:,.0f}"),
        Metric("server closes all", "s", fmt="{:.2f}", target="<= 1.2x",
               check=lambda s, p, r: r is not None and r <= 1.2),
        Metric("server CPU per close", "us", fmt="{:.0f}"),
        Metric("left open after 10 s", "", fmt="{:,.0f}"),
        Metric("answers during mass close", "s", fmt="{:.2f}"),  # never: not within 30 s
        Metric("RSS held", "MB", fmt="{:.0f}"),
        Metric("threads held", "", fmt="{:.0f}"),
        Metric("refused or dropped", "", target="0", check=lambda s, p, r: s == 0),
    ]


def record(rows: list[Metric], which: str, rep: dict[str, Any]) -> None:
    """Add one round's figures for ``which`` to the table rows."""
    bad = rep["failed"] + (rep["dropped_while_held"] or 0)
    answer = rep["answer_during_close_secs"]
    values = [rep["kb_per_conn"], rep["open_secs"], rep["open_per_s"], rep["close_secs"] or 0,
              rep["close_cpu_us"], rep["close_pending"] or 0,
              math.inf if answer is None else answer,
              rep["rss_held_kb"] / 1024, rep["threads_held"], bad]
    for row, value in zip(rows, values, strict=True):
        row.add(which, value)


def describe(rep: dict[str, Any]) -> str:
    """Return a one-line summary of a round."""
    line = (f"{rep['server']}: {rep['opened']:,}/{rep['conns']:,} open in "
            f"{rep['open_secs']:.2f} s, RSS {rep['rss_before_kb'] / 1024:.0f} -> "
            f"{rep['rss_held_kb'] / 1024:.0f} MB ({rep['kb_per_conn']:.1f} KB each), "
            f"{rep['rss_after_close_kb'] / 1024:.0f} MB after they left; server closed them in "
            f"{rep['close_secs'] or 0:.2f} s ({rep['close_pending'] or 0} left open) with "
            f"{rep['close_cpu_us']:.0f} us of CPU each; a new "
            f"handshake answered after {answer_text(rep['answer_during_close_secs'])}; "
            f"threads {rep['threads_before']} -> {rep['threads_held']}")
    if rep["failed"] or rep["dropped_while_held"]:
        line += (f"\n  failed {rep['failed']}, dropped while held "
                 f"{rep['dropped_while_held']}: {rep['first_failure']}")
    return line


def answer_text(secs: float | None) -> str:
    """Return the probe's figure as text."""
    return "no answer within 30 s" if secs is None else f"{secs:.2f} s"


def main(argv: list[str] | None = None) -> str:
    """Run the connections benchmark; print and return the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_args(parser)
    parser.add_argument("--conns", type=int, default=10000)
    parser.add_argument("--warm", type=int, default=200,
                        help="connections opened and closed before the baseline")
    parser.add_argument("--inflight", type=int, default=100,
                        help="handshakes in progress at once while opening")
    parser.add_argument("--settle", type=float, default=None,
                        help="seconds to hold before reading the RSS (default 2, quick 1)")
    parser.add_argument("--subscribe", action="store_true",
                        help="also subscribe every connection to the bench channel")
    parser.add_argument("--timeout", type=float, default=120)
    p = parser.parse_args(argv)
    p.rounds = p.rounds or (1 if p.quick else 2)
    p.settle = p.settle or (1 if p.quick else 2)
    harness.install_cleanup()
    harness.raise_nofile(p.conns + 256)
    gens = harness.generators(p)
    subject, peer = harness.pick_servers(p)
    names = {"subject": subject, "peer": peer}
    rows, raw = {g: metrics() for g in gens}, []
    for r in range(p.rounds):
        for gen in gens:
            for which in harness.order(r, [k for k, v in names.items() if v is not None]):
                rep = measure(names[which], gen, p)
                record(rows[gen], which, rep)
                raw.append({"round": r, **rep})
                print(f"round {r + 1} [{gen}] {describe(rep)}", flush=True)
    harness.dump_json(p.json, raw)

    def title(gen: str) -> str:
        return (f"idle connections [{harness.GENERATORS[gen]}]: {p.conns:,} at once "
                f"({p.inflight} handshakes in flight"
                f"{', subscribed' if p.subscribe else ''}); median of {p.rounds}")

    return harness.print_tables(gens, title, subject, peer, p, rows)

if __name__ == "__main__":
    main()
