"""Run the whole benchmark suite (fan-out, calls, idle connections) and print every table.

Options given here are passed to each driver: --quick, --subject, --peer, --rounds,
and --json DIR (one raw report file per benchmark in that directory).

    python bench/run_all.py [--quick] [--peer websockets-threaded]
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import bench_calls
import bench_connections
import bench_fanout
import harness

SUITE = (("fanout", bench_fanout), ("calls", bench_calls), ("connections", bench_connections))


def main(argv: list[str] | None = None) -> int:
    """Run every benchmark in turn; print the tables together at the end."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a short run")
    parser.add_argument("--subject", default="lexicons", choices=sorted(harness.SERVERS))
    parser.add_argument("--peer", default="websockets", choices=sorted(harness.SERVERS))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--only", default="", help="comma-separated: fanout,calls,connections")
    parser.add_argument("--json", metavar="DIR", help="write raw reports into DIR")
    parser.add_argument("--generators", default="c,py",
                        help="load generators, comma-separated (default c,py)")
    parser.add_argument("--app", metavar="PATH", default=str(harness.LEXICONS_APP),
                        help="the lexicons application to run (default bench/app.py)")
    p = parser.parse_args(argv)
    wanted = {name for name in p.only.split(",") if name} or {name for name, _ in SUITE}
    tables, started = [], time.monotonic()
    for name, module in SUITE:
        if name not in wanted:
            continue
        args = ["--subject", p.subject, "--peer", p.peer, "--app", p.app,
                "--generators", p.generators]
        if p.quick:
            args.append("--quick")
        if p.rounds:
            args += ["--rounds", str(p.rounds)]
        if p.json:
            Path(p.json).mkdir(parents=True, exist_ok=True)
            args += ["--json", str(Path(p.json) / f"{name}.json")]
        print(f"\n### {name}", flush=True)
        tables.append(module.main(args))
    print(f"\n\n######## summary ({time.monotonic() - started:.0f} s; ratio = "
          f"{p.subject}/{p.peer}, medians over rounds)")
    for table in tables:
        print(table)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
