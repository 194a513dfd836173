"""Measure request/response round trips: C clients each calling Echo in a closed loop.

Each client sends ``{"Echo": {"data": ...}}``, waits for the reply carrying its own
marker, and sends the next call at once. After --warmup seconds, completed calls are
counted for --duration seconds: calls/s and the latency p50/p99 of those calls.
Target (DESIGN.md section 9): at least 1.2x the peer's calls/s.

    python bench/bench_calls.py [--quick] [--clients 50] [--peer websockets]
"""
from __future__ import annotations

import argparse
from typing import Any

import harness
from harness import ECHO, Metric, Server, loadgen

TARGET_RATIO = 1.2


def measure(server: Server, gen: str, p: argparse.Namespace) -> dict[str, Any]:
    """Run the closed loop against one server under load generator ``gen``; return its
    report."""
    cpu: dict[str, float] = {}

    def mark() -> None:
        cpu["start"] = server.cpu_seconds()

    rep = loadgen("calls", server.port,
                  ["--conns", str(p.clients), "--call", ECHO, "--size", str(p.size),
                   "--duration", str(p.duration), "--warmup", str(p.warmup),
                   *(harness.py_args(p) if gen == "py" else [])],
                  timeout=p.duration + p.warmup + 60, on_running=mark, generator=gen)
    # warm-up and drain included: CPU per call is an estimate, good for ratios
    rep["server_cpu_s"] = server.cpu_seconds() - cpu.get("start", 0.0)
    if not server.alive():
        raise RuntimeError(f"{server.spec.name} died:\n{server.log_tail()}")
    return rep


def metrics() -> list[Metric]:
    """Return the rows of the calls table."""
    return [
        Metric("calls/s", "", target=f">= {TARGET_RATIO:g}x",
               check=lambda s, p, r: r is not None and r >= TARGET_RATIO),
        Metric("server CPU per call", "us", fmt="{:.1f}"),
        Metric("p50", "ms", fmt="{:.2f}"),
        Metric("p99", "ms", fmt="{:.2f}", target="<= 1.0x",
               check=lambda s, p, r: r is not None and r <= 1.0),
        Metric("errors", "", target="0", check=lambda s, p, r: s == 0),
    ]


def record(rows: list[Metric], which: str, rep: dict[str, Any]) -> None:
    """Add one round's report for ``which`` to the table rows."""
    cpu_per_call = rep["server_cpu_s"] * 1e6 / max(1, rep["calls"])
    errors = rep["error_frames"] + rep["failed"] + rep["closed_by_server"]
    values = [rep["calls_per_s"], cpu_per_call, rep["p50_us"] / 1e3, rep["p99_us"] / 1e3,
              errors]
    for row, value in zip(rows, values, strict=True):
        row.add(which, value)


def describe(name: str, rep: dict[str, Any]) -> str:
    """Return a one-line summary of a round."""
    parts = [f"{name}: {rep['calls_per_s']:,.0f} calls/s ({rep['measured_calls']:,} in "
             f"{rep['duration']:g} s), p50/p99 {rep['p50_us'] / 1e3:.2f}/"
             f"{rep['p99_us'] / 1e3:.2f} ms, server CPU {rep['server_cpu_s']:.2f} s, "
             f"load generator busy {rep.get('loadgen_busy', 0):.0%}"]
    if rep.get("loadgen_busy", 0) > harness.LOADGEN_BUSY:
        parts.append("  warning: the load generator used most of its core; this figure may "
                     "be its limit, not the server's")
    if rep["failed"] or rep["closed_by_server"] or rep["first_failure"]:
        parts.append(f"  failed {rep['failed']}, closed by server {rep['closed_by_server']}: "
                     f"{rep['first_failure']}")
    if rep["other_frames"]:
        parts.append(f"  {rep['other_frames']} frames without a marker, e.g. "
                     f"{rep['sample_other'][:120]}")
    return "\n".join(parts)


def main(argv: list[str] | None = None) -> str:
    """Run the calls benchmark; print and return the table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    harness.common_args(parser)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--duration", type=float, default=None,
                        help="measured seconds (default 5, quick 2)")
    parser.add_argument("--warmup", type=float, default=None,
                        help="seconds before measuring (default 1, quick 0.5)")
    parser.add_argument("--size", type=int, default=64, help="bytes of the echoed data")
    p = parser.parse_args(argv)
    p.rounds = p.rounds or (1 if p.quick else 3)
    p.duration = p.duration or (2 if p.quick else 5)
    p.warmup = p.warmup or (0.5 if p.quick else 1)
    harness.install_cleanup()
    harness.raise_nofile(p.clients + 64)
    gens = harness.generators(p)
    subject, peer = harness.pick_servers(p)
    rows = harness.run_rounds(subject, peer, p, gens, measure, metrics, record, describe)

    def title(gen: str) -> str:
        payload = f", {p.py_payload} payloads" if gen == "py" else ""
        return (f"calls [{harness.GENERATORS[gen]}]: {p.clients} clients, Echo round trips"
                f"{payload}, {p.duration:g} s after {p.warmup:g} s warm-up; "
                f"median of {p.rounds}")

    return harness.print_tables(gens, title, subject, peer, p, rows)

if __name__ == "__main__":
    main()
